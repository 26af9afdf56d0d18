"""Every server setting can be given as a LIGHTHOUSE_* environment variable (the strings a shell or Docker
passes), and `lighthouse serve` flags parse the same way."""

from __future__ import annotations

import argparse

import pytest

from lighthouse.engine.config import EngineConfig, user_name
from lighthouse_server.app import engine_config
from lighthouse_server.cli import add_arguments, settings_from_args
from lighthouse_server.settings import Settings

# field -> (environment string, parsed value). Every field must appear: a new setting needs an entry here.
ENV_SAMPLES = {
    "checkpoint": ("/models/doc-qa", "/models/doc-qa"),
    "model": ("smollm2-135m-instruct", "smollm2-135m-instruct"),
    "served_model_name": ("doc-qa", "doc-qa"),
    "host": ("0.0.0.0", "0.0.0.0"),
    "port": ("9000", 9000),
    "api_key": ("sk-env", "sk-env"),
    "prefill": ("dense", "dense"),
    "decode": ("sparse", "sparse"),
    "kv_mode": ("compact", "compact"),
    "dense_tail_tokens": ("32", 32),
    "max_model_len": ("4096", 4096),
    "max_num_seqs": ("8", 8),
    "max_waiting": ("0", 0),
    "queue_full_status": ("503", 503),
    "retry_after_s": ("5", 5),
    "kv_cache_gb": ("1.5", 1.5),
    "device": ("cpu", "cpu"),
    "dtype": ("bfloat16", "bfloat16"),
    "default_max_tokens": ("100", 100),
    "max_body_mb": ("8", 8.0),
    "cors_origins": ("https://a.example, https://b.example", ["https://a.example", "https://b.example"]),
    "drain_timeout_s": ("2.5", 2.5),
    "shutdown_delay_s": ("5", 5.0),
    "log_level": ("DEBUG", "debug"),
    "api_keys": ("sk-a, sk-b", ["sk-a", "sk-b"]),
    "documents_kv_share": ("0.25", 0.25),
    "document_store": ("/var/lib/lighthouse/documents", "/var/lib/lighthouse/documents"),
    "enable_prefix_caching": ("false", False),
    "block_size": ("64", 64),
    "enforce_eager": ("1", True),
    "overlap_decode": ("false", False),
    "warmup": ("false", False),
    "max_prefill_chunk_ms": ("50", 50.0),
    "prefill_chunk_tokens": ("4096", 4096),
    "express_prefill_tokens": ("0", 0),
    "decode_step_budget_ms": ("0", 0.0),
    "speculative_num_tokens": ("4", 4),
    "host_cache_gb": ("2.5", 2.5),
    "kv_cache_dtype": ("fp8_e4m3", "fp8_e4m3"),
    "header_timeout_s": ("2.5", 2.5),
    "body_timeout_s": ("30", 30.0),
    "kv_cache_fraction": ("0.5", 0.5),
    "prefix_cache_min_tokens": ("64", 64),
    "cuda_graph_max_batch": ("16", 16),
}


def _value(settings: Settings, field: str):
    v = getattr(settings, field)
    return v.get_secret_value() if field == "api_key" else v


def test_every_setting_has_an_environment_sample():
    assert set(ENV_SAMPLES) == set(Settings.model_fields)


@pytest.mark.parametrize("field", sorted(ENV_SAMPLES))
def test_each_setting_parses_from_its_environment_variable(monkeypatch, field):
    env, expected = ENV_SAMPLES[field]
    monkeypatch.setenv(f"LIGHTHOUSE_{field.upper()}", env)
    assert _value(Settings(), field) == expected


def test_queue_full_status_from_the_environment_reaches_serve(monkeypatch):
    for status in ("429", "503"):
        monkeypatch.setenv("LIGHTHOUSE_QUEUE_FULL_STATUS", status)
        p = argparse.ArgumentParser()
        add_arguments(p)
        assert settings_from_args(p.parse_args([])).queue_full_status == int(status)
    monkeypatch.setenv("LIGHTHOUSE_QUEUE_FULL_STATUS", "500")
    with pytest.raises(ValueError, match="429 or 503"):
        Settings()


def test_flags_override_the_environment_and_parse_like_it(monkeypatch):
    monkeypatch.setenv("LIGHTHOUSE_QUEUE_FULL_STATUS", "503")
    monkeypatch.setenv("LIGHTHOUSE_PORT", "9000")
    p = argparse.ArgumentParser()
    add_arguments(p)
    s = settings_from_args(p.parse_args(["--queue-full-status", "429", "--cors-origins", "https://a.example,*",
                                         "--enable-prefix-caching", "false"]))
    assert (s.queue_full_status, s.port, s.cors_origins) == (429, 9000, ["https://a.example", "*"])
    assert s.enable_prefix_caching is False


def test_json_list_and_empty_values(monkeypatch):
    monkeypatch.setenv("LIGHTHOUSE_CORS_ORIGINS", '["https://a.example"]')
    monkeypatch.setenv("LIGHTHOUSE_MAX_MODEL_LEN", "")  # set but empty (docker -e X=): the default
    s = Settings()
    assert s.cors_origins == ["https://a.example"] and s.max_model_len is None


def serve_args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(list(argv))


def test_enforce_eager_and_block_size_reach_the_engine_config_from_flags(monkeypatch):
    monkeypatch.delenv("LIGHTHOUSE_ENFORCE_EAGER", raising=False)
    default = engine_config(settings_from_args(serve_args()))
    assert (default.enforce_eager, default.block_size) == (False, 128)
    config = engine_config(settings_from_args(serve_args("--enforce-eager", "--block-size", "256")))
    assert (config.enforce_eager, config.block_size) == (True, 256)
    assert engine_config(settings_from_args(serve_args("--enforce-eager", "false"))).enforce_eager is False


def test_enforce_eager_reaches_the_engine_config_from_the_environment(monkeypatch):
    monkeypatch.setenv("LIGHTHOUSE_ENFORCE_EAGER", "1")
    monkeypatch.setenv("LIGHTHOUSE_BLOCK_SIZE", "32")
    monkeypatch.setenv("LIGHTHOUSE_PREFILL", "dense")
    config = engine_config(settings_from_args(serve_args()))
    assert (config.enforce_eager, config.block_size, config.prefill) == (True, 32, "dense")
    assert engine_config(settings_from_args(serve_args("--enforce-eager", "false"))).enforce_eager is False  # flags win


def test_bad_modes_and_block_sizes_are_refused_before_the_engine_is_built(monkeypatch):
    monkeypatch.setenv("LIGHTHOUSE_PREFILL", "fast")
    with pytest.raises(ValueError, match="prefill"):
        Settings()
    monkeypatch.delenv("LIGHTHOUSE_PREFILL")
    with pytest.raises(ValueError, match="block_size"):
        Settings(block_size=8)
    with pytest.raises(ValueError, match="block_size"):
        engine_config(Settings(block_size=100))  # in range, but not a power of two: the engine's own check


@pytest.mark.parametrize("field", sorted(EngineConfig.__pydantic_fields__))
def test_each_engine_setting_reaches_the_engine_config_from_its_variable_and_its_flag(monkeypatch, field):
    info = EngineConfig.__pydantic_fields__[field]
    name = user_name(field, info)
    env, value = ENV_SAMPLES[name]
    expected = int(value * 2**30) if name != field else value  # a GiB setting reaches the engine in bytes
    monkeypatch.setenv(f"LIGHTHOUSE_{name.upper()}", env)
    assert getattr(engine_config(settings_from_args(serve_args())), field) == expected
    monkeypatch.delenv(f"LIGHTHOUSE_{name.upper()}")
    flag = "--" + name.replace("_", "-")
    assert getattr(engine_config(settings_from_args(serve_args(flag, env))), field) == expected
