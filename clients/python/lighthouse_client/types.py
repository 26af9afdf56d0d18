"""Typed results. Unknown fields the server adds are kept (extra="allow"), so a newer server never breaks an
older client."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "BaseType",
    "ChatChoice",
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatCompletionMessage",
    "ChoiceDelta",
    "ChunkChoice",
    "Completion",
    "CompletionChoice",
    "CompletionLogprobs",
    "CompletionUsage",
    "DetokenizeResult",
    "DocumentAnswer",
    "DocumentDeleted",
    "DocumentInfo",
    "DocumentList",
    "DocumentDone",
    "DocumentEvent",
    "DocumentProgress",
    "DocumentText",
    "HealthStatus",
    "Model",
    "ModelList",
    "PromptProgress",
    "TokenizeResult",
]


class BaseType(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())


class CompletionUsage(BaseType):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class PromptProgress(BaseType):
    """Prefill progress for a long prompt (llama.cpp's `prompt_progress` shape)."""

    total: int = 0
    processed: int = 0
    cache: int = 0
    time_ms: float | None = None

    @property
    def fraction(self) -> float:
        return self.processed / self.total if self.total else 0.0


class CompletionLogprobs(BaseType):
    tokens: list[str] | None = None
    token_logprobs: list[float | None] | None = None
    top_logprobs: list[dict[str, float] | None] | None = None
    text_offset: list[int] | None = None


class CompletionChoice(BaseType):
    index: int = 0
    text: str = ""
    finish_reason: str | None = None
    logprobs: CompletionLogprobs | None = None


class Completion(BaseType):
    """A /v1/completions result; also each chunk of a streamed completion (`object == "text_completion"`)."""

    id: str = ""
    object: str = "text_completion"
    created: int = 0
    model: str = ""
    choices: list[CompletionChoice] = Field(default_factory=list)
    usage: CompletionUsage | None = None
    prompt_progress: PromptProgress | None = None

    @property
    def text(self) -> str:
        """The first choice's text (the common n=1 case)."""
        return self.choices[0].text if self.choices else ""


class ChatCompletionMessage(BaseType):
    role: str = "assistant"
    content: str | None = None


class ChatChoice(BaseType):
    index: int = 0
    message: ChatCompletionMessage = Field(default_factory=ChatCompletionMessage)
    finish_reason: str | None = None
    logprobs: dict[str, Any] | None = None


class ChatCompletion(BaseType):
    id: str = ""
    object: str = "chat.completion"
    created: int = 0
    model: str = ""
    choices: list[ChatChoice] = Field(default_factory=list)
    usage: CompletionUsage | None = None

    @property
    def text(self) -> str:
        """The first choice's message content (the common n=1 case)."""
        return (self.choices[0].message.content or "") if self.choices else ""


class ChoiceDelta(BaseType):
    role: str | None = None
    content: str | None = None


class ChunkChoice(BaseType):
    index: int = 0
    delta: ChoiceDelta = Field(default_factory=ChoiceDelta)
    finish_reason: str | None = None
    logprobs: dict[str, Any] | None = None


class ChatCompletionChunk(BaseType):
    id: str = ""
    object: str = "chat.completion.chunk"
    created: int = 0
    model: str = ""
    choices: list[ChunkChoice] = Field(default_factory=list)
    usage: CompletionUsage | None = None
    prompt_progress: PromptProgress | None = None


class Model(BaseType):
    id: str
    object: str = "model"
    created: int = 0
    owned_by: str = ""
    max_model_len: int | None = None


class ModelList(BaseType):
    object: str = "list"
    data: list[Model] = Field(default_factory=list)

    def __iter__(self) -> Iterator[Model]:  # type: ignore[override]  # iterate models, not pydantic fields
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)


class TokenizeResult(BaseType):
    tokens: list[int] = Field(default_factory=list)
    count: int | None = None
    max_model_len: int | None = None


class DetokenizeResult(BaseType):
    prompt: str = ""


class HealthStatus(BaseType):
    """What /health (or /ready) answered. `ok` is True for a 2xx status."""

    ok: bool
    status_code: int
    status: str | None = None


class DocumentAnswer(BaseType):
    """The answer to a question about a document (non-streaming `documents.ask`)."""

    text: str
    finish_reason: str | None = None
    usage: CompletionUsage | None = None
    model: str = ""


class DocumentProgress(BaseType):
    """The server has prefilled `processed` of `total` prompt tokens (`cache` of them reused from its cache)."""

    type: Literal["progress"] = "progress"
    processed: int
    total: int
    cache: int = 0
    time_ms: float | None = None

    @property
    def fraction(self) -> float:
        return self.processed / self.total if self.total else 0.0


class DocumentText(BaseType):
    """A piece of the answer."""

    type: Literal["text"] = "text"
    text: str


class DocumentDone(BaseType):
    """The answer is complete."""

    type: Literal["done"] = "done"
    text: str
    finish_reason: str | None = None
    usage: CompletionUsage | None = None


DocumentEvent = DocumentProgress | DocumentText | DocumentDone


class DocumentInfo(BaseType):
    """An uploaded document (POST /v1/documents): its id, token count and upload time, and what it pins."""

    id: str
    object: str = "document"
    name: str | None = None
    created_at: int = 0
    expires_at: int | None = None
    ttl_s: float | None = None
    tokens: int = 0
    seconds: float = 0.0
    kv_mode: str | None = None
    kv_bytes: int = 0
    pinned: bool = False
    stored: bool = False


class DocumentList(BaseType):
    object: str = "list"
    data: list[DocumentInfo] = Field(default_factory=list)
    budget_bytes: int = 0
    used_bytes: int = 0

    def __iter__(self) -> Iterator[DocumentInfo]:  # type: ignore[override]
        return iter(self.data)


class DocumentDeleted(BaseType):
    id: str
    object: str = "document.deleted"
    deleted: bool = True
