"""The model catalog: which providers are on, how targets resolve, shared deployment state."""

from __future__ import annotations

import orjson
import pytest

from services.common.config import ServiceConfig
from services.router.app import models_list
from services.router.catalog import build_catalog
from services.router.providers import build_providers
from services.router.routing import Router

CLAUDE = "anthropic.claude-3-sonnet-20240229-v1:0"


def config(azure="auto", bedrock="auto", echo=True, **models):
    return ServiceConfig.model_validate(
        {
            "name": "t",
            "providers": {
                "azureOpenAI": {"enabled": azure, "deployments": {"gpt-4": "gpt-4-0613"}},
                "awsBedrock": {"enabled": bedrock, "models": [{"id": "claude-3-sonnet", "modelId": CLAUDE}]},
                "echo": {"enabled": echo},
            },
            "models": models
            or {
                "gpt-4": {
                    "deployments": [{"provider": "azureOpenAI", "target": "gpt-4"}],
                    "fallbacks": ["echo"],
                },
                "claude-3-sonnet": {"deployments": [{"provider": "awsBedrock", "target": "claude-3-sonnet"}]},
                "echo": {"deployments": [{"provider": "echo", "target": "echo"}]},
            },
        }
    )


@pytest.mark.parametrize(
    "env,on",
    [
        ({}, {"echo"}),
        (
            {"AZURE_OPENAI_ENDPOINT": "https://x.openai.azure.com", "AZURE_OPENAI_API_KEY": "k"},
            {"echo", "azureOpenAI"},
        ),
        ({"AWS_ACCESS_KEY_ID": "AKID", "AWS_SECRET_ACCESS_KEY": "s"}, {"echo", "awsBedrock"}),
        ({"AWS_PROFILE": "dev"}, {"echo", "awsBedrock"}),
    ],
)
async def test_auto_turns_providers_on_by_credentials(env, on):
    providers = build_providers(config().providers, env)
    try:
        assert set(providers.on) == on
        assert set(providers.off) == {"echo", "azureOpenAI", "awsBedrock"} - on
        if "azureOpenAI" in providers.off:
            assert "AZURE_OPENAI_ENDPOINT" in providers.off["azureOpenAI"]
    finally:
        await providers.aclose()


async def test_explicit_switches():
    providers = build_providers(
        config(azure=False, bedrock=False, echo=False).providers,
        {"AZURE_OPENAI_ENDPOINT": "https://x", "AWS_ACCESS_KEY_ID": "a"},
    )
    assert providers.on == {} and providers.off["azureOpenAI"] == "disabled"


async def test_azure_enabled_without_endpoint_stays_off_and_says_why():
    providers = build_providers(config(azure=True).providers, {})
    assert "azureOpenAI" not in providers.on
    assert providers.off["azureOpenAI"] == "AZURE_OPENAI_ENDPOINT is not set"


async def test_targets_resolve_through_the_provider_sections():
    providers = build_providers(
        config(azure=True, bedrock=True).providers,
        {
            "AZURE_OPENAI_ENDPOINT": "https://x",
            "AZURE_OPENAI_API_KEY": "k",
            "AWS_ACCESS_KEY_ID": "a",
            "AWS_SECRET_ACCESS_KEY": "s",
        },
    )
    try:
        catalog = build_catalog(config(), providers)
        assert catalog.deployments["azureOpenAI/gpt-4"].target == "gpt-4-0613"
        assert catalog.deployments["awsBedrock/claude-3-sonnet"].target == CLAUDE
        assert catalog.deployments["echo/echo"].target == "echo"
    finally:
        await providers.aclose()


def test_models_sharing_a_deployment_share_its_breaker():
    cfg = config(
        **{
            "a": {"deployments": [{"provider": "echo", "target": "e"}]},
            "b": {"deployments": [{"provider": "echo", "target": "e", "weight": 3}]},
        }
    )
    catalog = build_catalog(cfg, build_providers(cfg.providers, {}))
    a, b = catalog.models["a"].members[0], catalog.models["b"].members[0]
    assert a.deployment is b.deployment and b.weight == 3
    assert list(catalog.deployments) == ["echo/e"]


def test_models_list_without_cloud_credentials():
    cfg = config()
    catalog = build_catalog(cfg, build_providers(cfg.providers, {}))
    listed = {m["id"]: m for m in models_list(catalog)["data"]}
    # gpt-4 has no usable deployment of its own but its fallback (echo) answers; claude has neither
    assert set(listed) == {"gpt-4", "echo"}
    assert listed["gpt-4"]["owned_by"] == "azureOpenAI"
    assert listed["gpt-4"]["qlens"] == {
        "kind": "chat",
        "deployments": [],
        "deterministic": True,
        "displayName": "gpt-4",
        "fallbacks": ["echo"],
    }
    assert catalog.health()["azureOpenAI/gpt-4"]["enabled"] is False


async def test_router_serves_a_fallback_when_the_model_has_no_usable_deployment():
    cfg = config()
    catalog = build_catalog(cfg, build_providers(cfg.providers, {}))
    router = Router(catalog, cfg.routing)
    body = {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}
    completion, served = await router.complete(body, router.deadline())
    assert served.fallback and served.model == "echo" and served.attempts == 1
    assert orjson.loads(completion.body)["choices"][0]["message"]["content"] == "Echo: hi"


async def test_in_flight_is_counted_during_a_stream_and_released_after():
    cfg = config()
    catalog = build_catalog(cfg, build_providers(cfg.providers, {}))
    router = Router(catalog, cfg.routing)
    body = {"model": "echo", "stream": True, "messages": [{"role": "user", "content": "one two three"}]}
    relay = await router.stream(body, router.deadline())
    assert relay.served.deployment.in_flight == 1
    chunks: list[bytes] = []

    async def keep(chunk: bytes) -> None:
        chunks.append(chunk)

    await relay.pump(keep)
    assert chunks[-1] == b"data: [DONE]\n\n"
    assert relay.served.deployment.in_flight == 0 and relay.outcome == "success"


async def test_a_stream_abandoned_before_its_first_pull_is_still_settled():
    cfg = config()
    catalog = build_catalog(cfg, build_providers(cfg.providers, {}))
    router = Router(catalog, cfg.routing)
    body = {"model": "echo", "stream": True, "messages": [{"role": "user", "content": "one two three"}]}
    relay = await router.stream(body, router.deadline())
    closed = []
    relay.on_close = closed.append
    await relay.close()  # what the response does when the client left before any chunk was sent
    await relay.close()  # and only once
    assert relay.served.deployment.in_flight == 0
    assert closed == [relay] and relay.outcome == "client_gone"
