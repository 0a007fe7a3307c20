"""The OpenAI chat-completions request, as the gateway validates it.

Validation is strict about what the gateway itself relies on (model, messages and their roles,
the sampling and length parameters, stream options) and permissive about the rest: unknown
fields are allowed and forwarded untouched, so a newer SDK keeps working through QLens. Types are
strict (no "0.5" for a float, no "true" for a bool) because OpenAI rejects those too.

The validated model is only read; what is forwarded is the client's own JSON (see app.py), so
validation never changes a request.

services/gateway/openapi.py publishes the route in the gateway's /openapi.json (it is served
outside FastAPI's routing, chat.py). The rules the validators check (which roles need which
fields) are spelled out in the JSON schema too, so a client generated from it, or a fuzzer,
knows what a valid request is.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from services.common.errors import APIError

Role = Literal["system", "user", "assistant", "tool", "developer"]


class _Open(BaseModel):
    """Unknown fields pass through (forward compatibility); known ones are strictly typed."""

    model_config = ConfigDict(extra="allow", strict=True)


_NOT_NULL: dict[str, Any] = {"not": {"type": "null"}}
_NON_EMPTY_ARRAY: dict[str, Any] = {"type": "array", "minItems": 1}


class ContentPart(_Open):
    # what `_text_parts_have_text` checks, for the JSON schema
    model_config = ConfigDict(json_schema_extra={
        "if": {"properties": {"type": {"const": "text"}}},
        "then": {"required": ["text"], "properties": {"text": {"type": "string"}}},
    })

    type: Annotated[str, Field(min_length=1)]
    text: str | None = None

    @model_validator(mode="after")
    def _text_parts_have_text(self) -> ContentPart:
        if self.type == "text" and self.text is None:
            raise ValueError("a content part of type 'text' needs a 'text' string")
        return self


class Message(_Open):
    # what `_content_matches_role` checks, for the JSON schema
    model_config = ConfigDict(json_schema_extra={"allOf": [
        {"if": {"properties": {"role": {"const": "assistant"}}},
         "then": {"anyOf": [{"required": ["content"], "properties": {"content": _NOT_NULL}},
                            {"required": ["tool_calls"], "properties": {"tool_calls": _NON_EMPTY_ARRAY}}]},
         "else": {"required": ["content"], "properties": {"content": _NOT_NULL}}},
        {"if": {"properties": {"role": {"const": "tool"}}},
         "then": {"required": ["tool_call_id"], "properties": {"tool_call_id": {"type": "string",
                                                                                "minLength": 1}}}},
    ]})

    role: Role
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _content_matches_role(self) -> Message:
        if self.role == "assistant":
            if self.content is None and not self.tool_calls:
                raise ValueError("an assistant message needs 'content' or 'tool_calls'")
        elif self.content is None:
            raise ValueError(f"a {self.role} message needs 'content'")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs 'tool_call_id'")
        return self


class StreamOptions(_Open):
    include_usage: bool | None = None


class ChatCompletionRequest(_Open):
    model: Annotated[str, Field(min_length=1, max_length=256)]
    messages: Annotated[list[Message], Field(min_length=1)]
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    user: Annotated[str, Field(max_length=256)] | None = None
    n: Annotated[int, Field(ge=1, le=128)] | None = None
    seed: int | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None

    @property
    def completion_limit(self) -> int | None:
        """The client's cap on completion tokens, whichever spelling it used."""
        return self.max_completion_tokens or self.max_tokens

    @property
    def wants_usage_chunk(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


_UNION_TAGS = frozenset({"str", "int", "float", "bool", "function-after"})


def _param(loc: tuple[Any, ...]) -> str | None:
    """pydantic's error location as OpenAI's `param`: ('messages', 0, 'role') -> messages[0].role.

    Union members add their type name to the path (e.g. 'list[ContentPart]'); those are dropped.
    """
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and ("[" in part or part in _UNION_TAGS or part[:1].isupper()):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out or None


def validate_request(data: Any) -> ChatCompletionRequest:
    """The request model, or an APIError 400 naming the first offending field."""
    if not isinstance(data, dict):
        raise APIError(400, "The request body must be a JSON object.", code="invalid_request_body")
    try:
        return ChatCompletionRequest.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None


def validation_error(exc: ValidationError) -> APIError:
    # a union (content: str | list of parts) reports one error per member: the deepest is the one
    # that says what is actually wrong ("a text part needs 'text'" rather than "not a string")
    errors = exc.errors(include_url=False, include_input=False)
    err = max(errors, key=lambda e: len(e.get("loc", ())))
    param = _param(tuple(err.get("loc", ())))
    msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    if err.get("type") == "missing":
        message = f"Missing required parameter: '{param}'."
    elif err.get("type") == "extra_forbidden":
        message = f"Unrecognized parameter: '{param}'."
    else:
        message = f"Invalid value for '{param}': {msg}." if param else f"Invalid request: {msg}."
    code = "missing_required_parameter" if err.get("type") == "missing" else "invalid_value"
    return APIError(400, message, param=param, code=code)


# the JSON body could not be parsed: orjson reads integers past 64 bits as floats, and numbers past
# 1e308 as an error, which is a value too large rather than malformed JSON
_KEY_BEFORE = re.compile(rb'"([A-Za-z0-9_]{1,64})"\s*:\s*-?$')


def json_error(exc: orjson.JSONDecodeError, raw: bytes) -> APIError:
    """The 400 for a body orjson could not parse, naming the field when a number was too large."""
    if "number is infinity" in str(exc):
        m = _KEY_BEFORE.search(raw[max(exc.pos - 80, 0):exc.pos])
        param = m.group(1).decode() if m else None
        message = (f"Invalid value for '{param}': the number is too large." if param
                   else "A number in the request body is too large.")
        return APIError(400, message, param=param, code="invalid_value")
    return APIError(400, "We could not parse the JSON body of your request: it must be a JSON object "
                         "(see https://platform.openai.com/docs/api-reference).", code="invalid_json")
