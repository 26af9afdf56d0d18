"""lighthouse-client installs and imports on its own: httpx and pydantic, never torch or the server."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

CLIENT = Path(__file__).resolve().parents[1]  # clients/python: the SDK's own project
PACKAGE = CLIENT / "lighthouse_client"
ALLOWED_THIRD_PARTY = {"httpx", "pydantic"}

# Imports torch, the server or the library would make the SDK heavy (or circular); block them.
BLOCKER = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {'torch', 'lighthouse', 'server', 'fastapi', 'numpy', 'transformers'}:
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
"""
USE_IT = """
import sys
import lighthouse_client as lc
c = lc.Client(base_url='http://127.0.0.1:1', max_retries=0)
try:
    c.models.list()
except lc.APIConnectionError:
    pass
assert lc.types.Completion.model_validate({'choices': [{'text': 'x'}]}).text == 'x'
from importlib.resources import files
assert files('lighthouse_client').joinpath('py.typed').is_file(), 'py.typed is missing: type checkers ignore the SDK'
assert 'torch' not in sys.modules, 'torch was imported'
print(lc.__version__)
"""


def test_declared_dependencies_are_httpx_and_pydantic_only():
    tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python 3.11+")
    meta = tomllib.loads((CLIENT / "pyproject.toml").read_text())["project"]
    assert meta["name"] == "lighthouse-client"
    names = {dep.split(">")[0].split("<")[0].split("=")[0].split("[")[0].strip() for dep in meta["dependencies"]}
    assert names == ALLOWED_THIRD_PARTY
    assert not meta.get("optional-dependencies")


def test_the_package_imports_only_the_standard_library_httpx_and_pydantic():
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots = [node.module.split(".")[0]]
            else:
                continue
            for root in roots:
                assert root in stdlib or root in ALLOWED_THIRD_PARTY, f"{path.name} imports {root}"


def test_it_imports_and_works_with_torch_and_the_server_blocked():
    env = {**os.environ, "PYTHONPATH": str(CLIENT)}
    proc = subprocess.run([sys.executable, "-c", BLOCKER + USE_IT], env=env, capture_output=True, text=True,
                          timeout=60, cwd=str(CLIENT))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == __import__("lighthouse_client").__version__


NETWORK_HINTS = ("No matching distribution", "Could not find a version", "NewConnectionError", "Temporary failure",
                 "Network is unreachable", "Max retries exceeded")  # fmt: skip


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_fresh_venv_with_only_the_client_installed_has_no_torch(tmp_path):
    """pip install clients/python into an empty venv (about 15 s with the package index reachable)."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    try:
        install = subprocess.run([str(python), "-m", "pip", "install", "-q", "--timeout", "20", "--retries", "1",
                                  str(CLIENT)], capture_output=True, text=True, timeout=150)  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.skip("pip install did not finish in 150 s (package index unreachable or very slow)")
    if install.returncode != 0 and any(h in install.stderr for h in NETWORK_HINTS):
        pytest.skip(f"no package index reachable to install httpx/pydantic: {install.stderr[-300:]}")
    assert install.returncode == 0, install.stderr
    check = subprocess.run([str(python), "-c", USE_IT], capture_output=True, text=True, timeout=60,
                           cwd=str(tmp_path))  # fmt: skip
    assert check.returncode == 0, check.stderr
    listed = subprocess.run([str(python), "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True)
    installed = {line.split("==")[0].lower() for line in listed.stdout.splitlines()}
    assert "lighthouse-client" in installed
    assert not installed & {"torch", "lighthouse-serve", "numpy", "fastapi"}, installed
