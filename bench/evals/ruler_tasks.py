"""RULER's tasks as the installed nvidia-long-context-eval defines them: their configs, samples at a length
counted with the served model's tokenizer, and their scores. No HTTP here (ruler.py sends the prompts).

A task is synthetic.yaml's entry merged with its kind's base config (data/synthetic/constants.py), as the
package's prepare.py merges them. Its prompt is the kind's template in the "base" model template with the
answer prefix appended: what prepare.py gives its generators, and what the package's own client sends in both
its modes (the whole prompt as one user message for chat, as is for completions).

Scores are the package's evaluator's: each prediction goes through evaluate.py's `postprocess_pred` (strip;
control characters to newlines), then to its metric (eval/synthetic/constants.py): string_match_all (every
reference in the prediction, averaged over references) for niah, vt, cwe and fwe, string_match_part (any
reference) for qa; case-insensitive substring match. evaluate.py parses argv, imports pandas and downloads
NLTK data when imported, so `postprocess_pred` is compiled from its source alone.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository: `bench` is importable from it
QUICK_TASKS = ("niah_single_1", "fwe")
GENERATORS = {kind: f"{kind}.py" for kind in ("niah", "variable_tracking", "common_words_extraction",
                                              "freq_words_extraction", "qa")}  # data/synthetic/KIND.py


class GenerationError(RuntimeError):
    """RULER's generator made no usable samples for a (task, length); the message says why."""


@dataclass(frozen=True)
class Task:
    name: str  # synthetic.yaml's key: niah_single_1, vt, qa_2, ...
    kind: str  # its generator and metric: niah, variable_tracking, common_words_extraction, ...
    args: dict  # the generator's complexity flags (synthetic.yaml)
    template: str  # the task's template with its answer prefix, before the generator fills it in
    answer_prefix: str  # the start of the answer, the template's end (before the generator fills it in)
    max_tokens: int  # the kind's tokens_to_generate

    def answer_start(self, prompt: str) -> int:
        """Where the answer prefix starts in a generated prompt (its text up to the first placeholder)."""
        head = self.answer_prefix.split("{")[0]
        return prompt.rindex(head) if head else len(prompt)


def load_tasks() -> dict[str, Task]:
    """The package's 13 tasks by name, in synthetic.yaml's order."""
    import yaml

    import long_context_eval
    from long_context_eval.data.synthetic.constants import TASKS
    from long_context_eval.data.template import Templates

    config = yaml.safe_load((Path(long_context_eval.__file__).parent / "synthetic.yaml").read_text())
    tasks = {}
    for name, entry in config.items():
        base = TASKS[entry["task"]]
        prefix = base.get("answer_prefix", "")
        tasks[name] = Task(name=name, kind=entry["task"], args=dict(entry["args"]), answer_prefix=prefix,
                           template=Templates["base"].format(task_template=base["template"]) + prefix,
                           max_tokens=base["tokens_to_generate"])
    return tasks


def generator_argv(task: Task, length: int, samples: int, seed: int, tokenizer_dir: str, save_dir: str) -> list[str]:
    """The generator's flags as prepare.py passes them (its tokenizer type is moot: ruler_generate.py swaps in the
    served model's tokenizer)."""
    argv = ["--save_dir", save_dir, "--save_name", task.name, "--subset", "validation",
            "--tokenizer_path", tokenizer_dir, "--tokenizer_type", "hf", "--max_seq_length", str(length),
            "--tokens_to_generate", str(task.max_tokens), "--num_samples", str(samples), "--random_seed", str(seed)]
    for key, value in task.args.items():
        argv += [f"--{key}", str(value)]
    if task.kind == "qa":
        argv += ["--pre_samples", "0"]
    return argv + ["--template", task.template]


def generator_env() -> dict[str, str]:
    """The child's environment: RULER's generator folder on PYTHONPATH, as `python GENERATOR.py` would have it on
    sys.path (the generators import their siblings: `from constants import TASKS`), and this repository, for
    `-m bench.evals.ruler_generate` from any working directory."""
    import long_context_eval.data.synthetic as synthetic

    paths = [str(Path(synthetic.__file__).parent), str(ROOT), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}


def generate(task: Task, length: int, samples: int, seed: int, tokenizer_dir: str,
             timeout_s: float = 3600) -> list[dict]:
    """RULER's samples for `task` at `length` tokens (prompt + max_tokens, counted with the tokenizer in
    `tokenizer_dir`): [{"index", "input": prompt, "outputs": [references], "length": tokens + max_tokens}].
    Raises GenerationError when the generator cannot fit a sample or made one without references."""
    with tempfile.TemporaryDirectory(prefix="ruler-") as tmp:
        cmd = [sys.executable, "-m", "bench.evals.ruler_generate", GENERATORS[task.kind],
               *generator_argv(task, length, samples, seed, tokenizer_dir, tmp)]
        try:
            run = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=generator_env())
        except subprocess.TimeoutExpired:
            raise GenerationError(f"{task.name} at {length}: RULER's generator took over {timeout_s:.0f} s") from None
        if run.returncode != 0:
            lines = re.split(r"[\r\n]+", run.stderr.strip() or run.stdout.strip())  # tqdm's bars end in \r
            vt = " (vt first makes an in-context example of at most 500 tokens)" * (task.kind == "variable_tracking")
            raise GenerationError(f"{task.name} at {length}: {lines[-1] or '(no output)'}{vt}")
        rows = [json.loads(line) for line in (Path(tmp) / task.name / "validation.jsonl").read_text().splitlines()]
    if any(not row["outputs"] for row in rows):  # cwe with no room for a single word: 0 words, no answer
        raise GenerationError(f"{task.name} at {length}: RULER's generator made samples with no answer (its "
                              "smallest haystack does not fit this length with this tokenizer)")
    return rows


def cached_generate(task: Task, length: int, samples: int, seed: int, tokenizer_dir: str, cache_dir: str | None,
                    timeout_s: float = 3600) -> list[dict]:
    """`generate`, kept in `cache_dir` (when given: a jsonl per task, length, samples, seed and what else shapes
    the samples: the tokenizer, the package's and wonderwords' versions, the sentence splitter) and read back."""
    if cache_dir is None:
        return generate(task, length, samples, seed, tokenizer_dir, timeout_s)
    from bench.evals.ruler_generate import sentence_splitter
    from bench.evals.ruler_results import package_version

    shaping = [Path(tokenizer_dir, "tokenizer.json").read_bytes(), package_version("nvidia-long-context-eval"),
               package_version("wonderwords"), sentence_splitter()]
    digest = hashlib.sha256(repr(shaping).encode()).hexdigest()[:12]
    path = Path(cache_dir) / f"{task.name}-{length}-n{samples}-seed{seed}-{digest}.jsonl"
    if path.exists():
        return [json.loads(line) for line in path.read_text().splitlines()]
    rows = generate(task, length, samples, seed, tokenizer_dir, timeout_s)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in rows))
    os.replace(tmp, path)
    return rows


@functools.cache
def postprocess_pred():
    """evaluate.py's `postprocess_pred(predict_str, task_config)`, compiled from that one function's source."""
    import long_context_eval.eval

    path = Path(long_context_eval.eval.__file__).parent / "evaluate.py"
    fn = next(node for node in ast.parse(path.read_text()).body
              if isinstance(node, ast.FunctionDef) and node.name == "postprocess_pred")
    namespace = {"re": re}
    exec(compile(ast.Module(body=[fn], type_ignores=[]), str(path), "exec"), namespace)
    return namespace["postprocess_pred"]


def _scored(task: Task, key: str, preds: list[str | None], refs: list[list[str]]):
    from long_context_eval.eval.synthetic.constants import TASKS

    post = postprocess_pred()
    return TASKS[task.kind][key]([post(p, {}) for p in preds], refs)


def accuracy(task: Task, preds: list[str | None], refs: list[list[str]]) -> float:
    """RULER's score for these predictions as a fraction in [0, 1] (its metric gives percent, 2 decimals)."""
    return _scored(task, "metric_fn", preds, refs) / 100


def sample_scores(task: Task, preds: list[str | None], refs: list[list[str]]) -> list[float]:
    """Each prediction's score in [0, 1] (the metric's per-sample form)."""
    return [s / 100 for s in _scored(task, "metric_fn_per_sample", preds, refs)]
