"""Azure deployments configured with `api: responses` answer through Azure's own Responses API
(`POST /openai/v1/responses`, the strict stand-in in tests/fakes/azure_responses.py), with the
official openai SDK through the whole stack: /v1/responses plain, streamed, a function-tool round
trip and previous_response_id chaining; chat completions on the same deployment; a chat parameter
the Responses API lacks is a clear 400; a `chat` deployment next to it still takes the chat path.
"""

from __future__ import annotations

import json

import httpx
import pytest

from tests.fakes.azure_openai import FakeAzureOpenAI
from tests.support.stack import RunningStack, running_stack

pytestmark = pytest.mark.timeout(120)

ENV = {
    "providers": {"azureOpenAI": {"enabled": True, "deployments": {
        "gpt-4.1": {"name": "gpt41-prod", "api": "responses"},
        "gpt-4": "gpt-4",
    }}},
    "models": {
        "gpt-4.1": {"pricing": {"input": 0.002, "output": 0.008},
                    "deployments": [{"provider": "azureOpenAI", "target": "gpt-4.1"}]},
        "gpt-4": {"pricing": {"input": 0.03, "output": 0.06},
                  "deployments": [{"provider": "azureOpenAI", "target": "gpt-4"}]},
    },
}
TOOL = {"type": "function", "name": "lookup", "description": "look a word up",
        "parameters": {"type": "object", "properties": {"input": {"type": "string"}}, "required": ["input"]}}


@pytest.fixture(scope="module")
def azure():
    with FakeAzureOpenAI.for_environment(ENV) as fake:
        yield fake


@pytest.fixture(scope="module")
def stack(azure: FakeAzureOpenAI, tmp_path_factory: pytest.TempPathFactory):
    with running_stack(tmp_path_factory.mktemp("azure-responses"), ENV, extra_env=azure.client_env()) as s:
        yield s


@pytest.fixture(autouse=True)
def fresh(azure: FakeAzureOpenAI):
    azure.reset()


def test_plain_through_azures_responses_api(stack: RunningStack, azure: FakeAzureOpenAI):
    raw = stack.openai().responses.with_raw_response.create(model="gpt-4.1", input="hello native",
                                                            instructions="be brief", max_output_tokens=64)
    response = raw.parse()
    assert response.output_text == "[gpt41-prod] hello native"
    assert response.status == "completed" and response.model == "gpt-4.1"
    assert response.usage.output_tokens == 7 and response.usage.input_tokens > 0
    assert raw.headers["x-qlens-provider"] == "azureOpenAI/gpt-4.1"
    assert azure.responses_calls == 1 and azure.calls("gpt41-prod") == 1
    assert azure.stored == 0  # the conversation is QLens's to keep, never left stored in Azure
    assert azure.auth_kinds == {"api-key"}


def test_streamed(stack: RunningStack, azure: FakeAzureOpenAI):
    events = list(stack.openai().responses.create(model="gpt-4.1", input="stream native words", stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == "[gpt41-prod] stream native words"
    assert len([k for k in kinds if k == "response.output_text.delta"]) > 1
    assert events[-1].response.usage.output_tokens == 8  # ceil(32 / 4)
    assert azure.responses_calls == 1 and azure.streams_finished == 1


@pytest.mark.parametrize("stream", [False, True])
def test_function_tool_round_trip_and_previous_response_id(stack: RunningStack, azure: FakeAzureOpenAI,
                                                           stream: bool):
    client = stack.openai()
    ask = f"weather in Oslo {stream}"
    if stream:
        events = list(client.responses.create(model="gpt-4.1", input=ask, tools=[TOOL], stream=True))
        assert "response.function_call_arguments.delta" in [e.type for e in events]
        first = events[-1].response
    else:
        first = client.responses.create(model="gpt-4.1", input=ask, tools=[TOOL])
    [call] = first.output
    assert call.type == "function_call" and call.name == "lookup"
    assert json.loads(call.arguments) == {"input": ask}
    # the next turn chains on QLens's store: Azure gets the whole conversation, the call answered
    answer = client.responses.create(model="gpt-4.1", tools=[TOOL], previous_response_id=first.id, input=[
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21C"}])
    assert answer.output_text == "[gpt41-prod] sunny, 21C"
    again = client.responses.create(model="gpt-4.1", previous_response_id=answer.id, input="and tomorrow?")
    assert again.output_text == "[gpt41-prod] and tomorrow?"
    assert azure.responses_calls == 3 and azure.stored == 0


def test_chat_completions_on_a_responses_deployment(stack: RunningStack, azure: FakeAzureOpenAI):
    client = stack.openai()
    chat = client.chat.completions.create(model="gpt-4.1",
                                          messages=[{"role": "user", "content": "chat here"}])
    assert chat.choices[0].message.content == "[gpt41-prod] chat here"
    assert chat.choices[0].finish_reason == "stop" and chat.usage.completion_tokens == 6
    chunks = list(client.chat.completions.create(model="gpt-4.1", stream=True,
                                                 stream_options={"include_usage": True},
                                                 messages=[{"role": "user", "content": "chat streamed"}]))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "[gpt41-prod] chat streamed"
    assert chunks[-1].usage.completion_tokens == 7
    assert azure.responses_calls == 2


def test_chat_parameter_without_an_equivalent_is_refused(stack: RunningStack, azure: FakeAzureOpenAI):
    r = httpx.post(stack.gateway_url + "/v1/chat/completions", json={
        "model": "gpt-4.1", "stop": ["\n"], "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 400
    assert "'stop'" in r.json()["error"]["message"] and "Responses API" in r.json()["error"]["message"]
    assert azure.calls() == 0  # refused before Azure is called


def test_a_chat_deployment_keeps_the_chat_path(stack: RunningStack, azure: FakeAzureOpenAI):
    response = stack.openai().responses.create(model="gpt-4", input="old path")
    assert response.output_text == "[gpt-4] old path"
    assert azure.responses_calls == 0 and azure.calls("gpt-4") == 1


def test_cut_off_stream_is_an_error_not_a_success(stack: RunningStack, azure: FakeAzureOpenAI):
    azure.behaviour.drop_terminator = True
    events = list(stack.openai().responses.create(model="gpt-4.1", input="cut short", stream=True))
    assert events[-1].type == "error" and "response.completed" in events[-1].message
    assert "response.completed" not in [e.type for e in events]
