"""The Responses API <-> chat completions translation, without HTTP."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from services.common.config import ServiceConfig
from services.common.errors import APIError
from services.gateway.auth import Caller
from services.gateway.responses import ResponsesApi, ResponsesStream
from services.gateway.responses_schema import chat_body, input_messages, validate_responses


def test_items_become_chat_messages_with_calls_on_the_assistant_turn():
    messages = input_messages(
        [
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "hi "},
                    {"type": "input_image", "image_url": "data:image/png;base64,AA=="},
                ],
            },
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "calling"}]},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"type": "function_call", "call_id": "c2", "name": "g", "arguments": '{"a":1}'},
            {"type": "function_call_output", "call_id": "c1", "output": "one"},
            {
                "type": "function_call_output",
                "call_id": "c2",
                "output": [{"type": "input_text", "text": "two"}],
            },
            {"type": "reasoning", "id": "rs_1", "summary": []},
        ]
    )
    assert messages == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "hi "},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}},
            ],
        },
        {
            "role": "assistant",
            "content": "calling",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                {"id": "c2", "type": "function", "function": {"name": "g", "arguments": '{"a":1}'}},
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "one"},
        {"role": "tool", "tool_call_id": "c2", "content": "two"},
    ]


def test_the_chat_body_carries_tools_choice_format_and_cap():
    req = validate_responses(
        {
            "model": "m",
            "input": "q",
            "instructions": "sys",
            "max_output_tokens": 30,
            "top_p": 0.5,
            "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
            "tool_choice": {"type": "function", "name": "f"},
            "text": {
                "format": {"type": "json_schema", "name": "n", "schema": {"type": "object"}, "strict": True}
            },
        }
    )
    assert chat_body(req, input_messages(req.input)) == {
        "model": "m",
        "messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "q"}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "tool_choice": {"type": "function", "function": {"name": "f"}},
        "top_p": 0.5,
        "max_tokens": 30,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "n", "schema": {"type": "object"}, "strict": True},
        },
    }


@pytest.mark.parametrize(
    ("item", "param"),
    [
        ({"type": "function_call", "call_id": "c", "name": "f"}, "input[0]"),
        ({"type": "function_call_output", "output": "x"}, "input[0].call_id"),
        ({"role": "robot", "content": "x"}, "input[0].role"),
        (
            {"role": "assistant", "content": [{"type": "input_image", "image_url": "data:,"}]},
            "input[0].content[0]",
        ),
    ],
)
def test_malformed_items_name_the_parameter(item: dict[str, Any], param: str):
    with pytest.raises(APIError) as exc:
        input_messages([item])
    assert exc.value.status == 400 and exc.value.param == param


def _events(raw: bytes) -> list[dict[str, Any]]:
    out = []
    for block in raw.split(b"\n\n"):
        if block:
            kind, data = block.split(b"\n", 1)
            event = orjson.loads(data.removeprefix(b"data: "))
            assert kind == b"event: " + event["type"].encode()
            out.append(event)
    return out


def _stream() -> ResponsesStream:
    api = ResponsesApi(ServiceConfig(name="t", cache={"enabled": False}), cache=None)  # type: ignore[arg-type]
    req = validate_responses({"model": "m", "input": "q", "stream": True})
    req._id = "resp_x"
    return api.view(req, Caller("t", "u", False))


def _chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    return (
        b"data: "
        + orjson.dumps({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        + b"\n\n"
    )


async def test_a_failed_stream_ends_with_an_error_event_and_never_completes():
    view = _stream()
    out = view.head() + await view.feed(_chunk({"content": "par"}))
    out += await view.feed(b'data: {"error": {"message": "upstream died", "code": "upstream_error"}}\n\n')
    out += await view.feed(b"data: [DONE]\n\n")  # nothing after the end
    kinds = [e["type"] for e in _events(out)]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "error",
    ]
    assert _events(out)[-1] == {
        "type": "error",
        "sequence_number": 5,
        "code": "upstream_error",
        "message": "upstream died",
        "param": None,
    }


async def test_streamed_tool_calls_become_function_call_items():
    view = _stream()
    view.head()
    out = await view.feed(
        _chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "c9",
                        "type": "function",
                        "function": {"name": "f", "arguments": '{"a"'},
                    }
                ]
            }
        )
    )
    out += await view.feed(
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]}, "tool_calls")
    )
    out += await view.feed(
        b'data: {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}}\n\n'
    )
    out += await view.feed(b"data: [DONE]\n\n")
    events = _events(out)
    assert [e["type"] for e in events] == [
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    done = events[-1]["response"]
    assert done["output"] == [
        {
            "type": "function_call",
            "id": events[0]["item"]["id"],
            "call_id": "c9",
            "name": "f",
            "arguments": '{"a":1}',
            "status": "completed",
        }
    ]
    assert done["usage"]["input_tokens"] == 3 and done["usage"]["output_tokens"] == 4
    assert done["status"] == "completed" and done["store"] is False
