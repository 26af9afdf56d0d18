"""The documented SDK and Docker examples stay valid: every Python block of the SDK's README, of the repository
README's "Python SDK" section and of docs/deployment.md's Docker section compiles, and every name it takes from
lighthouse_client exists. (They were also run against a live server when written.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import lighthouse_client as lc

SDK_README = Path(__file__).resolve().parents[1] / "README.md"  # the SDK's own README: its full documentation
REPO = Path(__file__).resolve().parents[3]
if not (REPO / "README.md").is_file() or not (REPO / "docs" / "deployment.md").is_file():  # the SDK on its own
    pytest.skip("the repository's README.md and docs/ are not here", allow_module_level=True)
README = (REPO / "README.md").read_text()
DEPLOYMENT = (REPO / "docs" / "deployment.md").read_text()


def section(title: str, text: str = README) -> str:
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


DOCKER = section("Docker (B200 host)", DEPLOYMENT)
BLOCKS = [b for text in (SDK_README.read_text(), section("Python SDK"), DOCKER)
          for b in re.findall(r"```python\n(.*?)```", text, re.S)]


def test_the_sections_have_examples():
    assert len(BLOCKS) >= 5
    assert "could not be built" in DOCKER or "has not been built" in DOCKER
    assert "--gpus all" in DOCKER and "curl" in DOCKER


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
