"""One-off probe (2026-12-02, issue #12): where a 512K prefill's time goes before the prefill work, and how fast
query-chunked dense causal attention can be on the H200 (cuDNN with LSE merge vs SDPA lower-right bias vs one call).
Writes OUT/probe.json and OUT/profile_*.txt.

    OUT=DIR python -m bench.experiments.prefill_probe      # from the repository root"""
import json, os, sys, time, traceback
from dataclasses import replace
from pathlib import Path
import torch
import torch.nn.functional as F
from bench.perf.paper_server import TAIL, paper_config
from lighthouse.engine.config import EngineConfig
from lighthouse.engine.engine import LLMEngine
from lighthouse.engine.options import RequestOptions
from lighthouse.engine.sampling import SamplingParams

OUT = Path(os.environ.get("OUT", "/tmp/out")); OUT.mkdir(parents=True, exist_ok=True)
res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "errors": {}}
def save(): (OUT / "probe.json").write_text(json.dumps(res, indent=1))
T0 = time.time()
def log(m): print(f"[{time.time()-T0:6.1f}] {m}", flush=True)

def timeit(fn, n=3):
    fn(); torch.cuda.synchronize()
    ts = []
    for _ in range(n):
        a = time.perf_counter(); fn(); torch.cuda.synchronize(); ts.append(time.perf_counter() - a)
    return min(ts)

# ---- 1. dense attention options at 512K ----
def attn_options():
    N, H, D = 524288, 8, 128
    q = torch.randn(1, H, N, D, device="cuda", dtype=torch.bfloat16)
    k, v = torch.randn_like(q), torch.randn_like(q)
    from torch.nn.attention import sdpa_kernel, SDPBackend
    r = {}
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        r["full_causal_cudnn_s"] = timeit(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))
    ref = F.scaled_dot_product_attention(q[:, :, -4096:], k, v, attn_mask=torch.ones(4096, N, dtype=torch.bool, device="cuda").tril(N - 4096))
    # cudnn private op with lse
    def cudnn_lse(qc, kc, vc, causal):
        o = torch.ops.aten._scaled_dot_product_cudnn_attention(qc, kc, vc, None, True, 0.0, causal, False)
        return o[0], o[1]
    o, lse = cudnn_lse(q[:, :, :1024], k[:, :, :2048], v[:, :, :2048], False)
    r["cudnn_lse_shape"] = list(lse.shape); r["cudnn_lse_dtype"] = str(lse.dtype); r["cudnn_out_stride"] = list(o.stride())
    def flash_lse(qc, kc, vc, causal):
        o = torch.ops.aten._scaled_dot_product_flash_attention(qc, kc, vc, 0.0, causal, False)
        return o[0], o[1]
    o2, lse2 = flash_lse(q[:, :, :1024], k[:, :, :2048], v[:, :, :2048], False)
    r["flash_lse_shape"] = list(lse2.shape)
    r["lse_cudnn_vs_flash_maxdiff"] = float((lse.reshape(lse2.shape) - lse2).abs().max())
    def merged(qc, c0, c1, fn):
        o1, l1 = fn(qc, k[:, :, :c0], v[:, :, :c0], False)
        o2, l2 = fn(qc, k[:, :, c0:c1], v[:, :, c0:c1], True)
        l1 = l1.reshape(1, H, -1, 1); l2 = l2.reshape(1, H, -1, 1)
        m = torch.maximum(l1, l2)
        w1, w2 = torch.exp(l1 - m), torch.exp(l2 - m)
        return ((o1.float() * w1 + o2.float() * w2) / (w1 + w2)).to(qc.dtype)
    got = merged(q[:, :, -4096:], N - 4096, N, cudnn_lse)
    r["merge_cudnn_maxerr_vs_masked"] = float((got.float() - ref.float()).abs().max())
    for name, fn in (("cudnn", cudnn_lse), ("flash", flash_lse)):
        for chunks in (8, 16):
            import math
            bounds = [0] + [int(N * math.sqrt(i / chunks)) // 128 * 128 for i in range(1, chunks)] + [N]
            def run(fn=fn, bounds=bounds):
                outs = []
                for c0, c1 in zip(bounds[:-1], bounds[1:]):
                    if c0 == 0:
                        outs.append(F.scaled_dot_product_attention(q[:, :, :c1], k[:, :, :c1], v[:, :, :c1], is_causal=True))
                    else:
                        outs.append(merged(q[:, :, c0:c1], c0, c1, fn))
                return outs
            with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
                r[f"chunked_{name}_{chunks}_s"] = timeit(run, 2)
            # per-chunk time (the largest chunk)
    from torch.nn.attention.bias import causal_lower_right
    qc = q[:, :, -65536:]
    r["lower_right_64k_of_512k_s"] = timeit(lambda: F.scaled_dot_product_attention(qc, k, v, attn_mask=causal_lower_right(65536, N)), 2)
    r["cudnn_merge_64k_of_512k_s"] = timeit(lambda: merged(qc, N - 65536, N, cudnn_lse), 2)
    return r

def engine_ttft(layout, n, repeats=2, profile=None):
    from lighthouse.model import LlamaForCausalLM
    cfg = paper_config(n + TAIL + 64)
    if layout == "all_sparse":
        cfg.lighthouse = replace(cfg.lighthouse, full_attn_layers=[])
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg)
    model = model.to(torch.bfloat16).eval()
    eng = LLMEngine(model, None, EngineConfig(prefill="sparse", decode="dense", dense_tail_tokens=TAIL, max_num_seqs=8,
                                              enable_prefix_caching=False, kv_cache_bytes=int(72e9)))
    ids = [32 + (i * 7919) % 90 for i in range(n + TAIL)]
    sp = SamplingParams(max_tokens=1, temperature=0, ignore_eos=True)
    def one(tag):
        eng.add_request(tag, ids, sp, RequestOptions("sparse", "dense", TAIL, cache_prompt=False))
        a = time.perf_counter()
        while eng.has_unfinished():
            eng.step()
        return time.perf_counter() - a
    one("warm")
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    ts = [one(f"r{i}") for i in range(repeats)]
    peak = (torch.cuda.max_memory_allocated() - base) / 1e9
    out = {"ttft_s": min(ts), "all": ts, "peak_extra_gb": peak}
    if profile:
        from torch.profiler import profile as P, ProfilerActivity
        with P(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            one("prof")
            torch.cuda.synchronize()
        (OUT / f"profile_{profile}.txt").write_text(prof.key_averages().table(sort_by="cuda_time_total", row_limit=40))
    eng = model = None; torch.cuda.empty_cache()
    return out

ONLY = os.environ.get("ONLY", "").split(",")
for key, fn in [("attn", attn_options),
                ("all_sparse_512k", lambda: engine_ttft("all_sparse", 524288, 1, "all_sparse_512k")),
                ("layout_512k", lambda: engine_ttft("layout", 524288, 1, "layout_512k")),
                ("layout_128k", lambda: engine_ttft("layout", 131072, 3)),
                ("layout_32k", lambda: engine_ttft("layout", 32768, 3, "layout_32k"))]:
    if ONLY != [""] and key not in ONLY:
        continue
    log(key)
    try:
        res[key] = fn()
    except Exception:
        res["errors"][key] = traceback.format_exc()[-2000:]
    log(json.dumps(res.get(key), default=str)[:500])
    save()
