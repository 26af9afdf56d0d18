"""Request and response bodies (OpenAI's fields plus vLLM-style top-level extensions), and their conversion to
engine params.

Every limit the server enforces on a single field is declared here, so /openapi.json says it and a body that
breaks it is a 400 naming the field: ranges, non-empty prompts and messages, text without lone UTF-16
surrogates. Limits that depend on the loaded model (max_model_len, vocabulary, max_num_seqs) are added to the
schema by `openapi.py`; what no schema can say (prompt + max_tokens within the context, best_of == n) is a 400
with its own `code`. Responses are built as plain dicts in `openai_format.py`; the models at the end only
document them. Unknown request fields are ignored, as vLLM does, except the OpenAI fields this server does not
implement (tools, tool turns, echo, ...): those are declared `Unsupported`, so a value that asks
for them is a 400 (`unsupported_parameter`) rather than an answer that silently ignores it.

Lists are bounded so that no request does work out of proportion to what can run (MAX_MESSAGES, ...).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, ValidationInfo,
                      WithJsonSchema, field_validator)
from pydantic_core import PydanticCustomError

from lighthouse.engine.options import (MAX_CACHE_SALT_CHARS, MAX_SPECULATIVE_TOKENS, DecodeMode, KVMode, PrefillMode, RequestOptions,
                                      Speculation, SpeculativeMethod)
from lighthouse.engine.sampling import MAX_TOP_LOGPROBS, SamplingParams
from lighthouse.tokenizer import CHAT_ROLES
from lighthouse_server.structured import GuidedFields, structured_output

MAX_MESSAGES = 2048  # messages in one chat (OpenAI's own limit)
MAX_CONTENT_PARTS = 256  # text parts in one message
MAX_STOP_TOKEN_IDS = 256
MAX_DETOKENIZE_TOKENS = 1 << 21  # ids in one /detokenize: 2M, more than any context
INT64 = dict(ge=-(2**63), le=2**63 - 1)
UNSUPPORTED = "unsupported"  # the pydantic error type of a field asking for what this server does not do


def _no_lone_surrogates(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"the text has a lone UTF-16 surrogate (\\u{ord(value[exc.start]):04x}) at character "
                         f"{exc.start}; a \\ud800-\\udfff escape must be half of a valid pair") from None
    return value


def _integral_float_to_int(value: Any) -> Any:
    """JSON Schema counts 2.0 as an integer; strict validation would not."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _not_supported_if_true(value: bool) -> bool:
    if value:
        raise PydanticCustomError(UNSUPPORTED, "not supported by this server: only false")
    return value


def Unsupported(what: str, allowed: dict | None = None) -> Any:  # noqa: N802 (a type)
    """A field asking for something this server does not do (`what`: "tool calling"): null is accepted, and so is
    the value described by the JSON schema `allowed` (e.g. an empty list: nothing asked); anything else is a 400."""
    def check(value: Any) -> Any:
        if value is None or (allowed is not None and _matches(value, allowed)):
            return value
        raise PydanticCustomError(UNSUPPORTED, f"{what} is not supported by this server")
    schema = {"anyOf": [allowed, {"type": "null"}]} if allowed else {"type": "null"}
    return Annotated[Any, BeforeValidator(check), WithJsonSchema({**schema, "description": f"not supported: {what}"})]


def _matches(value: Any, allowed: dict) -> bool:
    """`value` fits `allowed`, one of the few shapes Unsupported uses: a const string, an empty array, string or
    object, an object whose "type" is a const."""
    if "const" in allowed:
        return value == allowed["const"]
    if allowed.get("type") == "array":
        return isinstance(value, list) and not value
    if allowed.get("type") == "string":
        return value == ""
    if allowed.get("type") == "object" and "properties" not in allowed:
        return isinstance(value, dict) and not value
    if allowed.get("type") == "object":
        return isinstance(value, dict) and value.get("type") == allowed["properties"]["type"]["const"]
    return False


def _known_role(value: str) -> str:
    if value in CHAT_ROLES:
        return value
    if value == "developer":  # OpenAI's name for system instructions to newer models: the template's system turn
        return "system"
    shown = repr(value) if len(value) <= 40 else repr(value[:40])[:-1] + "...'"
    if value in ("tool", "function"):
        raise PydanticCustomError(UNSUPPORTED, f"role {shown}: tool calling is not supported by this server")
    raise PydanticCustomError("chat_role", f"{shown} is not a chat role: use 'system' (or 'developer'), 'user' or "
                                           "'assistant'")


Text = Annotated[str, AfterValidator(_no_lone_surrogates)]
def Int(**constraints) -> Any:  # noqa: N802 (a type)
    """An integer field (strict, 2.0 allowed) with Field constraints; inside the validator, so /openapi.json
    states them as minimum/maximum."""
    return Annotated[int, Field(**constraints), BeforeValidator(_integral_float_to_int)]
OnlyFalse = Annotated[bool, AfterValidator(_not_supported_if_true), WithJsonSchema({"type": "boolean", "enum": [False]})]
NonEmptyText = Annotated[str, StringConstraints(min_length=1), AfterValidator(_no_lone_surrogates)]
Role = Annotated[str, AfterValidator(_no_lone_surrogates), AfterValidator(_known_role),
                 WithJsonSchema({"type": "string", "enum": [*CHAT_ROLES, "developer"]})]
NoList = {"type": "array", "maxItems": 0}
TokenId = Int(ge=0)
Finite = dict(allow_inf_nan=False)


# strict: a field typed integer or boolean takes exactly that JSON type (no "1" for 1, no 0 for false), as the
# schema says; a nested object still comes as a JSON object
STRICT = ConfigDict(extra="ignore", strict=True)


class StreamOptions(BaseModel):
    model_config = STRICT

    include_usage: bool = False


class SpeculativeOptions(BaseModel):
    model_config = STRICT

    method: SpeculativeMethod = Field(description="prompt_lookup: drafts are the tokens that followed the latest "
                                                  "earlier match of the text's last n-gram in the prompt or output")
    num_tokens: Int(ge=0, le=MAX_SPECULATIVE_TOKENS) = Field(description="drafts verified per step (0: off)")


class _Common(GuidedFields):  # + response_format and guided_* (structured.py)
    model_config = STRICT

    model: Text | None = None
    temperature: float | None = Field(None, ge=0, le=100, **Finite)
    top_p: float | None = Field(None, gt=0, le=1, **Finite)
    n: Int(ge=1, le=16) = 1
    stream: bool = False
    stream_options: StreamOptions | None = Field(None, description="only with stream=true")
    stop: NonEmptyText | Annotated[list[NonEmptyText], Field(max_length=16)] | None = None
    presence_penalty: float = Field(0.0, ge=-2, le=2, **Finite)
    frequency_penalty: float = Field(0.0, ge=-2, le=2, **Finite)
    seed: Int(**INT64) | None = Field(None, description="a 64-bit signed integer")
    user: Text | None = None
    logit_bias: Unsupported("logit_bias", {"type": "object", "maxProperties": 0}) = None
    # extensions (top level, as vLLM's; the openai client sends them with extra_body)
    top_k: Int(ge=-1) = -1
    min_p: float = Field(0.0, ge=0, le=1, **Finite)
    repetition_penalty: float = Field(1.0, gt=0, le=100, **Finite)
    stop_token_ids: Annotated[list[TokenId], Field(max_length=MAX_STOP_TOKEN_IDS)] | None = None
    ignore_eos: bool = False
    prefill: PrefillMode | None = None
    decode: DecodeMode | None = None
    kv_mode: KVMode | None = None  # "compact": no full cache in the Lighthouse layers (implies sparse decode)
    dense_tail_tokens: Int(ge=0) | None = None  # as RequestOptions: no true, no 1.5
    speculative: SpeculativeOptions | None = Field(None, description=(
        "speculative decoding of this request (null: the server's --speculative-num-tokens); greedy outputs are "
        "unchanged, sampled ones keep their distribution"))
    return_progress: bool = False  # stream prefill progress chunks (llama.cpp's name)
    cache_prompt: bool = True  # reuse the prefix cache and leave this prompt in it (llama.cpp's name)
    cache_salt: Annotated[str, StringConstraints(min_length=1, max_length=MAX_CACHE_SALT_CHARS),
                          AfterValidator(_no_lone_surrogates)] | None = Field(
        None, description="reuse only prefix-cache entries of requests with the same salt (vLLM's cache_salt; with "
                          "API keys, entries are also kept apart per key)")
    document_id: Text | None = Field(None, description="an uploaded document (POST /v1/documents), placed first in "
                                                       "the first user message (completions: before the prompt)")
    citations: bool = Field(False, description="also return the document spans the answer drew on most (a request "
                                               "with document_id, or a prompt starting with an uploaded document)")
    citations_top_k: Int(ge=1, le=32) = Field(3, description="how many spans, with citations")

    @field_validator("kv_mode")
    @classmethod
    def _compact_decodes_sparsely(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v == "compact" and info.data.get("decode") == "dense":  # a relation between fields: invalid_combination
            raise PydanticCustomError("invalid_combination", "kv_mode 'compact' keeps no full cache in the Lighthouse "
                                      "layers, so it decodes sparsely: leave decode out or set it to 'sparse' (or "
                                      "use kv_mode 'full')")
        return v

    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def sampling(self, max_tokens: int | None, logprobs: int | None) -> SamplingParams:
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=self.top_k, min_p=self.min_p, seed=self.seed,
            presence_penalty=self.presence_penalty, frequency_penalty=self.frequency_penalty,
            repetition_penalty=self.repetition_penalty, stop=self.stops(),
            stop_token_ids=list(self.stop_token_ids or []), ignore_eos=self.ignore_eos, logprobs=logprobs, n=self.n,
        )

    def request_options(self, cache_salt: str | None = None) -> RequestOptions:
        """How the engine serves this body (None fields: the server's defaults). The schema's types are
        RequestOptions' own, so a body that validated here makes valid options (structured output: a 400 from
        structured_output when it asks for two grammars). `cache_salt`: the prefix cache's, as the route derives it
        (documents.salt_of: the key's tenant and this body's cache_salt)."""
        spec = self.speculative
        return RequestOptions(prefill=self.prefill, decode=self.decode, dense_tail_tokens=self.dense_tail_tokens,
                              cache_prompt=self.cache_prompt, kv_mode=self.kv_mode,
                              speculative=None if spec is None else Speculation(spec.method, spec.num_tokens),
                              structured=structured_output(self), cache_salt=cache_salt)


MaxTokens = Int(ge=1)
TopLogprobs = Int(ge=0, le=MAX_TOP_LOGPROBS)
Prompt = Union[
    NonEmptyText,
    Annotated[list[TokenId], Field(min_length=1)],
    Annotated[list[NonEmptyText], Field(min_length=1, max_length=1)],  # one prompt per request
    Annotated[list[Annotated[list[TokenId], Field(min_length=1)]], Field(min_length=1, max_length=1)],
]


class CompletionRequest(_Common):
    prompt: Prompt
    max_tokens: MaxTokens | None = Field(16, description="null means the default, 16 (as OpenAI)")
    logprobs: TopLogprobs | None = None
    echo: OnlyFalse = Field(False, description="not supported")
    suffix: Unsupported("suffix (insertion)", {"type": "string", "maxLength": 0}) = None
    best_of: Int(ge=1, le=16) | None = Field(None, description="must equal n (no server-side best-of)")


class TextPart(BaseModel):
    model_config = STRICT

    type: Literal["text"] = Field(description="only text parts are supported")
    text: Text = ""


class ChatMessage(BaseModel):
    # the schema states what _content_unless_assistant checks: content is required, and not null, unless an assistant's
    model_config = ConfigDict(**STRICT, json_schema_extra={
        "if": {"properties": {"role": {"not": {"const": "assistant"}}}},
        "then": {"required": ["content"], "properties": {"content": {"not": {"type": "null"}}}}})

    role: Role
    content: Text | Annotated[list[TextPart], Field(max_length=MAX_CONTENT_PARTS)] | None = Field(
        None, validate_default=True)
    name: Text | None = None
    tool_calls: Unsupported("tool calling", NoList) = None
    tool_call_id: Unsupported("tool calling") = None
    function_call: Unsupported("function calling") = None

    @field_validator("content")
    @classmethod
    def _content_unless_assistant(cls, v, info: ValidationInfo):
        role = info.data.get("role")
        if v is None and role is not None and role != "assistant":  # as OpenAI: null only for an assistant turn
            raise PydanticCustomError("invalid_combination",  # a relation between fields (role and content)
                                      f"a {role} message needs content (a string or an array of text parts); only "
                                      "an assistant message may leave it null")
        return v

    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        return "".join(part.text for part in self.content)


Messages = Annotated[list[ChatMessage], Field(min_length=1, max_length=MAX_MESSAGES)]


class ChatCompletionRequest(_Common):
    messages: Messages
    max_tokens: MaxTokens | None = None
    max_completion_tokens: MaxTokens | None = None
    logprobs: bool = False
    top_logprobs: TopLogprobs | None = None
    add_generation_prompt: bool = True
    # until tool calling exists (as vLLM without a tool parser)
    tools: Unsupported("tool calling", NoList) = None
    tool_choice: Unsupported("tool calling (a tool_choice other than \"none\")", {"const": "none"}) = None
    functions: Unsupported("function calling", NoList) = None
    function_call: Unsupported("function calling (a function_call other than \"none\")", {"const": "none"}) = None


class TokenizeRequest(BaseModel):
    """Exactly one of `prompt` and `messages`."""

    model_config = ConfigDict(extra="ignore", strict=True, json_schema_extra={
        "oneOf": [{"required": ["prompt"]}, {"required": ["messages"]}]})

    model: Text | None = None
    prompt: NonEmptyText = Field(None)  # not nullable in the schema: give it or leave it out
    messages: Messages = Field(None)
    add_special_tokens: bool = True


class DetokenizeRequest(BaseModel):
    model_config = STRICT

    model: Text | None = None
    tokens: Annotated[list[TokenId], Field(max_length=MAX_DETOKENIZE_TOKENS)]


# ---- responses (documentation: the routes return dicts of these shapes) -------------------------------------


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: dict[str, int] | None = None


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: dict[str, Any] | None
    finish_reason: str | None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class ChatChoiceMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class ChatChoice(BaseModel):
    index: int
    message: ChatChoiceMessage
    logprobs: dict[str, Any] | None
    finish_reason: str | None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class TokenizeResponse(BaseModel):
    tokens: list[int]
    count: int
    max_model_len: int


class DetokenizeResponse(BaseModel):
    prompt: str


class Health(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    model_config = ConfigDict(extra="allow")

    status: Literal["ready"]
    running: int
    waiting: int
