"""POST /v1/embeddings through the whole stack (gateway, router, cache; echo), with the official
openai SDK: float and base64 vectors, dimensions, token arrays, model kinds, budgets, the cache,
headers, metrics and the log line.
"""

from __future__ import annotations

import math
import re

import httpx
import openai
import pytest

from services.router.providers.echo import unit_vector
from tests.support.stack import RunningStack, running_stack

pytestmark = pytest.mark.timeout(120)

PRICE = 0.0001  # USD per 1K input tokens
ENV = {
    "models": {
        "embed": {"kind": "embedding", "pricing": {"input": PRICE},
                  "deployments": [{"provider": "echo", "target": "embed"}]},
    },
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    with running_stack(tmp_path_factory.mktemp("embeddings"), ENV) as s:
        yield s


def spent(stack: RunningStack, user: str) -> dict:
    return httpx.get(stack.gateway_url + "/v1/usage", params={"user": user}).json()["user"]


def test_float_vectors_are_deterministic_unit_vectors(stack: RunningStack):
    client = stack.openai()
    raw = client.embeddings.with_raw_response.create(model="embed", input=["alpha one", "beta two"],
                                                     encoding_format="float")
    result = raw.parse()
    assert [d.index for d in result.data] == [0, 1]
    first, second = (d.embedding for d in result.data)
    assert len(first) == len(second) == 256
    assert math.isclose(sum(v * v for v in first), 1.0, rel_tol=1e-9)
    assert first != second
    assert first == pytest.approx(unit_vector("alpha one", 256), abs=1e-12)
    assert result.model == "embed"
    assert result.usage.prompt_tokens == 5 and result.usage.total_tokens == 5  # ceil(9/4) + ceil(8/4)
    assert raw.headers["x-qlens-provider"] == "echo/embed"
    assert raw.headers["x-qlens-cache"] == "miss"
    assert raw.headers["x-request-id"]


def test_base64_is_the_sdk_default_and_decodes_to_the_same_vector(stack: RunningStack):
    client = stack.openai()
    plain = client.embeddings.create(model="embed", input="gamma three", encoding_format="float")
    # without encoding_format the SDK asks for base64 and decodes it to floats itself
    raw = client.embeddings.with_raw_response.create(model="embed", input="gamma three")
    decoded = raw.parse().data[0].embedding
    assert isinstance(raw.http_response.json()["data"][0]["embedding"], str)
    assert decoded == pytest.approx(plain.data[0].embedding, abs=1e-6)  # float32 on the wire


def test_dimensions_and_token_arrays(stack: RunningStack):
    client = stack.openai()
    short = client.embeddings.create(model="embed", input="delta", dimensions=64, encoding_format="float")
    assert len(short.data[0].embedding) == 64
    tokens = client.embeddings.create(model="embed", input=[[1, 2, 3], [4, 5]], encoding_format="float")
    assert len(tokens.data) == 2 and tokens.usage.prompt_tokens == 5
    assert tokens.data[0].embedding == pytest.approx(unit_vector([1, 2, 3], 256), abs=1e-12)


def test_priced_by_input_tokens_settled_and_cached(stack: RunningStack):
    client = stack.openai()
    before = spent(stack, "emb-cost")
    first = client.embeddings.with_raw_response.create(model="embed", input="epsilon " * 100,
                                                       user="emb-cost", encoding_format="float")
    assert first.headers["x-qlens-cache"] == "miss"
    tokens = first.parse().usage.prompt_tokens
    after = spent(stack, "emb-cost")
    assert after["spent"] - before["spent"] == pytest.approx(tokens * PRICE / 1000, abs=1e-6)
    assert after["reserved"] == 0
    again = client.embeddings.with_raw_response.create(model="embed", input="epsilon " * 100,
                                                       user="emb-cost", encoding_format="float")
    assert again.headers["x-qlens-cache"] == "hit"
    assert again.parse().data[0].embedding == first.parse().data[0].embedding
    assert spent(stack, "emb-cost")["spent"] == after["spent"]  # a hit costs nothing


def test_wrong_model_kind_is_400_and_reserves_nothing(stack: RunningStack):
    client = stack.openai()
    with pytest.raises(openai.BadRequestError) as chat_on_embed:
        client.chat.completions.create(model="embed", messages=[{"role": "user", "content": "hi"}],
                                       user="emb-kind")
    err = chat_on_embed.value.body
    assert chat_on_embed.value.status_code == 400
    assert err["code"] == "model_not_supported" and err["param"] == "model"
    assert "embedding model" in err["message"] and "/v1/embeddings" in err["message"]
    with pytest.raises(openai.BadRequestError) as embed_on_chat:
        client.embeddings.create(model="echo", input="hi", user="emb-kind")
    assert embed_on_chat.value.body["code"] == "model_not_supported"
    assert "a chat model" in embed_on_chat.value.body["message"]
    assert spent(stack, "emb-kind") == {**spent(stack, "emb-kind"), "spent": 0, "reserved": 0}


@pytest.mark.parametrize(("body", "param"), [
    ({"model": "embed", "input": ""}, "input"),
    ({"model": "embed", "input": []}, "input"),
    ({"model": "embed"}, "input"),
    ({"model": "embed", "input": "x", "encoding_format": "int8"}, "encoding_format"),
    ({"model": "embed", "input": "x", "stream": True}, "stream"),
    ({"model": "embed", "input": "x", "dimensions": 0}, "dimensions"),
])
def test_bad_requests_are_400_naming_the_parameter(stack: RunningStack, body: dict, param: str):
    r = httpx.post(stack.gateway_url + "/v1/embeddings", json=body)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == param
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_models_list_shows_the_kind(stack: RunningStack):
    models = {m.id: m for m in stack.openai().models.list()}
    assert models["embed"].model_extra["qlens"]["kind"] == "embedding"
    assert models["echo"].model_extra["qlens"]["kind"] == "chat"


def test_metrics_and_log_line(stack: RunningStack):
    stack.openai().embeddings.create(model="embed", input="zeta metrics", encoding_format="float")
    metrics = httpx.get(stack.gateway_url + "/metrics").text
    assert re.search(r'qlens_requests_total\{route="/v1/embeddings",service="gateway",status="200"\} [1-9]',
                     metrics)
    assert re.search(r'qlens_tokens_total\{kind="prompt",model="embed"\} [1-9]', metrics)
    assert '"route":"/v1/embeddings"' in stack.log("gateway")
    assert "zeta metrics" not in stack.log("gateway")  # never the input
