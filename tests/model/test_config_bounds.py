"""config.json is checked where it is read, so the library refuses what the server refuses (issue 29 item 7): sizes
outside sane bounds, non-finite or non-positive floats, a Lighthouse block the op cannot run, a FIFO or other
non-regular file under a checkpoint file's name, and sizes that do not describe the stored weights. Each is a
ValueError (CheckpointError from a checkpoint folder) whose message names the field and what it may be."""

from __future__ import annotations

import json
import math
import os
import shutil
import threading

import pytest

from lighthouse.checkpoint import CheckpointError, default_checkpoint_dir, load_config, verify_checkpoint
from lighthouse.model.config import SIZE_BOUNDS, LighthouseConfig, ModelConfig
from lighthouse.model.presets import MODEL_PRESETS

BAD_FIELDS = [
    ({"num_hidden_layers": 1e9}, "num_hidden_layers must be a whole number in 1..1,024"),
    ({"num_hidden_layers": 10**9}, "num_hidden_layers must be a whole number in 1..1,024"),
    ({"hidden_size": 10**8}, "hidden_size must be a whole number in 1..65,536"),
    ({"vocab_size": 0}, "vocab_size must be a whole number in 1.."),
    ({"intermediate_size": "big"}, "intermediate_size must be a whole number"),
    ({"max_position_embeddings": 1e12}, "max_position_embeddings must be a whole number in 2..16,777,216"),
    ({"head_dim": -64}, "head_dim must be a whole number in 2..1,024"),
    ({"num_attention_heads": 0}, "num_attention_heads must be a whole number in 1..1,024"),
    ({"num_key_value_heads": -2}, "num_key_value_heads must be a whole number in 1..4"),
    ({"num_key_value_heads": 8}, "num_key_value_heads must be a whole number in 1..4"),
    ({"rope_theta": math.nan}, "rope_theta must be a finite number > 1"),
    ({"rope_theta": math.inf}, "rope_theta must be a finite number > 1"),
    ({"rope_theta": 0.0}, "rope_theta must be a finite number > 1"),
    ({"rms_norm_eps": -1e-5}, "rms_norm_eps must be a finite number > 0 and < 1"),
    ({"rope_scaling": {"rope_type": "linear", "factor": math.nan}}, "rope_scaling.factor must be a finite number"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 1.0,
                       "original_max_position_embeddings": 8192}}, "rope_scaling.high_freq_factor must be"),
    ({"lighthouse": {"topk": 0}}, "lighthouse.topk must be a positive multiple of 128"),
    ({"lighthouse": {"pooling_factor": 3}}, "lighthouse.pooling_factor must be a power of two"),
    ({"lighthouse": {"levels": 40}}, "lighthouse.levels must be a whole number in 1..8"),
]


@pytest.mark.parametrize("fields,message", BAD_FIELDS, ids=[next(iter(f)) + str(i) for i, (f, _) in enumerate(BAD_FIELDS)])
def test_model_config_refuses_out_of_bounds_fields_naming_them(fields, message):
    with pytest.raises(ValueError, match="^" + message.replace(".", r"\.").replace("(", r"\(")):
        ModelConfig(**{"num_attention_heads": 4, **fields})


def test_the_presets_and_a_disabled_lighthouse_block_with_any_values_stay_valid():
    for cfg in MODEL_PRESETS.values():
        cfg.validate()
    ModelConfig(lighthouse=LighthouseConfig(enabled=False, topk=0))  # a dense checkpoint's block is never run
    assert SIZE_BOUNDS["max_position_embeddings"][1] >= 10_485_760  # Llama 4 Scout's positions fit


def _copy(tmp_path, **edits):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(default_checkpoint_dir(), ckpt)
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg.update(edits)
    (ckpt / "config.json").write_text(json.dumps(cfg))
    return ckpt


def test_load_config_raises_a_checkpoint_error_naming_the_file_and_the_field(tmp_path):
    ckpt = _copy(tmp_path, num_key_value_heads=-2)
    with pytest.raises(CheckpointError, match="config.json is not a usable model config: num_key_value_heads must"):
        load_config(ckpt)


def test_verify_checkpoint_refuses_sizes_that_do_not_describe_the_weights_before_allocating_them(tmp_path):
    ckpt = _copy(tmp_path, hidden_size=4096, head_dim=1024)  # in bounds; the model it implies would be ~1 GB
    with pytest.raises(CheckpointError, match=r"has shape \(\d+, 256\); .*config.json implies \(\d+, 4096\)"):
        verify_checkpoint(ckpt)


@pytest.mark.parametrize("name", ["config.json", "model.safetensors", "tokenizer.json", "special_tokens_map.json"])
def test_a_fifo_under_a_checkpoint_file_name_is_refused_not_read(tmp_path, name):
    ckpt = _copy(tmp_path)
    (ckpt / name).unlink()
    os.mkfifo(ckpt / name)
    errors: list[BaseException] = []

    def verify():
        try:
            verify_checkpoint(ckpt, require_tokenizer=True)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            errors.append(exc)

    thread = threading.Thread(target=verify, daemon=True)
    thread.start()
    thread.join(30)
    if thread.is_alive():  # it blocked opening the FIFO: let it go, then fail
        fd = os.open(ckpt / name, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        pytest.fail(f"verify_checkpoint blocked reading the FIFO {name}")
    assert len(errors) == 1 and isinstance(errors[0], CheckpointError), errors
    assert str(errors[0]) == f"{ckpt / name} is a FIFO; a checkpoint's files must be regular files"
