"""The README's SDK and Docker examples stay valid: every Python block compiles and every name it takes
from lighthouse_client exists. (They were also run against a live server when written.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import lighthouse_client as lc

README_PATH = Path(__file__).resolve().parents[3] / "README.md"  # the repository's README, not the SDK's
if not README_PATH.is_file():  # the SDK tested on its own, outside the repository
    pytest.skip("the repository's README.md is not here", allow_module_level=True)
README = README_PATH.read_text()


def section(title: str) -> str:
    start = README.index(f"## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else len(README)]


BLOCKS = [b for t in ("Python SDK", "Docker (B200 host)") for b in re.findall(r"```python\n(.*?)```", section(t), re.S)]


def test_the_sections_have_examples():
    assert len(BLOCKS) >= 5
    assert "could not be built" in section("Docker (B200 host)") or "has not been built" in section("Docker (B200 host)")
    assert "--gpus all" in section("Docker (B200 host)") and "curl" in section("Docker (B200 host)")


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_python_block_compiles_and_uses_real_sdk_names(index):
    code = BLOCKS[index]
    compile(code, f"README block {index}", "exec")
    for names in re.findall(r"from lighthouse_client import (.+)", code):
        for name in names.split(","):
            assert hasattr(lc, name.strip()), name
    for name in re.findall(r"\blc\.(\w+)", code):
        assert hasattr(lc, name), name
    for method in re.findall(r"client\.(\w+(?:\.\w+)*)\(", code):
        obj = lc.Client()
        if method.split(".")[0] in ("models", "completions", "chat", "documents", "tokenize", "detokenize", "health",
                                    "ready", "with_options"):  # fmt: skip
            for part in method.split("."):
                obj = getattr(obj, part)
