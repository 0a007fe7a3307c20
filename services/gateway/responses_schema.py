"""The OpenAI Responses API request, and its translation into a chat-completions request.

QLens serves /v1/responses on the chat path: the request becomes the chat completion it means
(instructions -> a system message, message items -> messages, `function_call` items -> assistant
`tool_calls`, `function_call_output` items -> `tool` messages, function tools -> chat tools,
`text.format` -> `response_format`, `max_output_tokens` -> the output cap), so every provider and
every fallback that serves chat serves the Responses API too, with the same budgets and cache.

What cannot be translated is refused with a 400 naming the parameter, never dropped: built-in
tools (web search, file search, ...), file inputs, item references, background mode,
server-side conversations.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import Field, PrivateAttr, ValidationError

from services.common.errors import APIError
from services.gateway.schema import _Open, validation_error

# parameters accepted although they do not change what QLens sends (hints for OpenAI's own servers)
_IGNORED = frozenset({"include", "truncation", "service_tier", "prompt_cache_key", "safety_identifier",
                      "reasoning", "stream_options"})
_REFUSED = {
    "background": "background mode is not supported by QLens",
    "conversation": "server-side conversations are not supported by QLens: use previous_response_id",
    "prompt": "stored prompt templates are not supported by QLens",
}
_ROLES = ("user", "assistant", "system", "developer")


class ResponsesRequest(_Open):
    model: Annotated[str, Field(min_length=1, max_length=256)]
    input: str | Annotated[list[dict[str, Any]], Field(min_length=1)]
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    max_output_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    text: dict[str, Any] | None = None
    metadata: Annotated[dict[str, Annotated[str, Field(max_length=512)]], Field(max_length=16)] | None = None
    store: bool | None = None
    previous_response_id: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    stream: bool | None = None
    user: Annotated[str, Field(max_length=256)] | None = None

    # what the shared path reads of every request: one answer; the stream view needs the usage
    n: ClassVar[None] = None
    wants_usage_chunk: ClassVar[bool] = True

    # set by the Api while the request is served: its id, and the chat messages it amounts to
    _id: str = PrivateAttr("")
    _history: list[dict[str, Any]] = PrivateAttr(default_factory=list)

    @property
    def stores(self) -> bool:
        return self.store is not False  # OpenAI stores unless told not to


def validate_responses(data: Any) -> ResponsesRequest:
    if not isinstance(data, dict):
        raise APIError(400, "The request body must be a JSON object.", code="invalid_request_body")
    for name, why in _REFUSED.items():
        if data.get(name) not in (None, False):
            raise APIError(400, f"Unsupported parameter: '{name}': {why}.", param=name,
                           code="unsupported_parameter")
    known = set(ResponsesRequest.model_fields) | _IGNORED | set(_REFUSED)
    for name in data:
        if name not in known:
            raise APIError(400, f"Unsupported parameter: '{name}' (QLens translates the Responses API "
                                "and cannot pass unknown parameters on).", param=name,
                           code="unsupported_parameter")
    try:
        return ResponsesRequest.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None


def _bad(param: str, message: str) -> APIError:
    return APIError(400, f"Invalid value for '{param}': {message}.", param=param, code="invalid_value")


# --- input items -> chat messages ------------------------------------------------------------------


def _content(parts: Any, param: str, role: str) -> str | list[dict[str, Any]]:
    """A message item's content as chat content: a string, or text and image parts."""
    if isinstance(parts, str):
        return parts
    if not isinstance(parts, list) or not parts:
        raise _bad(param, "a string or a non-empty array of content parts")
    out: list[dict[str, Any]] = []
    for i, part in enumerate(parts):
        where = f"{param}[{i}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text") and isinstance(part.get("text"), str):
            out.append({"type": "text", "text": part["text"]})
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            out.append({"type": "text", "text": part["refusal"]})
        elif kind == "input_image" and role == "user":
            url = part.get("image_url")
            if not isinstance(url, str) or not url:
                raise _bad(f"{where}.image_url", "an image URL (a data: URL) is required")
            image: dict[str, Any] = {"url": url}
            if isinstance(part.get("detail"), str):
                image["detail"] = part["detail"]
            out.append({"type": "image_url", "image_url": image})
        elif kind == "input_file":
            raise APIError(400, f"Unsupported content part at '{where}': file inputs are not supported "
                                "by QLens.", param=where, code="unsupported_value")
        else:
            raise _bad(where, f"unsupported content part type {kind!r} for a {role} message")
    if all(p["type"] == "text" for p in out):
        return "".join(p["text"] for p in out)
    return out


def _output_text(value: Any) -> str:
    """A function_call_output's `output`: a string, or parts whose text counts."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(str(p.get("text", "")) for p in value if isinstance(p, dict))
    raise ValueError


def input_messages(value: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The chat messages of a Responses `input`."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    messages: list[dict[str, Any]] = []
    for i, item in enumerate(value):
        where = f"input[{i}]"
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in _ROLES:
                raise _bad(f"{where}.role", f"one of {', '.join(_ROLES)}")
            content = _content(item.get("content"), f"{where}.content", role)
            messages.append({"role": role, "content": content})
        elif kind == "function_call":
            call_id, name, args = item.get("call_id"), item.get("name"), item.get("arguments")
            if not (isinstance(call_id, str) and call_id and isinstance(name, str) and name
                    and isinstance(args, str)):
                raise _bad(where, "a function_call needs 'call_id', 'name' and 'arguments' strings")
            call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and not isinstance(last.get("content"), list):
                last.setdefault("tool_calls", []).append(call)  # one assistant turn: text, then its calls
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            call_id = item.get("call_id")
            if not (isinstance(call_id, str) and call_id):
                raise _bad(f"{where}.call_id", "a function_call_output needs the 'call_id' it answers")
            try:
                output = _output_text(item.get("output"))
            except ValueError:
                raise _bad(f"{where}.output", "a string") from None
            messages.append({"role": "tool", "tool_call_id": call_id, "content": output})
        elif kind == "reasoning":
            continue  # a reasoning summary from an earlier answer: no chat model takes it back
        else:
            raise APIError(400, f"Unsupported input item type {kind!r} at '{where}.type': QLens takes "
                                "messages, function_call and function_call_output items.",
                           param=f"{where}.type", code="unsupported_value")
    return messages


# --- tools and format -------------------------------------------------------------------------------


def chat_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for i, tool in enumerate(tools):
        if tool.get("type") != "function":
            raise APIError(400, f"Unsupported tool type {tool.get('type')!r} at 'tools[{i}].type': QLens "
                                "serves function tools only (no built-in tools).",
                           param=f"tools[{i}].type", code="unsupported_value")
        if not isinstance(tool.get("name"), str) or not tool["name"]:
            raise APIError(400, f"Missing required parameter: 'tools[{i}].name'.", param=f"tools[{i}].name",
                           code="missing_required_parameter")
        fn = {k: tool[k] for k in ("name", "description", "parameters", "strict") if tool.get(k) is not None}
        out.append({"type": "function", "function": fn})
    return out


def chat_tool_choice(choice: str | dict[str, Any]) -> str | dict[str, Any]:
    if isinstance(choice, str):
        if choice not in ("auto", "none", "required"):
            raise _bad("tool_choice", "'auto', 'none', 'required' or a function")
        return choice
    if choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise _bad("tool_choice", "'auto', 'none', 'required' or {'type': 'function', 'name': ...}")


def response_format(text: dict[str, Any]) -> dict[str, Any] | None:
    fmt = text.get("format")
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        if not isinstance(fmt.get("name"), str) or not isinstance(fmt.get("schema"), dict):
            raise _bad("text.format", "a json_schema format needs 'name' and 'schema'")
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if fmt.get(k) is not None}
        return {"type": "json_schema", "json_schema": schema}
    raise _bad("text.format.type", "'text', 'json_object' or 'json_schema'")


def chat_body(req: ResponsesRequest, history: list[dict[str, Any]]) -> dict[str, Any]:
    """The chat-completions request the Responses request amounts to (history: its conversation so far)."""
    messages = list(history)
    if req.instructions:  # not carried over from a previous response, as OpenAI does
        messages.insert(0, {"role": "system", "content": req.instructions})
    body: dict[str, Any] = {"model": req.model, "messages": messages}
    if req.tools:
        body["tools"] = chat_tools(req.tools)
    if req.tool_choice is not None:
        body["tool_choice"] = chat_tool_choice(req.tool_choice)
    if req.parallel_tool_calls is not None and req.tools:
        body["parallel_tool_calls"] = req.parallel_tool_calls
    for name in ("temperature", "top_p", "user"):
        if (value := getattr(req, name)) is not None:
            body[name] = value
    if req.max_output_tokens is not None:
        body["max_tokens"] = req.max_output_tokens
    if req.text and (fmt := response_format(req.text)) is not None:
        body["response_format"] = fmt
    if req.stream:
        body["stream"] = True
    return body
