"""The Azure OpenAI stand-in's Responses API: `POST /openai/v1/responses` (the v1 API).

    POST /openai/v1/responses            (no api-version: the v1 API needs none; `preview` accepted)
    api-key: <key>   or   Authorization: Bearer <Entra ID token>
    {"model": "<deployment>", "input": ..., ...}

The deployment is the body's `model` (no deployment in the path). Strict as the service is about
what it is sent, each refusal a 400 in OpenAI's error format:

- Only the Responses API's own parameters (a chat parameter such as `messages` or `max_tokens` is
  "Unknown parameter"); `max_output_tokens` >= 16; temperature 0..2, top_p 0..1.
- `input`: a string or a non-empty list of items: messages (role user/assistant/system/developer,
  content a string or parts of the types the role allows), `function_call` items
  (call_id, name, arguments strings) and `function_call_output` items answering an earlier call;
  every call must be answered ("No tool output found for function call ...").
- `tools`: function tools (`name`, optional `parameters` object); `tool_choice` auto/none/required
  or {type: function, name} naming one of them.
- `previous_response_id`: nothing is stored here (QLens sends `store: false`), so any id is
  "not found"; `stored` counts requests that asked Azure to store them.

The "model": with function tools and a last item that is not a tool output, it calls the first
tool with `{"input": <last user text>}`; otherwise it answers `[deployment] <last user text or
tool output>`. Answers are `response` objects; `stream: true` sends the Responses event stream
(`event:` + `data:` lines, `sequence_number`s, `response.completed` with usage last) and honours
the misbehaviours of `_common.py` (mid-stream `error` event, no terminator, delays, stalls).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

import orjson

from tests.fakes._common import Invalid, count_tokens, words

PATH = "/openai/v1/responses"
API_VERSIONS = ("preview",)  # besides none at all

PARAMETERS = frozenset(
    {
        "model",
        "input",
        "instructions",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "max_output_tokens",
        "temperature",
        "top_p",
        "text",
        "metadata",
        "store",
        "previous_response_id",
        "stream",
        "user",
        "reasoning",
        "truncation",
        "include",
        "service_tier",
        "background",
        "max_tool_calls",
        "top_logprobs",
        "prompt_cache_key",
        "safety_identifier",
        "stream_options",
        "conversation",
        "prompt",
    }
)
PART_TYPES = {
    "user": ("input_text", "input_image", "input_file"),
    "system": ("input_text",),
    "developer": ("input_text",),
    "assistant": ("output_text", "refusal"),
}


def _bad(param: str, what: str) -> Invalid:
    return Invalid(f"Invalid value for '{param}': {what}.", param=param, code="invalid_value")


def check_request(body: dict[str, Any]) -> None:
    """Raise `Invalid` for a request the Responses API refuses."""
    for name in body:
        if name not in PARAMETERS:
            raise Invalid(f"Unknown parameter: '{name}'.", param=name, code="unknown_parameter")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise Invalid(
            "Missing required parameter: 'model'.", param="model", code="missing_required_parameter"
        )
    cap = body.get("max_output_tokens")
    if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap < 16):
        raise Invalid(
            f"Invalid 'max_output_tokens': integer below minimum value. Expected a value >= 16, but "
            f"got {cap} instead.",
            param="max_output_tokens",
            code="integer_below_min_value",
        )
    for name, high in (("temperature", 2), ("top_p", 1)):
        value = body.get(name)
        if value is not None and (not isinstance(value, int | float) or not 0 <= value <= high):
            raise _bad(name, f"a number from 0 to {high}")
    tools = _check_tools(body.get("tools"))
    choice = body.get("tool_choice")
    if choice is not None and choice not in ("auto", "none", "required"):
        if not (
            isinstance(choice, dict) and choice.get("type") == "function" and choice.get("name") in tools
        ):
            raise _bad("tool_choice", "'auto', 'none', 'required' or {type: function, name} of a tool")
    value = body.get("input")
    if isinstance(value, str):
        return
    if not isinstance(value, list) or not value:
        raise Invalid(
            "Missing required parameter: 'input'.", param="input", code="missing_required_parameter"
        )
    open_calls: list[str] = []
    for i, item in enumerate(value):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise _bad(where, "an object")
        kind = item.get("type", "message")
        if kind == "message":
            _check_message(item, where)
        elif kind == "function_call":
            for name in ("call_id", "name", "arguments"):
                if not isinstance(item.get(name), str):
                    raise Invalid(
                        f"Missing required parameter: '{where}.{name}'.",
                        param=f"{where}.{name}",
                        code="missing_required_parameter",
                    )
            open_calls.append(item["call_id"])
        elif kind == "function_call_output":
            if item.get("call_id") not in open_calls:
                raise Invalid(
                    f"No tool call found for function call output with call_id {item.get('call_id')}.",
                    param="input",
                )
            if not isinstance(item.get("output"), str):
                raise _bad(f"{where}.output", "a string")
            open_calls.remove(item["call_id"])
        else:
            raise _bad(f"{where}.type", f"unsupported item type {kind!r}")
    if open_calls:
        raise Invalid(f"No tool output found for function call {open_calls[0]}.", param="input")


def _check_message(item: dict[str, Any], where: str) -> None:
    role = item.get("role")
    if role not in PART_TYPES:
        raise _bad(f"{where}.role", "one of 'user', 'assistant', 'system', 'developer'")
    content = item.get("content")
    if isinstance(content, str):
        return
    if not isinstance(content, list) or not content:
        raise _bad(f"{where}.content", "a string or a non-empty array of content parts")
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in PART_TYPES[role]:
            raise _bad(
                f"{where}.content[{j}].type", f"one of {', '.join(PART_TYPES[role])} for a {role} message"
            )
        if kind in ("input_text", "output_text") and not isinstance(part.get("text"), str):
            raise Invalid(
                f"Missing required parameter: '{where}.content[{j}].text'.",
                param=f"{where}.content[{j}].text",
                code="missing_required_parameter",
            )


def _check_tools(tools: Any) -> list[str]:
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise _bad("tools", "an array")
    names = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise _bad(f"tools[{i}].type", "'function' (the only tool type this stand-in serves)")
        if not isinstance(tool.get("name"), str) or not tool["name"]:
            raise Invalid(
                f"Missing required parameter: 'tools[{i}].name'.",
                param=f"tools[{i}].name",
                code="missing_required_parameter",
            )
        if tool.get("parameters") is not None and not isinstance(tool["parameters"], dict):
            raise _bad(f"tools[{i}].parameters", "an object")
        names.append(tool["name"])
    return names


# --- the answer ----------------------------------------------------------------------------------------


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(str(p.get("text", "")) for p in content or () if isinstance(p, dict))


def answer(deployment: str, body: dict[str, Any]) -> tuple[str, dict[str, Any] | None, dict[str, int]]:
    """(text, function call or None, usage) of the answer to a valid request."""
    value = body["input"]
    items = [{"type": "message", "role": "user", "content": value}] if isinstance(value, str) else value
    last = items[-1]
    prompt = " ".join(
        [body.get("instructions") or ""]
        + [_text_of(i.get("content")) or str(i.get("output", "")) for i in items]
    )
    usage = {"input_tokens": count_tokens(prompt)}
    call = None
    if last.get("type") == "function_call_output":
        text = f"[{deployment}] {last['output']}"
    else:
        user = next(
            (
                _text_of(i.get("content"))
                for i in reversed(items)
                if i.get("type", "message") == "message" and i.get("role") == "user"
            ),
            "",
        )
        text = f"[{deployment}] {user}"
        if body.get("tools") and body.get("tool_choice") != "none":
            call = {
                "name": body["tools"][0]["name"],
                "arguments": orjson.dumps({"input": user}).decode(),
                "call_id": "call_" + secrets.token_hex(12),
                "id": "fc_" + secrets.token_hex(12),
            }
            text = ""
    usage["output_tokens"] = count_tokens(call["arguments"] if call else text)
    usage["total_tokens"] = usage["input_tokens"] + usage["output_tokens"]
    return text, call, usage


def _items(text: str, call: dict[str, Any] | None, msg_id: str) -> list[dict[str, Any]]:
    if call is not None:
        return [{"type": "function_call", "status": "completed", **call}]
    return [
        {
            "type": "message",
            "id": msg_id,
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}],
        }
    ]


def response_object(
    deployment: str,
    body: dict[str, Any],
    status: str,
    output: list[dict[str, Any]],
    usage: dict[str, int] | None,
    response_id: str,
) -> dict[str, Any]:
    return {
        "id": response_id,
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": deployment,
        "output": output,
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": None,
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": body.get("text") or {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "top_p": body.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": None
        if usage is None
        else {
            **usage,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        },
        "metadata": body.get("metadata") or {},
        "user": body.get("user"),
    }


def complete(deployment: str, body: dict[str, Any]) -> bytes:
    text, call, usage = answer(deployment, body)
    output = _items(text, call, "msg_" + secrets.token_hex(12))
    return orjson.dumps(
        response_object(deployment, body, "completed", output, usage, "resp_" + secrets.token_hex(24))
    )


async def stream(fake: Any, send: Any, deployment: str, body: dict[str, Any]) -> bool:
    """Send the event stream; whether it went out to its last event."""
    text, call, usage = answer(deployment, body)
    response_id, msg_id = "resp_" + secrets.token_hex(24), "msg_" + secrets.token_hex(12)
    b = fake.behaviour
    seq = 0

    async def emit(kind: str, **fields: Any) -> None:
        nonlocal seq
        payload = orjson.dumps({"type": kind, "sequence_number": seq, **fields})
        seq += 1
        data = b"event: " + kind.encode() + b"\ndata: " + payload + b"\n\n"
        await send({"type": "http.response.body", "body": data, "more_body": True})

    async def error(message: str) -> None:
        await emit("error", code="server_error", message=message, param=None)
        await send({"type": "http.response.body", "body": b""})

    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")],
        }
    )
    head = response_object(deployment, body, "in_progress", [], None, response_id)
    await emit("response.created", response=head)
    await emit("response.in_progress", response=head)
    if b.fail_before_content:
        await error("fake failure before content")
        return False
    [item] = _items(text, call, msg_id)
    if call is not None:
        pieces = words(call["arguments"])
        await emit(
            "response.output_item.added",
            output_index=0,
            item={**item, "arguments": "", "status": "in_progress"},
        )
        for piece in pieces:
            await emit(
                "response.function_call_arguments.delta", item_id=call["id"], output_index=0, delta=piece
            )
        await emit(
            "response.function_call_arguments.done",
            item_id=call["id"],
            output_index=0,
            arguments=call["arguments"],
        )
    else:
        at = {"item_id": msg_id, "output_index": 0, "content_index": 0}
        await emit(
            "response.output_item.added",
            output_index=0,
            item={**item, "content": [], "status": "in_progress"},
        )
        await emit(
            "response.content_part.added", **at, part={"type": "output_text", "text": "", "annotations": []}
        )
        for i, piece in enumerate(words(text)):
            if b.chunk_delay:
                await asyncio.sleep(b.chunk_delay)
            await emit("response.output_text.delta", **at, delta=piece, logprobs=[])
            if i == 0 and b.stall:
                await asyncio.sleep(b.stall)
            if i == 0 and b.fail_mid_stream:
                await error("fake failure mid-stream")
                return False
        await emit("response.output_text.done", **at, text=text, logprobs=[])
        await emit("response.content_part.done", **at, part=item["content"][0])
    await emit("response.output_item.done", output_index=0, item=item)
    if b.drop_terminator:
        await send({"type": "http.response.body", "body": b""})
        return False
    await emit(
        "response.completed",
        response=response_object(deployment, body, "completed", [item], usage, response_id),
    )
    await send({"type": "http.response.body", "body": b""})
    return True
