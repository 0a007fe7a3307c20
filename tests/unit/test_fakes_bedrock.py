"""The Bedrock stand-in refuses what the service refuses: each signature and conversation rule,
shown once with the status, error type and message, through real boto3 where boto3 can send the
request and through a botocore-signed raw request where boto3's own validation would stop it first.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import boto3
import botocore.session
import httpx
import orjson
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from tests.fakes.bedrock import CONTENT_BLOCK_KEYS, INFERENCE_CONFIG_KEYS, FakeBedrock

MODEL = "anthropic.claude-3-sonnet-20240229-v1:0"
ACCESS_KEY = "AKIDSTANDINTEST"
SECRET = "stand-in-secret-0123456789"
HELLO = [{"role": "user", "content": [{"text": "hello"}]}]


@pytest.fixture(scope="module")
def server() -> Iterator[FakeBedrock]:
    with FakeBedrock(access_key=ACCESS_KEY, secret_key=SECRET, region="eu-west-1") as fake:
        yield fake


@pytest.fixture
def fake(server: FakeBedrock) -> Iterator[FakeBedrock]:
    server.reset()
    server.clock = time.time
    yield server
    server.clock = time.time


def client(fake: FakeBedrock, secret: str = SECRET, region: str = "eu-west-1", key: str = ACCESS_KEY) -> Any:
    return boto3.session.Session().client(
        "bedrock-runtime", endpoint_url=fake.url, region_name=region, aws_access_key_id=key,
        aws_secret_access_key=secret, config=Config(retries={"total_max_attempts": 1}),
    )


def refusal(call: Any) -> tuple[int, str, str]:
    with pytest.raises(ClientError) as err:
        call()
    r = err.value.response
    return r["ResponseMetadata"]["HTTPStatusCode"], r["Error"]["Code"], r["Error"]["Message"]


def signed_post(fake: FakeBedrock, body: bytes, service: str = "bedrock",
                sent: bytes | None = None) -> httpx.Response:
    """A Converse request signed by botocore's signer as boto3 signs it, for what boto3 cannot send;
    `sent`: another body than the one signed."""
    url = f"{fake.url}/model/{MODEL.replace(':', '%3A')}/converse"
    request = AWSRequest(method="POST", url=url, data=body, headers={"Content-Type": "application/json"})
    SigV4Auth(Credentials(ACCESS_KEY, SECRET), service, "eu-west-1").add_auth(request)
    return httpx.post(url, content=body if sent is None else sent, headers=dict(request.headers), timeout=10)


def converse_refusal(fake: FakeBedrock, body: dict[str, Any]) -> tuple[int, str, str]:
    r = signed_post(fake, orjson.dumps(body))
    return r.status_code, r.headers["x-amzn-errortype"].split(":")[0], r.json()["message"]


# --- signatures ----------------------------------------------------------------------------------


def test_a_request_signed_with_the_right_secret_is_served(fake):
    answer = client(fake).converse(modelId=MODEL, messages=HELLO)
    assert answer["output"]["message"]["content"] == [{"text": f"[{MODEL}] hello"}]
    assert [s.status for s in fake.seen] == [200]


def test_a_wrong_secret_is_refused(fake):
    assert refusal(lambda: client(fake, secret=SECRET + "x").converse(modelId=MODEL, messages=HELLO)) == (
        403,
        "InvalidSignatureException",
        "The request signature we calculated does not match the signature you provided. Check your AWS "
        "Secret Access Key and signing method. Consult the service documentation for details.",
    )
    assert [s.status for s in fake.seen] == [403]


def test_an_unknown_access_key_is_refused(fake):
    assert refusal(lambda: client(fake, key="AKIDSOMEONEELSE").converse(modelId=MODEL, messages=HELLO)) == (
        403, "UnrecognizedClientException", "The security token included in the request is invalid.")


def test_a_signature_for_another_region_is_refused(fake):
    assert refusal(lambda: client(fake, region="us-east-1").converse(modelId=MODEL, messages=HELLO)) == (
        403, "InvalidSignatureException", "Credential should be scoped to a valid region, not 'us-east-1'.")


def test_a_signature_for_another_service_is_refused(fake):
    r = signed_post(fake, orjson.dumps({"messages": HELLO}), service="s3")
    assert (r.status_code, r.headers["x-amzn-errortype"].split(":")[0], r.json()["message"]) == (
        403, "InvalidSignatureException", "Credential should be scoped to correct service: 'bedrock'.")


def test_a_body_changed_after_signing_is_refused(fake):
    other = orjson.dumps({"messages": [{"role": "user", "content": [{"text": "changed"}]}]})
    r = signed_post(fake, orjson.dumps({"messages": HELLO}), sent=other)
    assert r.status_code == 403 and r.headers["x-amzn-errortype"].startswith("InvalidSignatureException")


def test_an_unsigned_request_is_refused(fake):
    r = httpx.post(f"{fake.url}/model/{MODEL}/converse", json={"messages": HELLO}, timeout=10)
    assert (r.status_code, r.headers["x-amzn-errortype"], r.json()) == (
        403, "MissingAuthenticationTokenException:http://internal.amazon.com/",
        {"message": "Missing Authentication Token"})


# margins of 30 s either side of the 5 minutes: X-Amz-Date has whole seconds, and the call takes time
@pytest.mark.parametrize("skew,within", [(-330, False), (330, False), (-270, True), (270, True)])
def test_clock_skew_beyond_five_minutes_is_refused(fake, skew, within):
    """The fake's clock is moved, boto3 signs with the real one: a request `skew` seconds old
    (negative: from the future)."""
    fake.clock = lambda: time.time() + skew
    call = lambda: client(fake).converse(modelId=MODEL, messages=HELLO)  # noqa: E731
    if within:
        assert call()["stopReason"] == "end_turn"
        return
    status, code, message = refusal(call)
    assert (status, code) == (403, "InvalidSignatureException")
    assert message.startswith("Signature expired: " if skew > 0 else "Signature not yet current: ")
    assert message.endswith("- 5 min.)" if skew > 0 else "+ 5 min.)")


# --- conversation rules --------------------------------------------------------------------------


def test_a_valid_conversation_is_served_and_kept_for_the_test(fake):
    body = {"messages": [*HELLO, {"role": "assistant", "content": [{"text": "hi"}]},
                         {"role": "user", "content": [{"text": "again"}]}],
            "system": [{"text": "be brief"}],
            "inferenceConfig": {"maxTokens": 9, "temperature": 0.5, "topP": 0.9, "stopSequences": ["x"]}}
    r = signed_post(fake, orjson.dumps(body))
    assert r.status_code == 200, r.text
    # "hello hi again be brief" is 23 characters: 6 tokens at 4 characters a token
    assert r.json()["usage"] == {"inputTokens": 6, "outputTokens": 9, "totalTokens": 15}
    assert fake.last_request == body


def test_no_messages_is_refused(fake):
    assert converse_refusal(fake, {"messages": []}) == (
        400, "ValidationException",
        "The messages field is empty. Add at least one message to the messages field and try again.")


def test_a_conversation_that_starts_with_the_assistant_is_refused(fake):
    messages = [{"role": "assistant", "content": [{"text": "hi"}]}, *HELLO]
    assert refusal(lambda: client(fake).converse(modelId=MODEL, messages=messages)) == (
        400, "ValidationException",
        "A conversation must start with a user message. Try again with a conversation that starts with a "
        "user message.")


def test_two_turns_of_one_role_in_a_row_are_refused(fake):
    messages = [*HELLO, {"role": "user", "content": [{"text": "still me"}]}]
    assert refusal(lambda: client(fake).converse(modelId=MODEL, messages=messages)) == (
        400, "ValidationException",
        "A conversation must alternate between user and assistant roles. Make sure the conversation "
        "alternates between user and assistant roles and try again.")


def test_string_content_is_a_400_not_a_crash(fake):
    status, code, message = converse_refusal(fake, {"messages": [{"role": "user", "content": "hello"}]})
    assert (status, code) == (400, "ValidationException")
    assert "'messages.0.member.content'" in message and "must be a list" in message


def test_an_unknown_role_is_refused(fake):
    body = {"messages": [{"role": "system", "content": [{"text": "x"}]}]}
    status, code, message = converse_refusal(fake, body)
    assert (status, code) == (400, "ValidationException")
    assert "Value 'system' at 'messages.0.member.role'" in message


def test_empty_content_is_refused(fake):
    assert converse_refusal(fake, {"messages": [{"role": "user", "content": []}]}) == (
        400, "ValidationException",
        "The content field in the Message object at messages.0 is empty. Add a ContentBlock object to the "
        "content field and try again.")


def test_a_blank_text_block_is_refused(fake):
    messages = [*HELLO, {"role": "assistant", "content": [{"text": "  "}]}]
    assert refusal(lambda: client(fake).converse(modelId=MODEL, messages=messages)) == (
        400, "ValidationException",
        "The text field in the ContentBlock object at messages.1.content.0 is blank. Add text to the text "
        "field, and try again.")


def test_a_block_that_is_not_a_content_block_is_refused(fake):
    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": "openai style"}]}]}
    status, code, message = converse_refusal(fake, body)
    assert (status, code) == (400, "ValidationException")
    assert message == "The ContentBlock object at messages.0.content.0 must set exactly one of its members."


def test_an_unknown_inference_config_key_is_refused(fake):
    body = {"messages": HELLO, "inferenceConfig": {"maxTokens": 5, "topK": 3}}
    assert converse_refusal(fake, body) == (
        400, "ValidationException",
        "The inferenceConfig field contains unknown keys: topK. Valid keys are maxTokens, temperature, topP, "
        "stopSequences.")


def test_a_body_that_is_not_json_is_refused(fake):
    r = signed_post(fake, b"{not json")
    assert r.status_code == 400 and r.headers["x-amzn-errortype"].startswith("ValidationException")
    assert r.json() == {"message": "Malformed input request, please reformat your input and try again."}


def test_refusals_happen_before_any_injected_behaviour(fake):
    fake.fail(500)
    assert converse_refusal(fake, {"messages": []})[0] == 400
    assert refusal(lambda: client(fake).converse(modelId=MODEL, messages=HELLO))[0] == 500


def test_the_rules_use_the_services_own_field_names():
    """The keys the stand-in accepts are the ones botocore's bedrock-runtime model defines."""
    model = botocore.session.get_session().get_service_model("bedrock-runtime")
    request = model.operation_model("Converse").input_shape
    assert tuple(request.members["inferenceConfig"].members) == INFERENCE_CONFIG_KEYS
    block = request.members["messages"].member.members["content"].member
    assert frozenset(block.members) == CONTENT_BLOCK_KEYS
    assert model.signing_name == "bedrock"


# --- tool use ------------------------------------------------------------------------------------

TOOLS = {"tools": [{"toolSpec": {"name": "add", "inputSchema": {"json": {"type": "object"}}}}]}
ASKS = {"role": "assistant", "content": [{"toolUse": {"toolUseId": "t1", "name": "add", "input": {"a": 1}}},
                                         {"toolUse": {"toolUseId": "t2", "name": "add", "input": {"a": 2}}}]}


def answers(*ids: str) -> dict[str, Any]:
    results = [{"toolResult": {"toolUseId": i, "content": [{"text": "3"}]}} for i in ids]
    return {"role": "user", "content": results}


def test_a_whole_tool_exchange_is_served(fake):
    messages = [*HELLO, ASKS, answers("t2", "t1")]
    answer = client(fake).converse(modelId=MODEL, messages=messages, toolConfig=TOOLS)
    assert answer["stopReason"] == "end_turn"


def test_tool_blocks_without_a_tool_config_are_refused(fake):
    messages = [*HELLO, ASKS, answers("t1", "t2")]
    assert refusal(lambda: client(fake).converse(modelId=MODEL, messages=messages)) == (
        400, "ValidationException",
        "The toolConfig field must be defined when using toolUse and toolResult content blocks.")


def test_a_tool_config_without_tools_is_refused(fake):
    status, code, message = converse_refusal(fake, {"messages": HELLO, "toolConfig": {"tools": []}})
    assert (status, code) == (400, "ValidationException")
    assert "'toolConfig.tools'" in message and "length greater than or equal to 1" in message


def test_every_tool_use_must_get_its_result_in_the_next_turn(fake):
    messages = [*HELLO, ASKS, answers("t1")]
    assert refusal(lambda: client(fake).converse(modelId=MODEL, messages=messages, toolConfig=TOOLS)) == (
        400, "ValidationException",
        "Expected toolResult blocks at messages.2.content for the following Ids: t2")


@pytest.mark.parametrize("ids", [("t1", "t2", "t3"), ("t1", "t9")], ids=["one-too-many", "unknown-id"])
def test_a_result_for_no_tool_use_of_the_previous_turn_is_refused(fake, ids):
    messages = [*HELLO, ASKS, answers(*ids)]
    assert refusal(lambda: client(fake).converse(modelId=MODEL, messages=messages, toolConfig=TOOLS)) == (
        400, "ValidationException",
        "The number of toolResult blocks at messages.2.content exceeds the number of toolUse blocks of "
        "previous turn.")
