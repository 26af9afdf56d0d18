"""Intake: a prompt, its sampling parameters and options validated and sized into a `Request` (thread-safe, no
state of its own beyond the engine's constants). Every refusal is an InvalidRequest the server turns into a 400,
with what to change; a request that passes can be admitted some day (its blocks fit the budget)."""

from __future__ import annotations

import array
from dataclasses import replace

import torch

from lighthouse.engine.admission import Admission, blocks_needed, largest_max_tokens
from lighthouse.engine.cache.spec import CacheShape
from lighthouse.engine.detokenizer import IncrementalText
from lighthouse.engine.errors import InvalidRequest
from lighthouse.engine.options import RequestOptions
from lighthouse.engine.plan import min_sparse_len, plan_prefill
from lighthouse.engine.request import Request, Sequence
from lighthouse.engine.sampling import SamplingParams, choice_seed, make_generator
from lighthouse.engine.structured.grammar import Grammars


class Intake:
    def __init__(self, model, tokenizer, shape: CacheShape, usable_blocks: int, *, max_model_len: int,
                 max_num_seqs: int, defaults: tuple[str, str, str], dense_tail_tokens: int, prefill_default: str,
                 sparse_unavailable: str | None, eos_ids: set[int] = frozenset()):
        self.model, self.tokenizer, self.shape, self.usable = model, tokenizer, shape, usable_blocks
        self.admission = Admission(shape)
        self.vocab_size = model.config.vocab_size
        self.max_model_len, self.max_num_seqs = max_model_len, max_num_seqs
        self.defaults, self.dense_tail_tokens = defaults, dense_tail_tokens
        self.prefill_default, self.sparse_unavailable = prefill_default, sparse_unavailable
        self.grammars = Grammars(tokenizer, self.vocab_size, set(eos_ids))

    def make_request(self, request_id: str, prompt_ids: list[int], params: SamplingParams,
                     options: RequestOptions | None = None) -> Request:
        options = options or RequestOptions()
        if self.sparse_unavailable is not None:
            self._refuse_sparse(options)
        prefill, decode, kv_mode = self.defaults
        opts = options.resolved(prefill, decode, self.dense_tail_tokens, kv_mode)  # type: ignore[arg-type]
        prompt = self._check_prompt(prompt_ids)
        n_prompt, limit = len(prompt_ids), self.max_model_len
        default_max_tokens = params.max_tokens is None
        if default_max_tokens:
            params.max_tokens = limit - n_prompt
        params.validate(self.vocab_size)
        if n_prompt + params.max_tokens > limit:
            raise InvalidRequest(
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{n_prompt + params.max_tokens} tokens ({n_prompt} in the prompt, {params.max_tokens} for max_tokens). "
                f"Please reduce max_tokens to at most {limit - n_prompt} or shorten the prompt.",
                param="max_tokens", code="context_length_exceeded")
        if params.n > self.max_num_seqs:
            raise InvalidRequest(f"n={params.n} exceeds the server's max_num_seqs ({self.max_num_seqs})", param="n")
        plan = plan_prefill(self.model.config, n_prompt, prefill=opts.prefill, decode=opts.decode,
                            dense_tail_tokens=opts.dense_tail_tokens, kv_mode=opts.kv_mode)
        req = self._sized(request_id, list(prompt_ids), params, opts, plan, prompt)
        req.dense_note = self._dense_note(options, plan)
        if default_max_tokens and not self._fits_ever(req):  # no max_tokens given: as many as its layout fits
            params.max_tokens = largest_max_tokens(
                lambda m: self._fits_ever(self._sized(request_id, [], replace_max(params, m), opts, plan, prompt)),
                params.max_tokens)
            req = self._sized(request_id, list(prompt_ids), params, opts, plan, prompt)
            req.dense_note = self._dense_note(options, plan)
        blocks = blocks_needed(req, None, self.shape)
        if blocks > self.usable:
            raise InvalidRequest(
                f"The request needs {blocks} KV cache blocks (n={params.n} x {req.capacity} positions, kv_mode "
                f"{opts.kv_mode!r}), more than the server's {self.usable}. Reduce n or max_tokens"
                + (", or ask with kv_mode 'compact'." if plan.sparse_decode and not plan.compact else "."),
                param="n" if params.n > 1 else "max_tokens", code="kv_cache_exceeded")
        grammars = [None] * params.n if opts.structured is None else self.grammars.matchers(opts.structured, params.n)
        for i in range(params.n):
            seed = None if params.seed is None else choice_seed(params.seed, i)
            gen = None if params.greedy else make_generator(seed, self.shape.device)
            req.seqs.append(Sequence(i, params, IncrementalText(self.tokenizer, params.stop), gen, request=req,
                                     grammar=grammars[i]))
        return req

    def _check_prompt(self, prompt_ids: list[int]) -> torch.Tensor:
        n_prompt = len(prompt_ids)
        if n_prompt == 0:
            raise InvalidRequest("the prompt is empty; send at least one token", param="prompt")
        prompt = _id_tensor(prompt_ids)
        if prompt is None or int(prompt.min()) < 0 or int(prompt.max()) >= self.vocab_size:
            raise InvalidRequest(f"prompt token ids must be integers in [0, {self.vocab_size})", param="prompt")
        if n_prompt >= self.max_model_len:
            raise InvalidRequest(
                f"This model's maximum context length is {self.max_model_len} tokens, but the prompt has {n_prompt} "
                "tokens (at least one must remain for the completion). Please shorten the prompt.",
                param="prompt", code="context_length_exceeded")
        return prompt

    def _sized(self, request_id: str, prompt_ids: list[int], params: SamplingParams, opts: RequestOptions, plan,
               prompt: torch.Tensor) -> Request:
        spec = self.admission.sized_spec(plan, params.max_tokens)
        return Request(request_id, prompt_ids, params, opts, [], plan, spec.capacity, spec.ctx_entries, spec,
                       prompt_tensor=prompt)

    def _fits_ever(self, req: Request) -> bool:
        return blocks_needed(req, None, self.shape) <= self.usable

    def _dense_note(self, asked: RequestOptions, plan) -> str | None:
        """Why a sparse prefill (asked, or the configured default) ran densely; None when it ran sparsely or dense
        was asked: the checkpoint has no Lighthouse layers, or the prompt is below the op's minimum."""
        if plan.sparse or (asked.prefill or self.prefill_default) != "sparse":
            return None
        if self.sparse_unavailable is not None:
            return self.sparse_unavailable
        return (f"the prompt is below the sparse minimum ({min_sparse_len(self.model.config.lighthouse)} tokens before "
                "the dense tail): prefilled densely")

    def _refuse_sparse(self, options: RequestOptions) -> None:
        """An explicit ask for a sparse path on a checkpoint that has none: a clear 400, never a silent dense."""
        for param, value, sparse in (("prefill", options.prefill, "sparse"), ("decode", options.decode, "sparse"),
                                     ("kv_mode", options.kv_mode, "compact")):
            if value == sparse:
                raise InvalidRequest(f"{param} {value!r} was asked, but {self.sparse_unavailable}. Leave {param} "
                                     f"out or set it to {'full' if param == 'kv_mode' else 'dense'}.", param=param)


def replace_max(params: SamplingParams, max_tokens: int) -> SamplingParams:
    """A copy of params with another max_tokens (sizing probes leave the request's own untouched)."""
    return replace(params, max_tokens=max_tokens)


def _id_tensor(ids: list[int]) -> torch.Tensor | None:
    """(N,) int64 on the CPU (array-backed: a 512K-token prompt converts in milliseconds); None if an id is not
    an integer that fits int64."""
    try:
        return torch.frombuffer(array.array("q", ids), dtype=torch.long).clone()
    except (OverflowError, TypeError):
        return None
