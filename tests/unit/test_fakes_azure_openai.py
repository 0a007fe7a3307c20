"""The Azure OpenAI stand-in refuses what the service refuses: each rule shown once, through the real
`openai` SDK (which sends whatever messages it is given) or a raw request where the SDK cannot
send the mistake, with the status and error body the service answers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.fakes.azure_openai import FakeAzureOpenAI, azure_deployments

KEY = "stand-in-azure-key"
VERSION = "2024-10-21"
USER = {"role": "user", "content": "hello"}
CALL = {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1}'}}


@pytest.fixture(scope="module")
def server() -> Iterator[FakeAzureOpenAI]:
    with FakeAzureOpenAI(api_key=KEY, deployments=("gpt-4o",), api_versions=(VERSION,)) as fake:
        yield fake


@pytest.fixture
def fake(server: FakeAzureOpenAI) -> FakeAzureOpenAI:
    server.reset()
    return server


def sdk(fake: FakeAzureOpenAI, version: str = VERSION, key: str = KEY) -> openai.AzureOpenAI:
    return openai.AzureOpenAI(azure_endpoint=fake.url, api_key=key, api_version=version, max_retries=0)


def refused(fake: FakeAzureOpenAI, messages: Any, deployment: str = "gpt-4o", **kw: Any) -> tuple[int, Any]:
    with pytest.raises(openai.APIStatusError) as err:
        sdk(fake, **kw).chat.completions.create(model=deployment, messages=messages)
    return err.value.status_code, err.value.body


def invalid(message: str, param: str | None = None, code: str | None = None) -> tuple[int, dict]:
    """What the service answers to a request that fails validation: 400 in OpenAI's format (the SDK
    hands us the `error` object)."""
    return 400, {"message": message, "type": "invalid_request_error", "param": param, "code": code}


def test_a_valid_request_is_served(fake):
    answer = sdk(fake).chat.completions.create(model="gpt-4o", messages=[USER])
    assert answer.choices[0].message.content == "[gpt-4o] hello"
    assert [(s.target, s.status) for s in fake.seen] == [("gpt-4o", 200)]
    assert fake.auth_kinds == {"api-key"}


# --- where the request goes ----------------------------------------------------------------------


def test_an_api_version_the_environment_does_not_configure_is_404(fake):
    expected = (404, {"code": "404", "message": "Resource not found"})
    assert refused(fake, [USER], version="2024-06-01") == expected


def test_a_missing_api_version_is_404(fake):
    r = httpx.post(f"{fake.url}/openai/deployments/gpt-4o/chat/completions", json={"messages": [USER]},
                   headers={"api-key": KEY}, timeout=10)
    assert (r.status_code, r.json()) == (404, {"error": {"code": "404", "message": "Resource not found"}})


def test_a_deployment_that_does_not_exist_is_404(fake):
    assert refused(fake, [USER], deployment="gpt-5") == (404, {
        "code": "DeploymentNotFound",
        "message": "The API deployment for this resource does not exist. If you created the deployment "
        "within the last 5 minutes, please wait a moment and try again.",
    })


def test_a_wrong_key_is_401(fake):
    assert refused(fake, [USER], key="not-the-key") == (401, {
        "code": "401", "message": "Access denied due to invalid subscription key or wrong API endpoint."})


def test_a_body_not_sent_as_json_is_400(fake):
    r = httpx.post(f"{fake.url}/openai/deployments/gpt-4o/chat/completions?api-version={VERSION}",
                   content=b'{"messages": []}', headers={"api-key": KEY, "content-type": "text/plain"},
                   timeout=10)
    assert r.status_code == 400
    assert r.json()["error"] == {
        "message": "Unsupported content type: 'text/plain'. This API method only accepts 'application/json' "
        "requests, but you specified the header 'Content-Type: text/plain'. Please try again with a "
        "supported content type.",
        "type": "invalid_request_error", "param": None, "code": None,
    }


def test_a_body_that_is_not_json_is_400(fake):
    r = httpx.post(f"{fake.url}/openai/deployments/gpt-4o/chat/completions?api-version={VERSION}",
                   content=b"{broken", headers={"api-key": KEY, "content-type": "application/json"},
                   timeout=10)
    assert r.status_code == 400 and r.json()["error"]["message"].startswith(
        "We could not parse the JSON body of your request.")


# --- message shapes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "messages,expected",
    [
        ([], invalid("[] is too short - 'messages'")),
        ("hello", invalid('"hello" is not of type \'array\' - \'messages\'')),
        ([{"content": "x"}], invalid("'role' is a required property - 'messages.0'")),
        ([{"role": "bot", "content": "x"}], invalid(
            "\"bot\" is not one of ['system', 'assistant', 'user', 'function', 'tool', 'developer'] - "
            "'messages.0.role'")),
        ([{"role": "user"}], invalid("'content' is a required property - 'messages.0'")),
        ([{"role": "user", "content": 42}],
         invalid("42 is not of type 'string', 'array' - 'messages.0.content'")),
        ([{"role": "user", "content": [{"type": "video", "video": {}}]}], invalid(
            "Invalid value: \"video\". Supported values are: 'text', 'image_url', 'input_audio', 'file'.",
            "messages.0.content.0.type", "invalid_value")),
        ([{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "http://x"}}]}, USER],
         invalid("Invalid value: \"image_url\". Supported values are: 'text'.", "messages.0.content.0.type",
                 "invalid_value")),
        ([{"role": "user", "content": [{"type": "text"}]}],
         invalid("'text' is a required property - 'messages.0.content.0'")),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}],
         invalid("'url' is a required property - 'messages.0.content.0.image_url'")),
    ],
    ids=["empty", "not-a-list", "no-role", "unknown-role", "no-content", "content-type", "part-type",
         "part-type-for-role", "text-part-without-text", "image-without-url"],
)
def test_invalid_messages_are_400(fake, messages, expected):
    assert refused(fake, messages) == expected
    assert [s.status for s in fake.seen] == [400]


def test_a_tool_message_needs_its_tool_call_id(fake):
    messages = [USER, {"role": "assistant", "tool_calls": [CALL]}, {"role": "tool", "content": "2"}]
    assert refused(fake, messages) == invalid("'tool_call_id' is a required property - 'messages.2'")


def test_a_tool_message_must_answer_a_preceding_tool_call(fake):
    messages = [USER, {"role": "tool", "tool_call_id": "call_1", "content": "2"}]
    assert refused(fake, messages) == invalid(
        "Invalid parameter: messages with role 'tool' must be a response to a preceeding message with "
        "'tool_calls'.", "messages.1.role")


def test_every_tool_call_must_be_answered(fake):
    messages = [USER, {"role": "assistant", "tool_calls": [CALL]}, {"role": "user", "content": "and?"}]
    assert refused(fake, messages) == invalid(
        "An assistant message with 'tool_calls' must be followed by tool messages responding to each "
        "'tool_call_id'. The following tool_call_ids did not have response messages: call_1",
        "messages.2.role")


@pytest.mark.parametrize(
    "call,expected",
    [
        ({"type": "function", "function": {"name": "add", "arguments": "{}"}},
         "'id' is a required property - 'messages.1.tool_calls.0'"),
        ({**CALL, "type": "tool"}, "\"tool\" is not one of ['function'] - 'messages.1.tool_calls.0.type'"),
        ({**CALL, "function": {"name": "add"}},
         "'arguments' is a required property - 'messages.1.tool_calls.0.function'"),
        ({**CALL, "function": {"name": "add", "arguments": {"a": 1}}},
         "{\"a\":1} is not of type 'string' - 'messages.1.tool_calls.0.function.arguments'"),
    ],
    ids=["no-id", "type", "no-arguments", "arguments-not-a-string"],
)
def test_assistant_tool_calls_must_have_the_services_shape(fake, call, expected):
    messages = [USER, {"role": "assistant", "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "call_1", "content": "2"}]
    assert refused(fake, messages) == invalid(expected)


def test_a_whole_tool_exchange_is_served(fake):
    messages = [{"role": "developer", "content": [{"type": "text", "text": "use tools"}]}, USER,
                {"role": "assistant", "content": None, "tool_calls": [CALL, {**CALL, "id": "call_2"}]},
                {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "3"}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "2"},
                {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]},
                {"role": "user", "content": [{"type": "text", "text": "thanks"},
                                             {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]
    answer = sdk(fake).chat.completions.create(model="gpt-4o", messages=messages)
    assert answer.choices[0].message.content == "[gpt-4o] thanks"


# --- Entra ID ------------------------------------------------------------------------------------


def token(fake: FakeAzureOpenAI, resource: str) -> httpx.Response:
    return httpx.get(f"{fake.url}/msi/token", params={"api-version": "2019-08-01", "resource": resource},
                     headers={"X-IDENTITY-HEADER": fake.identity_header}, timeout=10)


def test_a_token_is_issued_only_for_the_azure_openai_resource(fake):
    r = token(fake, "https://management.azure.com")
    assert r.status_code == 400 and r.json()["error"] == "invalid_resource"
    assert r.json()["error_description"].startswith(
        "AADSTS500011: The resource principal named https://management.azure.com was not found")
    ok = token(fake, "https://cognitiveservices.azure.com")
    assert ok.status_code == 200 and ok.json()["resource"] == "https://cognitiveservices.azure.com"
    bearer = {"Authorization": f"Bearer {ok.json()['access_token']}"}
    r = httpx.post(f"{fake.url}/openai/deployments/gpt-4o/chat/completions?api-version={VERSION}",
                   json={"messages": [USER]}, headers=bearer, timeout=10)
    assert r.status_code == 200 and fake.auth_kinds == {"bearer"}


async def test_azure_identity_is_refused_a_token_for_another_scope(fake, monkeypatch):
    from azure.core.exceptions import ClientAuthenticationError
    from azure.identity.aio import ManagedIdentityCredential

    monkeypatch.setenv("IDENTITY_ENDPOINT", f"{fake.url}/msi/token")
    monkeypatch.setenv("IDENTITY_HEADER", fake.identity_header)
    async with ManagedIdentityCredential() as credential:
        with pytest.raises(ClientAuthenticationError):
            await credential.get_token("https://management.azure.com/.default")
        got = await credential.get_token("https://cognitiveservices.azure.com/.default")
    assert got.token in fake.tokens


def test_a_token_without_the_identity_header_is_401(fake):
    r = httpx.get(f"{fake.url}/msi/token", params={"resource": "https://cognitiveservices.azure.com"},
                  timeout=10)
    assert r.status_code == 401


# --- what the fake serves, from an environment ---------------------------------------------------


def test_an_environment_names_the_deployments_and_version_served():
    environment = {
        "providers": {"azureOpenAI": {"apiVersion": "2025-01-01-preview",
                                      "deployments": {"gpt-4": "gpt-4-0613"}}},
        "models": {
            "gpt-4": {"deployments": [{"provider": "azureOpenAI", "target": "gpt-4"}]},
            "mini": {"deployments": [{"provider": "azureOpenAI", "target": "mini"},
                                     {"provider": "echo", "target": "echo"}]},
        },
    }
    assert azure_deployments(environment) == ("gpt-4-0613", "mini")
    fake = FakeAzureOpenAI.for_environment(environment, api_key=KEY)
    assert (fake.deployments, fake.api_versions) == ({"gpt-4-0613", "mini"}, {"2025-01-01-preview"})
    default = FakeAzureOpenAI.for_environment({"models": environment["models"]}, api_key=KEY)
    assert default.api_versions == {"2024-06-01"}
