"""The SmolLM2 512K recipe: every stage's command is one that `lighthouse train` accepts and that means what the
recipe's config says (RoPE, Lighthouse layout, LoRA, lengths, dense tail), chaining each stage's adapter."""

from __future__ import annotations

import argparse
import json
import shlex

import pytest

from lighthouse.train.cli import add_arguments, config_from_args
from recipes import smollm2_512k

CONFIG = json.loads(smollm2_512k.DEFAULT_CONFIG.read_text())


def _parse(cmd_line: str):
    argv = shlex.split(cmd_line.removeprefix("$ "))
    argv = argv[argv.index("lighthouse.train") + 1 :]
    p = argparse.ArgumentParser()
    add_arguments(p)
    return config_from_args(p.parse_args(argv))


def test_every_stage_is_a_valid_train_command(tmp_path, capsys):
    (tmp_path / "text").mkdir()  # where the recipe prepares the training text
    assert smollm2_512k.main([str(tmp_path), "--dry-run", "--variant", "after_select"]) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("$ ")]
    assert len(lines) == len(CONFIG["stages"])
    previous = None
    for line, stage in zip(lines, CONFIG["stages"]):
        cfg = _parse(line)
        assert cfg.seq_len == stage["seq_len"] and cfg.max_steps == stage["steps"]
        assert cfg.tail_steps() == (stage["steps"] if stage["dense"] else 0)
        assert (cfg.rope_theta, cfg.max_position_embeddings) == (1e6, 524288)
        assert (cfg.lighthouse_levels, cfg.lighthouse_pooling_factor, cfg.lighthouse_topk) == (3, 4, 1024)
        assert cfg.lighthouse_full_attn_layers == [0, 1, 28, 29] and cfg.lighthouse_rope == "after_select"
        assert cfg.lora_rank == 16 and cfg.lora_alpha == 32 and cfg.longdoc
        assert cfg.init_adapter == previous
        cfg.validate()
        previous = cfg.out_dir
    # the op runs at the first stage's length: p^(levels-1) * topk <= seq_len
    assert 4 ** 2 * 1024 <= CONFIG["stages"][0]["seq_len"]


def test_first_stage_runs_both_rope_variants_and_later_stages_need_one(tmp_path, capsys):
    assert smollm2_512k.main([str(tmp_path), "--dry-run", "--stages", "s1_32k"]) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("$ ")]
    assert [_parse(x).lighthouse_rope for x in lines] == ["before_pool", "after_select"]
    with pytest.raises(SystemExit):
        smollm2_512k.main([str(tmp_path), "--dry-run", "--stages", "s2_64k"])
    assert "--variant" in capsys.readouterr().err


def test_a_chosen_variant_continues_from_its_own_first_stage(tmp_path, capsys):
    """The trial writes s1_32k-<variant> per variant; a later stage with --variant starts from that folder, and a
    first stage run for one variant alone lands in the same folder (so the trial and the continuation agree)."""
    assert smollm2_512k.main([str(tmp_path), "--dry-run", "--stages", "s1_32k", "--variant", "after_select"]) == 0
    (first,) = [_parse(x) for x in capsys.readouterr().out.splitlines() if x.startswith("$ ")]
    assert first.out_dir == str(tmp_path / "s1_32k-after_select")
    assert smollm2_512k.main([str(tmp_path), "--dry-run", "--stages", "s2_64k", "--variant", "after_select"]) == 0
    (second,) = [_parse(x) for x in capsys.readouterr().out.splitlines() if x.startswith("$ ")]
    assert second.init_adapter == str(tmp_path / "s1_32k-after_select")
    assert second.out_dir == str(tmp_path / "s2_64k")
