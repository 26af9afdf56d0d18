"""The disk tier: pinned documents' K/V in a directory that outlives the process (`--document-store DIR`).

A prefix-cache entry's blocks (every layer's table, then a compact entry's context tables, in the order
`CacheEntry.all_blocks` gives) are gathered from the pool into two CPU tensors, K and V, (n_blocks, block_size,
H_kv, D), the way the host tier copies them (host_tier.py), and written as one safetensors file per document with
the entry's tokens and layout; `index.json` lists the files with each one's SHA-256, checked before a file is read.
Nothing is unpickled: safetensors holds raw tensors and JSON only.

Files live under DIR/<identity>/, where the identity hashes the checkpoint's config.json and weight files together
with what fixes the bytes of a block (block size, K/V dtypes, head shape): a changed model, or the same model in
another dtype, finds an empty folder and never reads another's K/V.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from lighthouse.engine.cache.pool import as_bytes
from lighthouse.engine.cache.prefix_cache import CacheEntry, PrefixCache

INDEX = "index.json"
_READ = 8 << 20  # bytes per read while hashing weights
SEGMENT = 256 << 20  # a stored document's checksum hashes segments of this many bytes in parallel
SEGMENTED = "seg:"  # the prefix of such a checksum in index.json (without it: one SHA-256 of the whole file)


def checkpoint_identity(checkpoint_dir: str | Path, layout: dict) -> str:
    """A hex digest of the checkpoint's config.json and weights (*.safetensors, by content) and of `layout` (what
    fixes a block's bytes: block size, dtypes, heads)."""
    root = Path(checkpoint_dir)
    h = hashlib.sha256(json.dumps(layout, sort_keys=True).encode())
    for path in [root / "config.json", *sorted(root.glob("*.safetensors"))]:
        h.update(path.name.encode())
        with open(path, "rb") as f:
            while chunk := f.read(_READ):
                h.update(chunk)
    return h.hexdigest()[:32]


def cache_layout(shape) -> dict:
    """What, besides the weights, decides the bytes of a block (spec.CacheShape's fields)."""
    return {"block_size": shape.block_size, "num_layers": shape.num_layers, "num_kv_heads": shape.num_kv_heads,
            "num_heads": shape.num_heads, "head_dim": shape.head_dim, "dtype": str(shape.dtype),
            "storage_dtype": str(shape.storage_dtype)}


@dataclass
class EntryData:
    """A prefix-cache entry's contents off the device: K and V of its blocks, (n_blocks, block_size, H_kv, D), in
    the pool's storage bytes (as_bytes), and what makes them an entry again."""

    tokens: Tensor  # (N,) int64
    split: int
    layout: list[int]  # blocks per layer's table
    k: Tensor
    v: Tensor
    ctx_layout: list[int] | None = None  # compact: blocks per context table
    selected: int = 0
    ctx_hole_start: Tensor | None = None  # compact: (L, H) int32
    ctx_spans: Tensor | None = None  # compact: (L, H, S, 2) int32 (None: stored before spans were kept)
    salt: str | None = None  # the entry's cache_salt (prefix_cache.py)


COPY_CHUNK_BYTES = 1 << 30  # device <-> host copies go in pieces of about this much (a 512K entry is ~32 GB of K)


def _rows_per_chunk(t: Tensor) -> int:
    return max(1, COPY_CHUNK_BYTES // max(1, t[0].numel() * t.element_size()))


def _gather_to_host(src: Tensor, idx: Tensor) -> Tensor:
    """src[idx] on the CPU, gathered on src's device a chunk of blocks at a time (never a full-size device copy)."""
    out = torch.empty((idx.shape[0], *src.shape[1:]), dtype=src.dtype)
    step = _rows_per_chunk(src)
    for a in range(0, idx.shape[0], step):
        out[a : a + step].copy_(src.index_select(0, idx[a : a + step]))
    return out


def export_entry(prefix_cache: PrefixCache, entry: CacheEntry) -> EntryData:
    """The entry's K/V copied to CPU tensors (on the engine thread: the blocks are read in place)."""
    pool = prefix_cache.kv.pool
    idx = torch.tensor(entry.all_blocks(), dtype=torch.long, device=pool.k.device)
    k, v = (_gather_to_host(as_bytes(t), idx) for t in (pool.k, pool.v))
    hole = entry.ctx_hole_start.cpu().clone() if entry.ctx_hole_start is not None else None
    return EntryData(entry.tokens.clone(), entry.split, [len(t) for t in entry.blocks], k, v,
                     None if entry.ctx_blocks is None else [len(t) for t in entry.ctx_blocks], entry.selected, hole,
                     entry.ctx_spans, entry.salt)


def restore_entry(prefix_cache: PrefixCache, data: EntryData) -> CacheEntry | None:
    """`data` as a pinned device entry in freshly allocated blocks (evicting unpinned entries for room); None when
    it does not fit now. On the engine thread."""
    kv, pool = prefix_cache.kv, prefix_cache.kv.pool
    n = data.k.shape[0]
    if as_bytes(pool.k).dtype != data.k.dtype or tuple(pool.k.shape[1:]) != tuple(data.k.shape[1:]):
        raise ValueError(f"stored K/V of shape {tuple(data.k.shape)} {data.k.dtype} do not fit this cache's blocks")
    if not prefix_cache.make_room(n):
        return None
    blocks = kv.allocate_for_cache(n)
    idx = torch.tensor(blocks, dtype=torch.long, device=pool.k.device)
    for src, dst in ((data.k, pool.k), (data.v, pool.v)):
        step = _rows_per_chunk(src)
        for a in range(0, n, step):  # a chunk of blocks at a time: never a full-size copy on the device
            as_bytes(dst).index_copy_(0, idx[a : a + step], src[a : a + step].to(dst.device))
    tables, at = [], 0
    for m in data.layout + (data.ctx_layout or []):
        tables.append(blocks[at : at + m])
        at += m
    full = len(data.layout)
    hole = data.ctx_hole_start.to(kv.shape.device) if data.ctx_hole_start is not None else None
    entry = CacheEntry(data.tokens.clone(), data.split, tables[:full], next(prefix_cache._clock),
                       tables[full:] if data.ctx_layout is not None else None, data.selected, hole, pins=1,
                       ctx_spans=data.ctx_spans, salt=data.salt)
    prefix_cache.entries.append(entry)
    return entry


def _sha256(path: Path, start: int = 0, length: int | None = None) -> str:
    """SHA-256 of the file's bytes [start, start + length) (default: to its end)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(start)
        left = length if length is not None else -1
        while left and (chunk := f.read(_READ if left < 0 else min(_READ, left))):
            h.update(chunk)
            left -= len(chunk) if left > 0 else 0
    return h.hexdigest()


def _checksum(path: Path) -> str:
    """SEGMENTED + the SHA-256 of the SHA-256s of the file's SEGMENT-byte segments, hashed in parallel threads
    (hashlib releases the GIL): a 64 GB store file is checked at disk speed, not one core's ~1 GB/s."""
    size = path.stat().st_size
    with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
        parts = list(pool.map(lambda a: _sha256(path, a, SEGMENT), range(0, max(size, 1), SEGMENT)))
    return SEGMENTED + hashlib.sha256("".join(parts).encode()).hexdigest()


def _checks_out(path: Path, recorded: str) -> bool:
    """Whether the file matches its index checksum (either form: stores written before segments load too)."""
    return (_checksum(path) if recorded.startswith(SEGMENTED) else _sha256(path)) == recorded


class DiskStore:
    """DIR/<identity>/: one `<id>.safetensors` per document (tokens, K, V, text; the layout as metadata) and
    `index.json` ({id: {file, sha256, meta}})."""

    def __init__(self, directory: str | Path, identity: str):
        self.root = Path(directory) / identity
        self.root.mkdir(parents=True, exist_ok=True)
        self.identity = identity
        self._lock = threading.Lock()  # index.json is read, changed and replaced whole

    def index(self) -> dict[str, dict]:
        path = self.root / INDEX
        if not path.exists():
            return {}
        return json.loads(path.read_text())

    def _write_index(self, index: dict[str, dict]) -> None:
        tmp = self.root / (INDEX + ".tmp")
        tmp.write_text(json.dumps(index, indent=1, sort_keys=True))
        os.replace(tmp, self.root / INDEX)  # a crash leaves the old index or the new one, never half of one

    def save(self, doc_id: str, data: EntryData, meta: dict, text: str = "") -> None:
        """Write the document's K/V and text, then its index entry (`meta`: what the server keeps about it)."""
        raw = text.encode("utf-8")
        tensors = {"tokens": data.tokens.contiguous(), "k": data.k.contiguous(), "v": data.v.contiguous(),
                   "text": torch.frombuffer(bytearray(raw), dtype=torch.uint8) if raw else torch.zeros(0, dtype=torch.uint8)}
        if data.ctx_hole_start is not None:
            tensors["ctx_hole_start"] = data.ctx_hole_start.contiguous()
        if data.ctx_spans is not None:
            tensors["ctx_spans"] = data.ctx_spans.contiguous()
        layout = {"split": data.split, "layout": data.layout, "ctx_layout": data.ctx_layout, "selected": data.selected,
                  "salt": data.salt}
        path = self.root / f"{doc_id}.safetensors"
        tmp = path.with_suffix(".tmp")
        save_file(tensors, str(tmp), metadata={"layout": json.dumps(layout), "identity": self.identity})
        os.replace(tmp, path)
        digest = _checksum(path)
        with self._lock:
            index = self.index()
            index[doc_id] = {"file": path.name, "sha256": digest, "meta": meta}
            self._write_index(index)

    def update_meta(self, doc_id: str, meta: dict) -> bool:
        """Replace a stored document's `meta` in the index (its file unchanged); False when it is not stored."""
        with self._lock:
            index = self.index()
            if doc_id not in index:
                return False
            index[doc_id]["meta"] = meta
            self._write_index(index)
        return True

    def load(self, doc_id: str) -> tuple[EntryData, str] | None:
        """The document's entry data and text, or None when it is not here or its file fails the checksum."""
        rec = self.index().get(doc_id)
        if rec is None:
            return None
        path = self.root / rec["file"]
        if path.name != f"{doc_id}.safetensors" or not path.exists() or not _checks_out(path, rec["sha256"]):
            return None
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            layout = json.loads(f.metadata()["layout"])
        t = load_file(str(path))
        data = EntryData(t["tokens"], layout["split"], layout["layout"], t["k"], t["v"], layout["ctx_layout"],
                         layout["selected"], t.get("ctx_hole_start"), t.get("ctx_spans"), layout.get("salt"))
        return data, bytes(t["text"].numpy()).decode("utf-8")

    def delete(self, doc_id: str) -> None:
        with self._lock:
            index = self.index()
            rec = index.pop(doc_id, None)
            if rec is not None:
                self._write_index(index)
        if rec is not None:
            (self.root / rec["file"]).unlink(missing_ok=True)
