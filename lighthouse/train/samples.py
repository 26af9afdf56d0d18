"""What a training stream yields: a `Sample` of token ids, labels and answer mask, and `TokenEncoder`, the bridge
from an HF tokenizer to the streams (lighthouse.train.data's packed sequences, lighthouse.train.longdoc's long
documents)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lighthouse.ops.cross_entropy import IGNORE_INDEX as IGNORE_INDEX  # re-exported for the streams


@dataclass
class Sample:
    input_ids: torch.Tensor  # (seq_len,) int64
    labels: torch.Tensor  # (seq_len,) int64, IGNORE_INDEX on padding
    answer_mask: torch.Tensor  # (seq_len,) bool: answer tokens of synthetic questions


class TokenEncoder:
    """Token ids from an HF tokenizer (a PreTrainedTokenizerFast), for checkpoints that are not byte-level."""

    MAX_BYTES_PER_TOKEN = 16  # a text document is tokenized from a window of at most this many bytes per token wanted

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        self.eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        pad = tokenizer.pad_token_id
        self.pad = pad if pad is not None else (self.eos[0] if self.eos else 0)  # label -100 there: any id will do

    def encode(self, text: str, spans: list[tuple[int, int]] = ()) -> tuple[list[int], list[tuple[int, int]]]:
        """(ids without specials added, the token span of each character span: the tokens overlapping it)."""
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=bool(spans))
        ids, out = list(enc["input_ids"]), []
        for a, b in spans:
            hit = [i for i, (s, e) in enumerate(enc["offset_mapping"]) if s < b and e > a]
            if hit:
                out.append((hit[0], hit[-1] + 1))
        return ids, out

    def chat(self, doc, system: str | None) -> tuple[list[int], list[tuple[int, int]]]:
        """The synthetic document asked as chat turns (as the SDK's documents.ask sends them) through the
        tokenizer's chat template, with EOS after; the answer's token span."""
        question, lead, answer = doc.chat_qa
        messages = [{"role": "system", "content": system}] if system else []
        messages += [{"role": "user", "content": f"{doc.text[: doc.body_end]}\n\nQuestion: {question}"},
                     {"role": "assistant", "content": f"{lead}{answer}."}]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False)
        at = text.rfind(f"{lead}{answer}.")
        spans = [(at + len(lead), at + len(lead) + len(answer))] if at >= 0 else []
        ids, token_spans = self.encode(text, spans)
        bos_text = self.tokenizer.bos_token
        head = self.bos if self.bos and not (bos_text and text.startswith(bos_text)) else []
        return head + ids + self.eos, [(a + len(head), b + len(head)) for a, b in token_spans]
