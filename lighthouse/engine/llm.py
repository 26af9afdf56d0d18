"""Offline generation for scripts: `LLM(checkpoint).generate(prompts, SamplingParams(...))`."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lighthouse.engine.config import EngineConfig
from lighthouse.engine.engine import LLMEngine
from lighthouse.engine.sampling import SamplingParams
from lighthouse.engine.sequence import PrefillInfo, TokenLogprob


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

    def generate(self, prompts: str | list[str] | list[list[int]], params: SamplingParams | None = None, *,
                 prefill: str | None = None, decode: str | None = None, dense_tail_tokens: int | None = None,
                 cache_prompt: bool | None = None) -> list[Generation]:
        """Generate for each prompt (text, or token ids); all prompts are batched through the engine together."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]  # type: ignore[list-item]
        params = params or SamplingParams()
        results: dict[str, Generation] = {}
        order = []
        for prompt in prompts:
            ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
            rid = f"offline-{next(self._ids)}"
            p = SamplingParams(**vars(params))
            self.engine.add_request(rid, ids, p, prefill=prefill, decode=decode, dense_tail_tokens=dense_tail_tokens,
                                    cache_prompt=cache_prompt)
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
