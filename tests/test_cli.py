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
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("lighthouse_server."):
            roots.add(f"the import string {node.value!r}")
    return roots


def test_the_library_never_imports_the_server():
    offenders = {str(p.relative_to(ROOT)): r for p in (ROOT / "lighthouse").rglob("*.py")
                 if (r := {x for x in _imported_roots(p)
                           if x in ("server", "lighthouse_server") or x.startswith("the import string")})}
    assert not offenders, offenders


def test_nothing_imports_the_server_by_its_folder_name():
    """The server folder installs as `lighthouse_server` (pyproject maps it); the generic name `server` is never
    imported, so another package called `server` in a user's environment cannot shadow it or be shadowed."""
    folders = ("lighthouse", "server", "tests", "bench", "recipes", "clients")
    files = [p for d in folders for p in (ROOT / d).rglob("*.py") if "experiments" not in p.parts]
    offenders = sorted(str(p.relative_to(ROOT)) for p in files if "server" in _imported_roots(p))
    assert not offenders, offenders


def test_every_package_folder_is_installed():
    tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python 3.11+")
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    renamed = {folder: name for name, folder in tool["package-dir"].items()}
    folders = sorted(str(p.parent.relative_to(ROOT)) for d in ("lighthouse", "server")
                     for p in (ROOT / d).rglob("__init__.py"))
    expected = set()
    for folder in folders:
        top, *rest = folder.split("/")
        expected.add(".".join([renamed.get(top, top), *rest]))
    data_only = {"lighthouse.assets"}  # the bundled checkpoint's folder, shipped as package data
    assert set(tool["packages"]) == expected | data_only
    assert all((ROOT / p.replace(".", "/")).is_dir() for p in data_only)
    # bench/ and recipes/ are packages of the repository only (python -m bench.perf.X from its root), never installed
    assert (ROOT / "bench" / "__init__.py").is_file() and (ROOT / "recipes" / "__init__.py").is_file()
    assert not {p for p in tool["packages"] if p.split(".")[0] in ("bench", "recipes")}


def test_the_server_is_importable_under_its_installed_name_only():
    code = ("import importlib.util, lighthouse_server.cli as c; "
            "print(c.__file__); print(importlib.util.find_spec('server'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd="/")
    assert out.returncode == 0, out.stderr
    path, spec = out.stdout.split()[:2]
    assert Path(path).parent.name == "server" or "lighthouse_server" in path, path
    assert spec == "None", "the folder name `server` must not be an installed import name"


def test_serve_is_registered_by_the_server_in_pyproject():
    tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python 3.11+")
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["entry-points"][cli.ENTRY_POINT_GROUP] == {"serve": "lighthouse_server.cli"}
    assert cli.registered_commands() == {"serve": "lighthouse_server.cli"}, "reinstall: pip install -e ."


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
    assert not scripts, f"scripts belong in bench/, bench/experiments/ or recipes/, not among the results: {scripts}"
