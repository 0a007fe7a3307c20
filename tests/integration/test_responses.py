"""POST /v1/responses through the whole stack (gateway, router, cache; echo), with the official
openai SDK: plain, streamed (the real event sequence), a function-tool round trip, chaining with
previous_response_id (tenant-scoped: another tenant's id is 404), budgets, cache, refusals.
"""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.support.stack import RunningStack, running_stack

pytestmark = pytest.mark.timeout(120)

KEYS = {"alice": ("acme", "alice"), "bob": ("beta", "bob")}
TOOL = {"type": "function", "name": "lookup", "description": "look a word up",
        "parameters": {"type": "object", "properties": {"input": {"type": "string"}}, "required": ["input"]}}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    with running_stack(tmp_path_factory.mktemp("responses"), {"auth": {"required": True}}, keys=KEYS) as s:
        yield s


def usage(stack: RunningStack, key: str) -> dict:
    return httpx.get(stack.gateway_url + "/v1/usage", headers=stack.headers(key)).json()["user"]


def test_plain_string_input_with_instructions(stack: RunningStack):
    client = stack.openai("alice")
    raw = client.responses.with_raw_response.create(
        model="echo", input="plain hello", instructions="be brief", metadata={"ticket": "42"},
        temperature=0.5)
    response = raw.parse()
    assert response.object == "response" and response.id.startswith("resp_")
    assert response.status == "completed"
    assert response.output_text == "Echo: plain hello"
    assert [item.type for item in response.output] == ["message"]
    assert response.output[0].role == "assistant" and response.output[0].status == "completed"
    assert response.instructions == "be brief" and response.metadata == {"ticket": "42"}
    assert response.temperature == 0.5 and response.model == "echo"
    assert response.usage.input_tokens > 0 and response.usage.output_tokens == 5  # ceil(17/4)
    assert response.usage.total_tokens == response.usage.input_tokens + 5
    assert raw.headers["x-qlens-provider"] == "echo/echo" and raw.headers["x-qlens-cache"] == "miss"


def test_message_items_and_max_output_tokens(stack: RunningStack):
    client = stack.openai("alice")
    response = client.responses.create(model="echo", max_output_tokens=2, input=[
        {"role": "developer", "content": "terse"},
        {"role": "user", "content": [{"type": "input_text", "text": "items "}, {"type": "input_text",
                                                                              "text": "work well"}]},
    ])
    assert response.output_text == "Echo: it"  # two tokens of "Echo: items work well"
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"


def test_streamed_event_sequence(stack: RunningStack):
    client = stack.openai("alice")
    events = list(client.responses.create(model="echo", input="stream one two three", stream=True))
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.completed"]
    assert set(kinds[4:-4]) == {"response.output_text.delta"} and len(kinds[4:-4]) > 1
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == "Echo: stream one two three"
    done = events[-1].response
    assert done.status == "completed" and done.output_text == text
    assert done.usage.output_tokens == 7 and done.id == events[0].response.id
    item_ids = {e.item_id for e in events if hasattr(e, "item_id")}
    assert item_ids == {done.output[0].id}


def test_stream_helper_accumulates_the_final_response(stack: RunningStack):
    client = stack.openai("alice")
    with client.responses.stream(model="echo", input="helper stream") as stream:
        final = stream.get_final_response()
    assert final.output_text == "Echo: helper stream"


def _call_round_trip(client: openai.OpenAI, stream: bool) -> tuple[str, str]:
    """Ask; run the function the model called; send its output back; the final text and call id."""
    ask = "weather in Oslo " + ("streamed" if stream else "plain")
    if stream:
        events = list(client.responses.create(model="echo", input=ask, tools=[TOOL], stream=True))
        kinds = [e.type for e in events]
        assert "response.function_call_arguments.delta" in kinds
        assert kinds[-3:] == ["response.function_call_arguments.done", "response.output_item.done",
                              "response.completed"]
        first = events[-1].response
    else:
        first = client.responses.create(model="echo", input=ask, tools=[TOOL])
    [call] = first.output
    assert call.type == "function_call" and call.name == "lookup" and call.status == "completed"
    assert json.loads(call.arguments) == {"input": ask}
    answer = client.responses.create(model="echo", tools=[TOOL], previous_response_id=first.id, input=[
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21C"}])
    return answer.output_text, call.call_id


@pytest.mark.parametrize("stream", [False, True])
def test_function_tool_round_trip(stack: RunningStack, stream: bool):
    text, call_id = _call_round_trip(stack.openai("alice"), stream)
    assert text == "Echo: sunny, 21C" and call_id.startswith("call_")


def test_function_call_items_sent_back_without_the_store(stack: RunningStack):
    client = stack.openai("alice")
    first = client.responses.create(model="echo", input="stateless call", tools=[TOOL], store=False)
    assert first.store is False
    call = first.output[0]
    answer = client.responses.create(model="echo", tools=[TOOL], store=False, input=[
        {"role": "user", "content": "stateless call"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "done"}])
    assert answer.output_text == "Echo: done"
    with pytest.raises(openai.NotFoundError):  # store: false really did not store it
        client.responses.create(model="echo", input="more", previous_response_id=first.id)


def test_previous_response_id_continues_the_conversation(stack: RunningStack):
    client = stack.openai("alice")
    first = client.responses.create(model="echo", input="remember the number 7")
    assert first.store is True
    second = client.responses.create(model="echo", input="what was it", previous_response_id=first.id)
    assert second.previous_response_id == first.id and second.output_text == "Echo: what was it"
    # the history was sent: the second prompt is the first's, its answer and the new question
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens


def test_unknown_and_foreign_ids_are_404_in_openai_format(stack: RunningStack):
    mine = stack.openai("alice").responses.create(model="echo", input="alice's secret")
    for client, rid in ((stack.openai("bob"), mine.id), (stack.openai("alice"), "resp_doesnotexist"),
                        (stack.openai("alice"), "../../etc")):
        with pytest.raises(openai.NotFoundError) as exc:
            client.responses.create(model="echo", input="continue", previous_response_id=rid)
        assert exc.value.body["code"] == "previous_response_not_found"
        assert exc.value.body["param"] == "previous_response_id"
        assert exc.value.body["message"] == f"Response with id '{rid}' not found."


def test_cached_and_settled_like_chat(stack: RunningStack):
    client = stack.openai("bob")
    before = usage(stack, "bob")["spent"]
    first = client.responses.with_raw_response.create(model="echo", input="cache me please", store=False)
    mid = usage(stack, "bob")["spent"]
    assert mid > before
    again = client.responses.with_raw_response.create(model="echo", input="cache me please", store=False)
    assert (first.headers["x-qlens-cache"], again.headers["x-qlens-cache"]) == ("miss", "hit")
    assert again.parse().output_text == first.parse().output_text
    assert again.parse().id != first.parse().id
    assert usage(stack, "bob")["spent"] == mid
    # the same question through chat completions shares the entry: one answer, one cache
    chat = client.chat.completions.with_raw_response.create(
        model="echo", messages=[{"role": "user", "content": "cache me please"}])
    assert chat.headers["x-qlens-cache"] == "hit"


@pytest.mark.parametrize(("extra", "param", "code"), [
    ({"tools": [{"type": "web_search"}]}, "tools[0].type", "unsupported_value"),
    ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0].type", "unsupported_value"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
     "input[0].content[0]", "unsupported_value"),
    ({"background": True}, "background", "unsupported_parameter"),
    ({"frobnicate": 1}, "frobnicate", "unsupported_parameter"),
    ({"text": {"format": {"type": "yaml"}}}, "text.format.type", "invalid_value"),
    ({"input": None}, "input", "missing_required_parameter"),
    ({"max_output_tokens": 0}, "max_output_tokens", "invalid_value"),
])
def test_refusals_are_400_and_reserve_nothing(stack: RunningStack, extra: dict, param: str, code: str):
    body = {k: v for k, v in {"model": "echo", "input": "x", **extra}.items() if v is not None}
    before = usage(stack, "bob")
    r = httpx.post(stack.gateway_url + "/v1/responses", json=body, headers=stack.headers("bob"))
    assert r.status_code == 400
    assert r.json()["error"]["param"] == param and r.json()["error"]["code"] == code
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert usage(stack, "bob") == before


def test_json_schema_text_format_is_forwarded(stack: RunningStack):
    fmt = {"type": "json_schema", "name": "answer", "schema": {"type": "object"}, "strict": True}
    response = stack.openai("alice").responses.create(model="echo", input="schema", text={"format": fmt})
    assert response.text.format.type == "json_schema" and response.text.format.name == "answer"
