"""Structured-output measure of decode_bench.py: decode tokens/s of a batch of 32 json_schema requests against 32
unconstrained ones on the same engine (json_schema_b32_tokens_per_s_ratio; the issue's target is >= 0.9).

The cost of a grammar row is on the host (llguidance fills its bitmask, one bit per vocabulary token) plus a small
device step (the packed mask copied and applied), so it depends on the vocabulary's size, not on the model's
width. The engine here is decode_bench's paper-sized model (random weights; tiny: its small CPU model) with a
49,152-token vocabulary (SmolLM2's size) and a tokenizer of that size made up on the spot: the 256 byte tokens, the
byte tokenizer's specials and the rest random lowercase words (some with a leading space or quote), as a byte-level
BPE. Random weights sample any allowed token, so the schema bounds every value (ids, string lengths) and asks for
more items than the measure decodes: no row completes its grammar before the measure ends.

Both batches decode greedily with ignore_eos from the same prompts (32 x 8K tokens; quick 32 x 2K; tiny 32 x 256),
measured as decode_bench's batch measures are: tokens/s over the first n steps in which every request decoded.
After one warm-up run of each, three unconstrained and three json_schema runs alternate; the ratio is of their
medians. Fields: json_schema_b32_tokens_per_s_ratio, json_schema_b32_tokens_per_s and
unconstrained_b32_tokens_per_s (medians), *_runs (every run), structured_vocab.

    python -m bench.perf.structured_bench --out DIR [--quick | --tiny]   # alone: DIR/structured_bench.json
    python -m bench.perf.decode_bench --out DIR ...                      # with the other decode measures
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

from lighthouse.engine.options import RequestOptions, StructuredOutput

VOCAB = 49152
ROUNDS = 3  # unconstrained and json_schema runs, alternating; the medians are compared
CASES = {"full": (32, 8192, 128), "quick": (32, 2048, 32), "tiny": (32, 256, 16)}  # batch, prompt, decode steps
SCHEMA = {"type": "object", "additionalProperties": False, "required": ["id", "name", "tags"],
          "properties": {"id": {"type": "integer", "minimum": 0, "maximum": 999999},
                         "name": {"type": "string", "maxLength": 24},
                         "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "minItems": 4096}}}


def wide_tokenizer(vocab_size: int = VOCAB, seed: int = 0):
    """A byte-level BPE PreTrainedTokenizerFast of `vocab_size` tokens: bytes, the byte tokenizer's specials, then
    random words (their ids never come from encoding: there are no merges; decoding and grammar masks see them)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from lighthouse.tokenizer import _byte_to_unicode, byte_tokenizer_json

    spec = byte_tokenizer_json()
    b2u, vocab = _byte_to_unicode(), spec["model"]["vocab"]
    rng, words, first = np.random.default_rng(seed), set(), 256 + len(spec["added_tokens"])
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    while len(words) < vocab_size - first:
        word = "".join(rng.choice(letters, rng.integers(2, 9)))
        words.add(["", " ", '"', "_"][rng.integers(4)] + word)
    for i, w in enumerate(sorted(words)):
        vocab["".join(b2u[b] for b in w.encode())] = first + i
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)), eos_token="<|end_of_text|>",
                                   bos_token="<|begin_of_text|>", clean_up_tokenization_spaces=False)


def build_engine(mode: str, batch: int, prompt_tokens: int, steps: int):
    from bench.perf.decode_bench import CUDA, build_model
    from lighthouse.engine.config import EngineConfig
    from lighthouse.engine.engine import LLMEngine
    from lighthouse.model import LlamaForCausalLM

    model, cfg = build_model(mode, prompt_tokens + steps + 2 * batch + 72)
    cfg = replace(cfg, vocab_size=VOCAB)
    torch.manual_seed(0)
    with torch.device("cuda" if CUDA else "cpu"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    kv = None if CUDA else 1 << 30
    engine_cfg = EngineConfig(prefill="dense", decode="dense", max_num_seqs=batch, enable_prefix_caching=False,
                              max_prefill_chunk_ms=None, kv_cache_bytes=kv)
    return LLMEngine(model, wide_tokenizer(), engine_cfg)


def measure(engine, batch: int, prompt_tokens: int, steps: int) -> dict:
    from bench.perf.decode_bench import batch_rates, drive, prompt

    prompts = [prompt(prompt_tokens, 500 + i) for i in range(batch)]
    schema = RequestOptions(cache_prompt=False, structured=StructuredOutput("json_schema", schema=SCHEMA))
    free = RequestOptions(cache_prompt=False)

    def rate(opts: RequestOptions) -> float:
        # as decode_bench's batch measures: enough tokens that the first request still runs when the last starts
        run = drive(engine, prompts, steps + 2 * batch + 8, opts, stop_at=lambda r: len(r.full_steps()) >= steps)
        return batch_rates(run, steps)[0]

    rate(schema), rate(free)  # warm up: the tokenizer's trie, every batch size's first steps, graphs
    free_runs, schema_runs = [], []
    for _ in range(ROUNDS):  # alternating, so that a change in the machine's load hits both alike
        free_runs.append(rate(free))
        schema_runs.append(rate(schema))
    base, constrained = statistics.median(free_runs), statistics.median(schema_runs)
    return {"json_schema_b32_tokens_per_s_ratio": constrained / base,
            "json_schema_b32_tokens_per_s": constrained, "unconstrained_b32_tokens_per_s": base,
            "json_schema_b32_tokens_per_s_runs": schema_runs, "unconstrained_b32_tokens_per_s_runs": free_runs,
            "structured_vocab": VOCAB, "structured_batch": batch, "structured_prompt_tokens": prompt_tokens}


def run_all(bench, mode: str) -> None:
    """The measure, through decode_bench's `Bench.measure` (its own try/except, JSON rewritten after it)."""
    batch, n, steps = CASES[mode]
    holder: dict = {}
    bench.measure("structured_engine", lambda: holder.update(engine=build_engine(mode, batch, n, steps)) or {})
    if "engine" in holder:
        bench.measure("json_schema_b32", lambda: measure(holder["engine"], batch, n, steps))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="directory for structured_bench.json")
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="32 x 2K prompts (a GPU smoke test)")
    size.add_argument("--tiny", action="store_true", help="decode_bench's tiny model, 32 x 256 prompts (CPU)")
    args = ap.parse_args()
    mode = "tiny" if args.tiny else "quick" if args.quick else "full"
    batch, n, steps = CASES[mode]
    res = {"bench": "structured_bench", "mode": mode, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
           "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "torch": torch.__version__,
           "llguidance": version("llguidance"), "decode_steps": steps, "schema": SCHEMA}
    res.update(measure(build_engine(mode, batch, n, steps), batch, n, steps))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "structured_bench.json").write_text(json.dumps(res, indent=2))
    print(json.dumps({k: v for k, v in res.items() if k != "schema"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
