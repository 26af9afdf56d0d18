"""#31 item 3: why the float8 paged decode is far from its floor. One layer of the 270M paper shape (8 KV heads of
128, block 16), batch 1 x 512K and batch 32 x 16K slots, the Triton paged decode in bf16 and in float8 under kernel
variants (slots per tile, float16 dots, pipeline stages, warps), timed with CUDA events; bytes read / time.

    python fp8_decode_variants.py OUT_JSON"""

import json
import sys

import torch

import lighthouse.ops.triton.paged_decode as pd

H = H_KV = 8
D, BS = 128, 16


def case(B: int, n: int, dtype):
    blocks = B * n // BS
    g = torch.Generator(device="cuda").manual_seed(0)
    k = torch.randn(blocks, BS, H_KV, D, device="cuda", generator=g).to(torch.bfloat16)
    v = torch.randn(blocks, BS, H_KV, D, device="cuda", generator=g).to(torch.bfloat16)
    if dtype != torch.bfloat16:
        k, v = k.to(dtype), v.to(dtype)
    q = torch.randn(B, H, D, device="cuda", generator=g).to(torch.bfloat16)
    table = torch.arange(blocks, device="cuda", dtype=torch.int32).view(B, n // BS)
    lens = torch.full((B,), n, device="cuda", dtype=torch.int32)
    per = torch.zeros(B, device="cuda", dtype=torch.int32)
    return q, k, v, table, lens, per


def timed(args, iters=20) -> tuple[float, torch.Tensor]:
    out = pd.paged_decode(*args)
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(iters):
        pd.paged_decode(*args)
    b.record()
    torch.cuda.synchronize()
    return a.elapsed_time(b) / iters, out


def main() -> None:
    res = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "shape": f"H {H}, H_kv {H_KV}, D {D}, "
           f"block {BS}, one layer", "cases": []}
    defaults = pd.FP8_TILE, pd.FP8_F16_DOT, pd.NUM_STAGES, pd.NUM_WARPS, pd.TILE, pd.WAVES, pd.FP8_WAVES
    for B, n in ((1, 512 * 1024), (32, 16 * 1024)):
        base = case(B, n, torch.bfloat16)
        nbytes = 2 * base[1].numel() * 2
        for waves in (1, 2, 4):  # bf16 as it runs, at 1, 2 and 4 waves of split-K programs
            pd.WAVES, tile = waves, pd.TILE
            try:
                ms, out = timed(base)
            except Exception as exc:  # noqa: BLE001
                print(f"bf16 waves {waves}: {type(exc).__name__}: {exc}", flush=True)
                continue
            if waves == 1:
                ref = out
            err = (out.float() - ref.float()).abs().max().item()
            res["cases"].append({"B": B, "n": n, "dtype": "bf16", "ms": ms, "GBps": nbytes / ms / 1e6,
                                 "tile": tile, "waves": waves, "max_abs_err_vs_default": err})
            print(res["cases"][-1], flush=True)
        pd.WAVES = defaults[5]  # (fp8 below sets FP8_WAVES too)
        f8 = case(B, n, torch.float8_e4m3fn)
        deq = (f8[0], f8[1].to(torch.bfloat16), f8[2].to(torch.bfloat16), *f8[3:])
        _, ref8 = timed(deq, 1)
        del deq
        # the default at 1, 2 and 4 waves of split-K programs (more programs in flight per SM: memory parallelism),
        # then the default's neighbours at 2 waves (the single-query path and the other variants were measured:
        # bench/results/2026-12-07_h100_session5_checks/, 2026-12-07_h200_gpu_checks/)
        variants = [(128, True, (3, 4), w) for w in (1, 2, 4)] + [
            (tile, True, sw, 2) for tile, sw in ((128, (4, 4)), (256, (3, 4)), (64, (3, 4)))]
        for tile, f16, (stages, warps), waves in variants:
            pd.FP8_TILE, pd.FP8_F16_DOT, pd.NUM_STAGES, pd.NUM_WARPS = tile, f16, stages, warps
            pd.WAVES = pd.FP8_WAVES = waves
            try:
                ms, out = timed(f8)
            except Exception as exc:  # noqa: BLE001 - e.g. out of shared memory
                print(f"tile {tile} f16 {f16} stages {stages} warps {warps}: {type(exc).__name__}: "
                      f"{str(exc)[:200]}", flush=True)
                continue
            err = (out.float() - ref8.float()).abs().max().item()
            res["cases"].append({"B": B, "n": n, "dtype": "fp8", "ms": ms, "GBps": nbytes / 2 / ms / 1e6, "tile": tile,
                                 "f16_dot": f16, "waves": waves, "stages": stages, "warps": warps, "max_abs_err_vs_bf16_of_fp8": err})
            print(res["cases"][-1], flush=True)
        pd.FP8_TILE, pd.FP8_F16_DOT, pd.NUM_STAGES, pd.NUM_WARPS, pd.TILE, pd.WAVES, pd.FP8_WAVES = defaults
        del f8, base
        torch.cuda.empty_cache()
        json.dump(res, open(sys.argv[1], "w"), indent=1)


if __name__ == "__main__":
    main()
