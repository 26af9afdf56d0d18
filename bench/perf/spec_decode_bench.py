"""Prompt-lookup speculative decoding measures of decode_bench.py, on an extractive task with the bundled checkpoint.

The task: pass-key documents as the trainer and `lighthouse.train.passkey` build them (BOS + a synthetic document of
repeated filler with a 5-digit key hidden at half depth, cut just before the key's digits at the end: "... What
is the pass key? The pass key is"), so the answer copies the key from the document, and the text that follows
(the model goes on, ignore_eos) copies the document's filler. Random weights would copy nothing, so these measures
load the bundled checkpoint (trained on such tasks, 524,288 positions) in its own engine.

For each case the same engine runs the prompts greedily without speculation, then with `num_tokens` drafts per
step; decode tokens/s is (tokens after the first) / (time from each request's first to its last token), for the
batch: all requests' such tokens / the time from the first first token to the last token. Fields:
spec_speedup_128k_b1, spec_speedup_512k_b1, spec_speedup_8k_b32 (ratio of tokens/s with / without),
spec_ms_per_token_* and base_ms_per_token_*, spec_outputs_identical_* (greedy tokens equal), and
spec_acceptance_rate (accepted / proposed drafts over all cases).
"""

from __future__ import annotations

import time

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


def bundled_engine(max_num_seqs: int):
    from lighthouse.engine.config import EngineConfig
    from lighthouse.engine.llm import load_engine

    cuda = torch.cuda.is_available()
    cfg = EngineConfig(max_num_seqs=max_num_seqs, max_prefill_chunk_ms=None, enable_prefix_caching=False,
                       kv_cache_bytes=None if cuda else 1 << 30)
    return load_engine(None, cfg, device="cuda" if cuda else "cpu", dtype="bfloat16" if cuda else "float32")


def _drive(engine, prompts: list[list[int]], max_tokens: int, k: int) -> tuple[list[list[int]], float, int]:
    """Greedy generation of every prompt together: (tokens per request, decode seconds, decode tokens)."""
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    opts = RequestOptions(speculative=Speculation("prompt_lookup", k))
    rids = [f"spec-{k}-{i}-{time.monotonic_ns()}" for i in range(len(prompts))]
    toks: dict[str, list[int]] = {r: [] for r in rids}
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    for rid, ids in zip(rids, prompts):
        engine.add_request(rid, ids, params, opts)
    while engine.has_unfinished():
        outs = engine.step()
        now = time.perf_counter()
        for o in outs:
            if o.error:
                raise RuntimeError(o.error)
            if o.token_ids:
                toks[o.request_id] += o.token_ids
                first.setdefault(o.request_id, now)
                last[o.request_id] = now
    # every token after each request's first, over the time from the first first token to the last token
    decoded = sum(len(t) for t in toks.values()) - len(rids)
    return [toks[r] for r in rids], max(last.values()) - min(first.values()), decoded


def measure(engine, tag: str, batch: int, n_tokens: int, new_tokens: int) -> dict:
    prompts = extractive_prompts(batch, n_tokens)
    _drive(engine, [p[: min(len(p), 600)] for p in prompts], 16, NUM_TOKENS)  # warm both paths (verify graphs)
    base, t_base, n_base = _drive(engine, prompts, new_tokens, 0)
    sp = engine.speculator
    before = (sp.proposed, sp.accepted)
    spec, t_spec, n_spec = _drive(engine, prompts, new_tokens, NUM_TOKENS)
    proposed, accepted = sp.proposed - before[0], sp.accepted - before[1]
    base_tps, spec_tps = n_base / t_base, n_spec / t_spec
    return {f"spec_speedup_{tag}": spec_tps / base_tps, f"base_tokens_per_s_{tag}": base_tps,
            f"spec_tokens_per_s_{tag}": spec_tps, f"base_ms_per_token_{tag}": 1000 * batch / base_tps,
            f"spec_ms_per_token_{tag}": 1000 * batch / spec_tps, f"spec_outputs_identical_{tag}": base == spec,
            f"spec_drafts_{tag}": proposed, f"spec_accepted_{tag}": accepted,
            f"spec_acceptance_rate_{tag}": accepted / max(1, proposed), f"spec_prompt_tokens_{tag}": n_tokens,
            f"spec_batch_{tag}": batch}


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
    drafts = sum(bench.res.get(f"spec_drafts_{t}", 0) for t in cases)
    accepted = sum(bench.res.get(f"spec_accepted_{t}", 0) for t in cases)
    bench.res["spec_acceptance_rate"] = accepted / drafts if drafts else None
    bench.save()
