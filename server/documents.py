"""Documents: uploaded once (tokenized and prefilled, their K/V pinned in the prefix cache), asked many times by id.

Layout: a document sits where the SDK's `documents.ask` puts it, at the start of the first user message, followed
by a blank line and that message's content ("Question: ..." from the SDK). Its *prefix*, the prompt's ids up to the
document's end (the chat template's head: an optional system message and the user turn's opening, then the
document), is what is prefilled at upload, with the document as the sparse head and no dense tail; a question then
continues it, its own tokens forming the dense tail, so the prefix-cache entry is reused as is
(lighthouse/engine/documents.py). A chat whose head differs (another system message) still gets the document in
that place, prefilled afresh. A completion continues the prefix with a blank line and its prompt. A tokenizer
without a chat template gets the document's own ids as the prefix.

Memory: the pinned documents' KV bytes count against a budget (`documents_kv_share` of the KV cache); an upload that
would pass it is a 507 naming the caller's documents, largest first. Owners: with API keys, a document belongs to
the key that uploaded it (a hash of it) and every other key gets a 404 for it. TTL: a document with `ttl_s` is
deleted that many seconds after its upload (checked on every access and once a second).

With a document store (`document_store`), each document's K/V and metadata are also written to disk
(lighthouse/engine/cache/disk_tier.py) and listed again after a restart; the first question brings them back. The
copy is written in the background (the upload returns once the document is pinned, `stored` false until the copy
is on disk); a graceful shutdown waits for copies still being written (`flush`).

An upload is two steps: `prepare` (tokenize, size, check the budget: its refusals are ordinary HTTP errors) and
`complete` (prefill, yielding llama.cpp-shaped progress, then pin, and start the store's copy), so a streamed upload
can send progress events in between. `citer` checks a request's citations before it runs and returns what computes
them after (server/citations.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from typing import AsyncIterator

from lighthouse.engine.errors import CITATIONS_NEED_SPANS, KV_CACHE_EXCEEDED, EngineError
from lighthouse.engine.options import RequestOptions
from lighthouse.engine.request import PromptProgress
from lighthouse.engine.sampling import SamplingParams
from lighthouse_server.citations import top_spans
from lighthouse_server.errors import APIError, from_engine_error, from_failure

log = logging.getLogger(__name__)
FLUSH_TIMEOUT_S = 600.0  # a shutdown waits this long at most for copies still to write (H100: 4.3-34.6 s a document)
_PLACEHOLDER = re.compile("\ue000(\\d+)\ue001")  # chat_template.py's placeholders
SEPARATOR = "\n\n"  # between the document and the message's content (documents.ask's layout)


def owner_of(key: str | None) -> str:
    """Who a document belongs to: a short hash of the API key ("" without keys)."""
    return hashlib.sha256(key.encode()).hexdigest()[:16] if key else ""


def salt_of(owner: str, asked: str | None = None) -> str | None:
    """A request's prefix-cache salt (RequestOptions.cache_salt): its key's tenant and its own cache_salt, so that
    one key's prompts never reuse (nor learn of, through cached_tokens or timings) another's; None without either
    (one shared cache, as without keys)."""
    if asked is not None:
        return f"{owner}:{asked}"
    return owner or None


@dataclass
class Document:
    id: str
    owner: str
    name: str | None
    created_at: float
    ttl_s: float | None
    kv_mode: str | None
    system: str | None
    layout: str  # "chat" | "raw"
    head: str | None  # the chat's text before the document (system message and markup), to match asks against
    tokens: int = 0  # the prefix's token count
    seconds: float = 0.0  # the upload's tokenize + prefill time
    kv_bytes: int = 0  # KV cache bytes it pins (an estimate while it is being prefilled)
    stored: bool = False
    resident: bool = False  # pinned on the device now
    ready: bool = False  # its upload finished (or it came from the store)
    citable: bool = True  # False: a compact document restored from a store written before ctx_spans were kept
    expires: float | None = None  # when a TTL update (`update_ttl`) set it: ttl_s seconds after that update
    text: str | None = field(default=None, repr=False)
    prefix_ids: list[int] | None = field(default=None, repr=False)

    @property
    def salt(self) -> str | None:
        """The prefix-cache salt its entry is pinned under: its owner's (salt_of)."""
        return salt_of(self.owner)

    @property
    def expires_at(self) -> float | None:
        if self.ttl_s is None:
            return None
        return self.expires if self.expires is not None else self.created_at + self.ttl_s

    def public(self) -> dict:
        return {"id": self.id, "object": "document", "name": self.name, "created_at": int(self.created_at),
                "expires_at": None if self.expires_at is None else int(self.expires_at), "ttl_s": self.ttl_s,
                "tokens": self.tokens, "seconds": round(self.seconds, 4), "kv_mode": self.kv_mode,
                "kv_bytes": self.kv_bytes, "pinned": self.resident, "stored": self.stored}

    def meta(self) -> dict:
        d = asdict(self)
        for k in ("text", "prefix_ids", "resident", "stored", "ready", "citable"):
            d.pop(k)
        return d


@dataclass
class Upload:
    """A document tokenized and sized (`DocumentService.prepare`), to be prefilled (`complete`)."""

    doc: Document
    options: RequestOptions
    started: float  # time.monotonic() when the upload began


def chat_split(template, roles: list[str], contents: list[str], add_generation_prompt: bool = True):
    """(rendered template, the placeholder match of the first user message, the head's text before it)."""
    rendered = template.render(roles, add_generation_prompt)
    if "user" not in roles:
        raise APIError(400, "a chat with document_id needs a user message (the document goes first in it)",
                       param="messages")
    u = roles.index("user")
    m = next(x for x in _PLACEHOLDER.finditer(rendered) if int(x[1]) == u)
    head = _PLACEHOLDER.sub(lambda x: contents[int(x[1])], rendered[: m.start()])
    return rendered, m, head


class DocumentService:
    def __init__(self, engine, prompts_of, *, budget_bytes: int, store=None, clock=time.time):
        self.engine, self.prompts_of = engine, prompts_of  # AsyncEngine; () -> the app's PromptEncoder
        from lighthouse.engine.documents import DocumentPins

        self.pins = DocumentPins(engine.engine)
        self.budget_bytes, self.store, self.clock = budget_bytes, store, clock
        self.docs: dict[str, Document] = {}
        self.saving: dict[str, asyncio.Task] = {}  # document id -> its copy being written to the store
        self._save_turn = asyncio.Lock()  # copies are made and written one at a time (one host copy at once)
        if store is not None:
            for doc_id, rec in store.index().items():
                self.docs[doc_id] = Document(**rec["meta"], stored=True, ready=True)

    # ---- registry ---------------------------------------------------------------------------------------------
    def used_bytes(self) -> int:
        return sum(d.kv_bytes for d in self.docs.values())

    async def sweep(self) -> None:
        now = self.clock()
        for d in [d for d in self.docs.values() if d.expires_at is not None and d.expires_at <= now]:
            await self._remove(d)

    def visible(self, owner: str) -> list[Document]:
        return sorted((d for d in self.docs.values() if d.owner == owner and d.ready), key=lambda d: d.created_at)

    async def get(self, doc_id: str, owner: str, param: str | None = None) -> Document:
        """The caller's document, or a 404 (also for another key's: its existence is not disclosed)."""
        await self.sweep()
        d = self.docs.get(doc_id)
        if d is None or d.owner != owner or not d.ready:
            raise APIError(404, f"No document with id {doc_id!r}", param=param, code="document_not_found")
        return d

    async def update_ttl(self, doc_id: str, owner: str, ttl_s: float | None) -> Document:
        """The caller's document now expires ttl_s seconds from now (None: never), as Gemini's cachedContents
        update; its stored copy's metadata too, so the new TTL holds after a restart."""
        d = await self.get(doc_id, owner)
        d.ttl_s, d.expires = ttl_s, None if ttl_s is None else self.clock() + ttl_s
        if d.stored and self.store is not None:
            await asyncio.to_thread(self.store.update_meta, d.id, d.meta())
        return d

    async def delete(self, doc_id: str, owner: str) -> None:
        await self._remove(await self.get(doc_id, owner))

    async def _remove(self, d: Document) -> None:
        self.docs.pop(d.id, None)
        if d.resident and d.prefix_ids is not None:
            await self.engine.call(lambda: self.pins.unpin(d.prefix_ids, d.kv_mode, d.salt))
        if self.store is not None:
            await asyncio.to_thread(self.store.delete, d.id)  # (a copy still being written is deleted when it ends)

    # ---- upload -----------------------------------------------------------------------------------------------
    async def upload(self, owner: str, text: str, *, name: str | None, ttl_s: float | None, kv_mode: str | None,
                     system: str | None) -> Document:
        upload = await self.prepare(owner, text, name=name, ttl_s=ttl_s, kv_mode=kv_mode, system=system)
        async for _ in self.complete(upload):
            pass
        return upload.doc

    async def prepare(self, owner: str, text: str, *, name: str | None, ttl_s: float | None, kv_mode: str | None,
                      system: str | None) -> Upload:
        """Tokenize a document and size it against the budget (raises APIError: 400, 507); nothing is held yet."""
        await self.sweep()
        t0 = time.monotonic()
        prompts = self.prompts_of()
        has_template = bool(getattr(prompts.tokenizer, "chat_template", None))
        d = Document(f"doc-{uuid.uuid4().hex}", owner, name, self.clock(), ttl_s, kv_mode, system,
                     "chat" if has_template else "raw", None, text=text)
        if has_template:
            roles, contents = (["system", "user"], [system, text]) if system else (["user"], [text])
            prompts.refuse_if_too_long(contents, "text", prompts.max_model_len - 1)
            rendered, m, d.head = chat_split(prompts.template, roles, contents)
            d.prefix_ids = await prompts._run(prompts.template.encode, rendered[: m.end()], contents)
        else:
            if system:
                raise APIError(400, "this model's tokenizer has no chat template, so a document takes no system "
                               "message", param="system")
            d.prefix_ids = await prompts.encode(text, param="text")
        d.tokens = len(d.prefix_ids)
        options = RequestOptions(kv_mode=kv_mode, dense_tail_tokens=0, pin_prompt=True,  # type: ignore[arg-type]
                                 cache_salt=salt_of(owner))
        try:
            d.kv_bytes = self.pins.estimate_bytes(d.prefix_ids, options)
        except EngineError as exc:
            raise from_engine_error(exc, prompt_param="text") from None
        self._check_budget(owner, d.kv_bytes)
        return Upload(d, options, t0)

    async def complete(self, upload: Upload) -> AsyncIterator[PromptProgress]:
        """Prefill a prepared document, yielding its progress, then pin (and store) it. The budget is checked again
        and the document counted against it from the first step (closing the iterator early forgets it)."""
        d = upload.doc
        self._check_budget(d.owner, d.kv_bytes)
        self.docs[d.id] = d  # counts against the budget while it prefills (not listed until then)
        try:
            if await self._pinned_already(d):  # the same key uploaded these tokens before: no second prefill
                yield PromptProgress(d.tokens, d.tokens, d.tokens, round(1000 * (time.monotonic() - upload.started)))
            else:
                async for progress in self._prefill(d, upload.options):
                    yield progress
        except BaseException:
            self.docs.pop(d.id, None)
            raise
        d.kv_bytes = await self.engine.call(lambda: self.pins.held_bytes(d.prefix_ids, d.kv_mode, d.salt))
        d.resident = d.kv_bytes > 0
        d.seconds, d.ready = time.monotonic() - upload.started, True
        if self.store is not None and d.resident:  # written while the document answers (`stored` true once it is)
            self.saving[d.id] = asyncio.create_task(self._save(d))

    async def _save(self, d: Document) -> None:
        """Copy the document's K/V off the device and write them to the store (a thread: seconds to a minute for
        512K), one document at a time, so that uploads in a row hold one host copy, not one each; a document deleted
        or expired before its turn is skipped, one deleted while written has its copy deleted as soon as it is."""
        try:
            async with self._save_turn:
                if self.docs.get(d.id) is not d:
                    return
                data = await self.engine.call(lambda: self.pins.export(d.prefix_ids, d.kv_mode, d.salt))
                if data is not None:
                    await self._write(d, data)
        except Exception:  # a full disk, say: the document still answers, it just does not outlive the process
            log.exception("document %s: writing its copy to the store failed", d.id)
        finally:
            self.saving.pop(d.id, None)

    async def _write(self, d: Document, data) -> None:
        meta = d.meta()
        await asyncio.to_thread(self.store.save, d.id, data, meta, d.text)
        if self.docs.get(d.id) is not d:
            await asyncio.to_thread(self.store.delete, d.id)
            return
        d.stored = True
        if d.meta() != meta:  # its TTL changed while the copy was written
            await asyncio.to_thread(self.store.update_meta, d.id, d.meta())

    async def flush(self, timeout_s: float = FLUSH_TIMEOUT_S) -> None:
        """Wait for the copies still to write (a graceful shutdown: no document uploaded before it is lost), at
        most timeout_s (then the rest are given up, and logged)."""
        deadline = time.monotonic() + timeout_s
        while self.saving and (left := deadline - time.monotonic()) > 0:
            await asyncio.wait(list(self.saving.values()), timeout=left)
        if self.saving:
            log.warning("documents not written to the store before shutdown: %s", ", ".join(self.saving))

    async def _pinned_already(self, d: Document) -> bool:
        """Whether the owner holds a ready, resident document of the same tokens and kind, and its entry took one
        more pin for `d` (each document still counts its bytes against the budget; another key's upload is never
        reused here, so an upload's time tells nothing of other keys' documents)."""
        same = next((o for o in list(self.docs.values()) if o is not d and o.owner == d.owner and o.ready
                     and o.resident and o.kv_mode == d.kv_mode and o.prefix_ids == d.prefix_ids), None)
        if same is None or not await self.engine.call(
                lambda: self.pins.pin_again(d.prefix_ids, d.kv_mode, d.salt)):
            return False
        d.citable = same.citable  # the same entry (with or without its compact context's spans)
        return True

    def _check_budget(self, owner: str, need: int) -> None:
        used = self.used_bytes()
        if used + need <= self.budget_bytes:
            return
        raise APIError(507, f"This document needs {need:,} bytes of KV cache, but pinned documents hold {used:,} of "
                       f"the {self.budget_bytes:,}-byte document budget; free {used + need - self.budget_bytes:,} "
                       f"bytes by deleting documents. {self.pinned_note(owner)}",
                       param="text", code="document_budget_exceeded",
                       headers={"x-should-retry": "false"})  # clients (openai, ours) retry 5xx: this won't pass by itself

    def pinned_note(self, owner: str) -> str:
        """The caller's documents, largest first, and what other keys' hold (what a refusal tells to free)."""
        own = sorted(self.visible(owner), key=lambda d: -d.kv_bytes)
        listed = ", ".join(f"{d.id} ({d.name or 'unnamed'}, {d.tokens:,} tokens, {d.kv_bytes:,} bytes)"
                           for d in own[:10]) or "none"
        others = self.used_bytes() - sum(d.kv_bytes for d in own)
        return f"Yours, largest first: {listed}" + (f"; other keys' documents hold {others:,} bytes." if others else ".")

    async def _prefill(self, d: Document, options: RequestOptions) -> AsyncIterator[PromptProgress]:
        stream = self.engine.submit(f"{d.id}-prefill", d.prefix_ids, SamplingParams(max_tokens=1, temperature=0.0),
                                    options)
        try:
            async for out in stream:
                if out.progress is not None:
                    yield out.progress
                if out.finished and out.finish_reason == "error":
                    err = from_failure(f"the document's prefill failed: {out.error}", out.error_code)
                    if err.code == KV_CACHE_EXCEEDED:
                        err.message += " " + self.pinned_note(d.owner)
                    raise err
        finally:
            stream.close()

    # ---- asking -----------------------------------------------------------------------------------------------
    async def resident(self, d: Document) -> None:
        """Bring a stored document back after a restart (its ids, and its K/V pinned on the device when they fit)."""
        if d.resident or not d.stored or self.store is None:
            return
        loaded = await asyncio.to_thread(self.store.load, d.id)
        if loaded is None:  # gone or corrupt: forget it
            self.docs.pop(d.id, None)
            raise APIError(404, f"No document with id {d.id!r} (its stored copy is unreadable)",
                           param="document_id", code="document_not_found")
        data, text = loaded
        d.prefix_ids, d.text = data.tokens[: d.tokens].tolist(), text
        d.citable = data.ctx_layout is None or data.ctx_spans is not None
        data.salt = d.salt  # (a file written before salts were kept has none)
        if not d.resident:  # (another question may have restored it meanwhile)
            d.resident = await self.engine.call(lambda: self.pins.restore(data)) > 0

    async def chat_prompt(self, d: Document, messages, add_generation_prompt: bool) -> tuple[list[int], int]:
        """A chat's prompt ids with the document first in its first user message, and how many of them follow the
        document (the question's: the dense tail). With the upload's head the ids start with the pinned prefix; with
        another (a different system message) the document is encoded afresh after that head."""
        prompts = self.prompts_of()
        if d.layout != "chat":
            raise APIError(400, "this document was uploaded for a model without a chat template; use "
                           "/v1/completions", param="document_id")
        roles, contents = [m.role for m in messages], [m.text() for m in messages]
        prompts.refuse_if_too_long(contents, "messages", prompts.max_model_len - 1 - d.tokens)
        rendered, m, head = chat_split(prompts.template, roles, contents, add_generation_prompt)
        u = int(m[1])
        rest_contents = list(contents)
        rest_contents[u] = SEPARATOR + contents[u]
        rest = await prompts._run(prompts.template.encode, rendered[m.start() :], rest_contents)
        if head == d.head and d.prefix_ids is not None:
            return d.prefix_ids + rest, len(rest)
        with_doc = list(contents)
        with_doc[u] = d.text or ""
        return await prompts._run(prompts.template.encode, rendered[: m.end()], with_doc) + rest, len(rest)

    async def completion_prompt(self, d: Document, prompt_ids: list[int] | None, prompt: str | None) -> list[int]:
        prompts = self.prompts_of()
        if prompt_ids is None:
            prompt_ids = await prompts._run(prompts.template.encode_plain, SEPARATOR + (prompt or ""))
        return list(d.prefix_ids or []) + list(prompt_ids)

    # ---- citations ------------------------------------------------------------------------------------------
    def containing(self, owner: str, prompt_ids: list[int]) -> Document | None:
        """The caller's document (on the device) whose prefix the prompt starts with, the longest (a prefix hit)."""
        found = [d for d in self.visible(owner) if d.prefix_ids and prompt_ids[: len(d.prefix_ids)] == d.prefix_ids]
        return max(found, key=lambda d: d.tokens, default=None)

    def citer(self, d: Document | None, prompt_ids: list[int], top_k: int):
        """answer ids -> the document spans it drew on most (server/citations.py), checked now: a 400 when there is no
        document, it is a compact one stored without its context's windows, or the prompt does not start with its
        uploaded prefix."""
        if d is None:
            raise APIError(400, "citations need a document: send document_id, or a prompt that starts with one of your "
                           "uploaded documents (POST /v1/documents)", param="citations", code="citations_unavailable")
        if not d.citable:
            raise APIError(400, CITATIONS_NEED_SPANS, param="citations", code="citations_unavailable")
        if d.prefix_ids is None or prompt_ids[: d.tokens] != d.prefix_ids:
            raise APIError(400, "citations need the document in its uploaded layout (a chat with the system message "
                           "it was uploaded with)", param="citations", code="citations_unavailable")
        tokenizer = self.prompts_of().tokenizer

        async def cite(answer_ids: list[int]) -> list[dict]:
            if not answer_ids:
                return []
            try:
                scores = await self.engine.call(
                    lambda: self.pins.answer_attention(d.prefix_ids, d.kv_mode, prompt_ids, answer_ids,
                                                       d.salt))
            except EngineError as exc:
                raise from_engine_error(exc) from None
            if scores is None:  # deleted meanwhile
                return []
            return await asyncio.to_thread(top_spans, tokenizer, d.text or "", d.prefix_ids, scores, top_k)

        return cite

    @staticmethod
    def options(d: Document, asked: RequestOptions, question_tokens: int) -> RequestOptions:
        """The question's tokens (those after the document) are the dense tail, so the document's head and split are
        the upload's (reused), as is its cache salt (a request's own cache_salt would never find the document)."""
        if asked.cache_salt != d.salt:
            raise APIError(400, "cache_salt cannot be combined with document_id: a document's cache belongs to the "
                           "API key that uploaded it; leave cache_salt out", param="cache_salt",
                           code="invalid_combination")
        tail = asked.dense_tail_tokens if asked.dense_tail_tokens is not None else question_tokens
        return replace(asked, dense_tail_tokens=tail, kv_mode=asked.kv_mode or d.kv_mode)  # type: ignore[arg-type]
