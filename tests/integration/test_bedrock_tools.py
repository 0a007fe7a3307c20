"""Tools and images through Bedrock Converse, both directions and streamed, through the whole stack
(gateway, router, cache) with the official openai SDK: production's `gpt-4 -> claude-3-sonnet`
fallback keeps an agent's tool calls when Azure fails, instead of turning them into prose.
"""

from __future__ import annotations

import base64
import json

import httpx
import openai
import pytest

from tests.fakes.azure_openai import FakeAzureOpenAI
from tests.fakes.bedrock import FakeBedrock
from tests.support.stack import RunningStack, running_stack

pytestmark = pytest.mark.timeout(180)

CLAUDE = "anthropic.claude-3-sonnet-20240229-v1:0"
ENV = {
    "providers": {
        "azureOpenAI": {"enabled": True},
        "awsBedrock": {"enabled": True, "models": [{"id": "claude-3-sonnet", "modelId": CLAUDE}]},
    },
    "models": {
        "gpt-4": {
            "fallbacks": ["claude-3-sonnet"],
            "pricing": {"input": 0.03, "output": 0.06},
            "deployments": [{"provider": "azureOpenAI", "target": "gpt-4"}],
        },
        "claude-3-sonnet": {
            "pricing": {"input": 0.003, "output": 0.015},
            "deployments": [{"provider": "awsBedrock", "target": "claude-3-sonnet"}],
        },
    },
    "routing": {
        "retries": {"maxAttempts": 2, "backoffBaseMs": 1, "backoffMaxMs": 5},
        "circuitBreaker": {"failureThreshold": 1000, "cooldownSeconds": 1},
    },
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "weather in a city",
            "parameters": {"type": "object", "properties": {"input": {"type": "string"}}},
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "local time in a city",
            "parameters": {"type": "object", "properties": {"input": {"type": "string"}}},
        },
    },
]
RESULTS = {"get_weather": "sunny", "get_time": "noon"}
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n fake image bytes").decode()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    with FakeAzureOpenAI.for_environment(ENV) as az, FakeBedrock(access_key="AKIDTOOLS") as br:
        with running_stack(
            tmp_path_factory.mktemp("tools"), ENV, extra_env={**az.client_env(), **br.client_env()}
        ) as s:
            yield s, az, br


@pytest.fixture
def fakes(stack):
    s, az, br = stack
    az.reset()
    br.reset()
    az.fail(500)  # Azure fails every request: gpt-4 is answered by its fallback
    return s, az, br


def test_an_agent_loop_with_two_tool_calls_completes_through_the_fallback(fakes):
    s, az, br = fakes
    client: openai.OpenAI = s.openai()
    messages: list = [{"role": "user", "content": "plan a trip to Oslo"}]
    called = []
    for _ in range(4):
        raw = client.chat.completions.with_raw_response.create(model="gpt-4", messages=messages, tools=TOOLS)
        assert (
            raw.headers["x-qlens-fallback"] == "gpt-4" and raw.headers["x-qlens-model"] == "claude-3-sonnet"
        )
        choice = raw.parse().choices[0]
        if choice.finish_reason != "tool_calls":
            break
        [call] = choice.message.tool_calls
        assert json.loads(call.function.arguments) == {"input": "plan a trip to Oslo"}
        called.append(call.function.name)
        messages.append(choice.message.model_dump(exclude_none=True))
        messages.append({"role": "tool", "tool_call_id": call.id, "content": RESULTS[call.function.name]})
    assert called == ["get_weather", "get_time"]
    assert choice.finish_reason == "stop"
    assert choice.message.content == f"[{CLAUDE}] results: sunny; noon"
    assert az.calls() > 0  # Azure really was asked, and failed
    # what Converse got: toolConfig, toolUse blocks for the assistant's calls, one user turn of results
    sent = br.last_request
    assert [t["toolSpec"]["name"] for t in sent["toolConfig"]["tools"]] == ["get_weather", "get_time"]
    assert (
        sent["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"]["json"]
        == TOOLS[0]["function"]["parameters"]
    )
    assert sent["toolConfig"]["toolChoice"] == {"auto": {}}
    assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "user", "assistant", "user"]
    assert list(sent["messages"][1]["content"][0]) == ["toolUse"]
    assert sent["messages"][2]["content"][0]["toolResult"]["content"] == [{"text": "sunny"}]


def test_streamed_tool_use_becomes_tool_call_deltas(fakes):
    s, _, _ = fakes
    chunks = list(
        s.openai().chat.completions.create(
            model="gpt-4", tools=TOOLS, stream=True, messages=[{"role": "user", "content": "stream a call"}]
        )
    )
    deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert len(deltas) == 3  # the start (id, name), then two argument fragments
    assert (
        deltas[0].index == 0
        and deltas[0].id.startswith("tooluse_")
        and deltas[0].function.name == "get_weather"
    )
    assert all(d.index == 0 and d.id is None for d in deltas[1:])
    args = "".join(d.function.arguments or "" for d in deltas)
    assert json.loads(args) == {"input": "stream a call"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        "tool_calls"
    ]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("required", {"any": {}}),
        ({"type": "function", "function": {"name": "get_time"}}, {"tool": {"name": "get_time"}}),
    ],
)
def test_tool_choice_maps_to_converse(fakes, choice, expected):
    s, _, br = fakes
    r = s.openai().chat.completions.create(
        model="claude-3-sonnet",
        tools=TOOLS,
        tool_choice=choice,
        messages=[{"role": "user", "content": f"choice {choice}"}],
    )
    assert br.last_request["toolConfig"]["toolChoice"] == expected
    assert r.choices[0].message.tool_calls[0].function.name == (
        "get_weather" if choice == "required" else "get_time"
    )


def test_tool_choice_none_sends_no_tools(fakes):
    s, _, br = fakes
    r = s.openai().chat.completions.create(
        model="claude-3-sonnet",
        tools=TOOLS,
        tool_choice="none",
        messages=[{"role": "user", "content": "no tools please"}],
    )
    assert "toolConfig" not in br.last_request
    assert r.choices[0].message.content == f"[{CLAUDE}] no tools please"


def test_a_data_url_image_becomes_a_converse_image_block(fakes):
    s, _, br = fakes
    content = [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
    ]
    r = s.openai().chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": content}])
    assert r.choices[0].message.content == f"[{CLAUDE}] what is this (+1 image/png)"
    image = br.last_request["messages"][0]["content"][1]["image"]
    assert image["format"] == "png" and base64.b64decode(image["source"]["bytes"]) == base64.b64decode(PNG)


def usage(s: RunningStack, user: str) -> dict:
    return httpx.get(s.gateway_url + "/v1/usage", params={"user": user}).json()["user"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
                        ],
                    }
                ]
            },
            "image URLs are not fetched",
        ),
        (
            {
                "messages": [{"role": "user", "content": "json please"}],
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "object"}},
                },
            },
            "response_format 'json_schema' is not supported by awsBedrock",
        ),
    ],
)
def test_refusals_are_400_in_openai_format_and_nothing_is_kept_reserved(fakes, body, message):
    s, _, br = fakes
    before = usage(s, "refused")
    r = httpx.post(
        s.gateway_url + "/v1/chat/completions", json={"model": "claude-3-sonnet", "user": "refused", **body}
    )
    assert r.status_code == 400
    err = r.json()["error"]
    assert message in err["message"] and err["type"] == "invalid_request_error"
    assert br.calls() == 0  # refused before Bedrock was called
    assert usage(s, "refused") == before


def test_responses_api_function_round_trip_through_bedrock(fakes):
    s, _, _ = fakes
    client = s.openai()
    tool = {"type": "function", "name": "get_weather", "parameters": TOOLS[0]["function"]["parameters"]}
    first = client.responses.create(model="claude-3-sonnet", input="weather via responses", tools=[tool])
    [call] = first.output
    assert call.type == "function_call" and call.name == "get_weather"
    answer = client.responses.create(
        model="claude-3-sonnet",
        tools=[tool],
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "rainy"}],
    )
    assert answer.output_text == f"[{CLAUDE}] results: rainy"


def test_responses_api_streamed_through_azure(stack):
    s, az, _ = stack
    az.reset()
    events = list(s.openai().responses.create(model="gpt-4", input="azure responses", stream=True))
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text == "[gpt-4] azure responses"


def test_responses_api_plain_and_streamed_through_bedrock(fakes):
    s, az, br = fakes
    client = s.openai()
    plain = client.responses.create(model="claude-3-sonnet", input="plain via converse", instructions="short")
    assert plain.output_text == f"[{CLAUDE}] plain via converse" and plain.usage.output_tokens > 0
    events = list(client.responses.create(model="claude-3-sonnet", input="streamed via converse",
                                          stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == \
        f"[{CLAUDE}] streamed via converse"
    assert events[-1].response.usage.output_tokens > 0
    assert br.calls() == 2 and az.calls() == 0
