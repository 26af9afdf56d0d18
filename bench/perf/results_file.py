"""A benchmark's results JSON: rewritten after every measure, so a run cut short keeps what it measured; a measure
that raises is recorded under "errors" (its traceback's end) and the run goes on."""

from __future__ import annotations

import json
import time
import traceback
from pathlib import Path
from typing import Any, Callable


class ResultsFile:
    def __init__(self, path: Path, res: dict, log: Callable[[str], None], t0: float):
        self.path, self.res, self.log, self.t0 = path, res, log, t0
        res.setdefault("errors", {})

    def save(self) -> None:
        self.res["elapsed_s"] = round(time.monotonic() - self.t0, 1)
        self.path.write_text(json.dumps(self.res, indent=2, default=str))

    def measure(self, key: str, fn: Callable[[], Any]) -> Any:
        """res[key] = fn(), logged and saved; None (and the error recorded) if it raised."""
        self.log(f"{key} ...")
        try:
            self.res[key] = fn()
            self.log(f"{key}: {json.dumps(self.res[key], default=str)[:400]}")
        except Exception:
            self.res["errors"][key] = traceback.format_exc()[-2000:]
            self.log(f"{key}: FAILED {self.res['errors'][key][-600:]}")
        self.save()
        return self.res.get(key)
