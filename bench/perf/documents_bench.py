"""Documents benchmark for the H200: a 512K document's restore from the disk store (full and compact) against its
cold prefill, and what two concurrent questions on a new document prefill.

The 270M paper shape of serve_bench.py (random bf16 weights, paper_server.paper_config: full-attention layers
[0, 1, 28, 29], Lighthouse L3 p4 k2048), run by the engine in this process as the server runs it for documents (no
HTTP): a document is a prompt of random token ids uploaded with `pin_prompt` (dense_tail_tokens 0: the document is the
sparse head), questions are 64 more tokens prefilled densely after it.

- cold_512k_s: the document's prefill (full layout), from adding the request to its first token;
- restore_512k_full_s / restore_512k_compact_s: the pinned document written to a disk store (DiskStore.save, as
  `--document-store` does), its entry dropped, then read back (DiskStore.load: the file's SHA-256 checked, then its
  tensors read) and copied to the device (DocumentPins.restore), synchronized: the time a first question after a
  restart waits before its own tokens. Split into load_s (disk -> CPU, checksum included) and to_device_s. With
  --drop-caches (root) the OS page cache is dropped before each load, so the file comes from the disk and not from
  memory; without it a file just written is likely read from memory (the JSON says which). Either way the stored
  files are evicted from the page cache first (posix_fadvise DONTNEED: no root needed; the JSON's
  file_evicted_from_page_cache), so the load reads the disk;
- first_question_after_restore_ttft_s: a question's TTFT right after the restore (its own 64 tokens prefilled);
- concurrent_two_questions_prefilled_tokens: a new document + question 1 and the same document + question 2 added
  together: the prompt tokens the engine prefilled for both (PrefillInfo's sparse + dense), against
  document + q1 + q2 (one prefill of the document: in-flight sharing) and 2 x (document + question).

A 512K full document of this shape is ~64 GB of K/V (bf16): the store needs that much free disk (checked first: a
part that cannot fit is recorded under "errors"), and saving or loading it holds a CPU copy (~64 GB of host memory)
(the device side of a copy goes ~1 GiB of blocks at a time): the engines get a KV budget of 1.05x the session (66 GB:
an 80 GB card holds it beside a 512K prefill's ~6 GB of activations).
`--store DIR` puts it on the disk to measure (default: a folder under --out, removed after).

    python -m bench.perf.documents_bench --out DIR [--quick | --tiny | --tokens N] [--drop-caches] [--store DIR]
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import subprocess
import time
from pathlib import Path

import torch

from bench.perf.cuda_timing import sync
from bench.perf.paper_server import TAIL, paper_config
from bench.perf.paper_server import random_prompt as tokens
from bench.perf.results_file import ResultsFile

K = 1024
GB = 1e9
T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T0:7.1f}s] {msg}", flush=True)


def smollm2_config(max_len: int):
    """SmolLM2-135M-Instruct's shape (the model the server serves: 30 layers, 3 K/V heads of 64) with the 512K
    recipe's RoPE and Lighthouse layout (recipes/smollm2_512k.json): 23 KB of K/V per token, 12 GB at 512K, so a
    full 512K document fits a 64 GiB disk, where the paper shape's 64 GB does not."""
    from lighthouse.engine.memory import SMOLLM2
    from lighthouse.model.config import LighthouseConfig, ModelConfig

    return ModelConfig(**{**SMOLLM2, "max_position_embeddings": max_len, "rope_theta": 1e6},
                       lighthouse=LighthouseConfig(levels=3, pooling_factor=4, topk=1024, scorer="norm",
                                                   full_attn_layers=[0, 1, 28, 29], min_seq_len=0))


SHAPES = {"paper": "paper 270M shape (paper_server.paper_config), random bf16 weights",
          "smollm2": "SmolLM2-135M-Instruct's shape with the 512K recipe's RoPE and Lighthouse layout "
                     "(documents_bench.smollm2_config), random bf16 weights"}


def make_model(max_len: int, tiny: bool, shape: str = "paper"):
    from lighthouse.model import LlamaForCausalLM

    torch.manual_seed(0)
    if tiny:  # a CPU dry run of every code path: 4 layers (0 and 3 dense), L2 p4 k128, fp32
        from lighthouse.model.config import LighthouseConfig
        from lighthouse.model.presets import model_preset

        cfg = model_preset("tiny")
        cfg.num_hidden_layers, cfg.max_position_embeddings = 4, max_len
        cfg.lighthouse = LighthouseConfig(levels=2, pooling_factor=4, topk=128, full_attn_layers=[0, 3],
                                          min_seq_len=512)
        return LlamaForCausalLM(cfg).eval()
    cfg = smollm2_config(max_len) if shape == "smollm2" else paper_config(max_len)
    if not torch.cuda.is_available():  # a CPU dry run of the shape (--tokens a few thousand): float32
        return LlamaForCausalLM(cfg).eval()
    with torch.device("cuda"):
        return LlamaForCausalLM(cfg).to(torch.bfloat16).eval()


def session_bytes(model, n: int) -> int:
    """A full session's K/V: every layer, n positions (and two blocks to spare), in the model's dtype."""
    c, itemsize = model.config, next(model.parameters()).element_size()
    return c.num_hidden_layers * (n + 2 * 128) * 2 * c.num_key_value_heads * c.head_dim * itemsize


def budget(model, n: int, kv_mode: str, tiny: bool) -> dict:
    """A KV budget that holds the document and its questions and leaves device memory for a 512K prefill's
    activations: 1.05x a full session, 0.5x for a compact one of 64K tokens or more (a short compact session keeps
    its whole selection: not smaller than a full one)."""
    if tiny:
        return {}
    share = 0.5 if kv_mode == "compact" and n >= 65536 else 1.05
    return {"kv_cache_bytes": int(session_bytes(model, n) * share)}


def engine(model, tiny: bool, **config):
    from lighthouse.engine.config import EngineConfig
    from lighthouse.engine.engine import LLMEngine

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    base = dict(prefill="sparse", decode="dense", dense_tail_tokens=TAIL, max_num_seqs=8, cuda_graph_max_batch=8)
    if tiny:
        base["kv_cache_bytes"] = 256 << 20
    return LLMEngine(model, None, EngineConfig(**{**base, **config}))


def run_until_done(eng, rids: set[str]) -> dict[str, dict]:
    """Step until the requests finish: per request, its first-token time and its PrefillInfo."""
    got: dict[str, dict] = {r: {} for r in rids}
    t0 = time.perf_counter()
    while eng.has_unfinished():
        for o in eng.step():
            g = got.get(o.request_id)
            if g is None:
                continue
            if o.token_ids and "ttft_s" not in g:
                sync()
                g["ttft_s"] = time.perf_counter() - t0
            if o.prefill is not None:
                g["prefill"] = o.prefill
            if o.finished and o.error:
                raise RuntimeError(f"request {o.request_id} failed: {o.error}")
    return got


def upload(eng, doc: list[int], kv_mode: str) -> float:
    """The document prefilled and pinned (as POST /v1/documents does): seconds to its first token."""
    from lighthouse.engine.options import RequestOptions
    from lighthouse.engine.sampling import SamplingParams

    sync()
    eng.add_request(f"doc-{kv_mode}", doc, SamplingParams(max_tokens=1, temperature=0.0),
                    RequestOptions(kv_mode=kv_mode, dense_tail_tokens=0, pin_prompt=True))
    return run_until_done(eng, {f"doc-{kv_mode}"})[f"doc-{kv_mode}"]["ttft_s"]


def ask(eng, rid: str, prompt: list[int], kv_mode: str) -> dict:
    from lighthouse.engine.options import RequestOptions
    from lighthouse.engine.sampling import SamplingParams

    eng.add_request(rid, prompt, SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True),
                    RequestOptions(kv_mode=kv_mode, dense_tail_tokens=TAIL))
    return run_until_done(eng, {rid})[rid]


def drop_caches() -> bool:
    """Drop the OS page cache (root only): whether it was dropped."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def evict_from_page_cache(path: Path) -> bool:
    """The file's pages dropped from the OS page cache (flushed first), so the next read comes from the disk: no root
    needed for a file this process may open (posix_fadvise DONTNEED); whether it was done."""
    if not hasattr(os, "posix_fadvise"):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def store_and_restore(model, n: int, kv_mode: str, store_dir: Path, tiny: bool, drop: bool) -> dict:
    from lighthouse.engine.cache.disk_tier import DiskStore
    from lighthouse.engine.documents import DocumentPins

    eng = engine(model, tiny, kv_mode=kv_mode, **budget(model, n, kv_mode, tiny))
    pins = DocumentPins(eng)
    doc = tokens(n, 1)
    cold = upload(eng, doc, kv_mode)
    held = pins.held_bytes(doc, kv_mode)
    free = shutil.disk_usage(store_dir).free
    if held * 1.05 > free:
        raise RuntimeError(f"the store needs {held / GB:.1f} GB and {store_dir} has {free / GB:.1f} GB free: "
                           "pass --store on a larger disk")
    store = DiskStore(store_dir, f"bench-{kv_mode}")
    t0 = time.perf_counter()
    store.save("doc", pins.export(doc, kv_mode), {"tokens": n})
    save_s = time.perf_counter() - t0
    pins.unpin(doc, kv_mode)  # the entry leaves the device, as after a restart
    eng.prefix_cache.clear()
    dropped = drop and drop_caches()
    evicted = all([evict_from_page_cache(p) for p in store.root.iterdir() if p.is_file()])
    sync()
    t0 = time.perf_counter()
    loaded = store.load("doc")
    if loaded is None:
        raise RuntimeError("the stored document failed its checksum")
    t1 = time.perf_counter()
    restored = pins.restore(loaded[0])
    sync()
    t2 = time.perf_counter()
    if not restored:
        raise RuntimeError("no room to restore the document")
    first = ask(eng, "q-after-restore", doc + tokens(TAIL, 2), kv_mode)
    assert first["prefill"].cached_tokens == n, first["prefill"]  # restored, not prefilled
    store.delete("doc")
    return {"prompt_tokens": n, "kv_mode": kv_mode, "held_gb": round(held / GB, 3), "cold_prefill_s": round(cold, 3),
            "save_s": round(save_s, 3), "load_s": round(t1 - t0, 3), "to_device_s": round(t2 - t1, 3),
            "restore_s": round(t2 - t0, 3), "page_cache_dropped": dropped, "file_evicted_from_page_cache": evicted,
            "first_question_after_restore_ttft_s": round(first["ttft_s"], 3)}


def concurrent_questions(model, n: int, tiny: bool) -> dict:
    from lighthouse.engine.options import RequestOptions
    from lighthouse.engine.sampling import SamplingParams

    eng = engine(model, tiny, **budget(model, n, "full", tiny))
    doc = tokens(n, 3)
    q1, q2 = tokens(TAIL, 4), tokens(TAIL, 5)
    q2[0] = 32 + (q1[0] - 32 + 1) % 95  # the questions differ from their first token on
    opts = RequestOptions(dense_tail_tokens=TAIL)
    for rid, q in (("q1", q1), ("q2", q2)):
        eng.add_request(rid, doc + q, SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True), opts)
    t0 = time.perf_counter()
    got = run_until_done(eng, {"q1", "q2"})
    sync()
    prefilled = sum(g["prefill"].sparse_tokens + g["prefill"].dense_tokens for g in got.values())
    return {"document_tokens": n, "question_tokens": TAIL, "prefilled_tokens": prefilled,
            "one_prefill_tokens": n + 2 * TAIL, "two_prefills_tokens": 2 * (n + TAIL),
            "cached_tokens": {r: g["prefill"].cached_tokens for r, g in got.items()},
            "ttft_s": {r: round(g["ttft_s"], 3) for r, g in got.items()}, "wall_s": round(time.perf_counter() - t0, 3)}


def profiled(fn, path: Path):
    """fn() under cProfile; its 25 costliest calls by cumulative time written to path."""
    import cProfile
    import io
    import pstats

    prof = cProfile.Profile()
    try:
        return prof.runcall(fn)
    finally:
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats("cumulative").print_stats(25)
        path.write_text(text.getvalue())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", action="store_true", help="32K stands in for 512K (a smoke test on the GPU)")
    ap.add_argument("--tokens", type=int, default=None,
                    help="document tokens instead of 524,288 (e.g. 262144 where the disk cannot hold a 64 GB file); "
                         "the JSON's keys keep their 512k names, document_tokens says what ran")
    ap.add_argument("--tiny", action="store_true", help="a tiny model on the CPU, ~1.1K tokens: a dry run")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="paper",
                    help="the model's shape: the paper's 270M (64 GB of K/V for a full 512K document) or SmolLM2-135M's "
                         "(12 GB: fits the lent machines' 64 GiB disk)")
    ap.add_argument("--store", default=None, help="the disk store's folder (default: OUT/store, removed after)")
    ap.add_argument("--drop-caches", action="store_true", help="drop the page cache before each load (root)")
    ap.add_argument("--profile", action="store_true",
                    help="cProfile each part: the 25 costliest calls by cumulative time in profile_<part>.txt")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: cold,full,compact,concurrent")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    skip = set(filter(None, args.skip.split(",")))
    n = 1036 if args.tiny else args.tokens or (32 if args.quick else 512) * K
    store_dir = Path(args.store) if args.store else out / "store"
    store_dir.mkdir(parents=True, exist_ok=True)
    res: dict = {"bench": "documents_bench", "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                 "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
                 "torch": torch.__version__, "quick": args.quick, "tiny": args.tiny, "document_tokens": n,
                 "model": SHAPES[args.shape] if not args.tiny else "tiny (4 layers, fp32)", "store": str(store_dir), "errors": {}}
    try:
        res["store_device"] = subprocess.run(["df", "--output=source", str(store_dir)], capture_output=True,
                                             text=True).stdout.split()[-1]
    except (OSError, IndexError):
        pass
    results = ResultsFile(out / "documents_bench.json", res, log, T0)
    if args.profile:
        measure = results.measure
        results.measure = lambda key, fn: measure(key, lambda: profiled(fn, out / f"profile_{key}.txt"))
    model = make_model(n + 4096, args.tiny, args.shape)
    if "cold" not in skip:
        def cold():
            eng = engine(model, args.tiny, **budget(model, n, "full", args.tiny))
            upload(eng, tokens(n, 9), "full")  # warm-up: kernels, plans
            del eng  # (its KV budget freed before the next engine takes its own)
            eng = engine(model, args.tiny, **budget(model, n, "full", args.tiny))
            return {"ttft_s": round(upload(eng, tokens(n, 1), "full"), 3)}
        r = results.measure("cold_512k", cold)
        if r:
            res["cold_512k_s"] = r["ttft_s"]
    for kind in ("full", "compact"):
        if kind not in skip:
            r = results.measure(f"restore_512k_{kind}",
                                lambda kind=kind: store_and_restore(model, n, kind, store_dir, args.tiny,
                                                                    args.drop_caches))
            if r:
                res[f"restore_512k_{kind}_s"] = r["restore_s"]
    if "concurrent" not in skip:
        r = results.measure("concurrent_two_questions", lambda: concurrent_questions(model, n, args.tiny))
        if r:
            res["concurrent_two_questions_prefilled_tokens"] = r["prefilled_tokens"]
    if not args.store:
        shutil.rmtree(store_dir, ignore_errors=True)
    results.save()
    log(f"done: {out / 'documents_bench.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
