"""Adapted models: an adapter folder whose base is a catalog model serves as --checkpoint (merged over the prepared
base once), and a catalog entry made of a base and a shipped adapter prepares the same way."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from lighthouse.adapter import merge_adapter
from lighthouse.catalog import adapted as adapted_mod
from lighthouse.catalog import prepare_adapter_folder, prepare_model
from lighthouse.catalog import registry
from lighthouse.catalog.models import AdaptedModel, KnownModel
from lighthouse.checkpoint import load_checkpoint
from lighthouse.cli import main as lighthouse_main
from tests.train.test_train_init_from import TRAIN_ARGS, _make_hf_llama

FAKE = KnownModel("fake-base", "no-such-package", "0.0", "x.gguf", "Apache-2.0", "a tiny Llama made by the test")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A prepared catalog base (a tiny HF Llama with the catalog's stamp) and a LoRA adapter trained over it."""
    root = tmp_path_factory.mktemp("models")
    base = _make_hf_llama(root / FAKE.name)
    (base / registry.STAMP).write_text(json.dumps({"format": 1, **asdict(FAKE)}, indent=2) + "\n")
    adapter = tmp_path_factory.mktemp("runs") / "adapter"
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(registry.KNOWN_MODELS, FAKE.name, FAKE)
        assert lighthouse_main(["train", "--init-from", str(base), "--out", str(adapter), "--lora-rank", "4",
                                "--data", "none", "--max-position-embeddings", "4096", *TRAIN_ARGS]) == 0
    return root, base, adapter


@pytest.fixture
def catalog(setup, monkeypatch):
    monkeypatch.setitem(registry.KNOWN_MODELS, FAKE.name, FAKE)
    return setup


def test_an_adapter_folder_is_merged_over_its_catalog_base_once(catalog, tmp_path):
    root, base, adapter = catalog
    assert json.loads((adapter / "adapter_config.json").read_text())["lighthouse"]["base"]["name"] == FAKE.name
    merged = prepare_adapter_folder(adapter, root=root)
    assert merged.parent == root and merged.name.startswith("adapted-")
    assert json.loads((merged / "config.json").read_text())["max_position_embeddings"] == 4096
    want = merge_adapter(base, adapter, tmp_path / "by-hand")
    ids = torch.randint(3, 300, (1, 32))
    got_logits = load_checkpoint(merged)[0](ids, dense=True, logits_to_keep=32).logits
    want_logits = load_checkpoint(want)[0](ids, dense=True, logits_to_keep=32).logits
    torch.testing.assert_close(got_logits, want_logits, rtol=0, atol=0)
    stamp_time = (merged / "prepared.json").stat().st_mtime_ns
    assert prepare_adapter_folder(adapter, root=root) == merged  # the second time: nothing merged
    assert (merged / "prepared.json").stat().st_mtime_ns == stamp_time


def test_a_catalog_entry_of_base_and_shipped_adapter(catalog, monkeypatch):
    root, _base, adapter = catalog
    monkeypatch.setattr(registry, "ADAPTERS_DIR", adapter.parent)
    monkeypatch.setitem(registry.ADAPTED_MODELS, "fake-adapted",
                        AdaptedModel("fake-adapted", FAKE.name, adapter.name, "Apache-2.0", "test"))
    folder = prepare_model("fake-adapted", root=root)
    assert folder == root / "fake-adapted" and (folder / "config.json").exists()
    assert json.loads((folder / "prepared.json").read_text())["adapter_sha256"] == adapted_mod.adapter_sha256(adapter)


def test_the_server_serves_an_adapter_folder_as_its_merged_checkpoint(catalog, monkeypatch):
    from lighthouse_server.app import checkpoint_dir
    from lighthouse_server.settings import Settings

    root, _base, adapter = catalog
    monkeypatch.setenv("LIGHTHOUSE_MODELS_DIR", str(root))
    folder = checkpoint_dir(Settings(checkpoint=str(adapter)))
    assert folder.name.startswith("adapted-") and (folder / "model.safetensors").exists()


def test_an_adapter_without_a_known_base_says_how_to_merge_it(catalog, tmp_path):
    _root, _base, adapter = catalog
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["lighthouse"]["base"]["name"] = None
    cfg["base_model_name_or_path"] = ""
    other = tmp_path / "a"
    other.mkdir()
    (other / "adapter_config.json").write_text(json.dumps(cfg))
    (other / "adapter_model.safetensors").write_bytes((adapter / "adapter_model.safetensors").read_bytes())
    with pytest.raises(ValueError, match="lighthouse adapter merge"):
        prepare_adapter_folder(other, root=tmp_path)


def test_unknown_base_name_lists_the_catalog(catalog, tmp_path):
    _root, _base, adapter = catalog
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["lighthouse"]["base"]["name"] = "no-such-model"
    other = tmp_path / "b"
    other.mkdir()
    (other / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="unknown model 'no-such-model'"):
        prepare_adapter_folder(Path(other), root=tmp_path)
