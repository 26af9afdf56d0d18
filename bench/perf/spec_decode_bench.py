"""Prompt-lookup speculative decoding measures of decode_bench.py, on an extractive task with the bundled checkpoint.

The task: pass-key documents as the trainer and `lighthouse.train.passkey` build them (BOS + a synthetic document of
repeated filler with a 5-digit key hidden at half depth, cut just before the key's digits at the end: "... What
is the pass key? The pass key is"), so the answer copies the key from the document, and the text that follows
(the model goes on, ignore_eos) copies the document's filler. Random weights would copy nothing, so these measures
load the bundled checkpoint (trained on such tasks, 524,288 positions) in its own engine.

For each case the same engine runs the prompts greedily without speculation, then with `num_tokens` drafts per
step, each twice, the second timed (the first captures the verify step's CUDA graph of every (batch, queries)
bucket the run reaches: rows finish at different steps under speculation, so the batch shrinks through buckets).
Decode tokens/s counts only decoding, from the step at which every request of the batch has its first token (all
prefills done): over the steps in which every request still decodes (the batch's steady state, as decode_bench
counts batch rates; a server refills a finished row, and under speculation rows finish at different steps, so
that the last steps run ever fewer rows at nearly the same cost a step) for spec_speedup_*, and to the last token
for spec_speedup_to_last_token_* (the two are the same window at batch 1). A prompt is the case's length
less its new tokens (a 512K case fills the model's 524,288 positions). Fields:
spec_speedup_128k_b1, spec_speedup_512k_b1, spec_speedup_8k_b32 (ratio of tokens/s with / without),
spec_ms_per_token_* and base_ms_per_token_*, spec_outputs_identical_* (greedy tokens equal), and
spec_acceptance_rate (accepted / proposed drafts over all cases); where the engine overlaps its plain decode steps
(engine/overlap.py: the base above), base_no_overlap_ms_per_token_* and spec_speedup_vs_no_overlap_* give the
plain steps without it, on the same engine (overlap.enabled off for that run). SPEC_EXTRA_K=8,16 (environment) also measures
each case with that many drafts a step (fields suffixed _k8, _k16; the acceptance rate above stays k = 4's).
Unless SPEC_PROFILE=0, each case's decode steps run once more without and with speculation under torch.profiler
(profile_decode.txt; JSON `profile` spec_<case>_k0 / _k4 and spec_profile_{wall,kernel}_ms_per_step_*): how much
of a verify step is the GPU's and how much the host's.
"""

from __future__ import annotations

import os
import time
from types import SimpleNamespace

import torch

from lighthouse.engine.options import RequestOptions, Speculation
from lighthouse.engine.sampling import SamplingParams

NUM_TOKENS = 4  # drafts per step
CASES = {  # tag -> (batch, prompt tokens, new tokens) per mode
    "full": {"128k_b1": (1, 131072, 64), "512k_b1": (1, 524288, 64), "8k_b32": (32, 8192, 64)},
    "quick": {"128k_b1": (1, 16384, 32), "512k_b1": (1, 32768, 32), "8k_b32": (32, 2048, 32)},
    "tiny": {"128k_b1": (1, 1024, 32), "512k_b1": (1, 2048, 32), "8k_b32": (4, 512, 32)},
}


def extractive_prompts(batch: int, n_tokens: int) -> list[list[int]]:
    from lighthouse.train.passkey import passkey_prompts

    out = passkey_prompts(n_tokens, [0.5], batch, seed=31)
    return [ids.tolist() for _, ids, _ in out]


def bundled_engine(max_num_seqs: int, dtype: str | None = None):
    from lighthouse.engine.config import EngineConfig
    from lighthouse.engine.llm import load_engine

    cuda = torch.cuda.is_available()
    cfg = EngineConfig(max_num_seqs=max_num_seqs, max_prefill_chunk_ms=None, enable_prefix_caching=False,
                       kv_cache_bytes=None if cuda else 1 << 30)
    return load_engine(None, cfg, device="cuda" if cuda else "cpu", dtype=dtype or ("bfloat16" if cuda else "float32"))


def _add(engine, prompts: list[list[int]], max_tokens: int, k: int) -> list[str]:
    """The prompts as greedy requests with k drafts a step (0: none): their ids."""
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    opts = RequestOptions(speculative=Speculation("prompt_lookup", k))
    rids = [f"spec-{k}-{i}-{time.monotonic_ns()}" for i in range(len(prompts))]
    for rid, ids in zip(rids, prompts):
        engine.add_request(rid, ids, params, opts)
    return rids


def _drive(engine, prompts: list[list[int]], max_tokens: int, k: int) -> tuple[list[list[int]], dict]:
    """Greedy generation of every prompt together: (tokens per request, {"to_last": (seconds, tokens), "full":
    (seconds, tokens)}), both from the step at which every request has its first token: to the last token, and over
    the steps in which every request of the batch still decoded (the batch's steady state, as decode_bench's batch
    rates count it; the same window at batch 1)."""
    rids = _add(engine, prompts, max_tokens, k)
    toks: dict[str, list[int]] = {r: [] for r in rids}
    start = prev = None  # (time, tokens so far) once every request has its first token; the last step's end
    full_s, full_n, full_on = 0.0, 0, True
    while engine.has_unfinished():
        outs = engine.step()
        now = time.perf_counter()
        for o in outs:
            if o.error:
                raise RuntimeError(o.error)
            toks[o.request_id] += o.token_ids
        if start is not None and full_on:
            decoded = {o.request_id for o in outs if o.token_ids}
            full_on = len(decoded) == len(rids) or not outs  # (no outputs: a step launched, read at the next call)
            if full_on:
                full_s, full_n = full_s + now - prev, full_n + sum(len(o.token_ids) for o in outs)
        prev = now
        if start is None and all(toks.values()):
            start = (now, sum(len(t) for t in toks.values()))
    total = sum(len(t) for t in toks.values())
    return [toks[r] for r in rids], {"to_last": (now - start[0], total - start[1]), "full": (full_s, full_n)}


def profile_steps(engine, prompts: list[list[int]], max_tokens: int, k: int) -> tuple[SimpleNamespace, float]:
    """The decode steps of one run (after every prefill) under torch.profiler: (what decode_bench.write_profile
    reads, wall ms per step). Kernel time per step against wall time per step splits a step into GPU and host."""
    rids, seen = _add(engine, prompts, max_tokens, k), set()
    while len(seen) < len(rids) and engine.has_unfinished():
        seen.update(o.request_id for o in engine.step() if o.token_ids)
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA]
                                                     if torch.cuda.is_available() else [])
    prof, steps = torch.profiler.profile(activities=acts), 0
    prof.start()
    t = time.perf_counter()
    while engine.has_unfinished():
        engine.step()
        steps += 1
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    wall = time.perf_counter() - t
    prof.stop()
    return SimpleNamespace(prof=prof, prof_steps=steps), 1e3 * wall / max(1, steps)


def measure(engine, tag: str, batch: int, n_tokens: int, new_tokens: int, k: int = NUM_TOKENS) -> dict:
    prompts = extractive_prompts(batch, n_tokens - new_tokens)
    _drive(engine, prompts, new_tokens, 0)  # untimed: every shape of the run compiled and captured
    base, t_base = _drive(engine, prompts, new_tokens, 0)
    no_overlap = None
    if getattr(engine, "overlap", None) is not None and engine.overlap.enabled:  # the plain steps as before it too
        engine.overlap.enabled = False
        try:
            _, t_plain = _drive(engine, prompts, new_tokens, 0)
        finally:
            engine.overlap.enabled = True
        no_overlap = t_plain["full"][1] / t_plain["full"][0]
    _drive(engine, prompts, new_tokens, k)
    sp = engine.speculator
    before = (sp.proposed, sp.accepted)
    spec, t_spec = _drive(engine, prompts, new_tokens, k)
    proposed, accepted = sp.proposed - before[0], sp.accepted - before[1]
    same = [a == b for a, b in zip(base, spec)]
    agree = [next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a)) for a, b in zip(base, spec)]
    rate = {w: (t_base[w][1] / t_base[w][0], t_spec[w][1] / t_spec[w][0]) for w in ("full", "to_last")}
    base_tps, spec_tps = rate["full"]
    return {f"spec_speedup_{tag}": spec_tps / base_tps, f"base_tokens_per_s_{tag}": base_tps,
            f"spec_tokens_per_s_{tag}": spec_tps, f"base_ms_per_token_{tag}": 1000 * batch / base_tps,
            f"spec_ms_per_token_{tag}": 1000 * batch / spec_tps,
            f"spec_speedup_to_last_token_{tag}": rate["to_last"][1] / rate["to_last"][0],
            f"spec_full_batch_steps_tokens_{tag}": t_spec["full"][1],
            f"spec_outputs_identical_{tag}": all(same),
            f"spec_rows_identical_{tag}": sum(same), f"spec_tokens_before_first_difference_{tag}": agree,
            f"spec_drafts_{tag}": proposed, f"spec_accepted_{tag}": accepted,
            f"spec_acceptance_rate_{tag}": accepted / max(1, proposed), f"spec_prompt_tokens_{tag}": n_tokens,
            f"spec_batch_{tag}": batch,
            **({f"base_no_overlap_ms_per_token_{tag}": 1000 * batch / no_overlap,
                f"spec_speedup_vs_no_overlap_{tag}": spec_tps / no_overlap} if no_overlap else {})}


def run_all(bench, mode: str) -> None:
    """The measures, through decode_bench's `Bench.measure` (each its own try/except, JSON rewritten after each)."""
    cases = CASES[mode]
    holder: dict = {}

    def build() -> dict:
        holder["engine"] = bundled_engine(max(b for b, _, _ in cases.values()))
        bench.res["spec_model"] = "bundled checkpoint (lighthouse/assets/default-checkpoint)"
        bench.res["spec_num_tokens"] = NUM_TOKENS
        return {}

    bench.measure("spec_engine", build)
    if "engine" not in holder:
        return
    for tag, (b, n, new) in cases.items():
        bench.measure(f"spec_{tag}", lambda tag=tag, b=b, n=n, new=new: measure(holder["engine"], tag, b, n, new))
    if os.environ.get("SPEC_PROFILE", "1") != "0":  # where a verify step's time goes: kernels or host
        from bench.perf.decode_bench import write_profile  # noqa: PLC0415

        for tag, (b, n, new) in cases.items():
            def prof(tag=tag, b=b, n=n, new=new) -> dict:
                prompts, res = extractive_prompts(b, n - new), {}
                for k in (0, NUM_TOKENS):
                    run, wall_ms = profile_steps(holder["engine"], prompts, new, k)
                    counts = write_profile(bench.prof_path, f"speculation {tag}, k = {k}", run)
                    bench.res["profile"][f"spec_{tag}_k{k}"] = {**counts, "wall_ms_per_step": wall_ms}
                    res[f"spec_profile_wall_ms_per_step_{tag}_k{k}"] = wall_ms
                    res[f"spec_profile_kernel_ms_per_step_{tag}_k{k}"] = counts["kernel_ms_per_step"]
                return res
            bench.measure(f"spec_profile_{tag}", prof)
    for k in (int(x) for x in os.environ.get("SPEC_EXTRA_K", "").split(",") if x):  # more drafts a step: the
        for tag in cases:  # verify step reads the cache once for every query, so its cost grows little with k
            b, n, new = cases[tag]
            bench.measure(f"spec_{tag}_k{k}", lambda tag=tag, b=b, n=n, new=new, k=k: {
                f"{key}_k{k}": v for key, v in measure(holder["engine"], tag, b, n, new, k).items()
                if key.startswith(("spec_outputs_identical", "spec_speedup", "spec_ms_per_token",
                                   "spec_acceptance_rate"))})
    differ = [t for t in cases if bench.res.get(f"spec_outputs_identical_{t}") is False]
    if differ and torch.cuda.is_available():  # numerics or logic? the same comparison in float32, and in bf16 with
        from lighthouse.ops.triton import paged_decode as pd  # noqa: PLC0415 - split-K chunks fixed (FIXED_CHUNK)

        for label, dtype, chunk in (("fp32", "float32", None), ("fixed_chunk", None, 2048)):
            holder.pop("engine", None)
            torch.cuda.empty_cache()
            pd.FIXED_CHUNK = chunk  # before the engine captures its graphs
            bench.measure(f"spec_engine_{label}", lambda dtype=dtype: holder.update(engine=bundled_engine(
                max(b for b, _, _ in cases.values()), dtype)) or {})
            for tag in differ:
                b, n, new = cases[tag]
                bench.measure(f"spec_{tag}_{label}", lambda tag=tag, b=b, n=n, new=new, label=label: {
                    f"{k}_{label}": v for k, v in measure(holder["engine"], tag, b, n, new).items()
                    if k.startswith(("spec_outputs_identical", "spec_rows_identical", "spec_speedup",
                                     "base_ms_per_token", "spec_ms_per_token"))})
            pd.FIXED_CHUNK = None
    drafts = sum(bench.res.get(f"spec_drafts_{t}", 0) for t in cases)
    accepted = sum(bench.res.get(f"spec_accepted_{t}", 0) for t in cases)
    bench.res["spec_acceptance_rate"] = accepted / drafts if drafts else None
    bench.save()
