"""Structured output in the request bodies: OpenAI's `response_format` (text, json_object, json_schema) and vLLM's
top-level extensions (`guided_json`, `guided_regex`, `guided_choice`), turned into the engine's one
`StructuredOutput`. The shapes are checked here (a 400 naming the field); whether a schema or regex can be
followed is the engine's check when it compiles the grammar (also a 400 naming the field)."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, StringConstraints, Tag

from lighthouse.engine.errors import InvalidRequest
from lighthouse.engine.options import MAX_CHOICES, MAX_GRAMMAR_CHARS, StructuredOutput
from lighthouse_server.errors import APIError

STRICT = ConfigDict(extra="ignore", strict=True)
GUIDED = ("guided_json", "guided_regex", "guided_choice")


class TextFormat(BaseModel):
    model_config = STRICT
    type: Literal["text"]


class JsonObjectFormat(BaseModel):
    model_config = STRICT
    type: Literal["json_object"]


class JsonSchema(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, populate_by_name=True)
    name: Annotated[str, StringConstraints(min_length=1, max_length=64)] = Field(
        description="the schema's name (OpenAI requires one; it is not used otherwise)")
    description: str | None = None
    schema_: dict[str, Any] = Field(alias="schema", description="the JSON Schema the output follows")
    strict: bool | None = Field(None, description="accepted; the output always follows the schema")


class JsonSchemaFormat(BaseModel):
    model_config = STRICT
    type: Literal["json_schema"]
    json_schema: JsonSchema


def _format_type(value: Any) -> str | None:
    """The member a response_format value is validated as, by its "type". The tags are capitalized so that an
    error's location reads response_format.json_schema.schema (errors.py leaves out names that are not fields)."""
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    tags = {"text": "Text", "json_object": "JsonObject", "json_schema": "JsonSchema"}
    return tags.get(kind) if isinstance(kind, str) else None


ResponseFormat = Annotated[Union[Annotated[TextFormat, Tag("Text")], Annotated[JsonObjectFormat, Tag("JsonObject")],
                                 Annotated[JsonSchemaFormat, Tag("JsonSchema")]],
                           Discriminator(_format_type, custom_error_type="response_format_type",
                                         custom_error_message="response_format.type must be 'text', 'json_object' "
                                                              "or 'json_schema'")]
Regex = Annotated[str, StringConstraints(min_length=1, max_length=MAX_GRAMMAR_CHARS)]
Choices = Annotated[list[Annotated[str, StringConstraints(min_length=1)]], Field(min_length=1, max_length=MAX_CHOICES)]
GuidedJson = Union[dict[str, Any], Annotated[str, StringConstraints(min_length=1, max_length=MAX_GRAMMAR_CHARS)]]


class GuidedFields(BaseModel):
    """The fields, mixed into the completion and chat bodies."""

    response_format: ResponseFormat | None = Field(None, description=(
        "{\"type\": \"text\"} (free text), {\"type\": \"json_object\"} (any JSON object), or {\"type\": "
        "\"json_schema\", \"json_schema\": {\"name\", \"schema\", \"strict\"}}: the output follows the schema"))
    guided_json: GuidedJson | None = Field(None, description="vLLM's extension: a JSON Schema (object or JSON text)")
    guided_regex: Regex | None = Field(None, description="vLLM's extension: the whole output matches this regex")
    guided_choice: Choices | None = Field(None, description="vLLM's extension: the output is one of these strings")
    guided_decoding_backend: str | None = Field(None, description="accepted and ignored (always llguidance)")


def structured_output(body: GuidedFields) -> StructuredOutput | None:
    """The body's grammar, or None for free text; 400 when it asks for two, or guided_json is not a JSON object."""
    asked = [f for f in GUIDED if getattr(body, f) is not None]
    rf = body.response_format
    if rf is not None and rf.type != "text":
        asked.insert(0, "response_format")
    if len(asked) > 1:
        raise APIError(400, f"ask for one structured output at a time: {' and '.join(asked)} were given",
                       param=asked[1], code="invalid_combination")
    try:
        if isinstance(rf, JsonObjectFormat):
            return StructuredOutput("json_object", param="response_format")
        if isinstance(rf, JsonSchemaFormat):
            return StructuredOutput("json_schema", schema=rf.json_schema.schema_, param="response_format.json_schema")
        if body.guided_json is not None:
            return StructuredOutput("json_schema", schema=_json_object(body.guided_json), param="guided_json")
        if body.guided_regex is not None:
            return StructuredOutput("regex", pattern=body.guided_regex, param="guided_regex")
        if body.guided_choice is not None:
            return StructuredOutput("choice", choices=tuple(body.guided_choice), param="guided_choice")
    except InvalidRequest as exc:
        raise APIError(400, exc.message, param=exc.param, code=exc.code) from None
    return None


def _json_object(value: dict | str) -> dict:
    if isinstance(value, dict):
        return value
    try:
        parsed = json.loads(value)
    except ValueError as exc:
        raise InvalidRequest(f"guided_json is not valid JSON: {exc}", param="guided_json", code="invalid_grammar") from None
    if not isinstance(parsed, dict):
        raise InvalidRequest("guided_json must be a JSON Schema object", param="guided_json", code="invalid_grammar")
    return parsed
