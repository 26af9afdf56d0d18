"""Each setting is declared once (lighthouse/engine/config.py for the engine's, server/settings.py for the server's)
and everything else is generated from that declaration: every field has exactly one `lighthouse serve` flag and one
LIGHTHOUSE_* variable, every engine field is a server setting and a `lighthouse generate` flag with the same default,
bounds and help, and docs/serving.md's flag table is the generated one."""

from __future__ import annotations

import argparse
import collections
import dataclasses

from lighthouse.engine import cli as generate_cli
from lighthouse.engine.config import EngineConfig, EngineSettings, InGiB, LoadSettings, user_name
from lighthouse_server import cli as serve_cli
from lighthouse_server import flag_table
from lighthouse_server.settings import ENV_PREFIX, Settings


def _options(add_arguments) -> tuple[collections.Counter, dict[str, str]]:
    """How often each option string is declared, and each one's help."""
    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
    actions = [a for a in parser._actions if a.option_strings]
    counts = collections.Counter(option for a in actions for option in a.option_strings)
    return counts, {a.option_strings[0]: a.help or "" for a in actions}


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def test_every_server_setting_has_exactly_one_serve_flag_and_one_variable():
    counts, helps = _options(serve_cli.add_arguments)
    assert sorted(f for f, n in counts.items() if n > 1) == [], "flags declared twice"
    assert sorted(counts) == sorted(_flag(name) for name in Settings.model_fields), "flags and settings differ"
    variables = collections.Counter(word.strip("[]") for text in helps.values() for word in text.split()
                                    if word.strip("[]").startswith(ENV_PREFIX))
    assert variables == collections.Counter(f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields)
    assert Settings.model_config["env_prefix"] == ENV_PREFIX  # the variable each help names is the one read


def test_every_engine_setting_is_one_server_setting_and_one_generate_flag():
    fields = EngineConfig.__pydantic_fields__
    users = [user_name(name, info) for name, info in fields.items()]
    assert sorted(users) == sorted(EngineSettings.model_fields), "EngineSettings is EngineConfig as users give it"
    assert set(users) <= set(Settings.model_fields) and set(LoadSettings.model_fields) <= set(Settings.model_fields)
    counts, _ = _options(generate_cli.add_arguments)
    assert sorted(f for f, n in counts.items() if n > 1) == []
    missing = [_flag(name) for name in [*users, *LoadSettings.model_fields] if counts[_flag(name)] != 1]
    assert missing == [], "engine and model settings without their `lighthouse generate` flag"


def test_engine_settings_keep_the_declared_default_bounds_and_help(monkeypatch):
    for name, info in EngineConfig.__pydantic_fields__.items():
        mine = Settings.model_fields[user_name(name, info)]
        assert mine.description == info.description and mine.description, name
        assert mine.metadata == [m for m in info.metadata if not isinstance(m, InGiB)], name
    for name in Settings.model_fields:
        monkeypatch.delenv(f"{ENV_PREFIX}{name.upper()}", raising=False)
    assert Settings().engine_config() == EngineConfig()  # the same defaults, the GiB ones included
    assert dataclasses.replace(EngineConfig(), block_size=64).block_size == 64  # still a dataclass for the engine


def test_the_flag_table_in_the_docs_is_the_generated_one():
    page = flag_table.PAGE.read_text(encoding="utf-8")
    assert flag_table.with_table(page) == page, "docs/serving.md's flag table is stale: python -m lighthouse_server.flag_table"
    for name in Settings.model_fields:
        assert f"`{ENV_PREFIX}{name.upper()}`" in page and f"`{_flag(name)}" in page, name
