"""The gateway's request validation: what OpenAI accepts passes, what it rejects is a 400 naming the field."""

from __future__ import annotations

import pytest

from services.common.errors import APIError
from services.gateway.schema import validate_request

USER = {"role": "user", "content": "hi"}


def ok(**fields):
    return validate_request({"model": "echo", "messages": [USER], **fields})


def rejected(body) -> APIError:
    with pytest.raises(APIError) as info:
        validate_request(body)
    assert info.value.status == 400
    assert info.value.type == "invalid_request_error"
    return info.value


def test_a_full_openai_request_is_accepted_with_extra_fields_kept():
    req = ok(temperature=0.2, top_p=1, max_tokens=10, max_completion_tokens=12, stop=["\n", "END"],
             stream=True, stream_options={"include_usage": True}, user="alice", n=2, seed=7,
             response_format={"type": "json_object"}, tools=[{"type": "function", "function": {"name": "f"}}],
             tool_choice="auto", logit_bias={"50256": -100}, future_param={"x": 1})
    assert req.completion_limit == 12  # max_completion_tokens wins over the legacy spelling
    assert req.wants_usage_chunk
    assert req.model_extra == {"logit_bias": {"50256": -100}, "future_param": {"x": 1}}


@pytest.mark.parametrize("role", ["system", "user", "assistant", "developer"])
def test_every_message_role_is_accepted(role):
    assert ok(messages=[{"role": role, "content": "x"}]).messages[0].role == role


def test_tool_messages_and_assistant_tool_calls_are_accepted():
    calls = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    req = ok(messages=[USER, {"role": "assistant", "content": None, "tool_calls": calls},
                       {"role": "tool", "tool_call_id": "c1", "content": "42"}])
    assert len(req.messages) == 3


def test_content_part_arrays_are_accepted():
    parts = [{"type": "text", "text": "what is this?"},
             {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]
    assert ok(messages=[{"role": "user", "content": parts}]).messages[0].content[0].text == "what is this?"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "echo", "messages": []}, "messages"),
        ({"model": "echo"}, "messages"),
        ({"messages": [USER]}, "model"),
        ({"model": 5, "messages": [USER]}, "model"),
        ({"model": "", "messages": [USER]}, "model"),
        ({"model": "echo", "messages": "hi"}, "messages"),
        ({"model": "echo", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"model": "echo", "messages": [USER, {"content": "x"}]}, "messages[1].role"),
        ({"model": "echo", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"model": "echo", "messages": [{"role": "user", "content": [{"type": "text"}]}]},
         "messages[0].content[0]"),
        ({"model": "echo", "messages": [{"role": "user"}]}, "messages[0]"),
        ({"model": "echo", "messages": [{"role": "tool", "content": "x"}]}, "messages[0]"),
        ({"model": "echo", "messages": [USER], "temperature": "hot"}, "temperature"),
        ({"model": "echo", "messages": [USER], "temperature": 2.5}, "temperature"),
        ({"model": "echo", "messages": [USER], "top_p": -0.1}, "top_p"),
        ({"model": "echo", "messages": [USER], "max_tokens": 0}, "max_tokens"),
        ({"model": "echo", "messages": [USER], "max_tokens": 1.5}, "max_tokens"),
        ({"model": "echo", "messages": [USER], "stream": "true"}, "stream"),
        ({"model": "echo", "messages": [USER], "stream_options": {"include_usage": "yes"}},
         "stream_options.include_usage"),
        ({"model": "echo", "messages": [USER], "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"model": "echo", "messages": [USER], "n": 0}, "n"),
        ({"model": "echo", "messages": [USER], "user": 12}, "user"),
        ({"model": "echo", "messages": [USER], "tools": "all"}, "tools"),
    ],
)
def test_invalid_requests_are_400_naming_the_field(body, param):
    err = rejected(body)
    assert err.param == param
    assert param in err.message


def test_missing_field_says_so():
    err = rejected({"model": "echo"})
    assert err.code == "missing_required_parameter"
    assert "Missing required parameter" in err.message


def test_a_text_part_without_text_is_explained_not_just_typed():
    err = rejected({"model": "echo", "messages": [{"role": "user", "content": [{"type": "text"}]}]})
    assert "'text'" in err.message


@pytest.mark.parametrize("body", [[1, 2], "hello", 3, None])
def test_a_body_that_is_not_an_object_is_400(body):
    assert rejected(body).code == "invalid_request_body"
