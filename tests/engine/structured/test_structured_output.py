"""Structured output in the engine: outputs of a tiny random model (and of the bundled checkpoint) follow their
JSON schema, regex or choices under greedy and sampled decoding, n > 1, logprobs and stop strings; an unfinished
JSON at max_tokens ends "length"; rows without a grammar are untouched by their grammared neighbours; greedy
structured output is identical with and without prompt-lookup speculation (drafts checked against the grammar,
the matcher rolled back for rejected ones); a schema or regex the grammar library refuses is an InvalidRequest
naming the field."""

from __future__ import annotations

import json
import re

import pytest
import torch

from lighthouse.engine.errors import InvalidRequest
from lighthouse.engine.options import RequestOptions, Speculation
from lighthouse.engine.sampling import SamplingParams
from lighthouse.engine.options import StructuredOutput

jsonschema = pytest.importorskip("jsonschema")

PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age", "tags", "ok"],
          "properties": {"name": {"type": "string", "maxLength": 8},
                         "age": {"type": "integer", "minimum": 0, "maximum": 150},
                         "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
                         "ok": {"type": "boolean"}}}
SCHEMA = StructuredOutput("json_schema", schema=PERSON, param="response_format.json_schema")
SPEC4 = Speculation("prompt_lookup", 4)
EXAMPLE = b'{"name": "bob", "age": 42, "tags": ["a", "b"], "ok": true}'


@pytest.fixture(scope="module")
def llm(tiny_checkpoint, tiny_llm):
    return tiny_llm(tiny_checkpoint)


def texts(out):
    return [c.text for g in out for c in g.choices]


def prompts():
    return [list(b"Describe a person as JSON: "), list(b"Again: " + EXAMPLE + b"\n" + EXAMPLE[:20]),
            list(b"{}" * 30)]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_json_schema_outputs_parse_and_validate(llm, temperature):
    params = SamplingParams(temperature=temperature, max_tokens=120, n=3, seed=7, top_p=0.95)
    out = llm.generate(prompts(), params, RequestOptions(structured=SCHEMA))
    for g in out:
        for c in g.choices:
            assert c.finish_reason == "stop", c.text
            jsonschema.validate(json.loads(c.text), PERSON)
            assert c.token_ids[-1] not in llm.engine.eos_ids, "the grammar's end finishes the output, no EOS sampled"


def test_guided_choice_returns_one_of_the_choices(llm):
    choices = ("yes", "no", "maybe not")
    so = StructuredOutput("choice", choices=choices, param="guided_choice")
    out = llm.generate([list(b"Answer: "), list(b"zzz")], SamplingParams(temperature=1.0, max_tokens=20, n=6, seed=3),
                       RequestOptions(structured=so))
    got = texts(out)
    assert all(t in choices for t in got), got
    assert len(set(got)) > 1, "sampling picks among the choices"


def test_guided_regex_matches_the_whole_output(llm):
    pattern = r"[a-z]{3}-[0-9]{2,4}( [A-Z]+)?"
    so = StructuredOutput("regex", pattern=pattern, param="guided_regex")
    out = llm.generate(prompts(), SamplingParams(temperature=1.0, max_tokens=40, n=2, seed=1),
                       RequestOptions(structured=so))
    for t in texts(out):
        assert re.fullmatch(pattern, t), t


def test_an_unfinished_json_at_max_tokens_ends_with_length(llm):
    so = StructuredOutput("json_object")
    out = llm.generate([list(b"x")], SamplingParams(temperature=0.0, max_tokens=12), RequestOptions(structured=so))
    c = out[0].choices[0]
    assert c.finish_reason == "length" and len(c.token_ids) == 12
    assert c.text.startswith("{")
    with pytest.raises(json.JSONDecodeError):
        json.loads(c.text)


def test_stop_strings_and_logprobs_work_with_a_grammar(llm):
    params = SamplingParams(temperature=0.0, max_tokens=120, logprobs=3)
    full = llm.generate(prompts()[:1], params, RequestOptions(structured=SCHEMA))[0].choices[0]
    assert len(full.logprobs) == len(full.token_ids)
    first = full.logprobs[0]
    assert first.token_id == ord("{") and first.logprob == pytest.approx(0.0, abs=1e-5), \
        "logprobs are those of the masked distribution: '{' is the only token a JSON object may start with"
    assert all(lp.top[0][1] > -1e9 for lp in full.logprobs)
    params.stop = ['"age"']
    cut = llm.generate(prompts()[:1], params, RequestOptions(structured=SCHEMA))[0].choices[0]
    assert cut.finish_reason == "stop" and cut.text == full.text[: full.text.index('"age"')]


def test_rows_without_a_grammar_are_unchanged_by_grammared_neighbours(llm):
    params = SamplingParams(temperature=1.0, max_tokens=40, seed=11)
    free = [list(b"Once upon a time"), list(b"The key is 12345. The key is")]
    alone = llm.generate(free, params)
    engine = llm.engine
    for i, ids in enumerate(free):
        engine.add_request(f"free-{i}", ids, SamplingParams(**vars(params)))
        engine.add_request(f"json-{i}", prompts()[i], SamplingParams(temperature=1.0, max_tokens=120, seed=i),
                           RequestOptions(structured=SCHEMA))
    got: dict[str, list[int]] = {}
    while engine.has_unfinished():
        for o in engine.step():
            got[o.request_id] = got.get(o.request_id, []) + o.token_ids
    assert [got[f"free-{i}"] for i in range(2)] == [g.choices[0].token_ids for g in alone]
    tok = llm.tokenizer
    for i in range(2):
        jsonschema.validate(json.loads(tok.decode(got[f"json-{i}"])), PERSON)


def test_greedy_structured_output_is_identical_with_and_without_speculation(llm):
    sp = llm.engine.speculator
    params = SamplingParams(temperature=0.0, max_tokens=120, logprobs=1)
    base = llm.generate(prompts(), params, RequestOptions(structured=SCHEMA))
    before = (sp.proposed, sp.accepted)
    spec = llm.generate(prompts(), params, RequestOptions(structured=SCHEMA, speculative=SPEC4))
    proposed, accepted = sp.proposed - before[0], sp.accepted - before[1]
    for a, b in zip(base, spec):
        ca, cb = a.choices[0], b.choices[0]
        assert (cb.token_ids, cb.text, cb.finish_reason) == (ca.token_ids, ca.text, ca.finish_reason)
        for la, lb in zip(ca.logprobs, cb.logprobs):
            assert lb.logprob == pytest.approx(la.logprob, abs=1e-4)
    assert proposed > accepted > 0, "drafts were verified, some accepted and some rejected (rolled back)"


def test_sampled_structured_output_with_speculation_follows_the_schema(llm):
    params = SamplingParams(temperature=1.0, max_tokens=120, n=3, seed=5)
    out = llm.generate(prompts(), params, RequestOptions(structured=SCHEMA, speculative=SPEC4))
    for t in texts(out):
        jsonschema.validate(json.loads(t), PERSON)


@pytest.mark.parametrize("spec,words", [
    (StructuredOutput("json_schema", schema={"type": "nonsense"}, param="response_format.json_schema"), "nonsense"),
    (StructuredOutput("regex", pattern="a(b", param="guided_regex"), "unclosed"),
])
def test_a_grammar_that_does_not_compile_is_an_invalid_request_naming_the_field(llm, spec, words):
    with pytest.raises(InvalidRequest) as e:
        llm.engine.make_request("bad", [1, 2, 3], SamplingParams(max_tokens=4), RequestOptions(structured=spec))
    assert e.value.param == spec.param and e.value.code == "invalid_grammar" and words in e.value.message


@pytest.mark.parametrize("kwargs,param", [
    (dict(kind="json_schema", schema="{}", param="guided_json"), "guided_json"),
    (dict(kind="regex", pattern="", param="guided_regex"), "guided_regex"),
    (dict(kind="choice", choices=(), param="guided_choice"), "guided_choice"),
    (dict(kind="choice", choices=("a", ""), param="guided_choice"), "guided_choice"),
    (dict(kind="xml"), "response_format"),
])
def test_a_malformed_structured_output_is_refused_naming_the_field(kwargs, param):
    with pytest.raises(InvalidRequest) as e:
        StructuredOutput(**kwargs)
    assert e.value.param == param


def test_bundled_checkpoint_json_schema_output_validates():
    from lighthouse.checkpoint import default_checkpoint_dir
    from lighthouse.engine.config import EngineConfig
    from lighthouse.engine.llm import LLM

    llm = LLM(str(default_checkpoint_dir()), EngineConfig(kv_cache_bytes=64 << 20, max_prefill_chunk_ms=None),
              device="cpu", dtype="float32")
    msgs = [{"role": "user", "content": "Give me a person as JSON."}]
    text = llm.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    ids = llm.tokenizer.encode(text, add_special_tokens=False)
    out = llm.generate([ids], SamplingParams(temperature=0.8, max_tokens=160, n=2, seed=0),
                       RequestOptions(structured=SCHEMA, speculative=SPEC4))
    for t in texts(out):
        jsonschema.validate(json.loads(t), PERSON)
    assert torch.is_grad_enabled()  # nothing above changed the global grad mode
