"""RULER (bench/evals/ruler.py) as CI runs it: `--quick` against a real server on the bundled checkpoint, and the
pieces that decide its numbers (RULER's metrics per task kind, a task that cannot fit, merging ruler.json).

The bundled checkpoint (5M parameters, byte-level tokens) scores about 0 on RULER: the quick run checks that the
harness makes prompts of the length in the served model's tokens, sends them and records scored answers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("long_context_eval", reason="RULER (nvidia-long-context-eval) is not installed; "
                    "scripts/test.sh installs it (scripts/venv.sh, install_project test)")
pytest.importorskip("openai", reason="the harness sends its prompts with the official openai client")

from bench.evals import ruler_generate, ruler_results, ruler_tasks  # noqa: E402  (after the importorskips)

ROOT = Path(__file__).resolve().parents[2]

NAMED_FIELDS = {"task", "length", "prefill", "dense_tail", "decode", "accuracy", "n", "seconds"}


@pytest.fixture(scope="module")
def tasks():
    return ruler_tasks.load_tasks()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_quick_run_scores_five_prompts_per_task_made_at_4096_served_tokens(tmp_path, settings_for, loopback_server):
    from lighthouse.checkpoint import default_checkpoint_dir

    out = tmp_path / "ruler.json"
    with loopback_server(settings_for(default_checkpoint_dir())) as server:
        run = subprocess.run([sys.executable, "-m", "bench.evals.ruler", "--quick", "--url", server.url,
                              "--out", str(out)], capture_output=True, text=True, timeout=200, cwd=ROOT)  # fmt: skip
        served = server.app.state.model_name
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["model"] == served and result["packages"]["nvidia-long-context-eval"] == "26.3"
    records = {r["task"]: r for r in result["records"]}
    assert sorted(records) == sorted(ruler_tasks.QUICK_TASKS), run.stdout
    for r in records.values():
        assert NAMED_FIELDS <= set(r), r
        assert set(r) == set(ruler_results.RECORD_FIELDS) | set(ruler_results.EXTRA_FIELDS), r
        assert (r["length"], r["prefill"], r["dense_tail"], r["decode"]) == (4096, "sparse", 64, "dense"), r
        assert r["n"] == 5 and r["skipped"] == 0 and 0 <= r["accuracy"] <= 1 and r["seconds"] > 0, r
        # lengths are in the served tokenizer's tokens: the server counted RULER's prompt plus BOS and the chat
        # template's markers, and the prompt left room for the task's max_tokens within 4096
        assert 0 < r["prompt_tokens"] - r["ruler_prompt_tokens"] <= 40, r
        assert r["ruler_prompt_tokens"] + r["max_tokens"] <= 4096, r
    assert abs(records["fwe"]["prompt_tokens"] - 4096) <= 0.1 * 4096, records["fwe"]  # fwe fills the length
    # niah_single_1's haystack grows 25 sentences (~2,200 byte tokens) at a time: ~2,600 tokens fit in 4096 here
    assert records["niah_single_1"]["prompt_tokens"] > 4096 / 2, records["niah_single_1"]
    (avg,) = result["averages"]
    assert avg["length"] == 4096 and avg["accuracy"] == pytest.approx(sum(r["accuracy"] for r in records.values()) / 2)


def test_needle_answers_score_by_rulers_all_references_match(tasks):
    niah = tasks["niah_single_1"]
    assert ruler_tasks.accuracy(niah, [" The special magic number is 4417823."], [["4417823"]]) == 1.0
    assert ruler_tasks.accuracy(niah, [" The special magic number is 4417832."], [["4417823"]]) == 0.0
    assert ruler_tasks.accuracy(niah, [None], [["4417823"]]) == 0.0
    multi = tasks["niah_multivalue"]
    assert ruler_tasks.accuracy(multi, ["1111111 and 2222222"], [["1111111", "2222222", "3333333", "4444444"]]) == 0.5


def test_qa_answers_score_by_rulers_any_reference_match(tasks):
    qa = tasks["qa_1"]
    assert ruler_tasks.accuracy(qa, ["Answer: the NORMANS"], [["Normans", "the Norse"]]) == 1.0
    assert ruler_tasks.accuracy(qa, ["the Vikings"], [["Normans", "the Norse"]]) == 0.0
    assert ruler_tasks.sample_scores(qa, ["Normans", "Franks"], [["Normans"], ["Normans"]]) == [1.0, 0.0]


def test_the_answer_prefix_is_found_at_the_end_even_when_the_context_holds_its_words(tasks):
    """--api chat-template cuts each prompt there: the question in the user turn, the prefix opening the answer."""
    fill = dict(type_needle_v="number", query="q", num_v=5,
                context="Answer: no. The special magic number for q mentioned in the provided text is 1.")
    for task in tasks.values():
        prompt = task.template.format(**fill)
        assert prompt[task.answer_start(prompt):] == task.answer_prefix.format(**fill), task.name


def test_a_task_rulers_generator_cannot_fit_is_reported_not_retried_forever(tasks):
    """qa_1 starts from 10 SQuAD paragraphs, ~7,000 byte tokens: at 4096 RULER's generator would retry forever."""
    from lighthouse.checkpoint import default_checkpoint_dir

    with pytest.raises(ruler_tasks.GenerationError, match="cannot fit a sample"):
        ruler_tasks.generate(tasks["qa_1"], 4096, 2, 42, str(default_checkpoint_dir()), timeout_s=60)


def test_a_rerun_replaces_only_the_records_it_ran_and_refuses_another_models_file(tmp_path):
    path, header = tmp_path / "ruler.json", {"model": "m", "device": "cpu"}
    rec = dict(task="vt", length=4096, prefill="sparse", dense_tail=64, decode="dense", accuracy=0.5, n=5,
               seconds=1.0, kv_mode="full", api="chat", seed=42, samples=5)
    first = ruler_results.Results(path, header)
    first.put(rec)
    first.put({**rec, "length": 8192, "accuracy": 0.25})
    again = ruler_results.Results(path, header)
    assert again.done(ruler_results.key(rec), 42, 5) and not again.done(ruler_results.key(rec), 42, 50)
    again.put({**rec, "accuracy": 1.0})
    saved = json.loads(path.read_text())
    assert sorted((r["length"], r["accuracy"]) for r in saved["records"]) == [(4096, 1.0), (8192, 0.25)]
    assert [a["accuracy"] for a in saved["averages"]] == [1.0, 0.25]
    with pytest.raises(SystemExit, match="another --out"):
        ruler_results.Results(path, {**header, "model": "other"})


def test_sentences_split_where_punkt_would_without_its_data():
    text = 'He left. "Why?" she asked. It cost $3.50 in 1999! Then 2 more came? Yes.'
    assert ruler_generate.regex_sentences(text) == ["He left.", '"Why?" she asked.', "It cost $3.50 in 1999!",
                                                    "Then 2 more came?", "Yes."]
