"""The commands a new user types first: `lighthouse --help` lists the commands plainly, and every server setting
has its `lighthouse serve` flag (the documented `--default-max-tokens` among them)."""

from __future__ import annotations

import collections
import subprocess
import sys
from pathlib import Path

from lighthouse import cli
from lighthouse_server.cli import _FLAGS, settings_from_args
from lighthouse_server.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("serve", "train", "generate", "models", "convert")


def _field(flag: str) -> str:
    return flag[2:].replace("-", "_")


def test_every_setting_has_exactly_one_serve_flag_and_every_flag_a_setting():
    """No setting is environment-only: each field of Settings is also a flag, once, and no flag names no field."""
    counts = collections.Counter(_field(flag) for flag, _type, _help in _FLAGS)
    assert [f for f, n in counts.items() if n > 1] == []
    assert sorted(set(Settings.model_fields) - set(counts)) == [], "settings without a flag"
    assert sorted(set(counts) - set(Settings.model_fields)) == [], "flags without a setting"


def test_serve_accepts_default_max_tokens_and_retry_after_s():
    parser = cli.build_parser(only="serve")  # the parser `lighthouse serve ...` gets, through the entry point
    args = parser.parse_args(["serve", "--default-max-tokens", "64", "--retry-after-s", "7"])
    settings = settings_from_args(args)
    assert (settings.default_max_tokens, settings.retry_after_s) == (64, 7)


def test_help_lists_the_commands_plainly_with_one_line_helps():
    out = subprocess.run([sys.executable, "-m", "lighthouse.cli", "--help"], capture_output=True, text=True,
                         timeout=120, cwd=str(ROOT))
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "other packages register" not in text and "{serve," not in text, text
    listed = [line.split()[0] for line in text.split("commands:")[1].splitlines()
              if line.startswith("    ") and line.split()[0] in COMMANDS]
    assert listed == list(COMMANDS), text
    for name in COMMANDS:
        line = next(line for line in text.splitlines() if line.startswith(f"    {name} "))
        assert len(line.split()) > 2, f"{name} has no help: {line!r}"


def test_building_the_help_of_a_library_command_imports_no_server():
    code = ("import sys; from lighthouse import cli; cli.build_parser(only='train'); "
            "print(any(m.startswith('lighthouse_server') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=str(ROOT))
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stdout + out.stderr
