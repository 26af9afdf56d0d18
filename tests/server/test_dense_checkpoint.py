"""A checkpoint without Lighthouse layers (a plain HF Llama folder, a converted GGUF) serves densely and says so:
at startup, in each response's `prefill` object, and with a 400 naming the parameter when a request asks for a
sparse path explicitly. Never a silent substitution."""

from __future__ import annotations

import json
import logging

import httpx
import pytest

from lighthouse.engine.errors import InvalidRequest
from lighthouse.engine.options import RequestOptions
from lighthouse.engine.sampling import SamplingParams

LONG = 700  # past the tiny preset's sparse minimum (512) + the default dense tail (64)


@pytest.fixture(scope="module")
def dense_ckpt(tmp_path_factory, make_checkpoint):
    """The tiny preset with its lighthouse block removed from config.json, as any HF Llama checkpoint has it."""
    ckpt = make_checkpoint(tmp_path_factory.mktemp("dense") / "ckpt")
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg.pop("lighthouse")
    (ckpt / "config.json").write_text(json.dumps(cfg))
    return ckpt


def run(eng, prompt_len: int, options: RequestOptions | None = None):
    eng.add_request("r", list(range(32, 32 + 90)) * (prompt_len // 90) + [33] * (prompt_len % 90),
                    SamplingParams(max_tokens=2, temperature=0.0), options)
    infos = []
    while eng.has_unfinished():
        infos += [o.prefill for o in eng.step() if o.prefill is not None]
    return infos[0]


def test_the_engine_defaults_to_dense_and_says_why_at_startup(dense_ckpt, tiny_llm, caplog):
    with caplog.at_level(logging.INFO, logger="lighthouse.engine.engine"):
        eng = tiny_llm(dense_ckpt).engine  # the engine's configured default prefill is sparse
    assert eng.config.prefill == "sparse" and eng.defaults == ("dense", "dense", "full")
    text = caplog.text
    assert "sparse prefill unavailable" in text and "no Lighthouse layers" in text
    assert "prefill=dense decode=dense" in text
    info = run(eng, LONG)
    assert (info.path, info.sparse_tokens, info.dense_tokens) == ("dense", 0, LONG)
    assert info.note is not None and info.note.startswith("sparse prefill unavailable")


@pytest.mark.parametrize("field,value", [("prefill", "sparse"), ("decode", "sparse"), ("kv_mode", "compact")])
def test_an_explicit_sparse_ask_is_a_clear_error_naming_the_param(dense_ckpt, tiny_llm, field, value):
    eng = tiny_llm(dense_ckpt).engine
    with pytest.raises(InvalidRequest) as info:
        eng.make_request("x", [40] * LONG, SamplingParams(max_tokens=2), RequestOptions(**{field: value}))
    assert info.value.param == field and "no Lighthouse layers" in info.value.message
    assert run(eng, LONG, RequestOptions(prefill="dense")).note is None  # asked dense, got dense: nothing to say


def test_a_lighthouse_checkpoint_notes_only_prompts_below_the_sparse_minimum(tiny_checkpoint, tiny_llm):
    eng = tiny_llm(tiny_checkpoint).engine
    long, short = run(eng, LONG), run(eng, 100)
    assert long.path == "sparse" and long.note is None
    assert short.path == "dense" and "below the sparse minimum (512 tokens" in short.note


def test_http_responses_carry_the_prefill_object_and_a_sparse_ask_gets_400(dense_ckpt, loopback_server, settings_for,
                                                                          assert_error):
    with loopback_server(settings_for(dense_ckpt, served_model_name="dense")) as s, httpx.Client(base_url=s.url,
                                                                                                  timeout=60) as c:
        body = {"model": "dense", "prompt": "x" * LONG, "max_tokens": 2}
        r = c.post("/v1/completions", json=body)
        assert r.status_code == 200, r.text
        pre = r.json()["prefill"]
        assert (pre["path"], pre["sparse_tokens"], pre["decode"]) == ("dense", 0, "dense")
        assert pre["dense_tokens"] + pre["cached_tokens"] == r.json()["usage"]["prompt_tokens"]
        assert "sparse prefill unavailable" in pre["note"]
        assert_error(c.post("/v1/completions", json={**body, "prefill": "sparse"}), 400, param="prefill",
                     contains="no Lighthouse layers")
        # streamed: the prefill object rides on the usage chunk
        with c.stream("POST", "/v1/completions", json={**body, "stream": True, "cache_prompt": False,
                                                       "stream_options": {"include_usage": True}}) as r:
            chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
        assert chunks[-1]["usage"]["prompt_tokens"] == LONG + 1 and chunks[-1]["prefill"]["path"] == "dense"
