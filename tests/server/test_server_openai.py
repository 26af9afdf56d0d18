"""A real uvicorn server on loopback, driven by the official `openai` package."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time

import httpx
import openai
import pytest
import torch


LONG_PROMPT = "".join(chr(33 + (i * 7919) % 90) for i in range(700))  # 700 ASCII bytes (+BOS): sparse-eligible


@pytest.fixture(scope="module")
def ckpt(tiny_checkpoint):
    return tiny_checkpoint


@pytest.fixture(scope="module")
def server(ckpt, loopback_server, settings_for):
    with loopback_server(settings_for(ckpt, served_model_name="tiny")) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def greedy(client, prompt="The lighthouse keeper", **kw):
    kw.setdefault("max_tokens", 24)
    return client.completions.create(model="tiny", prompt=prompt, temperature=0, **kw)


def metric(server, name: str) -> float:
    text = httpx.get(server.url + "/metrics").text
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{") and line.split(" ")[0] == name:
            return float(line.split()[-1])
    raise KeyError(name)


def test_models_list_reports_max_model_len(client, server):
    models = client.models.list().data
    assert [m.id for m in models] == ["tiny"]
    cfg = server.engine.engine.model.config
    assert models[0].model_extra["max_model_len"] == server.engine.max_model_len == cfg.max_position_embeddings


def test_completion_non_streaming(client):
    r = greedy(client)
    assert r.object == "text_completion" and r.model == "tiny" and r.id.startswith("cmpl-")
    c = r.choices[0]
    assert c.finish_reason == "length" and len(c.text) > 0
    assert r.usage.completion_tokens == 24 and r.usage.prompt_tokens == len("The lighthouse keeper") + 1


def test_chat_non_streaming(client):
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hello"}], max_tokens=10,
                                       temperature=0)
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant" and isinstance(r.choices[0].message.content, str)
    assert r.usage.completion_tokens == 10 and r.usage.total_tokens == r.usage.prompt_tokens + 10


def test_streaming_equals_non_streaming_and_reports_usage_last(client):
    whole = greedy(client).choices[0].text
    chunks = list(greedy(client, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 24
    assert all(c.usage is None for c in chunks[:-1])
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    no_usage = list(greedy(client, stream=True))
    assert all(c.choices for c in no_usage)


def test_chat_streaming_with_include_usage(client):
    msgs = [{"role": "user", "content": "Hi there"}]
    whole = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=12, temperature=0)
    chunks = list(client.chat.completions.create(model="tiny", messages=msgs, max_tokens=12, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12


def test_stop_sequences_cut_the_text_streaming_or_not(client):
    full = greedy(client, max_tokens=40).choices[0].text
    stop = full[10:13]
    expected = full[: full.index(stop)]
    r = greedy(client, max_tokens=40, stop=[stop])
    assert r.choices[0].text == expected and r.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].text for c in greedy(client, max_tokens=40, stop=stop, stream=True))
    assert streamed == expected


def test_n2_seed_reproducibility(client):
    kw = dict(model="tiny", prompt="Once upon a time", max_tokens=16, temperature=1.0, n=2, seed=42)
    a = client.completions.create(**kw)
    b = client.completions.create(**kw)
    assert sorted(c.index for c in a.choices) == [0, 1]
    assert [c.text for c in a.choices] == [c.text for c in b.choices]
    assert a.choices[0].text != a.choices[1].text
    c = client.completions.create(**{**kw, "seed": 43})
    assert [x.text for x in c.choices] != [x.text for x in a.choices]
    assert a.usage.completion_tokens == 32


def test_n2_streaming_interleaves_both_choices(client):
    chunks = list(client.completions.create(model="tiny", prompt="abc", max_tokens=8, temperature=0.8, n=2, seed=1,
                                            stream=True))
    finished = {c.choices[0].index for c in chunks if c.choices[0].finish_reason}
    assert finished == {0, 1}


def test_logprobs_completions_and_chat(client):
    r = greedy(client, max_tokens=6, logprobs=2)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 6
    assert all(v <= 0 for v in lp.token_logprobs) and all(len(t) <= 2 for t in lp.top_logprobs)
    # greedy: the chosen token is the most likely one
    assert all(abs(max(t.values()) - v) < 1e-5 for t, v in zip(lp.top_logprobs, lp.token_logprobs))
    chat = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}], max_tokens=5,
                                          temperature=0, logprobs=True, top_logprobs=3)
    content = chat.choices[0].logprobs.content
    assert len(content) == 5 and all(len(e.top_logprobs) == 3 for e in content)


def test_per_request_prefill_and_decode_override(client, server):
    def sparse_tokens():
        return metric(server, 'lighthouse_prefill_tokens_total{path="sparse"}')

    before = sparse_tokens()
    dense = greedy(client, prompt=LONG_PROMPT, max_tokens=6, logprobs=0, extra_body={"prefill": "dense"})
    assert sparse_tokens() == before
    sparse = greedy(client, prompt=LONG_PROMPT, max_tokens=6, logprobs=0,
                    extra_body={"prefill": "sparse", "dense_tail_tokens": 100})
    assert sparse_tokens() == before + 701 - 100
    assert dense.choices[0].logprobs.token_logprobs != sparse.choices[0].logprobs.token_logprobs
    dec_dense = greedy(client, prompt=LONG_PROMPT, max_tokens=6, logprobs=0, extra_body={"decode": "dense"})
    dec_sparse = greedy(client, prompt=LONG_PROMPT, max_tokens=6, logprobs=0, extra_body={"decode": "sparse"})
    a, b = dec_dense.choices[0].logprobs.token_logprobs, dec_sparse.choices[0].logprobs.token_logprobs
    assert a[0] == b[0] and a[1:] != b[1:]  # same prefill; decode attends to different contexts


def test_kv_mode_compact_answers_as_a_full_session_with_sparse_decode_and_conflicts_are_400(client):
    opts = {"cache_prompt": False}
    full = greedy(client, prompt=LONG_PROMPT, max_tokens=8, logprobs=0, extra_body={**opts, "decode": "sparse"})
    compact = greedy(client, prompt=LONG_PROMPT, max_tokens=8, logprobs=0, extra_body={**opts, "kv_mode": "compact"})
    assert compact.choices[0].text == full.choices[0].text
    assert compact.choices[0].logprobs.token_logprobs == pytest.approx(full.choices[0].logprobs.token_logprobs,
                                                                        abs=1e-5)
    with pytest.raises(openai.BadRequestError) as info:
        greedy(client, prompt=LONG_PROMPT, extra_body={"kv_mode": "compact", "decode": "dense"})
    assert info.value.status_code == 400 and info.value.body["param"] == "kv_mode"
    with pytest.raises(openai.BadRequestError) as info:
        greedy(client, prompt=LONG_PROMPT, extra_body={"kv_mode": "small"})
    assert info.value.status_code == 400 and "kv_mode" in info.value.message


def test_16_concurrent_streams_all_complete_correctly(client, server):
    prompts = [f"Request number {i}: " for i in range(16)]
    expected = [greedy(client, prompt=p, max_tokens=20).choices[0].text for p in prompts]
    aclient = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)

    async def one(p):
        text, finish = "", None
        async for c in await aclient.completions.create(model="tiny", prompt=p, max_tokens=20, temperature=0,
                                                        stream=True):
            text += c.choices[0].text
            finish = c.choices[0].finish_reason or finish
        return text, finish

    async def all_of():
        try:
            return await asyncio.gather(*(one(p) for p in prompts))
        finally:
            await aclient.close()

    results = asyncio.run(all_of())
    assert [t for t, _ in results] == expected
    assert all(f == "length" for _, f in results)


def test_disconnect_mid_stream_frees_the_request(server, wait_until):
    engine = server.engine
    assert wait_until(lambda: engine.stats()["running"] == 0)
    base_kv = metric(server, "lighthouse_kv_cache_usage_ratio")
    body = {"model": "tiny", "prompt": "Keep going", "max_tokens": 3000, "temperature": 0, "stream": True,
            "ignore_eos": True}
    with httpx.Client(timeout=30) as h:
        with h.stream("POST", server.url + "/v1/completions", json=body) as r:
            lines = r.iter_lines()
            got = [next(lines) for _ in range(6)]
            assert any(x.startswith("data: {") for x in got)
            assert metric(server, "lighthouse_num_requests_running") == 1
            assert metric(server, "lighthouse_kv_cache_usage_ratio") > base_kv
    assert wait_until(lambda: metric(server, "lighthouse_num_requests_running") == 0, timeout=10)
    assert metric(server, "lighthouse_kv_cache_usage_ratio") == base_kv
    assert engine.engine.kv.usage_ratio == 0


def test_non_streaming_client_that_disconnects_mid_generation_frees_the_request(server, wait_until):
    """While tokens keep arriving (no idle gap to poll in), a gone client still aborts within a second or two."""
    engine = server.engine
    assert wait_until(lambda: engine.stats()["running"] == 0)
    base_kv = metric(server, "lighthouse_kv_cache_usage_ratio")
    generated_before = metric(server, "lighthouse_generation_tokens_total")
    max_tokens = engine.max_model_len - 64
    body = json.dumps({"model": "tiny", "prompt": "Keep going", "max_tokens": max_tokens, "temperature": 0,
                       "ignore_eos": True}).encode()
    head = (f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    try:
        sock.sendall(head + body)
        assert wait_until(lambda: metric(server, "lighthouse_generation_tokens_total") > generated_before + 20,
                          timeout=20)
        assert metric(server, "lighthouse_num_requests_running") == 1
        assert metric(server, "lighthouse_kv_cache_usage_ratio") > base_kv
    finally:
        sock.close()  # mid-generation, before any response byte
    def freed() -> bool:
        return (metric(server, "lighthouse_num_requests_running") == 0
                and metric(server, "lighthouse_kv_cache_usage_ratio") == base_kv)

    assert wait_until(freed, timeout=2.0), engine.stats()
    assert engine.engine.kv.usage_ratio == 0
    assert metric(server, "lighthouse_generation_tokens_total") - generated_before < max_tokens  # aborted, not run out


def test_a_repeated_document_is_prefilled_once(client, server):
    document = "".join(chr(33 + (i * 104729) % 90) for i in range(700))  # +BOS: 701 tokens, over min_tokens
    def hits() -> float:
        return metric(server, "lighthouse_prefix_cache_hit_tokens_total")

    before = hits()
    first = greedy(client, prompt=document + "\nQ: who keeps the light?", max_tokens=8, extra_body={"prefill": "dense"})
    assert first.usage.prompt_tokens_details is None
    second = greedy(client, prompt=document + "\nWhat is the lamp?", max_tokens=8, logprobs=0,
                    extra_body={"prefill": "dense"})
    assert second.usage.prompt_tokens_details.cached_tokens == 702  # BOS, the document and the newline
    assert hits() == before + 702
    assert metric(server, "lighthouse_prefix_cache_usage_ratio") > 0
    uncached = greedy(client, prompt=document + "\nWhat is the lamp?", max_tokens=8, logprobs=0,
                      extra_body={"prefill": "dense", "cache_prompt": False})
    assert uncached.usage.prompt_tokens_details is None and hits() == before + 702
    assert second.choices[0].text == uncached.choices[0].text
    assert second.choices[0].logprobs.token_logprobs == pytest.approx(uncached.choices[0].logprobs.token_logprobs,
                                                                      abs=1e-4)


def test_greedy_server_equals_generate_cli_and_transformers(client, ckpt):
    from transformers import AutoModelForCausalLM

    prompt = "Ask the lighthouse"
    served = greedy(client, prompt=prompt, max_tokens=16, logprobs=0, extra_body={"prefill": "dense"})
    out = subprocess.run([sys.executable, "-m", "lighthouse.cli", "generate", "--checkpoint", str(ckpt), "--prompt",
                          prompt, "--max-tokens", "16", "--temperature", "0", "--prefill", "dense", "--device", "cpu",
                          "--json"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    cli = json.loads(out.stdout.strip().splitlines()[-1])
    assert cli["text"] == served.choices[0].text
    tok_ids = served.choices[0].logprobs.tokens
    assert len(cli["token_ids"]) == len(tok_ids) == 16
    hf = AutoModelForCausalLM.from_pretrained(str(ckpt), torch_dtype=torch.float32).eval()
    from lighthouse.tokenizer import load_tokenizer

    ids = load_tokenizer(ckpt).encode(prompt)
    ref = hf.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert ref[0, len(ids):].tolist() == cli["token_ids"]


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory, make_checkpoint, loopback_server, settings_for):
    """The `default` preset (6 layers, hidden 256): a 6K-token dense prefill takes seconds on 2 CPU cores."""
    ckpt = make_checkpoint(tmp_path_factory.mktemp("default") / "ckpt", preset="default")
    with loopback_server(settings_for(ckpt, served_model_name="slow", prefill="dense", kv_cache_gb=0.5)) as s:
        yield s


def test_health_answers_during_a_long_prefill_and_disconnect_aborts_it(slow_server, wait_until):
    s = slow_server
    prompt = "".join(chr(33 + (i * 31) % 90) for i in range(6000))
    # cache_prompt off: on a fast machine the prefill can finish before the client leaves, and a finished prompt
    # would then (rightly) stay in the prefix cache; this test is about aborting and freeing the request
    body = {"model": "slow", "prompt": prompt, "max_tokens": 4, "stream": True, "return_progress": True,
            "cache_prompt": False}
    with httpx.Client(timeout=60) as h:
        with h.stream("POST", s.url + "/v1/completions", json=body) as r:
            assert wait_until(lambda: s.engine.engine.kv.usage_ratio > 0, timeout=10)  # prefill has started
            latencies = []
            for _ in range(5):  # a count, not a time window: a slow machine takes longer, not fewer samples
                t0 = time.monotonic()
                assert h.get(s.url + "/health").status_code == 200
                latencies.append(time.monotonic() - t0)
                time.sleep(0.1)
            first = next(r.iter_lines())
            assert s.engine.stats()["running"] == 0 or first  # still prefilling, or already streaming progress
        # closed while prefilling (6K tokens takes several seconds here)
    # a frozen event loop would answer only after the whole prefill (seconds); a busy CPU adds tenths, not seconds
    assert max(latencies) < 2.0, latencies
    assert wait_until(lambda: s.engine.engine.kv.usage_ratio == 0, timeout=5)
    stats = s.engine.stats()
    assert {k: stats[k] for k in ("running", "waiting", "kv_cache_usage", "prefix_cache_usage")} == \
        {"running": 0, "waiting": 0, "kv_cache_usage": 0.0, "prefix_cache_usage": 0.0}
    assert stats["host_cache_usage"] == 0.0 and stats["host_cache_hit_tokens"] == 0  # the tier is off by default
