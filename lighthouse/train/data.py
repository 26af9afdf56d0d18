"""Training sequences: text from files/folders/JSONL (or Python's own stdlib), synthetic tasks, packing.

Every sequence is a pure function of (seed, split, index): sample i of the training stream is always the
same, whatever the number of ranks or where a run was resumed. A step of global batch G takes samples
[step*G, (step+1)*G) and rank r of W takes its contiguous 1/W of them; this is what makes resume exact and
1-process vs torchrun runs comparable.

A sequence is exactly `seq_len` tokens of the byte tokenizer: documents are wrapped as BOS + bytes + EOS and
packed back to back (the last one cropped); a too-short remainder is padding with label -100.

With a checkpoint's own HF tokenizer (`lighthouse train --init-from`, `TokenEncoder`), the same documents are
tokenized by it instead: wrapped in its BOS/EOS (where it has them), answer spans mapped from characters to the
tokens that overlap them, chat documents written with its chat template. A synthetic document of n characters
is at most about n tokens, so the packing rules (in tokens) still hold; sequences get more, shorter documents.
"""

from __future__ import annotations

import json
import math
import os
import random
import sysconfig
from pathlib import Path

import torch

from lighthouse.tokenizer import BOS_ID, EOS_ID, PAD_ID
from lighthouse.train.samples import IGNORE_INDEX, Sample, TokenEncoder
from lighthouse.train.synthetic import FILLERS, MIN_CURRICULUM_DOC_CHARS, MIN_DOC_CHARS, TASKS, synthetic_doc
from lighthouse.train.synthetic_chat import CHAT_RESERVE, SDK_SYSTEM, chat_ids

TEXT_SUFFIXES = {".txt", ".md", ".rst", ".py", ".tex", ".html", ".htm", ".csv", ".json", ".xml", ".c", ".h", ".toml", ".cfg", ".ini", ".yaml", ".yml"}
_SPLIT_SALT = {"train": 0, "eval": 7_919_113}
EVAL_EVERY_NTH_DOC = 50  # text documents held out for the eval split


class TextCorpus:
    """Documents from files, folders (recursive, text suffixes), *.jsonl ({"text": ...} per line) or "stdlib"."""

    def __init__(self, specs: list[str]):
        self.docs: list[tuple[str, str]] = []  # ("file", path) or ("text", content)
        for spec in specs:
            self._add(spec)
        if specs and not self.docs:
            raise ValueError(f"no text documents found in {specs}")

    def _add(self, spec: str) -> None:
        if spec == "stdlib":
            root = Path(sysconfig.get_paths()["stdlib"])
            files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts and "test" not in p.parts)
            self.docs += [("file", str(p)) for p in files]
            return
        p = Path(spec)
        if not p.exists():
            raise FileNotFoundError(f"training data {spec!r} does not exist (a file, folder, *.jsonl or 'stdlib')")
        if p.is_dir():
            self.docs += [("file", str(f)) for f in sorted(p.rglob("*")) if f.is_file() and f.suffix.lower() in TEXT_SUFFIXES]
        elif p.suffix == ".jsonl":
            self.docs += [("text", t) for t in _read_jsonl(p)]
        else:
            self.docs.append(("file", str(p)))

    def split(self, split: str) -> list[int]:
        n = len(self.docs)
        if n < 2:
            return list(range(n))
        held = [i for i in range(n) if i % EVAL_EVERY_NTH_DOC == EVAL_EVERY_NTH_DOC - 1] or [n - 1]
        return held if split == "eval" else [i for i in range(n) if i not in set(held)]

    def read(self, i: int) -> bytes:
        kind, val = self.docs[i]
        if kind == "text":
            return val.encode("utf-8")
        return Path(val).read_bytes()


def _read_jsonl(path: Path) -> list[str]:
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise ValueError(f"{path}:{lineno} is not valid JSON: {e}") from None
            if isinstance(row, str):
                out.append(row)
                continue
            text = row.get("text", row.get("content"))
            if not isinstance(text, str):
                text = next((v for v in row.values() if isinstance(v, str)), None)
            if text is None:
                raise ValueError(f"{path}:{lineno} has no string field (expected {{\"text\": ...}})")
            out.append(text)
    return out


class SequenceStream:
    """Indexable stream of packed sequences for one split (byte tokens, or `tokenizer`'s)."""

    def __init__(self, seq_len: int, *, seed: int, split: str = "train", corpus: TextCorpus | None = None,
                 synthetic_fraction: float = 1.0, tasks=TASKS, fillers=FILLERS, full_doc_fraction: float = 0.5,
                 chat_fraction: float = 0.0,
                 curriculum_start_len: int = 0, curriculum_samples: int = 0, tokenizer=None):
        self.seq_len, self.seed, self.split = seq_len, seed, split
        self.encoder = TokenEncoder(tokenizer) if tokenizer is not None else None
        self.pad_id = self.encoder.pad if self.encoder else PAD_ID
        self.corpus = corpus if corpus is not None and corpus.docs else None
        self.doc_ids = self.corpus.split(split) if self.corpus else []
        self.synthetic_fraction = synthetic_fraction if self.corpus else 1.0
        self.tasks, self.fillers, self.full_doc_fraction = tuple(tasks), tuple(fillers), full_doc_fraction
        self.chat_fraction = chat_fraction
        # curriculum (off when curriculum_samples is 0): sample i's synthetic documents are at most
        # max_doc_len(i) long, growing geometrically from curriculum_start_len to seq_len over the first
        # curriculum_samples samples; from there on sequences are made exactly as without a curriculum.
        self.curriculum_start_len = max(MIN_CURRICULUM_DOC_CHARS, min(curriculum_start_len, seq_len))
        self.curriculum_samples = curriculum_samples

    def max_doc_len(self, index: int) -> int:
        """The longest synthetic document (in bytes, BOS/EOS included) that sample `index` may hold."""
        if not self.curriculum_samples or index >= self.curriculum_samples:
            return self.seq_len
        t = index / self.curriculum_samples
        return min(self.seq_len, int(self.curriculum_start_len * (self.seq_len / self.curriculum_start_len) ** t))

    def rng(self, index: int) -> random.Random:
        return random.Random((self.seed * 1_000_003 + _SPLIT_SALT[self.split]) * 1_000_000_007 + index)

    def __getitem__(self, index: int) -> Sample:
        rng = self.rng(index)
        if rng.random() < self.synthetic_fraction:
            cap = self.max_doc_len(index)
            ids, answers = self._synthetic(rng) if cap >= self.seq_len else self._curriculum(rng, cap)
        else:
            ids, answers = self._text(rng), []
        return _to_sample(ids, answers, self.seq_len, self.pad_id)

    def batch(self, indices: list[int]) -> dict[str, torch.Tensor]:
        samples = [self[i] for i in indices]
        return {
            "input_ids": torch.stack([s.input_ids for s in samples]),
            "labels": torch.stack([s.labels for s in samples]),
            "answer_mask": torch.stack([s.answer_mask for s in samples]),
        }

    def _synthetic(self, rng: random.Random) -> tuple[list[int], list[tuple[int, int]]]:
        ids: list[int] = []
        answers: list[tuple[int, int]] = []
        while self.seq_len - len(ids) - 2 >= MIN_DOC_CHARS:
            room = self.seq_len - len(ids) - 2
            if not ids and rng.random() < self.full_doc_fraction:
                n = room
            else:  # log-uniform lengths: short and long retrieval distances both appear
                n = int(math.exp(rng.uniform(math.log(MIN_DOC_CHARS), math.log(room))))
                if room - n < MIN_DOC_CHARS + 2:  # no room for another document: take it all
                    n = room
            start = len(ids)
            doc_ids, spans = self._doc(rng, n, MIN_DOC_CHARS)
            ids += doc_ids
            answers += [(start + a, start + b) for a, b in spans]
        return ids, answers

    def _doc(self, rng: random.Random, n: int, min_chars: int) -> tuple[list[int], list[tuple[int, int]]]:
        """One synthetic document as n + 2 ids (BOS, n, EOS) and its answer spans; a `chat_fraction` share of
        them (n >= CHAT_RESERVE + MIN_CURRICULUM_DOC_CHARS) in the chat layout of the SDK's documents.ask.
        With a TokenEncoder: at most n + 2 tokens (the characters' tokens, cropped in the rare case of more)."""
        if self.chat_fraction and n - CHAT_RESERVE >= MIN_CURRICULUM_DOC_CHARS and rng.random() < self.chat_fraction:
            doc = synthetic_doc(rng, n - CHAT_RESERVE, self.tasks, self.fillers, min_chars=MIN_CURRICULUM_DOC_CHARS)
            system = SDK_SYSTEM if rng.random() < 0.5 else None
            if self.encoder is None:
                return chat_ids(doc, n + 2, rng, system)
            return _crop(*self.encoder.chat(doc, system), n + 2)
        doc = synthetic_doc(rng, n, self.tasks, self.fillers, min_chars=min_chars)
        if self.encoder is None:
            return [BOS_ID, *doc.text.encode("ascii"), EOS_ID], [(1 + a, 1 + b) for a, b in doc.answers]
        enc = self.encoder
        ids, spans = enc.encode(doc.text, doc.answers)
        k = len(enc.bos)
        return _crop(enc.bos + ids + enc.eos, [(k + a, k + b) for a, b in spans], n + 2)

    def _curriculum(self, rng: random.Random, cap: int) -> tuple[list[int], list[tuple[int, int]]]:
        """Many short documents (log-uniform lengths up to `cap`), packed to exactly seq_len tokens, no padding."""
        lo, c = MIN_CURRICULUM_DOC_CHARS, max(MIN_CURRICULUM_DOC_CHARS, cap - 2)  # in text bytes (BOS/EOS apart)
        ids: list[int] = []
        answers: list[tuple[int, int]] = []
        while len(ids) < self.seq_len:
            room = self.seq_len - len(ids) - 2  # never below lo: the rule below leaves 0 or >= lo + 2
            if room < lo:  # only with a TokenEncoder, whose documents may come out shorter: pad the rest
                break
            if room <= c or room < 2 * lo + 2:  # the last document takes what is left
                n = room
            else:
                hi = min(c, room - lo - 2)
                n = max(lo, min(hi, int(math.exp(rng.uniform(math.log(lo), math.log(hi))))))
            start = len(ids)
            doc_ids, spans = self._doc(rng, n, lo)
            ids += doc_ids
            answers += [(start + a, start + b) for a, b in spans]
        return ids, answers

    def _text(self, rng: random.Random) -> list[int]:
        if self.encoder is not None:
            return self._text_tokens(rng)
        ids: list[int] = []
        while len(ids) < self.seq_len:
            data = self.corpus.read(rng.choice(self.doc_ids))
            room = self.seq_len - len(ids)
            if len(data) + 2 > room:  # a long document: take a random window
                start = rng.randrange(0, max(1, len(data) - room + 2))
                data = data[start : start + room]
            ids += [BOS_ID, *data, EOS_ID]
        return ids[: self.seq_len]

    def _text_tokens(self, rng: random.Random) -> list[int]:
        """As _text, in the TokenEncoder's tokens: a long document contributes a random window of tokens,
        tokenized from a random byte window large enough for it."""
        enc, ids, empty = self.encoder, [], 0
        while len(ids) < self.seq_len and empty < 100:
            data = self.corpus.read(rng.choice(self.doc_ids))
            room = self.seq_len - len(ids)
            cap = room * TokenEncoder.MAX_BYTES_PER_TOKEN
            if len(data) > cap:
                start = rng.randrange(0, len(data) - cap + 1)
                data = data[start : start + cap]
            toks, _ = enc.encode(data.decode("utf-8", errors="ignore"))  # cut characters at the window's ends dropped
            if len(toks) + len(enc.bos) + len(enc.eos) > room:
                start = rng.randrange(0, max(1, len(toks) - room + 2))
                toks = toks[start : start + room]
            doc = enc.bos + toks + enc.eos
            empty = 0 if doc else empty + 1  # empty documents and no BOS/EOS: give up after 100 in a row (padding)
            ids += doc
        return ids[: self.seq_len]


def _crop(ids: list[int], spans: list[tuple[int, int]], n: int) -> tuple[list[int], list[tuple[int, int]]]:
    """ids cut to n, keeping the answer spans that lie wholly inside."""
    return ids[:n], [(a, b) for a, b in spans if b <= n]


def _to_sample(ids: list[int], answers: list[tuple[int, int]], seq_len: int, pad_id: int = PAD_ID) -> Sample:
    n = len(ids)
    input_ids = torch.full((seq_len,), pad_id, dtype=torch.long)
    input_ids[:n] = torch.tensor(ids[:seq_len], dtype=torch.long)
    labels = input_ids.clone()
    labels[n:] = IGNORE_INDEX
    mask = torch.zeros(seq_len, dtype=torch.bool)
    for a, b in answers:
        mask[a:b] = True
    return Sample(input_ids, labels, mask)


def build_streams(cfg, tokenizer=None) -> tuple[SequenceStream, SequenceStream]:
    """(train, eval) streams from a TrainConfig, in byte tokens or (with `tokenizer`, an HF tokenizer) in its;
    long-document streams (lighthouse.train.longdoc) when `cfg.longdoc` names a prepared corpus."""
    if getattr(cfg, "longdoc", None):
        from lighthouse.train.longdoc import build_longdoc_streams

        return build_longdoc_streams(cfg, tokenizer, log=print)
    corpus = TextCorpus(list(cfg.data)) if cfg.data else None
    kw = dict(corpus=corpus, synthetic_fraction=cfg.synthetic_fraction, tasks=cfg.tasks, fillers=cfg.fillers,
              full_doc_fraction=cfg.full_doc_fraction, chat_fraction=cfg.chat_fraction, tokenizer=tokenizer)
    # the curriculum shapes only the training stream (the trainer re-sets its length once max_steps is known);
    # evaluation always sees full-length documents
    train = SequenceStream(cfg.seq_len, seed=cfg.seed, split="train", curriculum_start_len=cfg.curriculum_start_len,
                           curriculum_samples=curriculum_samples(cfg, cfg.max_steps), **kw)
    return train, SequenceStream(cfg.seq_len, seed=cfg.seed, split="eval", **kw)


def curriculum_samples(cfg, max_steps: int) -> int:
    """Training samples over which the curriculum grows documents to seq_len (0: no curriculum)."""
    if not getattr(cfg, "curriculum", False):
        return 0
    return int(round(cfg.curriculum_fraction * max_steps)) * cfg.batch_size


def default_num_workers(device_type: str) -> int:
    """Batch-building processes when none are asked for: 0 on CPU (the cores train), else up to 3, leaving a core
    for the training loop."""
    return 0 if device_type == "cpu" else min(3, max(0, (os.cpu_count() or 1) - 1))


class StepBatches(torch.utils.data.Dataset):
    """Item s: one rank's micro-batches for optimizer step `first_step + s` (what the trainer feeds that step).

    A Dataset so that torch's DataLoader can build steps ahead in worker processes while the GPU trains; every
    sample is a pure function of its index, so the order and content are the same with any number of workers.
    """

    def __init__(self, stream: SequenceStream, first_step: int, n_steps: int, batch_size: int,
                 micro_batch_size: int, rank: int = 0, world: int = 1):
        self.stream, self.first_step, self.n_steps = stream, first_step, n_steps
        self.batch_size, self.micro, self.rank, self.world = batch_size, micro_batch_size, rank, world

    def __len__(self) -> int:
        return self.n_steps

    def __getitem__(self, s: int) -> list[dict[str, torch.Tensor]]:
        per_rank = self.batch_size // self.world
        first = (self.first_step + s) * self.batch_size + self.rank * per_rank
        return [self.stream.batch(list(range(m, m + self.micro))) for m in range(first, first + per_rank, self.micro)]


def step_loader(stream: SequenceStream, first_step: int, n_steps: int, batch_size: int, micro_batch_size: int,
                rank: int, world: int, workers: int):
    """Iterator over the micro-batches of steps first_step, first_step + 1, ...: built ahead by `workers`
    processes (0: in this process, on demand)."""
    ds = StepBatches(stream, first_step, n_steps, batch_size, micro_batch_size, rank, world)
    if workers <= 0:
        return (ds[i] for i in range(len(ds)))
    return iter(torch.utils.data.DataLoader(ds, batch_size=None, shuffle=False, num_workers=workers, prefetch_factor=4))
