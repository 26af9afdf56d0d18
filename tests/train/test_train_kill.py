"""A trainer killed with SIGKILL in the middle of a checkpoint save resumes from the last complete checkpoint and
continues the same loss trajectory as a run that was never killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from lighthouse.train.metrics import read_metrics
from lighthouse.train.trainer import Trainer
from test_train import _losses, small_cfg

# A training run (save every 3 steps, 8 steps) that SIGKILLs itself during its step-6 save, at a chosen point.
KILLED_RUN = """
import os, signal, sys
sys.path.insert(0, {tests!r})
import lighthouse.train.state as state
from test_train import small_cfg
from lighthouse.train.trainer import Trainer

point, out = sys.argv[1], sys.argv[2]

def die():
    os.kill(os.getpid(), signal.SIGKILL)

real_save_file, real_replace, real_rmtree = state.save_file, state.os.replace, state.shutil.rmtree

def save_file(tensors, path, *a, **kw):  # the optimizer state of step 6, half written
    if point == "optimizer" and "step_000006" in path:
        with open(path, "wb") as f:
            f.write(b"partial")
        die()
    return real_save_file(tensors, path, *a, **kw)

def rmtree(path, *a, **kw):  # pruning step 3 once step 6 is complete: one file deleted, then killed
    if point == "prune" and "step_000003" in str(path):
        next(p for p in __import__("pathlib").Path(path).iterdir()).unlink()
        die()
    return real_rmtree(path, *a, **kw)

class _Os:
    def __getattr__(self, name):
        return getattr(os, name)
    @staticmethod
    def replace(src, dst):  # the rename that makes step 6 visible: killed just before it
        if point == "rename" and "step_000006" in str(dst):
            die()
        return real_replace(src, dst)

state.save_file, state.shutil.rmtree, state.os = save_file, rmtree, _Os()
Trainer(small_cfg(out, save_every=3, keep_last=1)).train()
"""


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    Trainer(small_cfg(out)).train()
    return _losses(out)


# (a kill just before the rename that makes step 6 visible ends like "optimizer": the driver above has it too)
@pytest.mark.parametrize("point,resumes_at", [("optimizer", 3), ("prune", 6)])
def test_sigkill_during_a_checkpoint_save_resumes_from_the_last_complete_one(tmp_path, uninterrupted, point,
                                                                              resumes_at):
    out = tmp_path / "run"
    tests = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.run([sys.executable, "-c", KILLED_RUN.format(tests=tests), point, str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    leftovers = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert any(n.startswith((".tmp-", ".trash-")) for n in leftovers), leftovers  # killed mid-save indeed

    resumed = Trainer(small_cfg(out, save_every=3, keep_last=1))
    assert resumed.step == resumes_at
    resumed.train()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_000008"]  # partial ones cleaned
    losses = _losses(out)
    assert sorted(losses) == list(range(1, 9))
    for step in range(1, 9):
        assert abs(losses[step] - uninterrupted[step]) < 1e-5, (step, losses[step], uninterrupted[step])
    assert read_metrics(out / "metrics.jsonl")[-1]["type"] == "eval"


def test_a_metrics_line_cut_short_by_a_kill_is_skipped_on_resume(tmp_path):
    from lighthouse.train.metrics import MetricsLog

    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.write({"type": "train", "step": 1, "loss": 2.0})
    with open(log.path, "a") as f:
        f.write('{"type": "train", "step": 2, "lo')  # the process died mid-append
    log.truncate_after(1)
    assert read_metrics(log.path) == [{"type": "train", "step": 1, "loss": 2.0}]
