"""Prefill progress in streams (`"return_progress": true`), in llama.cpp's `prompt_progress` shape: chunks with no
choices whose `prompt_progress` is {total, cache, processed, time_ms}: `total` the prompt's tokens, `cache` those
reused from the prefix cache, `processed` the tokens in the cache so far (the cached ones included: the first event
says `processed == cache`, the last `processed == total`), `time_ms` since the prefill began."""

from __future__ import annotations

import json

import httpx
import pytest

PROMPT = "".join(chr(33 + (i * 7919) % 90) for i in range(900))  # past the tiny preset's sparse minimum


@pytest.fixture(scope="module")
def server(tiny_checkpoint, loopback_server, settings_for):
    with loopback_server(settings_for(tiny_checkpoint, served_model_name="tiny")) as s:
        yield s


def stream(server, prompt: str, **extra) -> tuple[list[dict], dict]:
    """(the prompt_progress objects in order, the usage chunk) of a streamed completion."""
    body = {"model": "tiny", "prompt": prompt, "max_tokens": 3, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}, **extra}
    progress, usage = [], None
    with httpx.Client(timeout=120) as c, c.stream("POST", server.url + "/v1/completions", json=body) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "prompt_progress" in chunk:
                assert chunk["choices"] == [] and chunk["object"] == "text_completion"
                progress.append(chunk["prompt_progress"])
            elif chunk.get("usage"):
                usage = chunk["usage"]
    return progress, usage


def test_progress_events_have_llama_cpps_fields_and_meaning(server):
    progress, usage = stream(server, PROMPT, return_progress=True, cache_prompt=False)
    assert len(progress) >= 3  # the start, then one per layer of the tiny model (2)
    assert all(set(p) == {"total", "cache", "processed", "time_ms"} for p in progress)
    assert {p["total"] for p in progress} == {usage["prompt_tokens"]}
    assert {p["cache"] for p in progress} == {0}
    assert progress[0]["processed"] == 0 and progress[-1]["processed"] == usage["prompt_tokens"]
    processed, times = [p["processed"] for p in progress], [p["time_ms"] for p in progress]
    assert processed == sorted(processed) and times == sorted(times) and times[0] >= 0


def test_cache_counts_the_reused_tokens_and_processed_starts_there(server):
    stream(server, PROMPT, prefill="dense")  # leaves the prompt in the prefix cache (dense: any prefix reusable)
    progress, usage = stream(server, PROMPT + " and more", return_progress=True, prefill="dense")
    cached = usage["prompt_tokens_details"]["cached_tokens"]
    assert cached >= len(PROMPT) // 2
    assert {p["cache"] for p in progress} == {cached}
    assert progress[0]["processed"] == cached and progress[-1]["processed"] == usage["prompt_tokens"]


def test_no_progress_events_unless_asked(server):
    progress, usage = stream(server, PROMPT, cache_prompt=False)
    assert progress == [] and usage["prompt_tokens"] > 0


def test_the_sdk_reads_cache_and_time_ms(server):
    from lighthouse_client import Client

    with Client(base_url=server.url, api_key="unused", max_retries=0) as client:
        chunks = list(client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": PROMPT}], max_tokens=2, stream=True,
            extra_body={"return_progress": True, "cache_prompt": False}))
    seen = [c.prompt_progress for c in chunks if c.prompt_progress is not None]
    assert seen and seen[-1].processed == seen[-1].total and seen[0].cache == 0
    assert all(p.time_ms is not None and p.time_ms >= 0 for p in seen)
