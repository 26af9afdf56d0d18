"""The user documentation stays navigable and current: every relative link in README.md, docs/*.md and the SDK's and
bundled checkpoint's READMEs resolves to a file in the repository (and a `#anchor` to a heading of the target, slugged
as GitHub does); every repository path, `python -m` module and script they quote exists (files move: bench/ became
bench/perf and bench/evals, shell recipes recipes/, checks tests/); every `lighthouse ...` command line in their
shell blocks parses with the real CLI; and they carry no word of the project's internal tracking (issue numbers,
ANCHORS.md) and no hard-coded model id (clients read it from /v1/models)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
USER_DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md"), ROOT / "clients" / "python" / "README.md",
                    ROOT / "lighthouse" / "assets" / "default-checkpoint" / "README.md"])
IDS = [str(p.relative_to(ROOT)) for p in USER_DOCS]

FENCE = re.compile(r"^```.*?^```[ \t]*$", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]+`")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.M)


def prose(text: str) -> str:
    """The text outside fenced code blocks (code may hold `#` comments and `[x](y)`-shaped Python)."""
    return FENCE.sub("", text)


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation other than - and _ removed, spaces
    to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = text.replace("`", "").replace("*", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading's slug in a markdown file, with GitHub's -1, -2 ... suffixes for repeated headings."""
    seen: dict[str, int] = {}
    out = set()
    for _, title in HEADING.findall(prose(path.read_text())):
        slug = github_slug(title)
        n = seen.get(slug, 0)
        out.add(slug if n == 0 else f"{slug}-{n}")
        seen[slug] = n + 1
    return out


def relative_links(doc: Path) -> list[str]:
    text = INLINE_CODE.sub("", prose(doc.read_text()))
    return [t for t in LINK.findall(text) if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]  # not http:, mailto:


def test_the_slugs_are_githubs():
    assert github_slug("RULER on a real model (SmolLM2-135M-Instruct)") == "ruler-on-a-real-model-smollm2-135m-instruct"
    assert github_slug("Docker (B200 host)") == "docker-b200-host"
    assert github_slug("Extending a checkpoint's context") == "extending-a-checkpoints-context"
    assert github_slug("Memory: how long a prompt fits") == "memory-how-long-a-prompt-fits"
    assert github_slug("The `lighthouse` block") == "the-lighthouse-block"


def test_the_readme_links_every_docs_page():
    readme_targets = {t.split("#")[0] for t in relative_links(ROOT / "README.md")}
    for page in (ROOT / "docs").glob("*.md"):
        assert f"docs/{page.name}" in readme_targets, f"README.md does not link docs/{page.name}"
    assert "LICENSE" in readme_targets


@pytest.mark.parametrize("doc", USER_DOCS, ids=IDS)
def test_every_relative_link_resolves_to_a_file_and_heading(doc):
    broken = []
    for target in relative_links(doc):
        path_part, _, anchor = target.partition("#")
        dest = (doc.parent / path_part).resolve() if path_part else doc
        if not dest.exists():
            broken.append(f"{target}: no such file")
            continue
        if ROOT not in dest.parents and dest != ROOT:
            broken.append(f"{target}: outside the repository")
        if anchor:
            if dest.suffix != ".md":
                broken.append(f"{target}: an anchor into a file that is not markdown")
            elif anchor not in anchors(dest):
                broken.append(f"{target}: no heading '{anchor}' in {dest.relative_to(ROOT)}")
    assert not broken, broken


FORBIDDEN = [
    (re.compile(r"\bissues?\s*#?\d+", re.I), "an issue number"),
    (re.compile(r"ANCHORS\.md"), "ANCHORS.md (not in the repository)"),
    (re.compile(r"\bthe issue\b|\bissue's\b", re.I), "the issue"),
    (re.compile(r"\b(?:this|previous|next) session\b|\bdevice time\b", re.I), "a working session"),
    (re.compile(r"lighthouse-default"), "a hard-coded model id (read it from /v1/models)"),
]


@pytest.mark.parametrize("doc", USER_DOCS, ids=IDS)
def test_no_word_of_internal_tracking_or_hard_coded_model_ids(doc):
    text = doc.read_text()
    found = [f"{why}: {m.group(0)!r}" for pattern, why in FORBIDDEN for m in pattern.finditer(text)]
    assert not found, found


# a repository path as the docs quote it in code: `bench/results/...`, `tests/ops/test_x.py`, ...
REPO_PATH = re.compile(r"^(?:bench|recipes|tests|lighthouse|server|clients|scripts|docs)/[\w./-]*$")
PLACEHOLDER = re.compile(r"NAME|<|\*|\{|\.\.\.|_N\b|step_N|DIR")


def quoted_paths(doc: Path) -> list[str]:
    """Repository paths in inline code spans and in the shell lines of code blocks (`bash recipes/x.sh ...`)."""
    text = doc.read_text()
    spans = [s.strip("`").split()[0] for s in INLINE_CODE.findall(prose(text)) if s.strip("`").strip()]
    words = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, re.S | re.M):
        words += [w for line in block.splitlines() for w in line.split()]
    spans += [w for s in INLINE_CODE.findall(prose(text)) for w in s.strip("`").split()[1:]]
    return sorted({p.rstrip(".,:;)") for p in spans + words if REPO_PATH.match(p.rstrip(".,:;)"))
                   and not PLACEHOLDER.search(p)})


def quoted_modules(doc: Path) -> list[str]:
    """Modules the docs run with `python -m X` (from this repository: bench, recipes, lighthouse)."""
    found = re.findall(r"python3? -m ((?:bench|recipes|lighthouse)(?:\.\w+)+)", doc.read_text())
    return sorted({m for m in found if not PLACEHOLDER.search(m)})


@pytest.mark.parametrize("doc", USER_DOCS, ids=IDS)
def test_every_quoted_path_and_module_exists(doc):
    missing = [p for p in quoted_paths(doc) if not (ROOT / p).exists()]
    for module in quoted_modules(doc):
        base = ROOT / module.replace(".", "/")
        if not (base.with_suffix(".py").is_file() or (base / "__main__.py").is_file()):
            missing.append(f"python -m {module}")
    assert not missing, missing


def test_the_path_check_sees_paths_and_skips_placeholders(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text("Run `bench/perf/attention_bench.py` and `bench/results/<date>_<device>/`; "
                   "`tests/ops/test_op_lighthouse.py` (`pytest tests/train/test_train.py`).\n\n"
                   "```bash\nbash recipes/train_default.sh OUT\npython -m bench.perf.NAME --out DIR\n```\n")
    assert quoted_paths(doc) == ["bench/perf/attention_bench.py", "recipes/train_default.sh",
                                 "tests/ops/test_op_lighthouse.py", "tests/train/test_train.py"]
    assert quoted_modules(doc) == []


def lighthouse_command_lines(doc: Path) -> list[str]:
    """`lighthouse ...` lines of the shell blocks, continuation lines joined, comments dropped."""
    lines = []
    for block in re.findall(r"^```bash\n(.*?)^```", doc.read_text(), re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0] == "lighthouse":
                lines.append(line)
    return lines


@pytest.mark.parametrize("doc", USER_DOCS, ids=IDS)
def test_every_lighthouse_command_line_parses_with_the_real_cli(doc):
    from lighthouse.cli import build_parser

    parser = build_parser()
    bad = []
    for line in lighthouse_command_lines(doc):
        try:
            parser.parse_args(shlex.split(line, comments=True)[1:])
        except SystemExit:
            bad.append(line.strip())
    assert not bad, bad
