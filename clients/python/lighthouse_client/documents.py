"""The main use case in one call: ask a question of a long document.

The document goes first and the question last, so that (a) asking many questions of one document reuses the
server's cached prefill of the document (prefix caching), and (b) the question falls in the densely
prefilled tail of the prompt.

`upload` sends the document once (POST /v1/documents: the server prefills it and keeps its K/V pinned) and returns
a handle whose `ask(question)` sends only the question with the document's id; the server places the document
where `ask` would (first in the user message, a blank line, then "Question: ..."); with `on_progress`, the upload
streams the prefill's progress. The /v1/documents requests themselves are in _documents_store.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

from ._base_client import NOT_GIVEN, NotGiven, TimeoutTypes
from ._documents_store import (
    DocumentStore,
    ProgressCallback,
    afinish_upload,
    finish_upload,
    refuse_async_callback,
    upload_body,
)
from ._streaming import AsyncStream, Stream
from .resources import ChatCompletions
from .types import (
    ChatCompletion,
    ChatCompletionChunk,
    CompletionUsage,
    DocumentAnswer,
    DocumentDeleted,
    DocumentDone,
    DocumentEvent,
    DocumentProgress,  # fmt: skip
    DocumentInfo,
    DocumentList,
    DocumentText,
)

Timeout = TimeoutTypes | NotGiven
DEFAULT_SYSTEM = "Answer the question using only the document. Be concise."


def document_messages(document: str, question: str, system: str | None = DEFAULT_SYSTEM) -> list[dict[str, str]]:
    """Chat messages for a question about a document: [system], user = document, blank line, question."""
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": f"{document}\n\nQuestion: {question}"})
    return messages


def _request_kwargs(document: str, question: str, system: str | None, stream: bool, progress: bool,
                    extra_body: Mapping[str, Any] | None, document_id: str | None = None,
                    **params: Any) -> dict[str, Any]:  # fmt: skip
    extra = dict(extra_body or {})
    if progress:
        extra.setdefault("return_progress", True)  # llama.cpp's name for streamed prefill progress
    if document_id is not None:  # the server puts the document before "\n\nQuestion: ..."
        extra["document_id"] = document_id
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": f"Question: {question}"})
    else:
        messages = document_messages(document, question, system)
    return dict(messages=messages, stream=stream, include_usage=True if stream else None,
                extra_body=extra or None, **params)  # fmt: skip


def _answer(completion: ChatCompletion) -> DocumentAnswer:
    choice = completion.choices[0] if completion.choices else None
    return DocumentAnswer(
        text=completion.text, finish_reason=choice.finish_reason if choice else None,
        usage=completion.usage, model=completion.model,
    )  # fmt: skip


class _EventBuilder:
    """Turns chat chunks into DocumentProgress / DocumentText events and a final DocumentDone."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.finish_reason: str | None = None
        self.usage: CompletionUsage | None = None

    def events(self, chunk: ChatCompletionChunk) -> list[DocumentEvent]:
        out: list[DocumentEvent] = []
        progress = _progress_of(chunk)
        if progress is not None:
            out.append(progress)
        if chunk.usage is not None:
            self.usage = chunk.usage
        for choice in chunk.choices[:1]:
            if choice.delta.content:
                self.parts.append(choice.delta.content)
                out.append(DocumentText(text=choice.delta.content))
            if choice.finish_reason:
                self.finish_reason = choice.finish_reason
        return out

    def done(self) -> DocumentDone:
        return DocumentDone(text="".join(self.parts), finish_reason=self.finish_reason, usage=self.usage)


def _progress_of(chunk: ChatCompletionChunk) -> DocumentProgress | None:
    """llama.cpp-style `prompt_progress` on a chunk, or a chunk that is itself a progress object."""
    p = chunk.prompt_progress
    if p is not None:
        return DocumentProgress(processed=p.processed, total=p.total, cache=p.cache, time_ms=p.time_ms)
    extra = chunk.model_extra or {}
    if "processed" in extra and "total" in extra:
        return DocumentProgress(processed=extra["processed"], total=extra["total"], cache=extra.get("cache", 0),
                                time_ms=extra.get("time_ms"))  # fmt: skip
    return None


class DocumentStream:
    """Iterate DocumentProgress / DocumentText events, ending with one DocumentDone. A context manager."""

    def __init__(self, stream: Stream[ChatCompletionChunk]) -> None:
        self._stream = stream
        self._builder = _EventBuilder()
        self._iterator = self._events()

    def _events(self) -> Iterator[DocumentEvent]:
        for chunk in self._stream:
            yield from self._builder.events(chunk)
        yield self._builder.done()

    @property
    def text(self) -> str:
        """The answer so far."""
        return "".join(self._builder.parts)

    def until_done(self) -> DocumentDone:
        """Consume the rest of the stream; the final event."""
        last = None
        for last in self:
            pass
        assert isinstance(last, DocumentDone)
        return last

    def __iter__(self) -> Iterator[DocumentEvent]:
        return self

    def __next__(self) -> DocumentEvent:
        return next(self._iterator)

    def __enter__(self) -> DocumentStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._stream.close()


class AsyncDocumentStream:
    """`async for` over DocumentProgress / DocumentText events, ending with one DocumentDone."""

    def __init__(self, stream: AsyncStream[ChatCompletionChunk]) -> None:
        self._stream = stream
        self._builder = _EventBuilder()
        self._iterator = self._events()

    async def _events(self) -> AsyncIterator[DocumentEvent]:
        async for chunk in self._stream:
            for event in self._builder.events(chunk):
                yield event
        yield self._builder.done()

    @property
    def text(self) -> str:
        return "".join(self._builder.parts)

    async def until_done(self) -> DocumentDone:
        last = None
        async for last in self:
            pass
        assert isinstance(last, DocumentDone)
        return last

    def __aiter__(self) -> AsyncIterator[DocumentEvent]:
        return self

    async def __anext__(self) -> DocumentEvent:
        return await self._iterator.__anext__()

    async def __aenter__(self) -> AsyncDocumentStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._stream.close()


class Documents:
    """Questions about a document, through a client's `chat.completions` (the one it is built with); documents
    uploaded once and asked by id (`upload`)."""

    def __init__(self, chat_completions: ChatCompletions) -> None:
        self._completions = chat_completions
        self._store = DocumentStore(chat_completions._client)

    def upload(self, text: str | None = None, *, file: str | Path | None = None, name: str | None = None,
               ttl_s: float | None = None, kv_mode: str | None = None, system: str | None = DEFAULT_SYSTEM,
               on_progress: ProgressCallback | None = None,
               timeout: Timeout = NOT_GIVEN) -> DocumentHandle:  # fmt: skip
        """Send a document once (text, or a UTF-8 file's path); the server prefills it and pins its K/V. `system`:
        the system message its questions will carry (`ask`'s default). Returns a handle with `.ask(question)`.

        `on_progress`: called with a `DocumentProgress` (`processed` of `total` tokens) as the prefill starts and
        after each layer; the upload is then streamed, and the timeout applies between these events rather than to
        the whole prefill. An exception it raises closes the stream (the server cancels the upload) and propagates.
        A failure midway raises the error the same failure raises without it (BadRequestError, ...)."""
        body = upload_body(text, file, name, ttl_s, kv_mode, system)
        if on_progress is None:
            info: DocumentInfo = self._store.upload(body, timeout)
        else:
            refuse_async_callback(on_progress)
            info = finish_upload(self._store.upload_stream(body, timeout), on_progress)
        return DocumentHandle(self, info, system)

    def list(self, *, timeout: Timeout = NOT_GIVEN) -> DocumentList:
        result: DocumentList = self._store.list(timeout)
        return result

    def retrieve(self, document_id: str, *, timeout: Timeout = NOT_GIVEN) -> DocumentInfo:
        result: DocumentInfo = self._store.retrieve(document_id, timeout)
        return result

    def update(self, document_id: str, *, ttl_s: float | None, timeout: Timeout = NOT_GIVEN) -> DocumentInfo:
        """A new TTL for the document, counted from now (at least 60 s; None: no expiry)."""
        result: DocumentInfo = self._store.update(document_id, ttl_s, timeout)
        return result

    def delete(self, document_id: str, *, timeout: Timeout = NOT_GIVEN) -> DocumentDeleted:
        result: DocumentDeleted = self._store.delete(document_id, timeout)
        return result

    def ask(
        self,
        document: str,
        question: str,
        *,
        system: str | None = DEFAULT_SYSTEM,
        model: str | None = None,
        max_tokens: int | None = 256,
        temperature: float | None = 0.0,
        stream: bool = False,
        progress: bool = False,
        prefill: str | None = None,
        decode: str | None = None,
        dense_tail_tokens: int | None = None,
        kv_mode: str | None = None,
        document_id: str | None = None,
        extra_body: Mapping[str, Any] | None = None,
        timeout: Timeout = NOT_GIVEN,
    ) -> DocumentAnswer | DocumentStream:
        """Ask `question` of `document` through chat completions.

        Returns a `DocumentAnswer`; with `stream=True` a `DocumentStream` of DocumentText events (and
        DocumentProgress events while the prompt prefills, with `progress=True` on a server that reports
        progress), ending with DocumentDone. Prefill/decode options as in `chat.completions.create`.
        With `document_id` (an uploaded document's), `document` is not sent: the server puts that document there.
        """
        kwargs = _request_kwargs(document, question, system, stream, progress, extra_body, model=model,
                                 max_tokens=max_tokens, temperature=temperature, prefill=prefill, decode=decode,
                                 dense_tail_tokens=dense_tail_tokens, kv_mode=kv_mode, timeout=timeout,
                                 document_id=document_id)  # fmt: skip
        result = self._completions.create(**kwargs)
        return DocumentStream(result) if stream else _answer(result)


class AsyncDocuments:
    def __init__(self, chat_completions: ChatCompletions) -> None:
        self._completions = chat_completions  # an AsyncClient's: create() returns an awaitable
        self._store = DocumentStore(chat_completions._client)

    async def upload(self, text: str | None = None, *, file: str | Path | None = None, name: str | None = None,
                     ttl_s: float | None = None, kv_mode: str | None = None, system: str | None = DEFAULT_SYSTEM,
                     on_progress: ProgressCallback | None = None,
                     timeout: Timeout = NOT_GIVEN) -> AsyncDocumentHandle:  # fmt: skip
        """As `Documents.upload`, awaitable; `on_progress` may also be an `async def` function (it is awaited)."""
        body = upload_body(text, file, name, ttl_s, kv_mode, system)
        if on_progress is None:
            info: DocumentInfo = await self._store.upload(body, timeout)
        else:
            info = await afinish_upload(await self._store.upload_stream(body, timeout), on_progress)
        return AsyncDocumentHandle(self, info, system)

    async def list(self, *, timeout: Timeout = NOT_GIVEN) -> DocumentList:
        result: DocumentList = await self._store.list(timeout)
        return result

    async def retrieve(self, document_id: str, *, timeout: Timeout = NOT_GIVEN) -> DocumentInfo:
        result: DocumentInfo = await self._store.retrieve(document_id, timeout)
        return result

    async def update(self, document_id: str, *, ttl_s: float | None, timeout: Timeout = NOT_GIVEN) -> DocumentInfo:
        result: DocumentInfo = await self._store.update(document_id, ttl_s, timeout)
        return result

    async def delete(self, document_id: str, *, timeout: Timeout = NOT_GIVEN) -> DocumentDeleted:
        result: DocumentDeleted = await self._store.delete(document_id, timeout)
        return result

    async def ask(
        self,
        document: str,
        question: str,
        *,
        system: str | None = DEFAULT_SYSTEM,
        model: str | None = None,
        max_tokens: int | None = 256,
        temperature: float | None = 0.0,
        stream: bool = False,
        progress: bool = False,
        prefill: str | None = None,
        decode: str | None = None,
        dense_tail_tokens: int | None = None,
        kv_mode: str | None = None,
        document_id: str | None = None,
        extra_body: Mapping[str, Any] | None = None,
        timeout: Timeout = NOT_GIVEN,
    ) -> DocumentAnswer | AsyncDocumentStream:
        """As `Documents.ask`, awaitable; with `stream=True` an `AsyncDocumentStream`."""
        kwargs = _request_kwargs(document, question, system, stream, progress, extra_body, model=model,
                                 max_tokens=max_tokens, temperature=temperature, prefill=prefill, decode=decode,
                                 dense_tail_tokens=dense_tail_tokens, kv_mode=kv_mode, timeout=timeout,
                                 document_id=document_id)  # fmt: skip
        result = await self._completions.create(**kwargs)
        return AsyncDocumentStream(result) if stream else _answer(result)


class DocumentHandle:
    """An uploaded document: `info` (id, tokens, seconds, ...), `ask(question)`, `update(ttl_s=...)`, `delete()`."""

    def __init__(self, documents: Documents, info: DocumentInfo, system: str | None) -> None:
        self._documents, self.info, self.system = documents, info, system

    @property
    def id(self) -> str:
        return self.info.id

    def ask(self, question: str, **kwargs: Any) -> DocumentAnswer | DocumentStream:
        """Ask `question` of this document (keyword arguments as `Documents.ask`)."""
        kwargs.setdefault("system", self.system)
        return self._documents.ask("", question, document_id=self.id, **kwargs)

    def update(self, *, ttl_s: float | None) -> DocumentInfo:
        """A new TTL, counted from now (None: no expiry); `info` becomes the server's answer."""
        self.info = self._documents.update(self.id, ttl_s=ttl_s)
        return self.info

    def delete(self) -> DocumentDeleted:
        result: DocumentDeleted = self._documents.delete(self.id)
        return result


class AsyncDocumentHandle:
    """As `DocumentHandle`, with awaitable methods."""

    def __init__(self, documents: AsyncDocuments, info: DocumentInfo, system: str | None) -> None:
        self._documents, self.info, self.system = documents, info, system

    @property
    def id(self) -> str:
        return self.info.id

    async def ask(self, question: str, **kwargs: Any) -> DocumentAnswer | AsyncDocumentStream:
        kwargs.setdefault("system", self.system)
        return await self._documents.ask("", question, document_id=self.id, **kwargs)

    async def update(self, *, ttl_s: float | None) -> DocumentInfo:
        self.info = await self._documents.update(self.id, ttl_s=ttl_s)
        return self.info

    async def delete(self) -> DocumentDeleted:
        result: DocumentDeleted = await self._documents.delete(self.id)
        return result
