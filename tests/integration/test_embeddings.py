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


# --- Azure OpenAI embedding deployments, through the openai SDK -------------------------------------

AZURE_ENV = {
    "providers": {"azureOpenAI": {"enabled": True}},
    "models": {"ada": {"kind": "embedding", "pricing": {"input": PRICE},
                       "deployments": [{"provider": "azureOpenAI", "target": "text-embedding-3-small"}]}},
}


def test_azure_embeddings_float_and_base64(tmp_path):
    from tests.fakes.azure_openai import FakeAzureOpenAI

    with FakeAzureOpenAI.for_environment(AZURE_ENV) as az, \
            running_stack(tmp_path, AZURE_ENV, extra_env=az.client_env()) as s:
        client = s.openai()
        raw = client.embeddings.with_raw_response.create(model="ada", input=["north", "south"],
                                                         encoding_format="float", dimensions=64)
        floats = raw.parse()
        assert raw.headers["x-qlens-provider"] == "azureOpenAI/text-embedding-3-small"
        assert [len(d.embedding) for d in floats.data] == [64, 64]
        assert math.isclose(sum(v * v for v in floats.data[0].embedding), 1.0, rel_tol=1e-9)
        assert floats.usage.prompt_tokens == 4
        decoded = client.embeddings.create(model="ada", input=["north", "south"], dimensions=64)  # base64
        assert decoded.data[1].embedding == pytest.approx(floats.data[1].embedding, abs=1e-6)
        assert az.calls("text-embedding-3-small") == 2


# --- Bedrock embedding models through invoke_model: Titan Text Embeddings v2 and Cohere Embed -----

TITAN, COHERE = "amazon.titan-embed-text-v2:0", "cohere.embed-english-v3"
BEDROCK_ENV = {
    "providers": {"awsBedrock": {"enabled": True}},
    "models": {
        "titan": {"kind": "embedding", "deployments": [{"provider": "awsBedrock", "target": TITAN}]},
        "cohere": {"kind": "embedding", "deployments": [{"provider": "awsBedrock", "target": COHERE}]},
    },
}


def test_bedrock_titan_and_cohere_embeddings(tmp_path):
    from tests.fakes.bedrock import FakeBedrock

    with FakeBedrock(access_key="AKIDEMBED") as br, \
            running_stack(tmp_path, BEDROCK_ENV, extra_env=br.client_env()) as s:
        client = s.openai()
        titan = client.embeddings.create(model="titan", input=["east", "west"], dimensions=256,
                                         encoding_format="float")
        assert [len(d.embedding) for d in titan.data] == [256, 256] and titan.usage.prompt_tokens == 2
        assert br.calls(TITAN) == 2  # Titan embeds one text per call
        texts = [f"text {i}" for i in range(100)]
        cohere = client.embeddings.create(model="cohere", input=texts)  # base64, decoded by the SDK
        assert len(cohere.data) == 100 and len(cohere.data[0].embedding) == 1024
        assert cohere.usage.prompt_tokens == 200  # from the token-count header, 2 per text
        assert br.calls(COHERE) == 2  # batched: 96 + 4
        assert math.isclose(sum(v * v for v in cohere.data[99].embedding), 1.0, rel_tol=1e-5)
        refusals = (("cohere", {"dimensions": 256}, "dimensions is not supported"),
                    ("titan", {"dimensions": 300}, "dimensions must be one of 256, 512, 1024"),
                    ("titan", {"input": [[1, 2]]}, "token-array inputs are not supported"))
        for model, extra, message in refusals:
            r = httpx.post(s.gateway_url + "/v1/embeddings", json={"model": model, "input": "x", **extra})
            assert r.status_code == 400 and message in r.json()["error"]["message"]
