"""RULER against a running server, over HTTP, as a user runs it: NVIDIA's packaged RULER (nvidia-long-context-eval
26.3) makes the prompts and scores the answers; the official `openai` client sends them.

    bash scripts/serve.sh --checkpoint DIR &           # or lighthouse serve ...; wait for /ready
    python -m bench.evals.ruler --url http://127.0.0.1:8000 --tokenizer DIR --tasks all --lengths 4096,8192 \\
        --samples 50 --prefill sparse --dense-tail 64 --decode dense --api chat --out ruler.json
    python -m bench.evals.ruler --quick --url http://127.0.0.1:8000 --out ruler.json   # CI: 2 tasks, 4K, 5 each

Install: `bash scripts/test.sh` does it (the test extra), or `pip install -e ".[ruler]"` and then
`pip install --no-deps nvidia-long-context-eval==26.3` (its declared dependencies bring nemo-evaluator, Flask,
scipy, tiktoken and nltk, which the generators and metrics used here do without: ruler_generate.py says how).

Per task and length, RULER's generator makes --samples prompts whose length (prompt + the task's max_tokens)
is at most the length in tokens of --tokenizer (the served model's checkpoint folder; checked against the
server's /tokenize). Each combination of --prefill, --dense-tail, --decode and --kv-mode (comma lists) then
sends them, greedy (temperature 0), with the task's max_tokens, prefilled cold (`cache_prompt` false unless
--cache-prompt), the server's options in `extra_body`, and RULER's metric scores the answers (ruler_tasks.py).
A length above the server's max_model_len is skipped with a message; so is a request the server refuses as
too long (counted in `skipped`), and a task RULER cannot fit in a length with this tokenizer.

RULER's generators find the haystack size by re-tokenizing ever longer prompts: 20-60 s per task at 128K on
2 cores, minutes at 512K. --jobs K generates the next K (task, length) sets while one is sent; --samples-dir
keeps them for later runs, and --generate-only fills it without a server (e.g. before a GPU session).

--api, and why `chat` is the one for an instruct model: the packaged RULER's own client evaluates chat models
through /v1/chat/completions with the whole prompt, answer prefix included (e.g. " The special magic number
for X mentioned in the provided text is"), as the one user message, and base models through /v1/completions
with the same text (its data is prepared with the "base" template in both modes). `chat` and `completions` do
exactly that. The server's chat API cannot start the assistant's turn with the prefix (no continue-final-message
option), so `chat-template` gives the original RULER repository's way for chat models instead: /v1/completions
with the tokenizer's chat template applied here to the prompt without its prefix, and the prefix starting the
assistant's turn (sent as token ids, so no second BOS).

ruler.json: {"device", "torch", "packages", "sentence_splitter", "zeta", "model", "max_model_len", "url",
"records", "averages"}. A record per (task, length, prefill, dense_tail, decode, kv_mode, api) has RECORD_FIELDS
(accuracy: RULER's score in [0, 1] over the n prompts served; seconds: wall time of their requests) and
EXTRA_FIELDS (prompt_tokens: the server's count, mean; ruler_prompt_tokens: RULER's, without BOS or chat
markers; skipped: prompts refused as too long; generate_seconds: RULER's generator; example: the first answer
and its references); "averages" holds each setting's mean accuracy over tasks per length. The file is written
after every record, and a run with an existing --out replaces only the records it runs (a file of another
model is refused); with --resume it skips those already there with the same seed and sample count, so a long
run resumes where it stopped. "device" and "torch" are this machine's (the server's when on loopback;
--device overrides).

--quick (CI) runs niah_single_1 and fwe at 4096 with 5 samples each, the bundled checkpoint's tokenizer unless
--tokenizer is given. Its byte-level tokens meet RULER's coarse haystack steps: niah_single_1 grows 25 sentences
(~2,200 tokens) at a time, so its prompts are ~2,600 tokens at 4096 (a BPE tokenizer's, SmolLM2's: ~3,860),
while fwe fills the length (~3,700). vt cannot be made with byte tokens at any length (its in-context example
must fit in 500 tokens), nor qa below ~8K (it starts from 10 paragraphs): those are skipped with a message.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.evals import ruler_tasks
from bench.evals.ruler_generate import ServedTokenizer
from bench.evals.ruler_results import Results, environment, record_key

# needles, a UUID, haystack and an answer prefix: what RULER's prompts are made of
PROBE = ("One of the special magic numbers for quiet-harbor is: 4417823. The grass is green.\n"
         "17fc695a-07a0-4a6e-8822-e8f36c031199 Answer: According to the chain(s) of variable assignment")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the server (its /v1 is added)")
    p.add_argument("--api-key", default=os.environ.get("LIGHTHOUSE_API_KEY"))
    p.add_argument("--model", help="the served model's id (default: what /v1/models lists)")
    p.add_argument("--tokenizer", help="the served model's checkpoint folder (--quick: the bundled one)")
    p.add_argument("--tasks", help="all, or a comma list of RULER's: niah_single_1..3, niah_multikey_1..3, "
                   "niah_multivalue, niah_multiquery, vt, cwe, fwe, qa_1, qa_2")
    p.add_argument("--lengths", help="comma list of lengths in tokens (prompt + max_tokens)")
    p.add_argument("--samples", type=int, help="prompts per task and length")
    p.add_argument("--prefill", default="sparse", help="sparse | dense (or a comma list)")
    p.add_argument("--dense-tail", default="64", help="dense_tail_tokens (or a comma list)")
    p.add_argument("--decode", default="dense", help="dense | sparse (or a comma list)")
    p.add_argument("--kv-mode", default="full", help="full | compact (or a comma list; compact decodes sparsely)")
    p.add_argument("--api", choices=("chat", "completions", "chat-template"), default="chat")
    p.add_argument("--out", default="ruler.json")
    p.add_argument("--concurrency", type=int, default=1, help="requests in flight at once")
    p.add_argument("--seed", type=int, default=42, help="RULER's random_seed (its default, 42)")
    p.add_argument("--cache-prompt", action="store_true", help="let prompts use and fill the prefix cache")
    p.add_argument("--resume", action="store_true", help="skip records already in --out (same seed and samples)")
    p.add_argument("--device", help="what ruler.json says the server ran on (default: this machine's)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per request")
    p.add_argument("--samples-dir", help="keep RULER's samples here and reuse them (long lengths take minutes)")
    p.add_argument("--generate-only", action="store_true", help="only fill --samples-dir; no server needed")
    p.add_argument("--jobs", type=int, default=1,
                   help="(task, length) sample sets generated at once, ahead of the requests (a core each)")
    p.add_argument("--quick", action="store_true",
                   help=f"CI: {' and '.join(ruler_tasks.QUICK_TASKS)} at 4096, 5 samples (unless given)")
    args = p.parse_args(argv)
    if args.quick:
        args.tasks = args.tasks or ",".join(ruler_tasks.QUICK_TASKS)
        args.lengths, args.samples = args.lengths or "4096", args.samples or 5
        args.tokenizer = args.tokenizer or str(bundled_checkpoint())
    missing = [f"--{k}" for k in ("tokenizer", "tasks", "lengths", "samples") if getattr(args, k) is None]
    if missing:
        p.error(f"give {', '.join(missing)} (or --quick)")
    if args.generate_only and not args.samples_dir:
        p.error("--generate-only needs --samples-dir")
    return args


def bundled_checkpoint() -> Path:
    """The bundled checkpoint's folder, found without importing lighthouse (which imports torch)."""
    from importlib.util import find_spec

    return Path(find_spec("lighthouse").submodule_search_locations[0]) / "assets" / "default-checkpoint"


def served_tokenizer_check(base_url: str, api_key: str | None, tokenizer_dir: str) -> None:
    """Exit with a message when the server's /tokenize gives other ids for PROBE than `tokenizer_dir` does
    (RULER would count lengths in another model's tokens). A server without /tokenize is not checked."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    r = httpx.post(f"{base_url}/tokenize", json={"prompt": PROBE, "add_special_tokens": False}, headers=headers,
                   timeout=60)
    if r.status_code == 404:
        print(f"note: {base_url} has no /tokenize; --tokenizer {tokenizer_dir} is assumed to be the served one")
        return
    r.raise_for_status()
    ours = ServedTokenizer(tokenizer_dir).text_to_tokens(PROBE)
    if r.json()["tokens"] != ours:
        raise SystemExit(f"--tokenizer {tokenizer_dir} does not tokenize as the server does ({len(ours)} tokens "
                         f"against its {r.json()['count']} for the same text): give the served checkpoint's folder")


def settings(args) -> list[dict]:
    """Each (prefill, dense_tail, decode, kv_mode) to run, as the request's extension fields."""
    combos = itertools.product(args.prefill.split(","), [int(x) for x in args.dense_tail.split(",")],
                               args.decode.split(","), args.kv_mode.split(","))
    out = []
    for prefill, tail, decode, kv in combos:
        if kv == "compact" and decode == "dense":
            print("skip kv_mode compact with decode dense: compact decodes sparsely", flush=True)
            continue
        out.append({"prefill": prefill, "dense_tail_tokens": tail, "decode": decode, "kv_mode": kv})
    return out


class Asker:
    """One prompt -> (answer text, prompt tokens as the server counted them, completion tokens), per --api."""

    def __init__(self, client, model: str, api: str, tokenizer_dir: str, cache_prompt: bool):
        self.client, self.model, self.api, self.cache_prompt = client, model, api, cache_prompt
        self.chat_tokenizer = None
        if api == "chat-template":
            from transformers import AutoTokenizer

            self.chat_tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
            if not getattr(self.chat_tokenizer, "chat_template", None):
                raise SystemExit(f"{tokenizer_dir} has no chat template: use --api completions")

    def __call__(self, task: ruler_tasks.Task, prompt: str, setting: dict):
        common = dict(model=self.model, max_tokens=task.max_tokens, temperature=0,
                      extra_body={**setting, "cache_prompt": self.cache_prompt})
        if self.api == "chat":
            r = self.client.chat.completions.create(messages=[{"role": "user", "content": prompt}], **common)
            text = r.choices[0].message.content
        else:
            r = self.client.completions.create(prompt=self._completion_prompt(task, prompt), **common)
            text = r.choices[0].text
        return text, r.usage.prompt_tokens, r.usage.completion_tokens

    def _completion_prompt(self, task: ruler_tasks.Task, prompt: str):
        if self.chat_tokenizer is None:
            return prompt
        cut = task.answer_start(prompt)
        chat = self.chat_tokenizer.apply_chat_template([{"role": "user", "content": prompt[:cut]}],
                                                       add_generation_prompt=True, tokenize=False)
        return self.chat_tokenizer.encode(chat + prompt[cut:], add_special_tokens=False)


def run_record(ask: Asker, task: ruler_tasks.Task, length: int, rows: list[dict], setting: dict,
               concurrency: int) -> dict | None:
    """Send `rows` (RULER's samples) with `setting`, score the answers: the record, or None if none was served."""
    import openai

    def one(row):
        try:
            return ask(task, row["input"], setting)
        except openai.BadRequestError as e:
            if e.code == "context_length_exceeded" or "maximum context length" in str(e):
                return None  # RULER's count plus BOS or the chat markers, or fwe's prompt (it fills the length)
            raise

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        answers = list(pool.map(one, rows))
    seconds = time.perf_counter() - t0
    served = [(row, a) for row, a in zip(rows, answers) if a is not None]
    if len(served) < len(rows):
        print(f"  {task.name} at {length}: {len(rows) - len(served)} of {len(rows)} prompts refused as longer than "
              "the server's max_model_len", flush=True)
    if not served:
        return None
    preds, refs = [a[0] for _, a in served], [row["outputs"] for row, _ in served]
    return {"task": task.name, "length": length, "prefill": setting["prefill"],
            "dense_tail": setting["dense_tail_tokens"], "decode": setting["decode"],
            "accuracy": round(ruler_tasks.accuracy(task, preds, refs), 4), "n": len(served),
            "seconds": round(seconds, 2), "kv_mode": setting["kv_mode"], "api": ask.api,
            "skipped": len(rows) - len(served), "cache_prompt": ask.cache_prompt, "max_tokens": task.max_tokens,
            "prompt_tokens": round(statistics.mean(a[1] for _, a in served), 1),
            "ruler_prompt_tokens": round(statistics.mean(row["length"] - task.max_tokens for row, _ in served), 1),
            "completion_tokens": round(statistics.mean(a[2] for _, a in served), 1),
            "example": {"prediction": (preds[0] or "")[:300], "references": refs[0]}}


def generated(args, tasks: dict, todo: list[tuple[str, int, list[dict]]]):
    """(name, length, settings, RULER's rows or a GenerationError, seconds) per entry of `todo`, in order, the
    next --jobs entries generating while one is sent (threads: each generator runs in its own process)."""

    def make(name: str, length: int):
        t0 = time.perf_counter()
        try:
            rows = ruler_tasks.cached_generate(tasks[name], length, args.samples, args.seed, args.tokenizer,
                                               args.samples_dir)
        except ruler_tasks.GenerationError as e:
            return e, 0.0
        return rows, round(time.perf_counter() - t0, 2)

    jobs = max(1, args.jobs)
    with ThreadPoolExecutor(jobs) as pool:
        ahead = [pool.submit(make, name, length) for name, length, _ in todo[:jobs]]
        for i, (name, length, todo_settings) in enumerate(todo):
            if i + jobs < len(todo):
                ahead.append(pool.submit(make, *todo[i + jobs][:2]))
            yield name, length, todo_settings, *ahead[i].result()
            ahead[i] = None  # its samples can go


def run_task(args, ask: Asker, results: Results, task: ruler_tasks.Task, length: int, todo: list[dict], rows,
             generate_seconds: float) -> None:
    """Send RULER's samples of `task` at `length` with each setting in `todo`, and record the scores."""
    import openai

    for setting in todo:
        try:
            record = run_record(ask, task, length, rows, setting, args.concurrency)
        except openai.BadRequestError as e:  # e.g. sparse prefill asked of a checkpoint without Lighthouse layers
            message = e.body.get("message", str(e)) if isinstance(e.body, dict) else str(e)
            print(f"skip {task.name} at {length} with {setting}: the server refused it: {message}", flush=True)
            continue
        if record is None:
            continue
        record.update(seed=args.seed, samples=args.samples, generate_seconds=generate_seconds)
        results.put(record)
        print(f"{task.name:16} {length:>7} {setting['prefill']:6} tail {setting['dense_tail_tokens']:<5} "
              f"{setting['decode']:6} {setting['kv_mode']:7}: {record['accuracy']:.3f} (n {record['n']}, "
              f"{record['prompt_tokens']:.0f} prompt tokens, {record['seconds']} s)", flush=True)


def connect(args):
    """(client, model id, max_model_len) of the server at --url, after checking --model and --tokenizer."""
    import openai

    base_url = args.url.rstrip("/").removesuffix("/v1")
    client = openai.OpenAI(base_url=base_url + "/v1", api_key=args.api_key or "none", timeout=args.timeout)
    card = client.models.list().data[0]
    if args.model not in (None, card.id):
        raise SystemExit(f"the server serves {card.id!r}, not {args.model!r}")
    served_tokenizer_check(base_url, args.api_key, args.tokenizer)
    max_model_len = getattr(card, "max_model_len", None)
    print(f"{card.id} (max_model_len {max_model_len}) at {base_url}; tokenizer {args.tokenizer}", flush=True)
    return client, card.id, max_model_len


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tasks = ruler_tasks.load_tasks()
    names = list(tasks) if args.tasks == "all" else args.tasks.split(",")
    if unknown := [n for n in names if n not in tasks]:
        raise SystemExit(f"unknown tasks {unknown}; RULER's are: {', '.join(tasks)}")
    pairs = list(itertools.product(names, [int(x) for x in args.lengths.split(",")]))
    if args.generate_only:
        for name, length, _, rows, seconds in generated(args, tasks, [(*pair, []) for pair in pairs]):
            done = f"{len(rows)} samples in {seconds} s" if isinstance(rows, list) else f"skipped: {rows}"
            print(f"{name} at {length}: {done}", flush=True)
        return 0
    client, model, max_model_len = connect(args)
    results = Results(Path(args.out), {**environment(args.device), "model": model, "max_model_len": max_model_len,
                                       "url": args.url})
    ask, every, todo = Asker(client, model, args.api, args.tokenizer, args.cache_prompt), settings(args), []
    for name, length in pairs:
        left = [s for s in every if not (args.resume and results.done(record_key(name, length, s, args.api),
                                                                        args.seed, args.samples))]
        if left and max_model_len is not None and length > max_model_len:
            print(f"skip {name} at {length}: longer than the server's max_model_len {max_model_len}", flush=True)
        elif left:
            todo.append((name, length, left))
    for name, length, left, rows, seconds in generated(args, tasks, todo):
        if isinstance(rows, ruler_tasks.GenerationError):
            print(f"skip {rows}", flush=True)
        else:
            run_task(args, ask, results, tasks[name], length, left, rows, seconds)
    print(f"{args.out}: {len(results.records)} records" if results.records else "no records", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
