"""Request modes are types, parsed once at the edge: RequestOptions refuses what the engine could not run, naming the
parameter, and `lighthouse generate` builds its options and engine config from the flags once."""

from __future__ import annotations

import argparse

import pytest

from lighthouse.engine.cli import add_arguments, configs_from_args
from lighthouse.engine.errors import InvalidRequest
from lighthouse.engine.options import DECODE_MODES, PREFILL_MODES, RequestOptions, parse_decode, parse_prefill


def test_the_modes_are_the_two_paths_each():
    assert set(PREFILL_MODES) == set(DECODE_MODES) == {"sparse", "dense"}
    assert parse_prefill("sparse") == "sparse" and parse_decode("dense") == "dense"


@pytest.mark.parametrize("field,value", [
    ("prefill", "fast"), ("prefill", "Sparse"), ("prefill", ""), ("decode", "fast"), ("decode", 1),
    ("dense_tail_tokens", -1), ("dense_tail_tokens", True), ("dense_tail_tokens", False), ("dense_tail_tokens", 1.5),
    ("dense_tail_tokens", "64"),
])
def test_bad_options_raise_invalid_request_naming_the_param(field, value):
    with pytest.raises(InvalidRequest) as info:
        RequestOptions(**{field: value})
    assert info.value.param == field and isinstance(info.value, ValueError)


def test_unset_options_take_the_engines_defaults_and_set_ones_win():
    assert RequestOptions().resolved("sparse", "dense", 64) == RequestOptions("sparse", "dense", 64, kv_mode="full")
    mine = RequestOptions(prefill="dense", dense_tail_tokens=0, cache_prompt=False)
    assert mine.resolved("sparse", "sparse", 64) == RequestOptions("dense", "sparse", 0, cache_prompt=False,
                                                                   kv_mode="full")


def generate_args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(["--prompt", "x", *argv])


def test_generate_flags_build_the_request_options_and_engine_config_once():
    config, options = configs_from_args(generate_args("--prefill", "dense", "--decode", "sparse", "--dense-tail-tokens",
                                                      "16", "--enforce-eager", "--block-size", "64"))
    assert options == RequestOptions(prefill="dense", decode="sparse", dense_tail_tokens=16)
    assert (config.enforce_eager, config.block_size) == (True, 64)
    config, options = configs_from_args(generate_args())
    assert (config.enforce_eager, config.block_size, options.dense_tail_tokens) == (False, 128, None)
    assert config.warmup is False  # one prompt: no warm-up of every path unless asked
    assert configs_from_args(generate_args("--warmup"))[0].warmup is True


def test_generate_refuses_unknown_modes_and_bad_values_before_loading_anything(capsys):
    with pytest.raises(SystemExit):
        generate_args("--prefill", "fast")
    assert "invalid choice" in capsys.readouterr().err
    with pytest.raises(ValueError, match="block_size"):
        configs_from_args(generate_args("--block-size", "100"))
    with pytest.raises(InvalidRequest, match="dense_tail_tokens"):
        configs_from_args(generate_args("--dense-tail-tokens", "-1"))
