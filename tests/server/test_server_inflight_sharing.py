"""In-flight sharing through HTTP (issue #30 item 1): a second question on a new document, sent while the first one
is still being answered, prefills only its own tokens (OpenAI's `usage.prompt_tokens_details.cached_tokens`).

Whenever the second request arrives (during the first one's prefill, it waits for it; after it, the entry is there
already: it is kept when the prefill ends, not when the first request finishes), the document is prefilled once, so
the assertions hold at any machine speed."""

from __future__ import annotations

import threading

import httpx
import pytest
import torch

DOC, Q = 600, 40


def ids(n: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(32, 127, (n,), generator=g).tolist()


@pytest.fixture(scope="module")
def server(tiny_checkpoint, loopback_server, settings_for):
    settings = settings_for(tiny_checkpoint, served_model_name="tiny", max_prefill_chunk_ms=1, prefill_chunk_tokens=128)
    with loopback_server(settings) as s:
        yield s


def prefilled_tokens(server) -> float:
    """lighthouse_prefill_tokens_total over both paths: prompt tokens the server actually prefilled."""
    total = 0.0
    for line in httpx.get(server.url + "/metrics").text.splitlines():
        if line.startswith("lighthouse_prefill_tokens_total{"):
            total += float(line.split()[-1])
    return total


def test_two_concurrent_questions_on_a_new_document_prefill_it_once(server):
    document = ids(DOC, 21)
    q1, q2 = ids(Q, 22), ids(Q, 23)
    q2[0] = 32 + (q1[0] - 32 + 1) % 95
    body = {"model": "tiny", "temperature": 0, "prefill": "dense", "ignore_eos": True}
    before = prefilled_tokens(server)
    second: dict = {}

    def ask_second() -> None:
        r = httpx.post(server.url + "/v1/completions", json={**body, "prompt": document + q2, "max_tokens": 4},
                       timeout=120)
        second["usage"] = r.json()["usage"]

    asker = threading.Thread(target=ask_second)
    # the first question streams (a long answer: it still runs when the second comes); once its first chunk is
    # here (it was admitted), the second question is asked; once that is answered, the first stream is closed
    with httpx.stream("POST", server.url + "/v1/completions", timeout=120,
                      json={**body, "prompt": document + q1, "max_tokens": 1000, "stream": True}) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: {") and not asker.is_alive():
                asker.start()
                asker.join(120)
                break
    usage = second["usage"]
    assert usage["prompt_tokens"] == DOC + Q
    assert (usage.get("prompt_tokens_details") or {}).get("cached_tokens") == DOC, usage
    assert prefilled_tokens(server) - before == DOC + 2 * Q  # the document once, each question once
