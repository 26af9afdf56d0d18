"""The `lighthouse` command and the project's layout: the library knows its own commands only, the server adds
`serve` through an entry point declared in pyproject.toml, and the dependency between them points one way."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from lighthouse import cli

ROOT = Path(__file__).resolve().parents[1]


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("server."):
            roots.add(f"the import string {node.value!r}")
    return roots


def test_the_library_never_imports_the_server():
    offenders = {str(p.relative_to(ROOT)): r for p in (ROOT / "lighthouse").rglob("*.py")
                 if (r := {x for x in _imported_roots(p) if x == "server" or x.startswith("the import string")})}
    assert not offenders, offenders


def test_serve_is_registered_by_the_server_in_pyproject():
    tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python 3.11+")
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["entry-points"][cli.ENTRY_POINT_GROUP] == {"serve": "server.cli"}
    assert cli.registered_commands() == {"serve": "server.cli"}, "reinstall: pip install -e ."


def test_help_lists_serve_train_and_generate():
    out = subprocess.run([sys.executable, "-m", "lighthouse.cli", "--help"], capture_output=True, text=True,
                         timeout=120, cwd=str(ROOT))  # fmt: skip
    assert out.returncode == 0, out.stderr
    for name in ("serve", "train", "generate"):
        assert f"    {name} " in out.stdout, out.stdout
    assert "Start the OpenAI-compatible HTTP server." in out.stdout  # serve's help: its module's docstring
    assert "bench" not in out.stdout


class _EntryPoint:
    def __init__(self, name: str, value: str):
        self.name, self.value = name, value


def test_a_command_that_fails_to_load_is_reported_and_the_others_still_run(monkeypatch, capsys):
    eps = [_EntryPoint("broken", "no_such_module_anywhere.cli"), _EntryPoint("train", "elsewhere.train")]
    monkeypatch.setattr(cli, "entry_points", lambda group: eps if group == cli.ENTRY_POINT_GROUP else [])
    assert cli.registered_commands() == {"broken": "no_such_module_anywhere.cli"}  # the library's names win
    assert cli.main(["broken"]) == 2
    assert "`lighthouse broken` is unavailable: ModuleNotFoundError" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["generate", "--help"])
    assert exit_info.value.code == 0 and "--max-tokens" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0 and "broken" in capsys.readouterr().out


def test_benchmarks_have_one_home_and_results_hold_results_only():
    assert not (ROOT / "lighthouse" / "bench").exists(), "benchmarks live in bench/"
    scripts = [str(p.relative_to(ROOT)) for p in (ROOT / "bench" / "results").rglob("*") if p.suffix in (".py", ".sh")]
    assert not scripts, f"scripts belong in bench/ or bench/experiments/, not among the results: {scripts}"
