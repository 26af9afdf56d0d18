"""The document store's checksum (lighthouse/engine/cache/disk_tier.py): segments hashed in parallel, any changed
byte refused, and stores written with the older whole-file SHA-256 still load."""

from __future__ import annotations

import json

import pytest
import torch

from lighthouse.engine.cache import disk_tier
from lighthouse.engine.cache.disk_tier import DiskStore, EntryData


def entry() -> EntryData:
    g = torch.Generator().manual_seed(0)
    k, v = (torch.randint(0, 255, (6, 16, 2, 8), generator=g, dtype=torch.uint8) for _ in range(2))
    return EntryData(torch.arange(40), 0, [3, 3], k, v)


@pytest.fixture
def small_segments(monkeypatch):
    monkeypatch.setattr(disk_tier, "SEGMENT", 512)  # the ~3.5 KB file in several segments


def test_a_saved_document_loads_back_identical(tmp_path, small_segments):
    store = DiskStore(tmp_path, "model-a")
    store.save("doc1", entry(), {"name": "x"}, text="hello")
    assert store.index()["doc1"]["sha256"].startswith(disk_tier.SEGMENTED)
    data, text = store.load("doc1")
    assert text == "hello" and torch.equal(data.k, entry().k) and torch.equal(data.v, entry().v)


@pytest.mark.parametrize("where", [0.1, 0.5, 0.99])  # a byte in the first, a middle and the last segment
def test_any_changed_byte_fails_the_checksum(tmp_path, small_segments, where):
    store = DiskStore(tmp_path, "model-a")
    store.save("doc1", entry(), {})
    path = tmp_path / "model-a" / "doc1.safetensors"
    raw = bytearray(path.read_bytes())
    raw[int(len(raw) * where)] ^= 0xFF
    path.write_bytes(bytes(raw))
    assert store.load("doc1") is None


def test_an_older_whole_file_checksum_still_loads(tmp_path):
    store = DiskStore(tmp_path, "model-a")
    store.save("doc1", entry(), {})
    index = store.index()
    index["doc1"]["sha256"] = disk_tier._sha256(tmp_path / "model-a" / "doc1.safetensors")
    (tmp_path / "model-a" / "index.json").write_text(json.dumps(index))
    assert store.load("doc1") is not None
    index["doc1"]["sha256"] = "0" * 64
    (tmp_path / "model-a" / "index.json").write_text(json.dumps(index))
    assert store.load("doc1") is None
