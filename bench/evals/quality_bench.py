"""Retrieval quality of a checkpoint through the serving engine: the table behind "sparse prefill keeps retrieval".

    python -m bench.evals.quality_bench --checkpoint DIR --out bench/results/DATE_h200_quality      # the full table
    python -m bench.evals.quality_bench --quick --out /tmp/quality                                 # a CPU dry run
    python -m bench.evals.quality_bench --checkpoint DIR --plan                                    # cells and prompt tokens

Tasks (the trainer's generators, lighthouse/train/synthetic.py; one seeded rng per prompt, so every run asks the
same prompts): `passkey` (a 5-digit key at depths 0.05..0.95, bench/evals/passkey_eval.py's seeds) and `kv` (records
`Record NNNNNN holds value NNNN.` in sentence filler, 32 from 19K characters on; one asked). Two formats:
`completion` (the document cut where the answer starts; a hit is the exact digits) and `documents_ask` (the token
ids the server makes of what `client.documents.ask(document, question)` sends: the SDK's messages in the
checkpoint's chat template; run through the engine, not HTTP; a hit is the answer anywhere in the reply, a kv
record's own number masked; `accuracy_strict` counts replies that start with the answer or its lead-in).

Cells, per (task, format, context): prefill dense (decode dense; sparse decode needs a sparse prefill), and prefill
sparse with each dense tail (0, 64, 1024) x decode dense | sparse | compact (kv_mode "compact": sparse decode
with only the selected context kept). All in the checkpoint's serving layout (`lighthouse.full_attn_layers`, written
"dense:0,1,2,5"). Then the layer table at --layers-at: each candidate layer alone sparse (the others dense), the
checkpoint's layout, and the union of the layers that pass alone (>= 0.95 x dense prefill on every task/format
that dense prefill answers at all), measured together; all with sparse prefill (--layers-tail) and dense decode.
retrieval.json's `layers` says which passed and the layout they suggest; choosing the serving layout is left to you.

A context is a prompt length in tokens; one the checkpoint (or the KV budget) cannot hold is recorded as skipped,
and the longest one that fits is trimmed by the answer's tokens (`context` is the length run, `context_requested`
the asked one). --out DIR/retrieval.json gets one record per cell, key (task, context_requested, prefill,
dense_tail, decode, kv_mode, layout, format), written after every cell; a rerun keeps the cells already there
(run it in pieces with --contexts). Each cell's prompts go through one `LLM.generate` (prefills one after another,
decode batched up to --max-num-seqs), cold (`cache_prompt: false`).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from lighthouse.engine import EngineConfig
from lighthouse.engine.llm import LLM
from lighthouse.engine.options import RequestOptions
from lighthouse.engine.plan import plan_prefill
from lighthouse.engine.sampling import SamplingParams
from lighthouse.tokenizer import FALLBACK_CHAT_TEMPLATE
from lighthouse.train.passkey import DEFAULT_DEPTHS
from lighthouse.train.synthetic import kv_doc, passkey_doc
from lighthouse_client.documents import document_messages

TASKS, FORMATS = ("passkey", "kv"), ("completion", "documents_ask")
DECODES = ("dense", "sparse", "compact")
MAX_TOKENS = {("passkey", "completion"): 5, ("kv", "completion"): 4,  # the digits
              ("passkey", "documents_ask"): 24, ("kv", "documents_ask"): 36}  # "Record 123456 holds value 1234." + end
PASS_RATIO = 0.95  # a layer passes alone when it keeps this share of dense prefill's accuracy (issue 16's target)


@dataclass
class Prompt:
    ids: list[int]
    answer: str  # the digits a hit must contain
    lead: str = ""  # the chat answer's lead-in ("The pass key is ")
    noise: str = ""  # digits in the question that are not the answer (a kv record's number)
    depth: float | None = None


@dataclass(frozen=True)
class Cell:
    task: str
    context_requested: int
    prefill: str
    dense_tail: int | None
    decode: str
    kv_mode: str
    layout: str
    format: str

    @property
    def key(self) -> tuple:
        return tuple(asdict(self).values())

    def options(self) -> RequestOptions:
        if self.prefill == "dense":
            return RequestOptions(prefill="dense", decode="dense", cache_prompt=False)
        return RequestOptions(prefill="sparse", decode=self.decode, kv_mode=self.kv_mode,
                              dense_tail_tokens=self.dense_tail, cache_prompt=False)


def layout_name(full_attn_layers) -> str:
    return "dense:" + (",".join(map(str, sorted(full_attn_layers))) or "none")


def layout_layers(name: str) -> list[int]:
    tail = name.removeprefix("dense:")
    return [] if tail == "none" else [int(i) for i in tail.split(",")]


# ---- prompts ----------------------------------------------------------------------------------------------------
def make_doc(task: str, context: int, i: int, seed: int, n_chars: int):
    """The i-th document of a (task, context): its rng depends on those alone, not on how long it is cut."""
    if task == "passkey":
        d, t = DEFAULT_DEPTHS[i % len(DEFAULT_DEPTHS)], i // len(DEFAULT_DEPTHS)
        return passkey_doc(random.Random(f"{seed}-{context}-{d}-{t}"), n_chars, depth=d), d  # passkey_prompts' seeds
    return kv_doc(random.Random(f"kv-{seed}-{context}-{i}"), n_chars), None


def encode(tok, task: str, fmt: str, doc, depth) -> Prompt:
    question, lead, answer = doc.chat_qa
    if fmt == "completion":
        a, b = doc.answers[0]
        return Prompt(tok.encode(doc.text[:a]), doc.text[a:b], depth=depth)  # BOS + the document up to the digits
    text = tok.apply_chat_template(document_messages(doc.text[: doc.body_end], question), add_generation_prompt=True,
                                   tokenize=False)  # as the server's /v1/chat/completions builds it
    noise = lead.split()[1] if task == "kv" else ""
    return Prompt(tok.encode(text, add_special_tokens=False), answer, lead, noise, depth)


def build_prompt(tok, task: str, fmt: str, context: int, target: int, i: int, seed: int) -> Prompt:
    """The i-th prompt, `target` tokens long: the document's length corrected until the prompt fits."""
    n_chars, best = target, None
    for _ in range(6):
        p = encode(tok, task, fmt, *make_doc(task, context, i, seed, n_chars))
        if len(p.ids) <= target and (best is None or len(p.ids) > len(best.ids)):
            best = p
        if len(p.ids) == target:
            break
        n_chars -= len(p.ids) - target
    if best is None:
        raise ValueError(f"could not fit a {task} {fmt} prompt into {target} tokens")
    return best


# ---- running ----------------------------------------------------------------------------------------------------
def score(fmt: str, prompt: Prompt, got: str) -> tuple[bool, bool]:
    """(hit, strict hit): completion: the exact digits; documents_ask: the answer anywhere / at the reply's start."""
    if fmt == "completion":
        hit = got.startswith(prompt.answer)
        return hit, hit
    reply = got.strip()
    strict = reply.startswith(prompt.lead + prompt.answer) or reply.startswith(prompt.answer)
    return prompt.answer in (reply.replace(prompt.noise, " ") if prompt.noise else reply), strict


def drain(llm: LLM) -> None:
    """Finish (and drop) whatever a failed generate left in the engine."""
    while llm.engine.has_unfinished():
        llm.engine.step()


def run_cell(llm: LLM, cell: Cell, prompts: list[Prompt], max_tokens: int) -> dict:
    """Generate greedily for every prompt in the cell's layout and options; the cell's record."""
    model = llm.engine.model
    lh = model.config.lighthouse
    saved, lh.full_attn_layers = lh.full_attn_layers, layout_layers(cell.layout)  # read by plan_prefill per request
    opts = cell.options()
    try:
        plan = plan_prefill(model.config, len(prompts[0].ids), prefill=cell.prefill, decode=cell.decode,
                            dense_tail_tokens=cell.dense_tail or 0, kv_mode=cell.kv_mode)
        t0 = time.perf_counter()
        gens = llm.generate([p.ids for p in prompts], SamplingParams(max_tokens=max_tokens, temperature=0.0), opts)
        seconds = time.perf_counter() - t0
    except Exception as exc:  # a failed cell is recorded; the run goes on
        drain(llm)
        return {**asdict(cell), "accuracy": None, "n": 0, "error": f"{type(exc).__name__}: {exc}"}
    finally:
        lh.full_attn_layers = saved
    hits = [score(cell.format, p, g.text) for p, g in zip(prompts, gens)]
    ran = sorted({(g.prefill.path, g.prefill.decode) for g in gens if g.prefill})
    n = len(hits)
    return {**asdict(cell), "context": max(len(p.ids) for p in prompts), "accuracy": sum(h for h, _ in hits) / n,
            "n": n, "accuracy_strict": sum(s for _, s in hits) / n, "seconds": round(seconds, 3),
            "prefill_seconds_mean": round(sum(g.prefill.seconds for g in gens if g.prefill) / n, 4),
            "ran": [f"{p}/{d}" for p, d in ran],  # prefill/decode paths the engine took
            "lighthouse_layers": list(plan.lighthouse_layers) if plan.sparse else [],
            "max_tokens": max_tokens,
            "samples": [{"key": p.answer, "got": g.text[:80], **({"depth": p.depth} if p.depth is not None else {})}
                        for p, g in zip(prompts, gens)]}


# ---- the bench --------------------------------------------------------------------------------------------------
class Bench:
    """The engine, the prompts (built once per task/format/context) and the records, kept on disk as they come."""

    def __init__(self, args, llm: LLM):
        self.args, self.llm = args, llm
        model = llm.engine.model
        self.n_layers = model.config.num_hidden_layers
        self.max_positions = model.config.max_position_embeddings
        self.layout = layout_name(model.config.lighthouse.full_attn_layers)
        self.max_tokens = {(t, f): args.ask_max_tokens if f == "documents_ask" and args.ask_max_tokens else n
                           for (t, f), n in MAX_TOKENS.items()}
        # answer tokens every prompt leaves free, the same whatever --tasks/--formats, so that pieces of a run agree
        self.reserve = max(self.max_tokens.values())
        self.prompts: dict[tuple, list[Prompt]] = {}
        self.path = Path(args.out) / "retrieval.json" if args.out else None
        self.records: dict[tuple, dict] = {}
        self.layers_summary: dict = {}
        self._load()

    def _load(self) -> None:
        if self.path is None or not self.path.exists() or self.args.fresh:
            return
        old = json.loads(self.path.read_text())
        ours = (self.args.checkpoint or "bundled", self.args.trials, self.args.seed, self._max_tokens_json())
        if (old.get("checkpoint"), old.get("trials"), old.get("seed"), old.get("max_tokens")) != ours:
            raise SystemExit(f"{self.path} holds another run (checkpoint/trials/seed/max_tokens); pass --fresh or "
                             "another --out")
        for r in old["records"]:
            if r.get("n"):
                self.records[Cell(**{k: r[k] for k in Cell.__dataclass_fields__}).key] = r
        self.layers_summary = old.get("layers") or {}  # a piece without the layer table keeps the one already there
        print(f"kept {len(self.records)} cells from {self.path}", flush=True)

    def _max_tokens_json(self) -> dict[str, int]:
        return {f"{t}/{f}": n for (t, f), n in self.max_tokens.items()}

    def target(self, context: int) -> tuple[int | None, str | None]:
        """(prompt length to run, None) or (None, why the context is skipped)."""
        if context > self.max_positions:
            return None, f"context {context} > the checkpoint's max_position_embeddings {self.max_positions}"
        limit = self.llm.engine.max_model_len
        if context > limit:
            return None, f"context {context} > the engine's max_model_len {limit} (KV budget)"
        return min(context, limit - self.reserve), None

    def prompts_for(self, task: str, fmt: str, context: int, target: int) -> list[Prompt]:
        key = (task, fmt, context)
        if key not in self.prompts:
            tok = self.llm.tokenizer
            self.prompts[key] = [build_prompt(tok, task, fmt, context, target, i, self.args.seed)
                                 for i in range(self.args.trials)]
        return self.prompts[key]

    def run(self, cell: Cell) -> dict:
        if cell.key in self.records:
            return self.records[cell.key]
        target, why = self.target(cell.context_requested)
        if why:
            rec = {**asdict(cell), "accuracy": None, "n": 0, "skipped": why}
        else:
            rec = run_cell(self.llm, cell, self.prompts_for(cell.task, cell.format, cell.context_requested, target),
                           self.max_tokens[cell.task, cell.format])
        self.records[cell.key] = rec
        print(line(rec), flush=True)
        self.save()
        return rec

    def save(self) -> None:
        if self.path is None:
            return
        a, model = self.args, self.llm.engine.model
        doc = {"bench": "bench/evals/quality_bench.py", "date": time.strftime("%Y-%m-%d"),
               "checkpoint": a.checkpoint or "bundled", "device": device_name(a.device),
               "dtype": str(next(model.parameters()).dtype), "torch": torch.__version__,
               "max_position_embeddings": self.max_positions, "max_model_len": self.llm.engine.max_model_len,
               "num_hidden_layers": self.n_layers, "checkpoint_layout": self.layout,
               "lighthouse": asdict(model.config.lighthouse), "trials": a.trials, "seed": a.seed,
               "depths": list(DEFAULT_DEPTHS), "max_tokens": self._max_tokens_json(),
               # documents_ask prompts are only the SDK's layout under the checkpoint's own template: say which ran
               "chat_template": ("fallback (the checkpoint has none: 'role: content' lines)"
                                 if self.llm.tokenizer.chat_template == FALLBACK_CHAT_TEMPLATE
                                 else self.llm.tokenizer.chat_template),
               "layers": self.layers_summary, "records": list(self.records.values())}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1) + "\n")
        tmp.replace(self.path)


def device_name(device: str) -> str:
    return torch.cuda.get_device_name(device) if device.startswith("cuda") else device


def retrieval_cells(args, layout: str) -> list[Cell]:
    cells = []
    for context in args.contexts:
        for task in args.tasks:
            for fmt in args.formats:
                if "dense" in args.prefills:
                    cells.append(Cell(task, context, "dense", None, "dense", "full", layout, fmt))
                if "sparse" in args.prefills:
                    cells += [Cell(task, context, "sparse", tail, "sparse" if d == "compact" else d,
                                   "compact" if d == "compact" else "full", layout, fmt)
                              for tail in args.tails for d in args.decodes]
    return cells


def layer_cells(args, layout: str, n_layers: int) -> list[Cell]:
    """At --layers-at: dense prefill (the baseline), each candidate layer alone sparse, the checkpoint's layout."""
    layouts = [layout_name(i for i in range(n_layers) if i != j) for j in args.layer_candidates or range(n_layers)]
    layouts += [layout] if layout not in layouts else []
    fmts = args.layers_formats or args.formats
    dense = [Cell(t, args.layers_at, "dense", None, "dense", "full", layout, f) for t in args.tasks for f in fmts]
    return dense + [Cell(t, args.layers_at, "sparse", args.layers_tail, "dense", "full", lay, f)
                    for lay in layouts for t in args.tasks for f in fmts]


def suggest_layout(bench: Bench, cells: list[Cell]) -> dict:
    """The layers that alone keep PASS_RATIO of dense prefill's accuracy on every task/format that dense prefill
    answers at all (a task it fails says nothing about a layer); their union's layout."""
    args, passing = bench.args, []
    baseline = {(c.task, c.format): bench.records[c.key].get("accuracy") for c in cells if c.prefill == "dense"}
    informative = {k for k, a in baseline.items() if a}
    for j in args.layer_candidates or range(bench.n_layers):
        alone = layout_name(i for i in range(bench.n_layers) if i != j)
        accs = [(bench.records[c.key].get("accuracy"), baseline[c.task, c.format]) for c in cells
                if c.layout == alone and c.prefill == "sparse" and (c.task, c.format) in informative]
        if accs and all(a is not None and a >= PASS_RATIO * d for a, d in accs):
            passing.append(j)
    return {"context_requested": args.layers_at, "dense_tail": args.layers_tail, "decode": "dense",
            "baseline_dense_prefill": {f"{t}/{f}": a for (t, f), a in baseline.items()},
            "candidates": list(args.layer_candidates or range(bench.n_layers)), "pass_ratio": PASS_RATIO,
            "passing_alone": passing, "checkpoint_layout": bench.layout,
            "suggested_layout": layout_name(i for i in range(bench.n_layers) if i not in passing)}


def run_layers(bench: Bench) -> None:
    args = bench.args
    cells = layer_cells(args, bench.layout, bench.n_layers)
    for c in cells:
        bench.run(c)
    bench.layers_summary = suggest_layout(bench, cells)
    summary = bench.layers_summary
    if summary["passing_alone"]:  # the union of the passing layers, measured together
        union = [Cell(c.task, c.context_requested, "sparse", args.layers_tail, "dense", "full",
                      summary["suggested_layout"], c.format) for c in cells if c.prefill == "dense"]
        summary["suggested_accuracy"] = {f"{c.task}/{c.format}": bench.run(c).get("accuracy") for c in union}
    bench.save()


# ---- printing ---------------------------------------------------------------------------------------------------
def column(r: dict) -> str:
    if r["prefill"] == "dense":
        return "dense"
    return f"t{r['dense_tail']}/" + ("c" if r["kv_mode"] == "compact" else r["decode"][0])


def acc(r: dict) -> str:
    return "skip" if r.get("skipped") else "err" if r.get("error") else f"{r['accuracy']:.2f}"


def line(r: dict) -> str:
    extra = r.get("skipped") or r.get("error") or (f"{r['n']} prompts, {r['seconds']:.1f}s, prefill "
                                                   f"{r['prefill_seconds_mean']:.3f}s each, ran {','.join(r['ran'])}")
    return (f"{r['task']:7} {r['format']:13} {r.get('context', r['context_requested']):>7} {column(r):7} "
            f"{r['layout']:16} {acc(r):>4}  ({extra})")


def print_tables(bench: Bench) -> None:
    recs = list(bench.records.values())
    main = [r for r in recs if r["layout"] == bench.layout]
    cols = list(dict.fromkeys(column(r) for r in main))
    print(f"\nretrieval, layout {bench.layout} (accuracy over {bench.args.trials} prompts; t<tail>/<decode: d dense, "
          f"s sparse, c compact>)")
    print(f"{'task':7} {'format':13} {'context':>7} " + " ".join(f"{c:>6}" for c in cols))
    rows = dict.fromkeys((r["task"], r["format"], r["context_requested"]) for r in main)
    for t, f, n in rows:
        by = {column(r): r for r in main if (r["task"], r["format"], r["context_requested"]) == (t, f, n)}
        ctx = next((r["context"] for r in by.values() if "context" in r), n)
        print(f"{t:7} {f:13} {ctx:>7} " + " ".join(f"{acc(by[c]) if c in by else '-':>6}" for c in cols))
    layer_rows = [r for r in recs if r["context_requested"] == bench.args.layers_at and r["prefill"] == "sparse"
                  and r["dense_tail"] == bench.args.layers_tail and r["decode"] == "dense" and r["kv_mode"] == "full"]
    if layer_rows:
        print(f"\nlayers at {bench.args.layers_at} (sparse prefill, tail {bench.args.layers_tail}, dense decode): "
              f"{json.dumps(bench.layers_summary)}")
        for r in layer_rows:
            print(f"  {r['layout']:18} {r['task']:7} {r['format']:13} {acc(r)}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=None, help="checkpoint directory (default: the bundled one)")
    p.add_argument("--contexts", type=int, nargs="+", default=[16384, 65536, 131072, 262144, 524288])
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    p.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    p.add_argument("--prefills", nargs="+", default=["dense", "sparse"], choices=["dense", "sparse"])
    p.add_argument("--tails", type=int, nargs="+", default=[0, 64, 1024], help="dense tails of the sparse prefill")
    p.add_argument("--decodes", nargs="+", default=list(DECODES), choices=DECODES,
                   help="decodes after a sparse prefill (compact: kv_mode 'compact', a sparse decode)")
    p.add_argument("--trials", type=int, default=20, help="prompts per cell")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ask-max-tokens", type=int, default=None,
                   help="max_tokens of a documents_ask reply (default: the answer and a little; the SDK's is 256)")
    p.add_argument("--layers-at", type=int, default=131072, help="context of the layer table (0: no layer table)")
    p.add_argument("--layers-tail", type=int, default=64, help="dense tail of the layer table's sparse prefill")
    p.add_argument("--layer-candidates", type=int, nargs="+", default=None, help="layers to try alone (default: all)")
    p.add_argument("--layers-formats", nargs="+", default=None, choices=FORMATS,
                   help="formats of the layer table (default: --formats)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on the CPU")
    p.add_argument("--max-num-seqs", type=int, default=32, help="sequences the engine decodes together")
    p.add_argument("--kv-cache-gb", type=float, default=None, help="KV budget (default: the engine's)")
    p.add_argument("--out", default=None, help="write OUT/retrieval.json (kept cells are not run again)")
    p.add_argument("--fresh", action="store_true", help="ignore an existing OUT/retrieval.json")
    p.add_argument("--plan", action="store_true", help="list the cells and prompt tokens, run nothing")
    p.add_argument("--quick", action="store_true", help="a CPU dry run: contexts 4096 8192, 2 trials, tail 64, decode "
                   "dense|sparse, layers at 8192 as completions")
    args = p.parse_args(argv)
    if args.quick:  # new defaults; flags given on the command line still win
        p.set_defaults(contexts=[4096, 8192], trials=2, tails=[64], decodes=["dense", "sparse"], layers_at=8192,
                       layers_formats=["completion"])
        args = p.parse_args(argv)
    return args


def print_plan(bench: Bench, cells: list[Cell]) -> None:
    by_context: dict[int, int] = {}
    for c in dict.fromkeys(cells):  # the layer table shares cells with the retrieval table
        by_context[c.context_requested] = by_context.get(c.context_requested, 0) + 1
    print(f"{len(set(cells))} cells x {bench.args.trials} prompts; layout {bench.layout}; max_model_len "
          f"{bench.llm.engine.max_model_len}")
    for n, k in sorted(by_context.items()):
        target, why = bench.target(n)
        print(f"  context {n:>7}: {k:3} cells, {k * bench.args.trials:5} prefills"
              + (f" of {target} tokens" if target else f" skipped: {why}"))


def main(argv=None) -> None:
    args = parse_args(argv)
    config = EngineConfig(max_num_seqs=args.max_num_seqs, enable_prefix_caching=False, max_prefill_chunk_ms=None,
                          kv_cache_bytes=int(args.kv_cache_gb * 2**30) if args.kv_cache_gb else None)
    bench = Bench(args, LLM(args.checkpoint, config, device=args.device, dtype=args.dtype))
    cells = retrieval_cells(args, bench.layout)
    if args.plan:
        print_plan(bench, cells + (layer_cells(args, bench.layout, bench.n_layers) if args.layers_at else []))
        return
    t0 = time.perf_counter()
    for c in cells:
        bench.run(c)
    if args.layers_at:
        run_layers(bench)
    bench.save()
    print_tables(bench)
    print(f"\n{time.perf_counter() - t0:.0f}s" + (f"; wrote {bench.path}" if bench.path else ""))


if __name__ == "__main__":
    main()
