"""The benchmark and recipe scripts are modules of repo-only packages (`bench`, `recipes`) that run with
`python -m` from the repository root: none edits sys.path, each one's --help works, and the scripts that call
them name paths and modules that exist."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT_TREES = ("bench", "recipes")
SYS_PATH_EDIT = re.compile(r"sys\.path\s*(\.\s*(insert|append|extend|remove|pop|clear)\b|\[[^]]*\]\s*=|\+=|=[^=])")


def _modules_with_a_cli() -> list[str]:
    found = []
    for tree in ("bench/perf", "bench/evals", "recipes"):
        for path in sorted((ROOT / tree).glob("*.py")):
            text = path.read_text()
            if '__name__ == "__main__"' in text and "argparse" in text:
                found.append(".".join(path.relative_to(ROOT).with_suffix("").parts))
    return found


def test_no_script_under_bench_or_recipes_edits_sys_path():
    offenders = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}"
                 for tree in SCRIPT_TREES for p in sorted((ROOT / tree).rglob("*.py"))
                 for i, line in enumerate(p.read_text().splitlines(), 1) if SYS_PATH_EDIT.search(line)]
    assert not offenders, "import through the package (`from bench.perf.x import y`) instead:\n" + "\n".join(offenders)


# One interpreter for all of them (torch is imported once): runpy.run_module is what `python -m NAME` runs.
HELP_ALL = """
import contextlib, io, runpy, sys
failed = []
for name in sys.argv[1:]:
    sys.argv, out = [name, "--help"], io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_module(name, run_name="__main__", alter_sys=True)
        failed.append(f"{name}: returned instead of exiting after --help")
    except SystemExit as e:
        if e.code not in (0, None) or "usage:" not in out.getvalue():
            failed.append(f"{name}: exit {e.code}: {out.getvalue()[-300:]}")
    except BaseException as e:
        failed.append(f"{name}: {type(e).__name__}: {e}")
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


@pytest.mark.timeout(300)
def test_every_script_with_a_cli_answers_help_as_a_module():
    modules = _modules_with_a_cli()
    assert {"bench.perf.prefill_bench", "bench.evals.ruler", "recipes.train_compare"} <= set(modules), modules
    proc = subprocess.run([sys.executable, "-c", HELP_ALL, *modules], capture_output=True, text=True, cwd=ROOT,
                          timeout=280)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]


def _named_in_scripts() -> list[tuple[str, str]]:
    """(script, what it names) for every `-m MODULE` of bench or recipes in the shell and Python scripts, and every
    bench/ or recipes/ script path in the shell scripts (README and results notes quote older layouts)."""
    named = []
    scripts = [p for tree in (*SCRIPT_TREES, "scripts") for p in (ROOT / tree).rglob("*") if p.suffix in (".sh", ".py")]
    for path in scripts:
        text = path.read_text()
        # not a placeholder (bench.perf.NAME) nor a package whose module a shell variable names (bench.perf.$bench)
        named += [(str(path.relative_to(ROOT)), m) for m in re.findall(r"-m ((?:bench|recipes)(?:\.\w+)+)(?!\w|\.\$)", text)
                  if m.islower()]
        if path.suffix == ".sh":
            named += [(str(path.relative_to(ROOT)), m)
                      for m in re.findall(r"(?<![\w/.-])((?:bench|recipes)/[\w./-]+\.(?:py|sh))\b", text)]
    return named


def test_every_script_and_module_the_scripts_name_exists():
    named = _named_in_scripts()
    assert any(what == "bench.evals.passkey_eval" for _, what in named), named  # the recipes call it
    missing = []
    for script, what in named:
        path = ROOT / what if "/" in what else ROOT / (what.replace(".", "/") + ".py")
        if not path.is_file():
            missing.append(f"{script}: {what}")
    assert not missing, missing


def test_the_official_code_is_imported_from_its_folder_without_touching_sys_path(tmp_path, monkeypatch):
    from bench.official import SELECTION, available, import_official

    pkg = tmp_path / "torchtitan" / "models" / "llama3" / "model"
    pkg.mkdir(parents=True)
    for d in (pkg, *pkg.parents):
        if d == tmp_path:
            break
        (d / "__init__.py").write_text("")
    (pkg / "lighthouse_selection_cuda.py").write_text("GRID = 65535\n")
    (pkg / "lighthouse_selection.py").write_text(
        "from torchtitan.models.llama3.model.lighthouse_selection_cuda import GRID\n")  # as the official code does
    assert available(tmp_path) and not available(tmp_path / "elsewhere")
    for name in [m for m in sys.modules if m.split(".")[0] == "torchtitan"]:
        monkeypatch.delitem(sys.modules, name)
    before = list(sys.path)
    try:
        assert import_official(tmp_path, SELECTION).GRID == 65535
        assert sys.path == before
    finally:
        for name in [m for m in sys.modules if m.split(".")[0] == "torchtitan"]:
            del sys.modules[name]
