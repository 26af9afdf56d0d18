"""Long-document retrieval training sequences over real text (a corpus that lighthouse.train.text_sources wrote).

    python -m lighthouse.train.longdoc --corpus .corpus --tokenizer ~/.cache/lighthouse/models/smollm2-135m-instruct

A sample is exactly `seq_len` tokens of one of two kinds:

- a language-modelling window (an `lm_fraction` share): consecutive tokens of the corpus, documents joined by a
  blank line, no question;
- a question about a document, in the tokenizer's chat template, as the SDK's `documents.ask` sends one:

      [system: SDK_SYSTEM, half the time] user: {haystack with needles}\\n\\nQuestion: {question}  assistant: {answer}

  The haystack is a window of real text (documents of any source joined when one is too short) with needle
  sentences inserted at sentence boundaries (after a token ending in '.', '!', '?' or a newline), at depths drawn
  uniformly, never two at one boundary. The needles, question and answer come from lighthouse.train.longdoc_tasks
  (`fact`, `facts`, `multivalue`, `multikey`, `chain`).

Labels are every token (no padding); `answer_mask` marks the tokens of each asked value (the trainer weighs them by
--answer-loss-weight; evaluation counts each value as one answer). Every sample is a pure function of
(seed, split, index). The eval split reads only the last `eval_fraction` of every document's tokens (train the
rest) and draws from another RNG stream.

The corpus is tokenized once per tokenizer into CORPUS/.tokens/<hash>/ (tokens.npy, uint16 when the vocabulary
allows, plus docs.json), memory-mapped afterwards: a 512K-token sample takes tens of milliseconds.
"""

from __future__ import annotations

import argparse
import bisect
import hashlib
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from lighthouse.train.samples import Sample, TokenEncoder
from lighthouse.train.longdoc_tasks import LONGDOC_TASKS, Probe, make_probe
from lighthouse.train.synthetic_chat import SDK_SYSTEM

__all__ = ["LONGDOC_TASKS", "LongDocStream", "TokenizedCorpus", "build_longdoc_streams", "make_probe"]

EVAL_FRACTION = 0.05
MIN_SEQ_LEN = 2048  # the chat layout and up to a dozen needles need a few hundred tokens; leave the rest for text
_FORMAT = "longdoc-tokens-1"  # part of the cache key: change it when the cached arrays change meaning
_SALT = {"train": 0x10D0C, "eval": 0xE7A1D}  # other streams than data.py's
_PLACEHOLDER = "@@LONGDOC-DOCUMENT@@"
# token flags (TokenizedCorpus.kinds): its text ends in '.', '!' or '?' / ends in a newline / starts with whitespace /
# is whitespace only
_PUNCT, _NEWLINE, _SPACED, _BLANK = 1, 2, 4, 8


# ---------------------------------------------------------------------------------------------- tokenized corpus
class TokenizedCorpus:
    """A prepared corpus folder (ROOT/<source>/*.txt) as one token array, tokenized once per tokenizer.

    tokens: (T,) uint16/uint32 memmap, every document back to back; docs: [{"source", "name", "start", "end"}];
    kinds: (vocab,) uint8 flags of each token's text (_PUNCT, _NEWLINE, _SPACED, _BLANK); sep: ids joining two
    documents (a blank line).
    """

    def __init__(self, root: str | os.PathLike, tokenizer, eval_fraction: float = EVAL_FRACTION, log=None):
        self.root, self.tokenizer, self.eval_fraction = Path(root), tokenizer, eval_fraction
        files = sorted(p for p in self.root.glob("*/*.txt") if not p.parent.name.startswith("."))
        if not files:
            raise FileNotFoundError(f"no <source>/*.txt under {self.root}: prepare it with "
                                    f"`python -m lighthouse.train.text_sources --out {self.root}`")
        backend = tokenizer.backend_tokenizer
        key = hashlib.sha256(f"{_FORMAT}\0{backend.to_str()}".encode())
        for p in files:
            key.update(f"\0{p.relative_to(self.root)}\0".encode() + hashlib.sha256(p.read_bytes()).digest())
        self.cache = self.root / ".tokens" / key.hexdigest()[:16]
        if not (self.cache / "docs.json").exists():
            t0 = time.perf_counter()
            self._tokenize(files)
            if log:
                log(f"tokenized {self.root} into {self.cache} in {time.perf_counter() - t0:.1f}s")
        self.tokens = np.load(self.cache / "tokens.npy", mmap_mode="r")
        self.kinds = np.load(self.cache / "kinds.npy")
        self.docs = json.loads((self.cache / "docs.json").read_text())
        self.sep = np.array(backend.encode("\n\n", add_special_tokens=False).ids, dtype=self.tokens.dtype)

    def _tokenize(self, files: list[Path]) -> None:
        backend = self.tokenizer.backend_tokenizer
        vocab = backend.get_vocab_size(with_added_tokens=True)
        dtype = np.uint16 if vocab <= 1 << 16 else np.uint32
        encs = backend.encode_batch([p.read_text(encoding="utf-8") for p in files], add_special_tokens=False)
        docs, parts, at = [], [], 0
        for p, enc in zip(files, encs):
            docs.append({"source": p.parent.name, "name": p.name, "start": at, "end": at + len(enc.ids)})
            parts.append(np.asarray(enc.ids, dtype=dtype))
            at += len(enc.ids)
        texts = backend.decode_batch([[i] for i in range(vocab)], skip_special_tokens=True)
        kinds = np.array([(_NEWLINE if t.endswith("\n") else _PUNCT if t.endswith((".", "!", "?")) else 0)
                          | (_SPACED if t[:1].isspace() else 0) | (_BLANK if t and t.isspace() else 0)
                          for t in texts], dtype=np.uint8)
        tmp = self.cache.with_name(f"{self.cache.name}.tmp-{os.getpid()}")
        tmp.mkdir(parents=True, exist_ok=True)
        np.save(tmp / "tokens.npy", np.concatenate(parts) if parts else np.zeros(0, dtype))
        np.save(tmp / "kinds.npy", kinds)
        (tmp / "docs.json").write_text(json.dumps(docs, indent=0))
        try:
            tmp.rename(self.cache)  # atomic: ranks tokenizing at once leave one complete folder
        except OSError:
            if not (self.cache / "docs.json").exists():
                raise
            for f in tmp.iterdir():
                f.unlink()
            tmp.rmdir()

    def segments(self, split: str) -> list[tuple[int, int]]:
        """[start, end) token ranges of `split`: each document's last eval_fraction for eval, the rest for train."""
        out = []
        for d in self.docs:
            cut = d["end"] - int(round((d["end"] - d["start"]) * self.eval_fraction))
            lo, hi = (d["start"], cut) if split == "train" else (cut, d["end"])
            if hi > lo:
                out.append((lo, hi))
        return out

    def token_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for d in self.docs:
            out[d["source"]] = out.get(d["source"], 0) + d["end"] - d["start"]
        return out


# ---------------------------------------------------------------------------------------------- the stream
class LongDocStream:
    """Indexable stream of long-document samples for one split (the interface of data.SequenceStream)."""

    def __init__(self, corpus: TokenizedCorpus, seq_len: int, *, seed: int, split: str = "train",
                 tasks=LONGDOC_TASKS, lm_fraction: float = 0.1, system_fraction: float = 0.5):
        if seq_len < MIN_SEQ_LEN:
            raise ValueError(f"long-document samples need seq_len >= {MIN_SEQ_LEN} (got {seq_len})")
        self.corpus, self.seq_len, self.seed, self.split = corpus, seq_len, seed, split
        self.tasks, self.lm_fraction, self.system_fraction = tuple(tasks), lm_fraction, system_fraction
        self.encoder = TokenEncoder(corpus.tokenizer)
        self.segs = corpus.segments(split)
        if not self.segs:
            raise ValueError(f"the corpus {corpus.root} has no {split} text")
        self.cum = np.cumsum([b - a for a, b in self.segs]).tolist()  # segments drawn by length
        self.curriculum_samples = 0  # the trainer sets it; sequences here have no in-sequence curriculum

    def rng(self, index: int) -> random.Random:
        return random.Random((self.seed * 1_000_003 + _SALT[self.split]) * 1_000_000_007 + index)

    def __getitem__(self, index: int) -> Sample:
        rng = self.rng(index)
        if rng.random() < self.lm_fraction:
            ids = torch.from_numpy(self._window(rng, self.seq_len).astype(np.int64))
            return Sample(ids, ids.clone(), torch.zeros(self.seq_len, dtype=torch.bool))
        probe = make_probe(rng.choice(self.tasks), rng)
        system = SDK_SYSTEM if rng.random() < self.system_fraction else None
        ids, spans = self._question(rng, probe, system)
        mask = torch.zeros(self.seq_len, dtype=torch.bool)
        for a, b in spans:
            mask[a:b] = True
        ids_t = torch.from_numpy(ids.astype(np.int64))
        return Sample(ids_t, ids_t.clone(), mask)

    def batch(self, indices: list[int]) -> dict[str, torch.Tensor]:
        samples = [self[i] for i in indices]
        return {"input_ids": torch.stack([s.input_ids for s in samples]),
                "labels": torch.stack([s.labels for s in samples]),
                "answer_mask": torch.stack([s.answer_mask for s in samples])}

    def _window(self, rng: random.Random, n: int) -> np.ndarray:
        """n consecutive text tokens: from a sentence start in a random segment (drawn by length), continued with
        further segments (from their starts, a blank line between) while more are needed."""
        tokens, kinds = self.corpus.tokens, self.corpus.kinds
        first = bisect.bisect_right(self.cum, rng.randrange(self.cum[-1]))
        lo, hi = self.segs[first]
        at = rng.randrange(lo, hi)
        head = kinds[tokens[at : min(hi, at + 4096)]]
        ends = np.flatnonzero(head & (_PUNCT | _NEWLINE))
        if len(ends):  # start after a sentence's end, blank tokens skipped
            skip = np.flatnonzero((head[ends[0] + 1 :] & _BLANK) == 0)
            at += int(ends[0]) + 1 + (int(skip[0]) if len(skip) else 0)
        parts, have = [tokens[at : min(hi, at + n)]], min(hi, at + n) - at
        while have < n:
            parts.append(self.corpus.sep)
            lo, hi = self.segs[bisect.bisect_right(self.cum, rng.randrange(self.cum[-1]))]
            parts.append(tokens[lo : min(hi, lo + n - have - len(self.corpus.sep))])
            have += len(self.corpus.sep) + len(parts[-1])
        return np.concatenate(parts)[:n]

    def _chat(self, system: str | None, probe: Probe) -> tuple[list[int], list[int], list[tuple[int, int]]]:
        """(ids before the document, ids after it, the asked values' token spans within the latter)."""
        tok = self.encoder.tokenizer
        messages = [{"role": "system", "content": system}] if system else []
        messages += [{"role": "user", "content": f"{_PLACEHOLDER}\n\nQuestion: {probe.question}"},
                     {"role": "assistant", "content": probe.answer}]
        text = tok.apply_chat_template(messages, tokenize=False)
        cut = text.index(_PLACEHOLDER)
        head, tail = text[:cut], text[cut + len(_PLACEHOLDER):]
        at = tail.rindex(probe.answer)
        head_ids, _ = self.encoder.encode(head)
        tail_ids, spans = self.encoder.encode(tail, [(at + a, at + b) for a, b in probe.spans])
        bos = tok.bos_token
        if self.encoder.bos and not (bos and text.startswith(bos)):
            head_ids = self.encoder.bos + head_ids
        eos = tok.eos_token
        if self.encoder.eos and not (eos and text.rstrip().endswith(eos)):
            tail_ids = tail_ids + self.encoder.eos
        return head_ids, tail_ids, spans

    def _question(self, rng: random.Random, probe: Probe, system: str | None) -> tuple[np.ndarray, list[tuple[int, int]]]:
        head, tail, spans = self._chat(system, probe)
        # each needle tokenized after a sentence's '.' (" " + it, before a token starting with whitespace) and as a
        # line of its own (after a newline)
        variants = [(self.encoder.encode(" " + s)[0], self.encoder.encode(s + "\n")[0]) for s in probe.needles]
        short = sum(min(len(a), len(b)) for a, b in variants)
        slack = sum(max(len(a), len(b)) for a, b in variants) - short
        width = self.seq_len - len(head) - len(tail) - short  # the longest the haystack can be
        if width - slack < 64:
            raise ValueError(f"seq_len {self.seq_len} leaves no room for a {probe.task} document")
        hay = self._window(rng, width)
        reach = width - slack  # needles go at or before this, so that trimming the end never cuts one out
        before, after = self.corpus.kinds[hay[: reach - 1]], self.corpus.kinds[hay[1:reach]]
        ok = ((before & _NEWLINE) > 0) | (((before & _PUNCT) > 0) & ((after & _SPACED) > 0))
        at = np.flatnonzero(ok) + 1
        cands = np.concatenate([[0], at]) if len(at) >= len(variants) else np.arange(reach + 1)
        depths = sorted(rng.random() for _ in variants)
        points, last = [], -1
        for i, u in enumerate(depths):
            j = int(np.searchsorted(cands, u * reach))
            j = max(j, last + 1)
            j = min(j, len(cands) - (len(variants) - i))  # leave a boundary for every needle after this one
            points.append(int(cands[j]))
            last = j
        parts, prev = [np.asarray(head, dtype=np.int64)], 0
        for p, (spaced, bare) in zip(points, variants):
            parts.append(hay[prev:p])
            after_newline = p == 0 or bool(self.corpus.kinds[hay[p - 1]] & _NEWLINE)
            parts.append(np.asarray(bare if after_newline else spaced, dtype=np.int64))
            prev = p
        rest = self.seq_len - len(tail) - sum(len(x) for x in parts)  # <= width - prev: the haystack has it
        parts.append(hay[prev : prev + rest])
        body = np.concatenate([x.astype(np.int64) for x in parts])
        start = len(body)
        ids = np.concatenate([body, np.asarray(tail, dtype=np.int64)])
        assert len(ids) == self.seq_len, (len(ids), self.seq_len)
        return ids, [(start + a, start + b) for a, b in spans]


def build_longdoc_streams(cfg, tokenizer=None, log=None) -> tuple[LongDocStream, LongDocStream]:
    """(train, eval) long-document streams from a TrainConfig whose `longdoc` names a prepared corpus; the byte
    tokenizer when the model has no tokenizer of its own."""
    if tokenizer is None:
        from lighthouse.tokenizer import byte_tokenizer

        tokenizer = byte_tokenizer()
    corpus = TokenizedCorpus(cfg.longdoc, tokenizer, log=log)
    kw = dict(seed=cfg.seed, tasks=cfg.longdoc_tasks, lm_fraction=cfg.longdoc_lm_fraction)
    return LongDocStream(corpus, cfg.seq_len, split="train", **kw), LongDocStream(corpus, cfg.seq_len, split="eval", **kw)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lighthouse.train.longdoc",
                                description="Tokenize a prepared corpus for a tokenizer and time sample building.")
    p.add_argument("--corpus", required=True, help="folder written by python -m lighthouse.train.text_sources")
    p.add_argument("--tokenizer", required=True, help="checkpoint folder or tokenizer.json")
    p.add_argument("--seq-len", type=int, nargs="*", default=[65536, 524288], help="lengths to time one sample at")
    p.add_argument("--show", type=int, default=0, help="print the question turn of this many samples")
    args = p.parse_args(argv)
    from lighthouse.tokenizer import load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    t0 = time.perf_counter()
    corpus = TokenizedCorpus(args.corpus, tok, log=print)
    print(f"corpus ready in {time.perf_counter() - t0:.1f}s: {corpus.cache}")
    for source, n in corpus.token_counts().items():
        print(f"  {source}: {n:,} tokens")
    print(f"  eval split: {sum(b - a for a, b in corpus.segments('eval')):,} tokens")
    for n in args.seq_len:
        stream = LongDocStream(corpus, n, seed=0, lm_fraction=0.0)
        t0 = time.perf_counter()
        s = stream[0]
        print(f"seq_len {n:,}: one sample in {time.perf_counter() - t0:.3f}s ({int(s.answer_mask.sum())} answer tokens)")
    stream = LongDocStream(corpus, min(args.seq_len or [4096]), seed=0, lm_fraction=0.0)
    for i in range(args.show):
        s = stream[i]
        tail = s.input_ids[-120:].tolist()
        print(f"--- sample {i}: ...{tok.decode(tail)!r}\n    answer tokens: {tok.decode(s.input_ids[s.answer_mask].tolist())!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
