"""The model APIs in the gateway's /openapi.json.

POST /v1/chat/completions, /v1/responses and /v1/embeddings are served outside FastAPI's routing
(GatewayApp.__call__ hands them to their ASGI endpoint), so FastAPI's generated document lacks
them. `add_model_routes` adds each with its request schema from the model the gateway validates
with (so the document cannot drift from what is accepted), its answer, its headers and its
errors in OpenAI's format.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from services.gateway.embeddings import EmbeddingsRequest
from services.gateway.responses_schema import ResponsesRequest
from services.gateway.schema import ChatCompletionRequest

_REF = "#/components/schemas/{model}"
ERROR_STATUSES = {
    "400": "Invalid request: malformed JSON, a missing or mistyped parameter (`param` names it).",
    "401": "Missing, unknown, expired or revoked API key (where the environment requires one).",
    "403": "A model outside the key's allow-list (model_not_allowed).",
    "404": "Unknown model (or, for /v1/responses, an unknown previous_response_id).",
    "408": "The request was not received in time.",
    "413": "Request body larger than gateway.maxBodyBytes.",
    "429": "A budget or rate limit reached (budget_exceeded, rate_limit_exceeded) or every provider "
           "rate-limited; Retry-After says when to retry.",
    "502": "The provider or the router failed.",
    "503": "No healthy deployment, the router unreachable, or the budget store down (failClosed).",
    "504": "No answer within the request deadline.",
}
_ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {
        "type": "object",
        "required": ["message", "type", "param", "code"],
        "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                       "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}},
    }},
}
_INT = {"type": "integer"}
_COMPLETION_SCHEMA = {
    "type": "object",
    "required": ["id", "object", "created", "model", "choices"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "chat.completion"},
        "created": _INT,
        "model": {"type": "string"},
        "choices": {"type": "array", "items": {"type": "object", "properties": {
            "index": _INT,
            "message": {"type": "object", "properties": {"role": {"type": "string"},
                                                         "content": {"type": ["string", "null"]},
                                                         "tool_calls": {"type": "array"}}},
            "finish_reason": {"type": ["string", "null"]},
        }}},
        "usage": {"type": "object", "properties": {"prompt_tokens": _INT, "completion_tokens": _INT,
                                                   "total_tokens": _INT}},
    },
}
_RESPONSE_SCHEMA = {
    "type": "object",
    "required": ["id", "object", "created_at", "status", "model", "output"],
    "properties": {
        "id": {"type": "string", "pattern": "^resp_"},
        "object": {"const": "response"},
        "created_at": _INT,
        "status": {"enum": ["completed", "incomplete", "in_progress", "failed"]},
        "model": {"type": "string"},
        "output": {"type": "array", "items": {"type": "object", "required": ["type"], "properties": {
            "type": {"enum": ["message", "function_call"]}}}},
        "usage": {"type": ["object", "null"], "properties": {"input_tokens": _INT, "output_tokens": _INT,
                                                             "total_tokens": _INT}},
    },
}
_EMBEDDINGS_SCHEMA = {
    "type": "object",
    "required": ["object", "data", "model", "usage"],
    "properties": {
        "object": {"const": "list"},
        "data": {"type": "array", "items": {"type": "object", "required": ["object", "index", "embedding"],
                                            "properties": {
            "object": {"const": "embedding"}, "index": _INT,
            "embedding": {"anyOf": [{"type": "array", "items": {"type": "number"}},
                                    {"type": "string", "description": "base64 of little-endian float32"}]},
        }}},
        "model": {"type": "string"},
        "usage": {"type": "object", "properties": {"prompt_tokens": _INT, "total_tokens": _INT}},
    },
}
_HEADERS = {
    "x-request-id": "The client's x-request-id when it is a safe token, else a new one.",
    "x-qlens-provider": "The deployment that answered, e.g. azureOpenAI/gpt-4.",
    "x-qlens-cache": "hit, miss or bypass.",
    "x-qlens-overhead-ms": "Time spent in QLens, the provider's time excluded.",
}


@dataclass(frozen=True)
class _Route:
    path: str
    operation_id: str
    summary: str
    request: type[BaseModel]
    answer: str  # component name of the JSON answer
    answer_schema: dict[str, Any]
    answer_text: str
    example: dict[str, Any]
    streams: bool = True


_ROUTES = (
    _Route("/v1/chat/completions", "create_chat_completion", "Create a chat completion (OpenAI-compatible)",
           ChatCompletionRequest, "ChatCompletion", _COMPLETION_SCHEMA,
           "The completion (JSON), or with `stream: true` server-sent events of `chat.completion.chunk` "
           "objects ending with `data: [DONE]`.",
           {"messages": [{"role": "user", "content": "Hello!"}]}),
    _Route("/v1/responses", "create_response", "Create a model response (the OpenAI Responses API)",
           ResponsesRequest, "Response", _RESPONSE_SCHEMA,
           "The response object (JSON), or with `stream: true` the Responses event stream "
           "(`response.created` ... `response.completed`).",
           {"input": "Hello!"}),
    _Route("/v1/embeddings", "create_embedding", "Create embeddings (OpenAI-compatible)",
           EmbeddingsRequest, "CreateEmbeddingResponse", _EMBEDDINGS_SCHEMA,
           "The embeddings, as floats or (encoding_format base64) base64 float32.",
           {"input": ["Hello!"], "encoding_format": "float"}, streams=False),
)


def add_model_routes(openapi: dict[str, Any], models: list[str]) -> dict[str, Any]:
    """Add the model APIs to a FastAPI-generated OpenAPI document (in place).

    `models` are the models this gateway serves: listed as examples of `model`, and the first is
    used in the request examples.
    """
    components = openapi.setdefault("components", {}).setdefault("schemas", {})
    components["OpenAIError"] = _ERROR_SCHEMA
    error = {"content": {"application/json": {"schema": {"$ref": _REF.format(model="OpenAIError")}}}}
    errors = {status: {"description": text, **error} for status, text in ERROR_STATUSES.items()}
    headers = {name: {"description": text, "schema": {"type": "string"}} for name, text in _HEADERS.items()}
    paths = openapi.setdefault("paths", {})
    for route in _ROUTES:
        request = route.request.model_json_schema(ref_template=_REF)
        components.update(request.pop("$defs", {}))
        if models:
            request["properties"]["model"]["examples"] = models
        name = route.request.__name__
        components[name] = request
        components[route.answer] = route.answer_schema
        content: dict[str, Any] = {"application/json": {"schema": {"$ref": _REF.format(model=route.answer)}}}
        if route.streams:
            content["text/event-stream"] = {"schema": {"type": "string"}}
        example = {"model": models[0] if models else "gpt-4", **route.example}
        paths[route.path] = {"post": {
            "summary": route.summary,
            "operationId": route.operation_id,
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": {"$ref": _REF.format(model=name)}, "example": example}}},
            "responses": {"200": {"description": route.answer_text, "headers": headers, "content": content},
                          **errors},
        }}
    return openapi
