"""Shared fixtures for the engine and server tests: tiny checkpoints, a tiny `LLM` and a loopback server.

The tiny model is the `tiny` preset with random weights whose LM-head rows for ids >= 128 are zeroed, so greedy
and sampled outputs are ASCII text (stop strings and logprobs then have something to work on). No EOS is ever
likely, so generations run to max_tokens unless a stop condition hits.

The helpers are given to tests as session-scoped fixtures (factories), so that module-scoped fixtures can use
them and no test module imports another.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest
import torch

ASCII = 128


@pytest.fixture(scope="session", autouse=True)
def _whole_decode_batches():
    """Decode slices (lighthouse/engine/decode_slices.py) choose which rows share a step from measured step time,
    so on a slow or busy CPU the batches would differ from run to run: in-process engines here decode every running
    sequence each step (--decode-step-budget-ms 0). tests/engine/test_decode_slices.py sets its own slicers."""
    from lighthouse.engine.scheduler import Scheduler

    init = Scheduler.__init__

    def whole(self, *args, **kw):
        init(self, *args, **{**kw, "decode_budget_ms": 0.0})

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Scheduler, "__init__", whole)
        yield


def _make_checkpoint(out: Path, *, preset: str = "tiny", seed: int = 0, **overrides) -> Path:
    from lighthouse.checkpoint import save_checkpoint
    from lighthouse.model import LlamaForCausalLM, model_preset

    cfg = model_preset(preset)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)  # peaked distributions: less degenerate text
        model.lm_head.weight[ASCII:] = 0.0
    save_checkpoint(model, None, out)
    return out


def _tiny_llm(ckpt: Path, kv_cache_bytes: int = 64 << 20, **engine_config):
    """An fp32 CPU `LLM` over `ckpt` (engine tests): a 64 MiB KV budget unless asked otherwise. Prefills run whole
    (no time budget) unless a test asks for pieces: what one `step()` does must not depend on the machine's speed."""
    from lighthouse.engine.config import EngineConfig
    from lighthouse.engine.llm import LLM

    engine_config.setdefault("max_prefill_chunk_ms", None)
    return LLM(str(ckpt), EngineConfig(kv_cache_bytes=kv_cache_bytes, **engine_config), device="cpu", dtype="float32")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _LoopbackServer:
    """A real uvicorn server on 127.0.0.1 in a background thread, built by create_app(settings)."""

    def __init__(self, settings, *, engine=None):
        import uvicorn

        from lighthouse_server.app import create_app

        self.app = create_app(settings, engine=engine)
        self.port = settings.port
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "_LoopbackServer":
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)

    @property
    def engine(self):
        return self.app.state.engine


def _settings_for(ckpt: Path, **kw):
    from lighthouse_server.settings import Settings

    base = dict(checkpoint=str(ckpt), port=_free_port(), device="cpu", dtype="float32", kv_cache_gb=0.25)
    base.update(kw)
    return Settings(**base)


class _ServeProcess:
    """`python -m lighthouse.cli ARGS...` (e.g. serve ...) as a subprocess on `port`, its output in `log`; entering
    waits until /ready answers 200 (failing with the log's tail if the process dies or `ready_s` passes); leaving
    sends SIGTERM and keeps the exit code in `.returncode` (None if it had to be killed)."""

    def __init__(self, args, *, port: int, env: dict, log: Path, cwd: Path, ready_s: float = 120):
        self.args, self.env, self.log_path, self.cwd, self.ready_s = list(args), env, log, cwd, ready_s
        self.url = f"http://127.0.0.1:{port}"
        self.returncode: int | None = None

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def __enter__(self) -> "_ServeProcess":
        import subprocess
        import sys

        import httpx

        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in __exit__
        self.proc = subprocess.Popen([sys.executable, "-m", "lighthouse.cli", *self.args], env=self.env,
                                     cwd=str(self.cwd), stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.ready_s
        try:
            while True:
                assert self.proc.poll() is None, self.log_tail()
                try:
                    if httpx.get(f"{self.url}/ready", timeout=2).status_code == 200:
                        return self
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, f"not ready after {self.ready_s:.0f} s\n{self.log_tail()}"
                time.sleep(0.2)
        except BaseException:
            self.__exit__()
            raise

    def __exit__(self, *exc) -> None:
        import signal
        import subprocess

        self.proc.send_signal(signal.SIGTERM)
        try:
            self.returncode = self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


@pytest.fixture(scope="session")
def serve_process():
    """serve_process(args, *, port, env, log, cwd, ready_s=120): a context manager running `lighthouse ARGS` as a
    subprocess until /ready, then SIGTERM on exit (`.url`, `.returncode`, `.log_tail()`)."""
    return _ServeProcess


def _wait_until(cond, timeout: float = 10.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(interval)
    return cond()


def _prefilled_cache(eng, kv, n: int, plan):
    """([(K, V) of positions [0, n) in every layer], [context (K, V) rows of every Lighthouse layer] or None)."""
    pool, L = eng.kv.pool, eng.model.config.num_hidden_layers
    cache = [tuple(t.clone() for t in pool.read(kv.full_table(i), n)) if kv.full_table(i) else None
             for i in range(L)]
    ctx = None
    if kv.sparse:
        ctx = [pool.gather(pool.slots(kv.ctx_blocks[i], 0, kv.ctx_len * pool.shape.group))
               for i in plan.lighthouse_layers]
    return cache, ctx


@pytest.fixture(scope="session")
def prefilled_cache():
    """prefilled_cache(engine, kv, n, plan) -> (every layer's (K, V) of [0, n), the sparse-decode context or None)."""
    return _prefilled_cache


def _assert_error(r, status: int, *, param=..., code=..., contains: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if param is not ...:
        assert err["param"] == param, err
    if code is not ...:
        assert err["code"] == code, err
    if contains:
        assert contains in err["message"], err
    return err


@pytest.fixture(scope="session")
def assert_error():
    """assert_error(response, status, *, param=..., code=..., contains=None) -> the OpenAI error object, after
    checking the status, the object's four fields and (where given) its param, code and message text."""
    return _assert_error


@pytest.fixture(scope="session")
def make_checkpoint():
    """make_checkpoint(out, *, preset="tiny", seed=0, **config_overrides) -> out: a random ASCII-only checkpoint."""
    return _make_checkpoint


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """One `tiny` checkpoint (seed 0) for the whole session; tests must not modify it (copy it first)."""
    return _make_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt")


@pytest.fixture(scope="session")
def tiny_llm():
    """tiny_llm(ckpt, kv_cache_bytes=64 MiB, **engine_config) -> an fp32 CPU `LLM`."""
    return _tiny_llm


@pytest.fixture(scope="session")
def free_port():
    """free_port() -> a free TCP port on 127.0.0.1."""
    return _free_port


@pytest.fixture(scope="session")
def loopback_server():
    """loopback_server(settings, *, engine=None): a context manager running a real uvicorn server in a thread."""
    return _LoopbackServer


@pytest.fixture(scope="session")
def settings_for():
    """settings_for(ckpt, **overrides) -> server Settings on a free port, CPU, fp32, a 0.25 GB KV cache."""
    return _settings_for


@pytest.fixture(scope="session")
def wait_until():
    """wait_until(cond, timeout=10.0, interval=0.02) -> whether cond() became true in time."""
    return _wait_until
