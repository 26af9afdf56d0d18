"""The prefill regression of the redesign (#27), below HTTP: one tree's engine (run from that tree's root with it on
PYTHONPATH: this tree or .ab_old), the 270M paper shape with random bf16 weights (or --tiny on the CPU), prefills
timed at the engine (add_request .. the first token), then one 512K prefill under cProfile (the Python side) and one
under torch.profiler (GPU busy time, synchronisations, top kernels). Same API in both trees.

    python prefill_engine_ab.py OUT_DIR [--tiny] [--repeats 3] [--profile] [--only layout|all_sparse]
Writes OUT_DIR/prefill_engine_ab.json and OUT_DIR/profile_{layout,all_sparse}_{cprofile,torch}.txt."""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import pstats
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from bench.perf.paper_server import TAIL, paper_config
from lighthouse.checkpoint import save_checkpoint
from lighthouse.engine.config import EngineConfig
from lighthouse.engine.llm import load_engine
from lighthouse.engine.options import RequestOptions
from lighthouse.engine.sampling import SamplingParams
from lighthouse.model import LlamaForCausalLM

K = 1024


def checkpoint(out: Path, max_len: int, all_sparse: bool, tiny: bool) -> None:
    cfg = paper_config(max_len, layers=6 if tiny else 30, topk=128 if tiny else 2048)
    if tiny:
        cfg = replace(cfg, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                      head_dim=16)
        cfg.lighthouse = replace(cfg.lighthouse, full_attn_layers=[0, 5])
    if all_sparse:
        cfg.lighthouse = replace(cfg.lighthouse, full_attn_layers=[])
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(cfg)
    save_checkpoint(model, None, out, dtype=torch.bfloat16)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--only", default="")
    ap.add_argument("--chunk-tokens", type=int, default=32768, help="the engine's prefill_chunk_tokens")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available()
    big = 16 * K if args.tiny else 512 * K
    sizes = [2 * K, 4 * K, big] if args.tiny else [32 * K, 128 * K, big]
    res: dict = {"device": torch.cuda.get_device_name(0) if cuda else "cpu", "torch": torch.__version__,
                 "tree": str(Path.cwd()), "tiny": args.tiny}
    tmp = Path(tempfile.mkdtemp(prefix="prefill-ab-"))
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for name in ("layout", "all_sparse"):
        if args.only and name != args.only:
            continue
        ckpt = tmp / name
        checkpoint(ckpt, big + TAIL + 4096, name == "all_sparse", args.tiny)
        cfg = EngineConfig(dense_tail_tokens=TAIL, max_num_seqs=16, prefill_chunk_tokens=args.chunk_tokens,
                           kv_cache_bytes=int((62 if cuda else 1) * 2**30))
        eng = load_engine(str(ckpt), cfg, device="cuda" if cuda else "cpu", dtype="bfloat16")
        sp = SamplingParams(max_tokens=1, temperature=0, ignore_eos=True)
        count = [0]

        def one(n: int) -> float:
            ids = [32 + (i * 7919) % 90 for i in range(n)]
            count[0] += 1
            sync()
            t = time.perf_counter()
            eng.add_request(f"r{count[0]}", ids, sp, RequestOptions(cache_prompt=False))
            steps = 0
            while eng.has_unfinished():
                eng.step()
                steps += 1
            sync()
            return time.perf_counter() - t

        todo = sizes if name == "layout" else [big]
        for n in todo:  # warm-up: kernels, plans, Triton compiles
            one(n)
        r = res[name] = {}
        for n in todo:
            runs = [one(n) for _ in range(args.repeats if n < big or name == "all_sparse" else args.repeats)]
            r[str(n)] = {"median_s": statistics.median(runs), "runs": [round(x, 4) for x in runs]}
            print(f"{name} {n}: {r[str(n)]}", flush=True)
        if args.profile:
            pr = cProfile.Profile()
            pr.enable()
            wall = one(big)
            pr.disable()
            s = io.StringIO()
            pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(40)
            (out / f"profile_{name}_cprofile.txt").write_text(f"wall {wall:.4f} s under cProfile\n" + s.getvalue())
            from torch.profiler import ProfilerActivity, profile
            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
            with profile(activities=acts) as prof:
                wall = one(big)
            ka = prof.key_averages()
            gpu = sum(e.self_device_time_total for e in ka) / 1e6
            syncs = {e.key: e.count for e in ka if any(w in e.key for w in (
                "Synchronize", "cudaMemcpy", "cudaMalloc", "cudaFree", "item", "_local_scalar_dense"))}
            r["profile"] = {"wall_s": wall, "gpu_busy_s": gpu, "sync_like_counts": syncs,
                            "launches": sum(e.count for e in ka if e.key == "cudaLaunchKernel"),
                            "cpu_ops": sum(e.count for e in ka)}
            (out / f"profile_{name}_torch.txt").write_text(
                f"wall {wall:.4f} s, GPU busy {gpu:.4f} s\n"
                + ka.table(sort_by="self_cuda_time_total" if cuda else "self_cpu_time_total", row_limit=30,
                           max_name_column_width=70)
                + "\n" + ka.table(sort_by="cpu_time_total", row_limit=30, max_name_column_width=70))
            print(f"{name} profile: {r['profile']}", flush=True)
        eng = None
        gc.collect()
        torch.cuda.empty_cache() if cuda else None
        (out / "prefill_engine_ab.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
