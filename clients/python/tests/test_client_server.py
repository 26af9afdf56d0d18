"""lighthouse_client against the REAL server: `lighthouse serve` (uvicorn on loopback) configured through
LIGHTHOUSE_* environment variables, as the Docker image configures it, on the bundled checkpoint.

Two servers start side by side: A answers a full queue with 429, B with 503. Both run one sequence at a time
with one waiting slot, so the queue fills with two long requests. The last test drains B with SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import lighthouse_client as lc
import pytest

try:  # skip (not fail) only when the server itself is not importable
    importlib.import_module("lighthouse_server.app")
    SERVER_IMPORT_ERROR = None
except Exception as exc:  # noqa: BLE001
    SERVER_IMPORT_ERROR = f"{type(exc).__name__}: {exc}"

pytestmark = pytest.mark.skipif(SERVER_IMPORT_ERROR is not None,
                                reason=f"server package not importable: {SERVER_IMPORT_ERROR}")  # fmt: skip

ROOT = Path(__file__).resolve().parents[3]  # the repository (the server runs from there)
API_KEY = "sk-client-test"
MESSAGES = [{"role": "user", "content": "Say something."}]
LONG = {"ignore_eos": True}  # generations that run to max_tokens


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bundled_checkpoint_or_tiny(tmp_dir: Path) -> str | None:
    """None (= serve's default, the bundled checkpoint) when it is there; else a tiny random one."""
    from lighthouse.checkpoint import default_checkpoint_dir

    if (default_checkpoint_dir() / "config.json").exists():
        return None
    import torch

    from lighthouse.checkpoint import save_checkpoint
    from lighthouse.model import LlamaForCausalLM, model_preset

    torch.manual_seed(0)
    save_checkpoint(LlamaForCausalLM(model_preset("tiny")), None, tmp_dir / "tiny")
    return str(tmp_dir / "tiny")


class ServeProcess:
    """`lighthouse serve` in a subprocess, settings from the environment only."""

    def __init__(self, checkpoint: str | None, log_path: Path, flags: tuple[str, ...] = (), **settings: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "LIGHTHOUSE_HOST": "127.0.0.1", "LIGHTHOUSE_PORT": str(self.port),
               "LIGHTHOUSE_API_KEY": API_KEY, "LIGHTHOUSE_DEVICE": "cpu", "LIGHTHOUSE_KV_CACHE_GB": "0.25",
               "LIGHTHOUSE_LOG_LEVEL": "warning", **{f"LIGHTHOUSE_{k.upper()}": v for k, v in settings.items()}}  # fmt: skip
        env.pop("LIGHTHOUSE_CHECKPOINT", None)
        if checkpoint:
            env["LIGHTHOUSE_CHECKPOINT"] = checkpoint
        script = Path(sys.executable).parent / "lighthouse"
        argv = [str(script), "serve"] if script.exists() else [sys.executable, "-m", "lighthouse.cli", "serve"]
        argv += list(flags)
        self.log_path = log_path
        self.log_file = open(log_path, "wb")  # noqa: SIM115  (closed in stop())
        self.proc = subprocess.Popen(argv, env=env, cwd=str(ROOT), stdout=self.log_file, stderr=subprocess.STDOUT)

    def wait_healthy(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"lighthouse serve exited {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"lighthouse serve not healthy after {timeout}s:\n{self.log()}")

    def wait_idle(self, timeout: float = 15.0) -> None:
        """Until nothing runs or waits (aborted requests are freed asynchronously)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            stats = httpx.get(self.url + "/ready", timeout=5).json()
            if stats.get("running") == 0 and stats.get("waiting") == 0:
                return
            time.sleep(0.05)
        raise AssertionError(f"server still busy: {stats}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log_file.close()


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    checkpoint = bundled_checkpoint_or_tiny(tmp)
    common = dict(max_num_seqs="1", max_waiting="1", retry_after_s="1", max_body_mb="1", drain_timeout_s="20")
    # one server takes the setting as a flag, the other from the environment (as in Docker)
    a = ServeProcess(checkpoint, tmp / "a.log", ("--queue-full-status", "429"), **common)
    b = ServeProcess(checkpoint, tmp / "b.log", queue_full_status="503", **common)
    try:
        a.wait_healthy()
        b.wait_healthy()
        yield a, b
    finally:
        a.stop()
        b.stop()


@pytest.fixture
def server(servers):
    servers[0].wait_idle()
    return servers[0]


@pytest.fixture
def client(server):
    with lc.Client(base_url=server.url, api_key=API_KEY, timeout=60) as c:
        yield c


# -- sync ------------------------------------------------------------------------------------------------


def test_models_tokenize_detokenize_health_ready(client):
    models = client.models.list()
    assert len(models) == 1 and models.data[0].max_model_len and models.data[0].max_model_len > 0
    ids = client.tokenize("hello world").tokens
    assert ids and client.detokenize(ids).prompt.endswith("hello world")
    assert client.tokenize(messages=MESSAGES).count > len("Say something.") // 4
    assert client.health().ok and client.ready().ok


def test_completion_non_streaming_is_typed_and_counts_usage(client):
    out = client.completions.create(prompt="The quick brown fox", max_tokens=8, temperature=0, extra_body=LONG)
    assert isinstance(out, lc.types.Completion) and out.object == "text_completion"
    assert out.choices[0].finish_reason == "length" and out.usage.completion_tokens == 8
    assert out.usage.prompt_tokens == len(client.tokenize("The quick brown fox").tokens)
    assert out.model == client.models.list().data[0].id


def test_greedy_streaming_equals_non_streaming_for_completions_and_chat(client):
    kw = dict(max_tokens=12, temperature=0, extra_body=LONG)
    whole = client.completions.create(prompt="Once upon", **kw)
    with client.completions.create(prompt="Once upon", stream=True, include_usage=True, **kw) as stream:
        chunks = list(stream)
    assert "".join(c.text for c in chunks if c.choices) == whole.text
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12
    assert stream.response.is_closed

    chat = client.chat.completions.create(messages=MESSAGES, prefill="dense", decode="dense", **kw)
    assert isinstance(chat, lc.types.ChatCompletion) and chat.choices[0].message.role == "assistant"
    with client.chat.completions.create(messages=MESSAGES, stream=True, prefill="dense", **kw) as stream:
        streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert streamed == chat.text and chat.usage.completion_tokens == 12


def test_leaving_a_stream_early_closes_it_and_the_server_frees_the_request(client, server):
    with client.completions.create(prompt="x", max_tokens=3000, stream=True, extra_body=LONG) as stream:
        first = next(stream)
    assert first.choices and stream.response.is_closed
    server.wait_idle()  # the server saw the disconnect and aborted the generation


def test_document_helper_answers_and_streams_prefill_progress(client):
    document = "The treaty was signed in Lisbon by Ana and Ben. " * 40
    answer = client.documents.ask(document, "Who signed?", max_tokens=6, extra_body=LONG)
    assert isinstance(answer, lc.types.DocumentAnswer) and answer.finish_reason == "length"
    assert answer.usage.prompt_tokens > len(document) // 4

    with client.documents.ask(document, "Who signed?", max_tokens=6, stream=True, progress=True,
                              extra_body=LONG) as events:  # fmt: skip
        events = list(events)
    kinds = [e.type for e in events]
    progress = [e for e in events if e.type == "progress"]
    assert progress, kinds
    assert kinds.index("text") > kinds.index("progress") and kinds[-1] == "done"
    assert progress[-1].processed == progress[-1].total == answer.usage.prompt_tokens
    assert [p.processed for p in progress] == sorted(p.processed for p in progress)
    assert events[-1].text == answer.text and events[-1].usage.completion_tokens == 6  # greedy: same answer


# -- async -----------------------------------------------------------------------------------------------


def test_async_client_streaming_and_not(server):
    async def main():
        async with lc.AsyncClient(base_url=server.url, api_key=API_KEY) as client:
            models = await client.models.list()
            whole = await client.chat.completions.create(messages=MESSAGES, max_tokens=10, temperature=0,
                                                         extra_body=LONG)  # fmt: skip
            stream = await client.chat.completions.create(messages=MESSAGES, max_tokens=10, temperature=0,
                                                          stream=True, include_usage=True, extra_body=LONG)  # fmt: skip
            async with stream:
                chunks = [c async for c in stream]
            comp = await client.completions.create(prompt="abc", max_tokens=4, temperature=0, extra_body=LONG)
            doc = await client.documents.ask("A short document.", "What is it?", max_tokens=4, stream=True,
                                             progress=True, extra_body=LONG)  # fmt: skip
            done = await doc.until_done()
            health = await client.health()
            return models, whole, chunks, stream, comp, done, health

    models, whole, chunks, stream, comp, done, health = asyncio.run(main())
    assert models.data[0].id == whole.model
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.text
    assert chunks[-1].usage.completion_tokens == 10 and stream.response.is_closed
    assert comp.usage.completion_tokens == 4 and done.usage.completion_tokens == 4 and health.ok


def test_async_errors_are_typed_too(server):
    async def main():
        async with lc.AsyncClient(base_url=server.url, api_key="wrong", max_retries=0) as client:
            with pytest.raises(lc.AuthenticationError):
                await client.models.list()
            with pytest.raises(lc.NotFoundError):
                await client.with_options(api_key=API_KEY).completions.create(prompt="x", model="nope")

    asyncio.run(main())


# -- errors from real responses ----------------------------------------------------------------------------


def test_bad_request_carries_the_servers_message_code_and_param(client):
    max_len = client.models.list().data[0].max_model_len
    with pytest.raises(lc.BadRequestError) as info:
        client.completions.create(prompt="a" * (max_len + 10), max_tokens=1)
    assert info.value.status_code == 400 and info.value.code == "context_length_exceeded"
    assert info.value.param == "prompt" and str(max_len) in info.value.message
    with pytest.raises(lc.BadRequestError) as info:
        client.chat.completions.create(messages=MESSAGES, temperature=-1)
    assert info.value.param == "temperature"


def test_wrong_or_missing_api_key_is_an_authentication_error(server, monkeypatch):
    monkeypatch.delenv("LIGHTHOUSE_API_KEY", raising=False)
    for key in ("wrong", None):
        with pytest.raises(lc.AuthenticationError) as info:
            lc.Client(base_url=server.url, api_key=key).completions.create(prompt="x", model="m")
        assert info.value.status_code == 401 and info.value.code == "invalid_api_key"
    monkeypatch.setenv("LIGHTHOUSE_API_KEY", API_KEY)  # the key from the environment works
    assert len(lc.Client(base_url=server.url).models.list()) == 1


def test_unknown_model_is_not_found(client):
    with pytest.raises(lc.NotFoundError) as info:
        client.chat.completions.create(messages=MESSAGES, model="no-such-model", max_tokens=1)
    assert info.value.status_code == 404 and "no-such-model" in info.value.message


def test_body_over_the_limit_is_request_too_large(client):
    with pytest.raises(lc.RequestTooLargeError) as info:  # the server's limit is 1 MiB here
        client.completions.create(prompt="z" * (1 << 21), max_tokens=1)
    assert info.value.status_code == 413 and info.value.message


@contextlib.contextmanager
def full_queue(server):
    """One request running, one waiting: the next one is refused."""
    with lc.Client(base_url=server.url, api_key=API_KEY) as c:
        running = c.completions.create(prompt="r", max_tokens=3000, stream=True, extra_body=LONG)
        next(running)
        waiting = c.completions.create(prompt="w", max_tokens=3000, stream=True, extra_body=LONG)
        deadline = time.monotonic() + 10
        while httpx.get(server.url + "/ready").json()["waiting"] < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        try:
            yield
        finally:
            running.close()
            waiting.close()
    server.wait_idle()


def test_full_queue_is_a_rate_limit_error_and_retry_after_is_honoured(server):
    client = lc.Client(base_url=server.url, api_key=API_KEY, max_retries=0)
    with full_queue(server):
        with pytest.raises(lc.RateLimitError) as info:
            client.completions.create(prompt="x", max_tokens=1)
        assert info.value.status_code == 429 and info.value.response.headers["retry-after"] == "1"
        t0 = time.monotonic()
        with pytest.raises(lc.RateLimitError):
            client.with_options(max_retries=1).completions.create(prompt="x", max_tokens=1)
        assert time.monotonic() - t0 >= 1.0  # waited the server's Retry-After before the one retry


def test_503_from_the_server_is_an_internal_server_error(servers):
    b = servers[1]
    b.wait_idle()
    client = lc.Client(base_url=b.url, api_key=API_KEY, max_retries=0)
    with full_queue(b), pytest.raises(lc.InternalServerError) as info:
        client.chat.completions.create(messages=MESSAGES, max_tokens=1)
    assert isinstance(info.value, lc.ServiceUnavailableError) and info.value.status_code == 503
    assert info.value.message


def test_a_request_slower_than_its_timeout_raises_api_timeout_error(client, server):
    t0 = time.monotonic()
    with pytest.raises(lc.APITimeoutError):
        client.with_options(max_retries=0).completions.create(prompt="x", max_tokens=60, timeout=0.2,
                                                               extra_body=LONG)  # fmt: skip
    assert time.monotonic() - t0 < 10  # the 0.2 s timeout fires long before the 60 tokens finish (loose: CI load)
    # the server aborts the abandoned non-streaming request and frees it
    server.wait_idle(timeout=60)


def test_connection_refused_is_an_api_connection_error():
    with pytest.raises(lc.APIConnectionError):
        lc.Client(base_url=f"http://127.0.0.1:{free_port()}", max_retries=0).models.list()


def test_openai_package_gets_the_same_greedy_answer(client, server):
    openai = pytest.importorskip("openai")
    oa = openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY)
    model = oa.models.list().data[0].id
    kw = dict(max_tokens=8, temperature=0)
    theirs = oa.completions.create(model=model, prompt="Hello", extra_body={**LONG, "prefill": "dense"}, **kw)
    ours = client.completions.create(prompt="Hello", prefill="dense", extra_body=LONG, **kw)
    assert theirs.choices[0].text == ours.text



def _sparse_prefill_tokens(server) -> float:
    for line in httpx.get(server.url + "/metrics", timeout=5).text.splitlines():
        if line.startswith("lighthouse_prefill_tokens_total") and 'path="sparse"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_the_bundled_checkpoint_answers_a_passkey_question_over_http(server):
    """The product in one request: an 8K-token document in, its pass key out, through the official openai package,
    with the server's default prefill (sparse: the checkpoint's Lighthouse layers run the op)."""
    from lighthouse.checkpoint import default_checkpoint_dir
    from lighthouse.train.passkey import passkey_prompts

    if not (default_checkpoint_dir() / "config.json").exists():
        pytest.skip("no bundled checkpoint: the servers run a random tiny model")
    openai = pytest.importorskip("openai")
    _, ids, key = passkey_prompts(8192, [0.5], 1, seed=0)[0]
    document = bytes(ids[1:].tolist()).decode("ascii")  # the server adds BOS itself
    assert document.endswith("What is the pass key? The pass key is ")
    oa = openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY)
    before = _sparse_prefill_tokens(server)
    out = oa.completions.create(model=oa.models.list().data[0].id, prompt=document, max_tokens=5, temperature=0)
    assert out.usage.prompt_tokens == 8192
    assert out.choices[0].text == key
    assert _sparse_prefill_tokens(server) - before > 8000  # the Lighthouse path prefilled it

# -- last: the Docker stop path ----------------------------------------------------------------------------


def test_sigterm_drains_an_in_flight_stream_then_exits_0(servers):
    b = servers[1]
    b.wait_idle()
    client = lc.Client(base_url=b.url, api_key=API_KEY)
    with client.completions.create(prompt="drain", max_tokens=60, stream=True, include_usage=True,
                                   extra_body=LONG) as stream:  # fmt: skip
        next(stream)
        b.proc.send_signal(signal.SIGTERM)
        rest = list(stream)
    assert rest[-1].usage.completion_tokens == 60  # finished, not cut off
    # Exit after the drain: 0, or killed by the SIGTERM that uvicorn (>= 0.29) re-raises once its graceful
    # shutdown is complete (Docker then reports 143, as for any process stopped by SIGTERM).
    assert b.proc.wait(30) in (0, -signal.SIGTERM), b.log()
    with pytest.raises(lc.APIConnectionError):
        client.with_options(max_retries=0).health()
