"""The Azure stand-in's Responses API (`/openai/v1/responses`) refuses what the service refuses,
through the real `openai` SDK pointed at the v1 base URL as Azure documents it (`OpenAI(base_url=
<endpoint>/openai/v1/, api_key=...)`), or a raw request where the SDK cannot send the mistake."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.fakes.azure_openai import FakeAzureOpenAI

KEY = "stand-in-azure-key"
CALL = {"type": "function_call", "call_id": "call_1", "name": "add", "arguments": '{"a": 1}'}
TOOL = {"type": "function", "name": "add", "parameters": {"type": "object"}}


@pytest.fixture(scope="module")
def server() -> Iterator[FakeAzureOpenAI]:
    with FakeAzureOpenAI(api_key=KEY, deployments=("gpt-41",)) as fake:
        yield fake


@pytest.fixture
def fake(server: FakeAzureOpenAI) -> FakeAzureOpenAI:
    server.reset()
    return server


def sdk(fake: FakeAzureOpenAI, **kw: Any) -> openai.OpenAI:
    """Azure's v1 API with the plain OpenAI client; the key in `api-key` as Azure's REST docs send it."""
    return openai.OpenAI(base_url=fake.url + "/openai/v1/", api_key="unused", max_retries=0,
                         default_headers={"api-key": kw.pop("key", KEY)}, **kw)


def refused(fake: FakeAzureOpenAI, **body: Any) -> tuple[int, Any]:
    with pytest.raises(openai.APIStatusError) as err:
        sdk(fake).responses.create(**{"model": "gpt-41", **body})
    return err.value.status_code, err.value.body


def test_a_valid_request_and_a_tool_call_are_served(fake):
    answer = sdk(fake).responses.create(model="gpt-41", input="hello", store=False)
    assert answer.output_text == "[gpt-41] hello" and answer.status == "completed"
    call = sdk(fake).responses.create(model="gpt-41", input="add one", tools=[TOOL], store=False)
    assert call.output[0].type == "function_call" and call.output[0].name == "add"
    done = sdk(fake).responses.create(model="gpt-41", store=False, tools=[TOOL], input=[
        {"role": "user", "content": "add one"}, CALL,
        {"type": "function_call_output", "call_id": "call_1", "output": "2"}])
    assert done.output_text == "[gpt-41] 2"
    assert fake.responses_calls == 3 and fake.stored == 0 and fake.calls("gpt-41") == 3


def test_streamed_events(fake):
    events = list(sdk(fake).responses.create(model="gpt-41", input="one two three", stream=True))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text == "[gpt-41] one two three"
    assert fake.stored == 1  # store defaults to true at Azure


def test_where_and_who(fake):
    r = httpx.post(fake.url + "/openai/v1/responses?api-version=2024-06-01", headers={"api-key": KEY},
                   json={"model": "gpt-41", "input": "x"})
    assert r.status_code == 400 and "API version not supported" in r.json()["error"]["message"]
    ok = httpx.post(fake.url + "/openai/v1/responses?api-version=preview", headers={"api-key": KEY},
                    json={"model": "gpt-41", "input": "x"})
    assert ok.status_code == 200
    with pytest.raises(openai.AuthenticationError):
        sdk(fake, key="wrong").responses.create(model="gpt-41", input="x")
    with pytest.raises(openai.NotFoundError):
        sdk(fake).responses.create(model="gpt-5-missing", input="x")


@pytest.mark.parametrize(("body", "param", "message"), [
    ({"extra_body": {"messages": [{"role": "user", "content": "x"}]}, "input": "x"}, "messages",
     "Unknown parameter: 'messages'."),
    ({"input": "x", "max_output_tokens": 8}, "max_output_tokens", "Expected a value >= 16"),
    ({"input": "x", "temperature": 3}, "temperature", "a number from 0 to 2"),
    ({"input": [CALL]}, "input", "No tool output found for function call call_1."),
    ({"input": [{"type": "function_call_output", "call_id": "call_9", "output": "2"}]}, "input",
     "No tool call found for function call output with call_id call_9."),
    ({"input": [{"role": "assistant", "content": [{"type": "input_text", "text": "x"}]}]},
     "input[0].content[0].type", "one of output_text, refusal"),
    ({"input": "x", "tools": [{"type": "function"}]}, "tools[0].name", "Missing required parameter"),
    ({"input": "x", "tools": [TOOL], "tool_choice": {"type": "function", "name": "other"}}, "tool_choice",
     "Invalid value"),
    ({"input": "x", "previous_response_id": "resp_1"}, "previous_response_id", "not found"),
])
def test_invalid_requests_are_400(fake, body, param, message):
    status, error = refused(fake, **body)
    assert status == 400 and error["param"] == param and message in error["message"]
    assert error["type"] == "invalid_request_error" and fake.responses_calls == 0


def test_a_body_that_is_not_json_is_400(fake):
    r = httpx.post(fake.url + "/openai/v1/responses", headers={"api-key": KEY, "content-type": "text/plain"},
                   content=b"model=gpt-41")
    assert r.status_code == 400 and "Unsupported content type" in r.json()["error"]["message"]
