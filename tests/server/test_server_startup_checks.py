"""`lighthouse serve` refuses what it cannot honour before it loads any weights, in one line on stderr and a non-zero
exit (issue 29 item 7): a bad config.json (a FIFO hung, 1e9 layers grew memory for minutes, absurd sizes and
topk 0 exited with tracebacks or served NUL characters), budgets the machine's memory cannot hold (started without
a word, or a traceback), a KV budget that holds no sequence, and a port in use (found only after the model
loaded). The machine's memory is played by replacing lighthouse.engine.memory.available_memory, so no test depends
on the RAM of the machine it runs on."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch

from lighthouse.checkpoint import default_checkpoint_dir
from lighthouse.model.config import ModelConfig

GiB = 1 << 30

# `lighthouse serve` on a machine whose available memory is AVAILABLE_GIB (the first argument)
SERVE_WITH_MEMORY = """
import sys
import lighthouse.engine.memory as memory
memory.available_memory = lambda device: int(float(sys.argv[1]) * 2**30)
from lighthouse.cli import main
sys.exit(main(sys.argv[2:]))
"""


def serve(*args, memory_gib: float | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    head = [sys.executable, "-c", SERVE_WITH_MEMORY, str(memory_gib)] if memory_gib else [sys.executable, "-m",
                                                                                          "lighthouse.cli"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIGHTHOUSE_")}
    return subprocess.run([*head, "serve", "--device", "cpu", *args], capture_output=True, text=True, timeout=timeout,
                          env=env)


def assert_one_line(proc: subprocess.CompletedProcess, expected: str) -> None:
    """Exit 1, the expected line on stderr as the server's only words, no traceback, nothing loaded."""
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == [f"lighthouse serve: {expected}"], out
    assert "Traceback" not in out and "engine ready" not in out, out


@pytest.fixture()
def bad_checkpoint(tmp_path):
    """bad_checkpoint(**config_edits) -> a copy of the bundled checkpoint with config.json edited."""

    def make(**edits):
        ckpt = tmp_path / "ckpt"
        shutil.copytree(default_checkpoint_dir(), ckpt)
        cfg = json.loads((ckpt / "config.json").read_text())
        for key, value in edits.items():
            if key.startswith("lighthouse_"):
                cfg["lighthouse"][key.removeprefix("lighthouse_")] = value
            else:
                cfg[key] = value
        (ckpt / "config.json").write_text(json.dumps(cfg))
        return ckpt

    return make


BAD_CONFIGS = [  # (config.json edits, what the one line says after "<path> is not a usable model config: ")
    ({"num_hidden_layers": 1e9}, "num_hidden_layers must be a whole number in 1..1,024, got 1000000000.0"),
    ({"num_hidden_layers": 10**9}, "num_hidden_layers must be a whole number in 1..1,024, got 1000000000"),
    ({"hidden_size": 10**8}, "hidden_size must be a whole number in 1..65,536, got 100000000"),
    ({"intermediate_size": "big"}, "intermediate_size must be a whole number in 1..262,144, got 'big'"),
    ({"vocab_size": -1}, "vocab_size must be a whole number in 1..4,194,304, got -1"),
    ({"head_dim": -64}, "head_dim must be a whole number in 2..1,024, got -64"),
    ({"max_position_embeddings": 1e12}, "max_position_embeddings must be a whole number in 2..16,777,216, got "
                                        "1000000000000.0"),
    ({"num_key_value_heads": -2}, "num_key_value_heads must be a whole number in 1..4, got -2"),
    ({"rope_theta": math.nan, "rope_parameters": None}, "rope_theta must be a finite number > 1, got nan (the RoPE "
                                                        "base: 10000 and 500000 are usual)"),
    ({"lighthouse_topk": 0}, "lighthouse.topk must be a positive multiple of 128 (got 0); e.g. 128 or 256"),
]


@pytest.mark.parametrize("edits,reason", BAD_CONFIGS, ids=[f"{next(iter(e))}-{i}" for i, (e, _) in enumerate(BAD_CONFIGS)])
def test_a_config_json_out_of_bounds_is_one_line_before_loading(bad_checkpoint, free_port, edits, reason):
    ckpt = bad_checkpoint(**edits)
    proc = serve("--checkpoint", str(ckpt), "--port", str(free_port()))
    assert_one_line(proc, f"cannot load the checkpoint: {ckpt / 'config.json'} is not a usable model config: {reason}")


def test_a_fifo_config_json_is_refused_not_waited_on(bad_checkpoint, free_port):
    ckpt = bad_checkpoint()
    (ckpt / "config.json").unlink()
    os.mkfifo(ckpt / "config.json")
    proc = serve("--checkpoint", str(ckpt), "--port", str(free_port()), timeout=60)  # it hung here
    assert_one_line(proc, f"cannot load the checkpoint: {ckpt / 'config.json'} is a FIFO; a checkpoint's files must "
                          "be regular files")


def test_a_port_in_use_is_found_before_the_checkpoint_is_even_read(bad_checkpoint):
    import socket

    ckpt = bad_checkpoint(num_hidden_layers=10**9)  # would be refused too, were it read first
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = serve("--checkpoint", str(ckpt), "--port", str(port))
    assert_one_line(proc, f"port {port} on 127.0.0.1 is already in use (another server?): stop it or pass --port N")


def test_the_port_stays_held_from_the_check_until_the_server_listens_on_it():
    """The check keeps its socket for uvicorn (no bind-and-release window in which another process takes the port
    while the model loads): a second bind fails meanwhile, and the server then answers on that very socket."""
    import socket
    import threading

    import httpx

    from lighthouse_server.startup_checks import reserve_port

    sock = reserve_port("127.0.0.1", 0)
    port = sock.getsockname()[1]
    with socket.socket() as other:
        with pytest.raises(OSError):
            other.bind(("127.0.0.1", port))
    import uvicorn
    from fastapi import FastAPI

    app = FastAPI()
    app.get("/ping")(lambda: {"ok": True})
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))  # as shutdown.serve runs it: run(sockets=)
    t = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    t.start()
    try:
        import time

        deadline = time.monotonic() + 120  # generous: a busy machine starts uvicorn slowly
        while True:
            try:
                assert httpx.get(f"http://127.0.0.1:{port}/ping", timeout=10).json() == {"ok": True}
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "no answer on the reserved socket"
                threading.Event().wait(0.05)
    finally:
        server.should_exit = True
        t.join(10)


# (flags, the line) on a machine with 24 GiB available, the bundled checkpoint's weights in fp32 (18.64 MiB)
TOO_BIG = [
    (["--kv-cache-gb", "30"], "not enough memory: weights 18.64 MiB + KV cache 30.00 GiB (--kv-cache-gb) = 30.02 GiB, "
                              "more than 90% of the 24.00 GiB of host memory available; lower --kv-cache-gb (at most "
                              "21.58 fits)"),
    (["--kv-cache-gb", "1000"], "not enough memory: weights 18.64 MiB + KV cache 1000.00 GiB (--kv-cache-gb) = "
                                "1000.02 GiB, more than 90% of the 24.00 GiB of host memory available; lower "
                                "--kv-cache-gb (at most 21.58 fits)"),
    (["--kv-cache-gb", "0.25", "--host-cache-gb", "1000"],
     "not enough memory: weights 18.64 MiB + KV cache 0.25 GiB (--kv-cache-gb) + host cache 1000.00 GiB "
     "(--host-cache-gb) = 1000.27 GiB, more than 90% of the 24.00 GiB of host memory available; lower --kv-cache-gb "
     "or --host-cache-gb"),
]


@pytest.mark.parametrize("flags,line", TOO_BIG, ids=["kv-30", "kv-1000", "host-1000"])
def test_budgets_above_90_percent_of_the_memory_are_refused_in_one_line(free_port, flags, line):
    proc = serve("--port", str(free_port()), *flags, memory_gib=24)
    assert_one_line(proc, line)


def test_a_kv_budget_that_holds_no_sequence_is_refused_with_the_least_that_serves(free_port):
    proc = serve("--port", str(free_port()), "--kv-cache-gb", "0.00001")
    assert_one_line(proc, "--kv-cache-gb 1e-05 holds no sequence of this model: it needs at least 0.88 MiB (one block "
                          "of 128 positions per layer and a scratch block): use --kv-cache-gb 0.000855 or more")


def test_flags_out_of_bounds_are_one_line_in_words_naming_each(free_port):
    """Exit 2 and every bad flag in one line on stderr; it was pydantic's report on stdout, five lines a field with
    its error types and a URL."""
    proc = serve("--port", "0", "--kv-cache-gb", "nan", "--max-waiting", "-3")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and not proc.stdout.strip(), out
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("lighthouse serve: invalid settings: "), out
    for words in ("--port (LIGHTHOUSE_PORT): should be greater than or equal to 1, got 0",
                  "--kv-cache-gb (LIGHTHOUSE_KV_CACHE_GB): should be a finite number",
                  "--max-waiting (LIGHTHOUSE_MAX_WAITING): should be greater than or equal to 0, got -3"):
        assert words in lines[0], out
    assert not any(x in out for x in ("pydantic", "type=", "input_value", "Traceback")), out


# ---- the memory arithmetic, in process (no server started) ------------------------------------------------------


def _settings(**kw):
    from lighthouse_server.settings import Settings

    return Settings(device="cpu", **kw)


@pytest.fixture()
def machine(monkeypatch):
    """machine(GiB): available_memory reports that many GiB (host and device alike)."""
    import lighthouse.engine.memory as memory

    def set_memory(gib: float):
        monkeypatch.setattr(memory, "available_memory", lambda device: int(gib * GiB))

    return set_memory


def test_budgets_above_70_percent_start_with_a_warning(machine):
    from lighthouse_server.startup_checks import check_memory

    machine(24)
    config = ModelConfig()
    assert check_memory(_settings(kv_cache_gb=12), config) == []  # 50%: nothing to say
    (warning,) = check_memory(_settings(kv_cache_gb=18), config)
    assert warning.startswith("weights ") and "KV cache 18.00 GiB (--kv-cache-gb)" in warning, warning
    assert "take 75% of the 24.00 GiB of host memory available (over 70%)" in warning, warning


def test_the_cpu_default_kv_budget_counts_and_the_host_cache_only_with_prefix_caching(machine):
    from lighthouse_server.startup_checks import StartupError, check_memory

    machine(2)  # the CPU's default 2 GiB KV cache cannot fit in 2 GiB
    with pytest.raises(StartupError, match=r"KV cache \(the CPU default\) 2\.00 GiB \(--kv-cache-gb\)"):
        check_memory(_settings(), ModelConfig())
    machine(24)
    assert check_memory(_settings(host_cache_gb=1000, enable_prefix_caching=False), ModelConfig()) == []


def test_on_a_gpu_the_weights_and_kv_budget_take_device_memory_and_the_host_cache_host_memory():
    from lighthouse_server.startup_checks import memory_uses

    settings = _settings(kv_cache_gb=30, host_cache_gb=100)
    uses = memory_uses(settings, ModelConfig(), torch.device("cuda:0"), torch.bfloat16)
    assert {place: [u.what for u in us] for place, us in uses.items()} == {
        "cuda:0": ["weights", "KV cache"], "host": ["host cache"]}
    default = memory_uses(_settings(), ModelConfig(), torch.device("cuda:0"), torch.bfloat16)
    assert [u.what for u in default["cuda:0"]] == ["weights"]  # its default budget is a share of what is left


def test_a_model_too_big_for_the_machine_is_refused_naming_the_weights_not_a_flag(machine):
    from lighthouse_server.startup_checks import StartupError, check_memory

    machine(24)
    big = ModelConfig(vocab_size=128256, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                      num_attention_heads=64, num_key_value_heads=8, lighthouse={"enabled": False})  # ~70B
    with pytest.raises(StartupError, match=r"weights 2\d\d\.\d\d GiB \+ KV cache 0\.25 GiB \(--kv-cache-gb\) = .*; "
                                           r"the weights alone do not fit: serve a smaller model"):
        check_memory(_settings(kv_cache_gb=0.25), big)
