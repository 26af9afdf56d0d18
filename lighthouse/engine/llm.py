"""Offline generation for scripts: `LLM(checkpoint).generate(prompts, SamplingParams(...), RequestOptions(...))`,
and `greedy_generate(model, input_ids, n)` for tests and evals that hold a model in memory (no checkpoint, no
tokenizer): both run the serving engine, so there is one prefill and KV cache implementation."""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from lighthouse.engine.config import EngineConfig
from lighthouse.engine.engine import LLMEngine
from lighthouse.engine.options import PrefillMode, RequestOptions
from lighthouse.engine.sampling import SamplingParams
from lighthouse.engine.request import PrefillInfo, TokenLogprob


@dataclass
class Choice:
    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None


@dataclass
class Generation:
    prompt_token_ids: list[int]
    choices: list[Choice]
    prefill: PrefillInfo | None = None

    @property
    def text(self) -> str:
        return self.choices[0].text


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_engine(checkpoint: str | None = None, config: EngineConfig | None = None, *, device: str | None = None,
                dtype: str | None = None) -> LLMEngine:
    """Load a checkpoint directory (None: the bundled default) into an engine on `device`."""
    from lighthouse.checkpoint import default_checkpoint_dir, load_checkpoint

    dev = torch.device(device) if device else default_device()
    if dtype is None:
        torch_dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    else:
        torch_dtype = getattr(torch, dtype)
    path = Path(checkpoint or default_checkpoint_dir())
    model, tokenizer = load_checkpoint(path, device=dev, dtype=torch_dtype)
    return LLMEngine(model, tokenizer, config, stop_token_ids=_generation_stop_ids(path))


def _generation_stop_ids(path: Path) -> list[int]:
    """eos_token_id from generation_config.json (an int or a list; chat models list their end-of-turn id)."""
    f = path / "generation_config.json"
    if not f.exists():
        return []
    eos = json.loads(f.read_text()).get("eos_token_id")
    return [eos] if isinstance(eos, int) else [int(i) for i in eos or []]


class LLM:
    def __init__(self, checkpoint: str | None = None, config: EngineConfig | None = None, *, engine: LLMEngine | None = None,
                 device: str | None = None, dtype: str | None = None):
        self.engine = engine or load_engine(checkpoint, config, device=device, dtype=dtype)
        self._ids = itertools.count()

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    def generate(self, prompts: str | list[str] | list[list[int]], params: SamplingParams | None = None,
                 options: RequestOptions | None = None) -> list[Generation]:
        """Generate for each prompt (text, or token ids); all prompts are batched through the engine together.
        `options` (prefill/decode modes, dense tail, prefix caching) apply to every prompt; None: the engine's."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]  # type: ignore[list-item]
        params = params or SamplingParams()
        results: dict[str, Generation] = {}
        order = []
        for prompt in prompts:
            ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
            rid = f"offline-{next(self._ids)}"
            p = SamplingParams(**vars(params))
            self.engine.add_request(rid, ids, p, options)
            results[rid] = Generation(ids, [Choice(i) for i in range(p.n)])
            order.append(rid)
        while self.engine.has_unfinished():
            for out in self.engine.step():
                gen = results[out.request_id]
                c = gen.choices[out.index]
                c.text += out.text
                c.token_ids += out.token_ids
                c.logprobs += out.logprobs or []
                gen.prefill = gen.prefill or out.prefill
                if out.finished:
                    c.finish_reason = out.finish_reason
                    if out.error:
                        raise RuntimeError(out.error)
        return [results[r] for r in order]


@torch.no_grad()
def greedy_generate(model, input_ids: Tensor, max_new_tokens: int, *, prefill: PrefillMode = "dense",
                    dense_tail_tokens: int = 0, eos_token_id: int | None = None) -> Tensor:
    """Greedy continuation of each row of `input_ids`, through the serving engine on the in-memory `model`.

    input_ids: (B, N) int64; each row is one request, all B decoded together by one LLMEngine built for this
        call (no tokenizer, no prefix cache, eager decode, a KV budget of just these B sequences).
    prefill: "dense", or "sparse": the checkpoint's Lighthouse layers over the first N - dense_tail_tokens
        tokens (when that reaches the op's and the checkpoint's minimum; else dense), then the tail densely
        against the cache. Decode is dense. An invalid mode or tail raises InvalidRequest (a ValueError).
    eos_token_id: None generates exactly `max_new_tokens` per row (the checkpoint's own EOS does not stop it).
        Else a row stops after its first eos_token_id, the result is as long as the longest row (shorter than
        max_new_tokens only when every row stopped), and rows that stopped sooner are padded with eos_token_id.
    Returns (B, T) int64 on input_ids' device, T <= max_new_tokens. The model's train/eval mode is restored.
    """
    B, N = input_ids.shape
    if max_new_tokens < 1 or B == 0:
        return input_ids.new_empty((B, 0))
    options = RequestOptions(prefill=prefill, decode="dense", dense_tail_tokens=dense_tail_tokens, cache_prompt=False)
    stop_ids = [] if eos_token_id is None else [int(eos_token_id)]
    # eager: capturing CUDA graphs would cost more than the few decode steps of a one-off engine save
    config = EngineConfig(kv_cache_bytes=_kv_bytes_for(model, B, N + max_new_tokens), max_num_seqs=B,
                          enable_prefix_caching=False, enforce_eager=True)
    was_training = model.training
    try:
        engine = LLMEngine(model, None, config)
        for b, row in enumerate(input_ids.tolist()):
            params = SamplingParams(max_tokens=max_new_tokens, temperature=0.0, ignore_eos=True,
                                    stop_token_ids=list(stop_ids))
            engine.add_request(f"greedy-{b}", row, params, options)
        rows: list[list[int]] = [[] for _ in range(B)]
        while engine.has_unfinished():
            for out in engine.step():
                if out.error:
                    raise RuntimeError(out.error)
                rows[int(out.request_id.removeprefix("greedy-"))] += out.token_ids
    finally:
        model.train(was_training)
    T = max(len(r) for r in rows)
    padded = [r + [eos_token_id] * (T - len(r)) for r in rows]  # only rows that stopped at EOS are short
    return torch.tensor(padded, dtype=torch.long, device=input_ids.device)


def _kv_bytes_for(model, num_seqs: int, positions: int, block_size: int = EngineConfig.block_size) -> int:
    """A KV budget that holds `num_seqs` sequences of `positions` positions in blocks (+ the scratch block and
    one spare), so a one-off engine takes only the memory it needs."""
    c = model.config
    itemsize = next(model.parameters()).element_size()
    per_block = 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * itemsize * block_size
    return (num_seqs * math.ceil(positions / block_size) + 2) * per_block
