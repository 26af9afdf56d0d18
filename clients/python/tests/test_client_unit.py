"""lighthouse_client against an in-process stub (httpx.MockTransport): request shapes, parsing, errors,
retry policy and streams. The real-server tests are in test_client_server.py."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import lighthouse_client as lc
import pytest
from lighthouse_client import _base_client
from lighthouse_client._sse import iter_events

COMPLETION = {
    "id": "cmpl-1", "object": "text_completion", "created": 1, "model": "tiny",
    "choices": [{"index": 0, "text": "hello", "finish_reason": "length", "logprobs": None}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}  # fmt: skip
MODELS = {"object": "list", "data": [{"id": "tiny", "object": "model", "max_model_len": 4096}]}


def chat_chunk(content=None, finish=None, usage=None, **extra):
    choices = [] if usage else [{"index": 0, "delta": {"content": content}, "finish_reason": finish}]
    return {"id": "c1", "object": "chat.completion.chunk", "model": "tiny", "choices": choices, "usage": usage,
            **extra}  # fmt: skip


def sse(*payloads, done=True) -> bytes:
    body = "".join(f"data: {json.dumps(p)}\n\n" for p in payloads)
    return (body + ("data: [DONE]\n\n" if done else "")).encode()


def error_body(message, type_="invalid_request_error", code=None, param=None):
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class Recorder:
    """A MockTransport handler that answers from a list of responses (the last one repeats)."""

    def __init__(self, *responses):
        self.responses = list(responses)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        r = self.responses[min(len(self.requests), len(self.responses)) - 1]
        return r(request) if callable(r) else r

    def client(self, **kw) -> lc.Client:
        kw.setdefault("model", "tiny")
        return lc.Client(base_url="http://stub", http_client=httpx.Client(transport=httpx.MockTransport(self)), **kw)

    def async_client(self, **kw) -> lc.AsyncClient:
        kw.setdefault("model", "tiny")
        transport = httpx.MockTransport(self)
        return lc.AsyncClient(base_url="http://stub", http_client=httpx.AsyncClient(transport=transport), **kw)

    def body(self, i=-1):
        return json.loads(self.requests[i].content)


@pytest.fixture
def no_sleep(monkeypatch):
    """Record retry sleeps instead of sleeping."""
    slept: list[float] = []
    monkeypatch.setattr(lc._client.time, "sleep", slept.append)

    async def fake_async_sleep(seconds):
        slept.append(seconds)

    monkeypatch.setattr(lc._async_client.asyncio, "sleep", fake_async_sleep)
    return slept


# -- configuration ---------------------------------------------------------------------------------------


def test_api_key_comes_from_environment_and_is_sent_as_bearer(monkeypatch):
    monkeypatch.setenv("LIGHTHOUSE_API_KEY", "sk-env")
    rec = Recorder(httpx.Response(200, json=MODELS))
    client = rec.client()
    assert client.api_key == "sk-env"
    client.models.list()
    assert rec.requests[0].headers["authorization"] == "Bearer sk-env"
    assert rec.requests[0].headers["user-agent"] == f"lighthouse-client/{lc.__version__}"


def test_explicit_api_key_wins_over_environment_and_none_sends_no_header(monkeypatch):
    monkeypatch.setenv("LIGHTHOUSE_API_KEY", "sk-env")
    assert Recorder().client(api_key="sk-arg").api_key == "sk-arg"
    monkeypatch.delenv("LIGHTHOUSE_API_KEY")
    rec = Recorder(httpx.Response(200, json=MODELS))
    rec.client().models.list()
    assert "authorization" not in rec.requests[0].headers


@pytest.mark.parametrize("url", ["http://h:9/", "http://h:9/v1", "http://h:9/v1/", "http://h:9"])
def test_base_url_accepts_server_root_or_openai_style_v1(url):
    assert lc.Client(base_url=url).base_url == "http://h:9"


def test_timeout_per_client_and_per_call():
    rec = Recorder(httpx.Response(200, json=COMPLETION))
    client = rec.client(timeout=7.0)
    client.completions.create(prompt="x")
    client.completions.create(prompt="x", timeout=0.5)
    client.with_options(timeout=None).completions.create(prompt="x")
    reads = [r.extensions["timeout"]["read"] for r in rec.requests]
    assert reads == [7.0, 0.5, None]


def test_version_attribute():
    assert isinstance(lc.__version__, str) and lc.__version__.count(".") >= 2


# -- requests and typed results --------------------------------------------------------------------------


def test_completion_sends_only_given_params_plus_extensions_and_returns_typed_result():
    rec = Recorder(httpx.Response(200, json=COMPLETION))
    out = rec.client().completions.create(prompt="hi", max_tokens=1, temperature=0, prefill="dense",
                                          decode="sparse", dense_tail_tokens=64, extra_body={"x": 1})  # fmt: skip
    assert rec.requests[0].url.path == "/v1/completions"
    assert rec.body() == {"model": "tiny", "prompt": "hi", "max_tokens": 1, "temperature": 0, "prefill": "dense",
                          "decode": "sparse", "dense_tail_tokens": 64, "x": 1}  # fmt: skip
    assert isinstance(out, lc.types.Completion)
    assert out.text == "hello" and out.choices[0].finish_reason == "length" and out.usage.total_tokens == 4


def test_speculative_is_sent_as_the_servers_extension_field_in_both_endpoints():
    chat = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "tiny",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "length",
                         "logprobs": None}], "usage": COMPLETION["usage"]}
    rec = Recorder(httpx.Response(200, json=COMPLETION), httpx.Response(200, json=chat))
    spec = {"method": "prompt_lookup", "num_tokens": 4}
    rec.client().completions.create(prompt="hi", speculative=spec)
    rec.client().chat.completions.create(messages=[{"role": "user", "content": "hi"}], speculative=spec)
    assert rec.body(0)["speculative"] == rec.body(1)["speculative"] == spec
    rec = Recorder(httpx.Response(200, json=COMPLETION))
    rec.client().completions.create(prompt="hi")
    assert "speculative" not in rec.body(), "not given: the server's default"


def test_structured_output_fields_are_sent_as_given_in_both_endpoints():
    chat = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "tiny",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "{}"}, "finish_reason": "stop",
                         "logprobs": None}], "usage": COMPLETION["usage"]}
    rec = Recorder(httpx.Response(200, json=chat), httpx.Response(200, json=COMPLETION),
                   httpx.Response(200, json=COMPLETION))
    rf = {"type": "json_schema", "json_schema": {"name": "p", "schema": {"type": "object"}, "strict": True}}
    rec.client().chat.completions.create(messages=[{"role": "user", "content": "hi"}], response_format=rf)
    rec.client().completions.create(prompt="hi", guided_choice=["yes", "no"], guided_regex="a+")
    rec.client().completions.create(prompt="hi", guided_json='{"type": "object"}')
    assert rec.body(0)["response_format"] == rf and "guided_json" not in rec.body(0)
    assert (rec.body(1)["guided_choice"], rec.body(1)["guided_regex"]) == (["yes", "no"], "a+")
    assert rec.body(2)["guided_json"] == '{"type": "object"}' and "response_format" not in rec.body(2)


def test_missing_model_is_looked_up_once_from_the_server():
    rec = Recorder(httpx.Response(200, json=MODELS), httpx.Response(200, json=COMPLETION))
    client = rec.client(model=None)
    client.completions.create(prompt="a")
    client.completions.create(prompt="b")
    assert [r.url.path for r in rec.requests] == ["/v1/models", "/v1/completions", "/v1/completions"]
    assert rec.body(-1)["model"] == "tiny"


def test_models_tokenize_detokenize_health():
    rec = Recorder(
        httpx.Response(200, json=MODELS),
        httpx.Response(200, json={"tokens": [1, 2, 3], "count": 3, "max_model_len": 4096}),
        httpx.Response(200, json={"prompt": "abc"}),
        httpx.Response(200, json={"status": "ok"}),
    )
    client = rec.client()
    models = client.models.list()
    assert [m.id for m in models] == ["tiny"] and models.data[0].max_model_len == 4096
    assert client.tokenize("abc").tokens == [1, 2, 3]
    assert rec.body() == {"prompt": "abc"} and rec.requests[-1].url.path == "/tokenize"
    assert client.detokenize([1, 2, 3]).prompt == "abc"
    health = client.health()
    assert health.ok and health.status_code == 200 and health.status == "ok"


def test_health_reports_unhealthy_without_raising_or_retrying(no_sleep):
    rec = Recorder(httpx.Response(503, json={"status": "draining"}))
    health = rec.client().health()
    assert not health.ok and health.status_code == 503 and len(rec.requests) == 1


def test_tokenize_needs_exactly_one_of_prompt_or_messages():
    with pytest.raises(ValueError, match="exactly one"):
        Recorder().client().tokenize()


# -- errors ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "status, cls",
    [(400, lc.BadRequestError), (401, lc.AuthenticationError), (404, lc.NotFoundError),
     (413, lc.RequestTooLargeError), (429, lc.RateLimitError), (500, lc.InternalServerError),
     (503, lc.ServiceUnavailableError)],
)  # fmt: skip
def test_error_status_raises_typed_error_carrying_message_and_code(status, cls, no_sleep):
    body = error_body("prompt too long", code="context_length_exceeded", param="prompt")
    rec = Recorder(httpx.Response(status, json=body))
    with pytest.raises(cls) as info:
        rec.client(max_retries=0).completions.create(prompt="x")
    err = info.value
    assert err.status_code == status and err.message == "prompt too long"
    assert err.code == "context_length_exceeded" and err.param == "prompt" and err.body == body
    assert "prompt too long" in str(err) and isinstance(err, lc.APIStatusError)


def test_503_is_an_internal_server_error_too():
    assert issubclass(lc.ServiceUnavailableError, lc.InternalServerError)
    assert issubclass(lc.APITimeoutError, lc.APIConnectionError)


def test_non_openai_error_bodies_still_give_a_message():
    rec = Recorder(httpx.Response(422, json={"detail": "field required"}), httpx.Response(400, text="plain"))
    with pytest.raises(lc.UnprocessableEntityError, match="field required"):
        rec.client().completions.create(prompt="x")
    with pytest.raises(lc.BadRequestError, match="plain"):
        rec.client().completions.create(prompt="x")


def test_unparsable_success_body_raises_validation_error():
    rec = Recorder(httpx.Response(200, json={"data": "not a list"}))
    with pytest.raises(lc.APIResponseValidationError):
        rec.client().models.list()


# -- retries ---------------------------------------------------------------------------------------------


def test_503_then_200_is_retried_honouring_retry_after(no_sleep):
    rec = Recorder(httpx.Response(503, json=error_body("busy"), headers={"retry-after": "1.5"}),
                   httpx.Response(200, json=COMPLETION))  # fmt: skip
    assert rec.client().completions.create(prompt="x").text == "hello"
    assert len(rec.requests) == 2 and no_sleep == [1.5]


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504])
def test_retryable_statuses_are_retried_max_retries_times_then_raise(status, no_sleep):
    rec = Recorder(httpx.Response(status, json=error_body("nope")))
    with pytest.raises(lc.APIStatusError) as info:
        rec.client(max_retries=3).completions.create(prompt="x")
    assert info.value.status_code == status and len(rec.requests) == 4 and len(no_sleep) == 3


@pytest.mark.parametrize("status", [400, 401, 404, 413, 422])
def test_client_errors_are_not_retried(status, no_sleep):
    rec = Recorder(httpx.Response(status, json=error_body("bad")))
    with pytest.raises(lc.APIStatusError):
        rec.client(max_retries=3).completions.create(prompt="x")
    assert len(rec.requests) == 1 and no_sleep == []


def test_server_can_veto_or_force_a_retry_with_x_should_retry(no_sleep):
    rec = Recorder(httpx.Response(503, headers={"x-should-retry": "false"}))
    with pytest.raises(lc.InternalServerError):
        rec.client().models.list()
    assert len(rec.requests) == 1
    rec = Recorder(httpx.Response(400, headers={"x-should-retry": "true"}), httpx.Response(200, json=MODELS))
    assert len(rec.client().models.list()) == 1


def test_backoff_is_exponential_with_jitter_and_capped():
    for done in range(8):
        nominal = min(0.5 * 2**done, 8.0)
        delays = [_base_client.retry_delay(done, None) for _ in range(50)]
        assert all(0.75 * nominal <= d <= nominal for d in delays), (done, min(delays), max(delays))
        assert len(set(delays)) > 1  # jittered


def test_retry_after_forms():
    resp = lambda **h: httpx.Response(503, headers=h)
    assert _base_client.retry_delay(0, resp(**{"retry-after-ms": "250"})) == 0.25
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 3))
    assert 1.0 < _base_client.retry_delay(0, resp(**{"retry-after": date})) <= 3.0
    assert _base_client.retry_delay(0, resp(**{"retry-after": "3600"})) <= 0.5  # absurd: own backoff
    assert _base_client.retry_delay(0, resp(**{"retry-after": "soon"})) <= 0.5


def test_connection_errors_are_retried_then_raise_api_connection_error(no_sleep):
    def refuse(request):
        raise httpx.ConnectError("refused", request=request)

    rec = Recorder(refuse)
    with pytest.raises(lc.APIConnectionError) as info:
        rec.client(max_retries=2).models.list()
    assert not isinstance(info.value, lc.APITimeoutError)
    assert len(rec.requests) == 3 and len(no_sleep) == 2


def test_timeouts_raise_api_timeout_error(no_sleep):
    def slow(request):
        raise httpx.ReadTimeout("slow", request=request)

    rec = Recorder(slow)
    with pytest.raises(lc.APITimeoutError):
        rec.client(max_retries=1).models.list()
    assert len(rec.requests) == 2


# -- streams ---------------------------------------------------------------------------------------------


class BreakingStream(httpx.SyncByteStream):
    """Sends some SSE bytes, then the connection breaks."""

    def __init__(self, head: bytes):
        self.head = head
        self.closed = False

    def __iter__(self):
        yield self.head
        raise httpx.ReadError("connection reset")

    def close(self):
        self.closed = True


def test_chat_stream_yields_typed_chunks_until_done_and_closes_the_response():
    body = sse(chat_chunk("Hel"), chat_chunk("lo", "stop"),
               chat_chunk(usage={"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}))  # fmt: skip
    rec = Recorder(httpx.Response(200, content=body, headers={"content-type": "text/event-stream"}))
    stream = rec.client().chat.completions.create(messages=[{"role": "user", "content": "hi"}], stream=True,
                                                  include_usage=True)  # fmt: skip
    chunks = list(stream)
    assert rec.body()["stream"] is True and rec.body()["stream_options"] == {"include_usage": True}
    assert all(isinstance(c, lc.types.ChatCompletionChunk) for c in chunks)
    assert "".join(c.choices[0].delta.content for c in chunks if c.choices) == "Hello"
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 4
    assert stream.response.is_closed


def test_leaving_the_with_block_closes_the_stream_early():
    byte_stream = BreakingStream(sse(chat_chunk("a"), chat_chunk("b"), done=False))
    rec = Recorder(lambda req: httpx.Response(200, stream=byte_stream))
    with rec.client().completions.create(prompt="x", stream=True) as stream:
        next(stream)
    assert stream.response.is_closed and byte_stream.closed
    with pytest.raises(StopIteration):
        next(stream)


def test_a_stream_that_breaks_midway_raises_and_is_never_retried(no_sleep):
    rec = Recorder(lambda req: httpx.Response(200, stream=BreakingStream(sse(chat_chunk("a"), done=False))))
    stream = rec.client(max_retries=5).chat.completions.create(messages=[{"role": "user", "content": "q"}],
                                                               stream=True)  # fmt: skip
    got = []
    with pytest.raises(lc.APIConnectionError):
        for chunk in stream:
            got.append(chunk)
    assert len(got) == 1 and len(rec.requests) == 1 and no_sleep == []


def test_a_stream_refused_before_it_starts_is_retried(no_sleep):
    rec = Recorder(httpx.Response(503, json=error_body("warming up")),
                   httpx.Response(200, content=sse(chat_chunk("ok", "stop"))))  # fmt: skip
    chunks = list(rec.client().chat.completions.create(messages=[{"role": "user", "content": "q"}], stream=True))
    assert chunks[0].choices[0].delta.content == "ok" and len(rec.requests) == 2


def test_an_error_event_inside_a_stream_raises_api_error_with_the_servers_message():
    rec = Recorder(httpx.Response(200, content=sse(chat_chunk("a"), error_body("engine died", "server_error"))))
    stream = rec.client().completions.create(prompt="x", stream=True)
    with pytest.raises(lc.APIError, match="engine died") as info:
        list(stream)
    assert info.value.type == "server_error"


@pytest.mark.parametrize("type_, cls, status", [("invalid_request_error", lc.BadRequestError, 400),
                                                 ("service_unavailable_error", lc.ServiceUnavailableError, 503),
                                                 ("insufficient_storage_error", lc.InsufficientStorageError, 507)])
def test_an_error_event_raises_the_class_and_status_the_same_error_has_as_an_http_answer(type_, cls, status):
    event = error_body("out of memory", type_, code="out_of_memory")
    stream = Recorder(httpx.Response(200, content=sse(chat_chunk("a"), event))).client().completions.create(
        prompt="x", stream=True)
    with pytest.raises(cls, match="out of memory") as info:
        list(stream)
    assert type(info.value) is cls and info.value.status_code == status and info.value.code == "out_of_memory"


def test_sse_decoder_handles_comments_multiline_data_and_a_missing_final_blank_line():
    lines = [": keep-alive", "event: progress", "data: {\"a\":", "data: 1}", "", "data:x"]
    events = list(iter_events(iter(lines)))
    assert [(e.event, e.data) for e in events] == [("progress", '{"a":\n1}'), (None, "x")]


# -- document helper -------------------------------------------------------------------------------------


def test_document_ask_puts_document_first_and_question_last():
    rec = Recorder(httpx.Response(200, json={"model": "tiny", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "Alice"}, "finish_reason": "stop"}]}))
    answer = rec.client().documents.ask("DOC " * 100, "Who?", max_tokens=5, prefill="sparse")
    body = rec.body()
    user = body["messages"][-1]["content"]
    assert user.startswith("DOC DOC") and user.endswith("Question: Who?")
    assert body["max_tokens"] == 5 and body["temperature"] == 0.0 and body["prefill"] == "sparse"
    assert "return_progress" not in body
    assert answer.text == "Alice" and answer.finish_reason == "stop"


def test_document_stream_reports_progress_then_text_then_done():
    progress = lambda p: chat_chunk(prompt_progress={"total": 100, "processed": p, "cache": 0}) | {"choices": []}
    usage = {"prompt_tokens": 100, "completion_tokens": 2, "total_tokens": 102}
    body = sse(progress(50), progress(100), chat_chunk("Al"), chat_chunk("ice", "stop"), chat_chunk(usage=usage))
    rec = Recorder(httpx.Response(200, content=body))
    with rec.client().documents.ask("doc", "who?", stream=True, progress=True) as stream:
        events = list(stream)
    assert rec.body()["return_progress"] is True and rec.body()["stream_options"] == {"include_usage": True}
    assert [e.type for e in events] == ["progress", "progress", "text", "text", "done"]
    assert events[0].fraction == 0.5 and events[1].processed == 100
    assert events[-1].text == "Alice" and events[-1].usage.total_tokens == 102 and stream.text == "Alice"


DOCUMENT = {"id": "doc-1", "object": "document", "tokens": 100, "pinned": True}


def upload_progress(processed, total=100):
    return {"id": "doc-1", "object": "document.progress",
            "prompt_progress": {"total": total, "cache": 0, "processed": processed, "time_ms": 1.0}}  # fmt: skip


def test_upload_streams_only_with_on_progress_and_returns_the_last_event_as_info():
    rec = Recorder(httpx.Response(200, json=DOCUMENT),
                   httpx.Response(200, content=sse(upload_progress(0), upload_progress(100), DOCUMENT)))  # fmt: skip
    client = rec.client()
    plain = client.documents.upload("text")
    seen = []
    streamed = client.documents.upload("text", on_progress=seen.append)
    assert "stream" not in rec.body(0) and rec.body(1)["stream"] is True
    assert [(p.processed, p.total) for p in seen] == [(0, 100), (100, 100)]
    assert streamed.info == plain.info and streamed.id == "doc-1"


class EventBody(httpx.SyncByteStream):
    """A response body sent an event at a time that records whether the client closed it."""

    def __init__(self, *payloads):
        self.events, self.closed = [sse(p, done=False) for p in payloads] + [sse(done=True)], False

    def __iter__(self):
        yield from self.events

    def close(self):
        self.closed = True


def test_an_upload_callback_that_raises_closes_the_stream_and_propagates():
    stop = RuntimeError("enough")

    def cancel(progress):
        raise stop

    body = EventBody(upload_progress(0), upload_progress(50), DOCUMENT)
    rec = Recorder(httpx.Response(200, stream=body))
    client = rec.client()
    with pytest.raises(RuntimeError) as info:
        client.documents.upload("text", on_progress=cancel)
    assert info.value is stop and body.closed  # (closing a streamed upload early cancels it on the server)
    with pytest.raises(TypeError, match="async"):  # Client cannot await it: refused before anything is sent
        client.documents.upload("text", on_progress=_async_callback)
    assert len(rec.requests) == 1


async def _async_callback(progress):
    pass


def test_a_streamed_upload_that_ends_without_the_document_raises():
    rec = Recorder(httpx.Response(200, content=sse(upload_progress(0))))
    with pytest.raises(lc.APIError, match="without the document"):
        rec.client().documents.upload("text", on_progress=lambda p: None)


# -- async mirrors ---------------------------------------------------------------------------------------


def test_async_client_has_the_same_public_methods_as_client():
    public = lambda obj: {n for n in dir(obj) if not n.startswith("_")}
    assert public(lc.Client) == public(lc.AsyncClient)
    c, a = lc.Client(), lc.AsyncClient()
    for attr in ("completions", "chat", "models", "documents"):
        assert public(getattr(c, attr)) == public(getattr(a, attr)), attr


def test_async_completion_stream_errors_and_retries(no_sleep):
    async def main():
        rec = Recorder(httpx.Response(503, headers={"retry-after": "0.25"}), httpx.Response(200, json=COMPLETION),
                       httpx.Response(200, content=sse(COMPLETION)), httpx.Response(404, json=error_body("no model")))
        async with rec.async_client() as client:
            assert (await client.completions.create(prompt="x")).text == "hello"
            async with await client.completions.create(prompt="x", stream=True) as stream:
                chunks = [c async for c in stream]
            assert chunks[0].text == "hello" and stream.response.is_closed
            with pytest.raises(lc.NotFoundError, match="no model"):
                await client.completions.create(prompt="x", model="other")
        return rec

    rec = asyncio.run(main())
    assert no_sleep == [0.25] and len(rec.requests) == 4


def test_async_upload_awaits_an_async_callback_and_calls_a_plain_one():
    async def main():
        rec = Recorder(httpx.Response(200, content=sse(upload_progress(40), upload_progress(100), DOCUMENT)))
        seen = []

        async def record(progress):
            seen.append(("async", progress.processed))

        async with rec.async_client() as client:
            first = await client.documents.upload("text", on_progress=record)
            second = await client.documents.upload("text", on_progress=lambda p: seen.append(("sync", p.processed)))
        return first, second, seen, rec

    first, second, seen, rec = asyncio.run(main())
    assert seen == [("async", 40), ("async", 100), ("sync", 40), ("sync", 100)]
    assert first.info.id == second.info.id == "doc-1" and rec.body()["stream"] is True


def test_async_document_stream_and_health(no_sleep):
    async def main():
        rec = Recorder(httpx.Response(200, content=sse(chat_chunk("yes", "stop"))), httpx.Response(200))
        async with rec.async_client() as client:
            stream = await client.documents.ask("doc", "q?", stream=True)
            done = await stream.until_done()
            health = await client.health()
        return done, health

    done, health = asyncio.run(main())
    assert done.text == "yes" and done.finish_reason == "stop" and health.ok
