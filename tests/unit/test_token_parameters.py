"""Output caps per model family: what the gateway reserves and forwards, and how the router names it."""

from __future__ import annotations

from typing import Any

from services.common.config import CatalogModel
from services.gateway.chat import output_plan
from services.router.routing import route_body

ECHO = [{"provider": "echo", "target": "echo"}]


def model(**kwargs: Any) -> CatalogModel:
    return CatalogModel.model_validate({"deployments": ECHO, **kwargs})


def chat(**kwargs: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **kwargs}


def test_no_cap_and_no_model_cap_forwards_the_default_as_max_tokens():
    plan = output_plan(chat(), None, model(), 20)
    assert (plan.prompt_tokens, plan.completion_tokens) == (20, 4096)
    assert plan.body == chat(max_tokens=4096)


def test_the_model_cap_is_the_default_under_the_model_s_parameter_name():
    plan = output_plan(chat(), 2, model(maxOutputTokens=300, tokenParameter="max_completion_tokens"), 5)
    assert plan.completion_tokens == 600  # n=2 answers at worst
    assert plan.body == chat(max_completion_tokens=300)


def test_a_client_cap_under_the_model_cap_is_forwarded_untouched():
    plan = output_plan(chat(max_tokens=50), None, model(maxOutputTokens=300), 5)
    assert plan.completion_tokens == 50 and plan.body is None


def test_a_client_cap_over_the_model_cap_is_lowered_and_the_reservation_bounded():
    plan = output_plan(chat(max_tokens=5000, max_completion_tokens=4000), None,
                       model(maxOutputTokens=300, tokenParameter="max_completion_tokens"), 5)
    assert plan.completion_tokens == 300
    assert plan.body == chat(max_completion_tokens=300)


class _Route:
    def __init__(self, name: str, token_parameter: str) -> None:
        self.name = name
        self.config = model(tokenParameter=token_parameter)


def test_the_router_renames_the_cap_for_a_reasoning_model():
    body = chat(max_tokens=77)
    out = route_body(body, _Route("o3", "max_completion_tokens"), "m")  # type: ignore[arg-type]
    assert out == {"model": "o3", "messages": body["messages"], "max_completion_tokens": 77}
    assert body == chat(max_tokens=77)  # the caller's dict is not changed


def test_the_router_renames_back_for_a_max_tokens_model_and_leaves_a_plain_body_alone():
    out = route_body(chat(max_completion_tokens=9), _Route("m", "max_tokens"), "m")  # type: ignore[arg-type]
    assert out == chat(max_tokens=9)
    plain = chat(max_tokens=9)
    assert route_body(plain, _Route("m", "max_tokens"), "m") is plain  # type: ignore[arg-type]
