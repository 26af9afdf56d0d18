"""/v1/documents: upload (JSON text or a multipart file), list, get and delete documents (server/documents.py)."""

from __future__ import annotations

import json
from typing import Annotated, AsyncIterator

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError

from lighthouse.engine.options import KVMode
from lighthouse_server.deps import require_api_key
from lighthouse_server.documents import DocumentService, Upload, salt_of
from lighthouse_server.errors import APIError, error_body, validation_message
from lighthouse_server.openai_format import prompt_progress, sse
from lighthouse_server.openapi import responses
from lighthouse_server.schemas import NonEmptyText, Text

router = APIRouter(dependencies=[Depends(require_api_key)])


class DocumentCreate(BaseModel):
    """POST /v1/documents as JSON (a multipart upload sends the same fields as form fields, `file` for `text`)."""

    model_config = ConfigDict(extra="ignore")  # unknown fields are ignored, as in the other routes

    text: NonEmptyText = Field(description="the document")
    name: Annotated[Text, Field(max_length=256)] | None = None
    ttl_s: float | None = Field(None, ge=60, allow_inf_nan=False,
                                description="delete it this many seconds after the upload (at least 60)")
    kv_mode: KVMode | None = Field(None, description="full | compact (default: the server's)")
    system: Text | None = Field(None, description="the system message its questions will have (documents.ask's); "
                                                 "a question with another one prefills the document again")
    stream: StrictBool = Field(False, description="answer with server-sent events: prefill progress (`document.progress`, "
                                           "llama.cpp's prompt_progress), then the document, then [DONE] (as does "
                                           "`Accept: text/event-stream`)")


class DocumentUpdate(BaseModel):
    """PATCH /v1/documents/{id}: a new TTL, counted from now."""

    model_config = ConfigDict(extra="ignore")

    ttl_s: float | None = Field(ge=60, allow_inf_nan=False, description="delete it this many seconds from now (at least 60); null: keep "
                                                   "it until deleted")


class DocumentObject(BaseModel):
    """A document as the routes return it (documentation)."""

    id: str
    object: str = "document"
    name: str | None = None
    created_at: int
    expires_at: int | None = None
    ttl_s: float | None = None
    tokens: int
    seconds: float
    kv_mode: str | None = None
    kv_bytes: int
    pinned: bool
    stored: bool


class DocumentListObject(BaseModel):
    object: str = "list"
    data: list[DocumentObject]
    budget_bytes: int
    used_bytes: int


class DocumentDeletedObject(BaseModel):
    id: str
    object: str = "document.deleted"
    deleted: bool = True


_UPLOAD_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": DocumentCreate.model_json_schema()},
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "minLength": 1, "description": "the document: UTF-8 text"}, "name": {"type": "string"},
        "ttl_s": {"type": "number", "minimum": 60}, "kv_mode": {"enum": ["full", "compact"]},
        "system": {"type": "string"}, "stream": {"enum": ["true", "false"]}}}}}}}


def get_documents(request: Request) -> DocumentService:
    service = getattr(request.app.state, "documents", None)
    if service is None:
        raise APIError(503, "documents are not available on this server (the engine is not loaded)",
                       code="engine_unavailable", headers={"Retry-After": "1"})
    return service


def get_owner(request: Request) -> str:
    return getattr(request.state, "owner", "")


def cache_salt(request: Request, body) -> str | None:
    """A completion's prefix-cache salt: the caller's key and the body's own cache_salt (documents.salt_of)."""
    return salt_of(get_owner(request), body.cache_salt)


def pins_note(request: Request):
    """() -> the caller's pinned documents in words (for a request refused for want of room beside them); None
    without documents."""
    service = getattr(request.app.state, "documents", None)
    owner = get_owner(request)
    return None if service is None else (lambda: service.pinned_note(owner))


async def citer(request: Request, body, doc, prompt_ids: list[int]):
    """With `citations`, answer ids -> the spans of the request's document the answer drew on (its document_id's,
    else the caller's document the prompt starts with); a 400 now when there is none to cite. None without."""
    if not body.citations:
        return None
    documents = get_documents(request)
    if doc is None:
        await documents.sweep()
        doc = documents.containing(get_owner(request), prompt_ids)
    return documents.citer(doc, prompt_ids, body.citations_top_k)


DocumentsDep = Annotated[DocumentService, Depends(get_documents)]
OwnerDep = Annotated[str, Depends(get_owner)]


async def _create_body(request: Request) -> DocumentCreate:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        if kind == "multipart/form-data":
            form = await request.form()
            fields = {k: v for k, v in form.items() if k != "file" and isinstance(v, str) and v != ""}
            upload = form.get("file")
            if upload is not None:
                if "text" in fields:
                    raise APIError(400, "send either a file or text, not both", param="file")
                try:  # a file part, or the text as a plain form field of that name
                    fields["text"] = upload if isinstance(upload, str) else (await upload.read()).decode("utf-8")
                except UnicodeDecodeError:
                    raise APIError(400, "the file is not UTF-8 text", param="file") from None
            if "stream" in fields:  # a form field is text: "true" or "false"
                if fields["stream"] not in ("true", "false"):
                    raise APIError(400, "stream: must be \"true\" or \"false\"", param="stream")
                fields["stream"] = fields["stream"] == "true"
            return DocumentCreate.model_validate(fields)
        return DocumentCreate.model_validate(json.loads(await request.body() or b"null"))
    except ValueError as exc:  # not JSON, or not UTF-8 (ValidationError is handled below, before this)
        if isinstance(exc, ValidationError):
            raise _invalid(exc) from None
        raise APIError(400, "the body is not valid JSON in UTF-8") from None


def _invalid(exc: ValidationError) -> APIError:
    message, param, code = validation_message(exc)  # in words, as every other route's 400
    return APIError(400, message, param=param, code=code)


def _upload_responses() -> dict:
    out = responses(DocumentObject, 400, 507)
    event = {"type": "object", "required": ["data"], "properties": {"data": {"type": "string"}}}
    out[200]["content"] = {"text/event-stream": {"schema": event, "description": (
        "with stream=true or Accept: text/event-stream: `data: {\"object\": \"document.progress\", ...}` events, "
        "then `data: {document}`, then `data: [DONE]`; a failure after the first event is a `data: {\"error\": ...}` "
        "event")}}
    return out


@router.post("/v1/documents", responses=_upload_responses(), openapi_extra=_UPLOAD_BODY)
async def create_document(request: Request, documents: DocumentsDep, owner: OwnerDep):
    """Tokenize and prefill a document once; its K/V stay pinned until it is deleted or expires. With `stream`
    (or `Accept: text/event-stream`), the prefill's progress comes as server-sent events first."""
    body = await _create_body(request)
    upload = await documents.prepare(owner, body.text, name=body.name, ttl_s=body.ttl_s, kv_mode=body.kv_mode,
                                     system=body.system)  # refusals (400, 507) before any event
    if body.stream or "text/event-stream" in request.headers.get("accept", ""):
        return StreamingResponse(_upload_events(documents, upload), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    async for _ in documents.complete(upload):
        pass
    return upload.doc.public()


async def _upload_events(documents: DocumentService, upload: Upload) -> AsyncIterator[str]:
    d = upload.doc
    try:
        async for p in documents.complete(upload):
            yield sse({"id": d.id, "object": "document.progress", "prompt_progress": prompt_progress(p)})
        yield sse(d.public())
    except APIError as err:
        yield sse(error_body(err.status, err.message, err.param, err.code))
    yield "data: [DONE]\n\n"


@router.get("/v1/documents", responses=responses(DocumentListObject))
async def list_documents(documents: DocumentsDep, owner: OwnerDep):
    await documents.sweep()
    return {"object": "list", "data": [d.public() for d in documents.visible(owner)],
            "budget_bytes": documents.budget_bytes, "used_bytes": documents.used_bytes()}


@router.get("/v1/documents/{document_id}", responses=responses(DocumentObject, 404))
async def get_document(document_id: str, documents: DocumentsDep, owner: OwnerDep):
    return (await documents.get(document_id, owner)).public()


@router.patch("/v1/documents/{document_id}", responses=responses(DocumentObject, 400, 404))
async def update_document(document_id: str, body: DocumentUpdate, documents: DocumentsDep, owner: OwnerDep):
    """Set the document's TTL anew, counted from now (null: no expiry): keep a document asked about for longer
    without uploading it again (Gemini's cachedContents.patch)."""
    await documents.sweep()
    return (await documents.update_ttl(document_id, owner, body.ttl_s)).public()


@router.delete("/v1/documents/{document_id}", responses=responses(DocumentDeletedObject, 404))
async def delete_document(document_id: str, documents: DocumentsDep, owner: OwnerDep):
    await documents.delete(document_id, owner)
    return {"id": document_id, "object": "document.deleted", "deleted": True}
