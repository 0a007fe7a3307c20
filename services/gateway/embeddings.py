"""POST /v1/embeddings: the request as the gateway validates it, and what it may cost.

It takes the chat path (chat.Endpoint): auth, a model of kind `embedding`, the tenant-scoped cache,
a budget reservation, the router's /v1/embeddings, settlement to the usage the provider reported.
An embedding has no output tokens: it is priced by its input alone, and the reservation bounds
that input by its UTF-8 length (no byte-level BPE token is shorter than a byte) or, for token
arrays, by their length.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, ValidationError, field_validator

from services.common.config import CatalogModel
from services.common.errors import APIError
from services.gateway.auth import Caller
from services.gateway.chat import Plan
from services.gateway.schema import _Open, validation_error

ROUTE = "/v1/embeddings"
MAX_INPUTS = 2048  # OpenAI's limit on one request's inputs

TokenArray = Annotated[list[int], Field(min_length=1)]


class EmbeddingsRequest(_Open):
    model: Annotated[str, Field(min_length=1, max_length=256)]
    input: str | Annotated[list[str], Field(min_length=1, max_length=MAX_INPUTS)] | TokenArray | Annotated[
        list[TokenArray], Field(min_length=1, max_length=MAX_INPUTS)]
    dimensions: Annotated[int, Field(ge=1, le=16384)] | None = None
    encoding_format: Literal["float", "base64"] | None = None
    user: Annotated[str, Field(max_length=256)] | None = None

    # what the shared path reads of every request: never a stream, one answer
    stream: ClassVar[bool] = False
    n: ClassVar[None] = None
    wants_usage_chunk: ClassVar[bool] = False

    @field_validator("input")
    @classmethod
    def _no_empty_text(cls, value: Any) -> Any:
        texts = [value] if isinstance(value, str) else value
        if any(isinstance(t, str) and not t for t in texts):
            raise ValueError("an input string must not be empty")
        return value


def validate_embeddings(data: Any) -> EmbeddingsRequest:
    if not isinstance(data, dict):
        raise APIError(400, "The request body must be a JSON object.", code="invalid_request_body")
    if "stream" in data or "n" in data:
        name = "stream" if "stream" in data else "n"
        raise APIError(400, f"Unrecognized parameter: '{name}'.", param=name, code="invalid_value")
    if data.get("input") == []:
        raise APIError(400, "Invalid value for 'input': it must not be empty.", param="input",
                       code="invalid_value")
    try:
        return EmbeddingsRequest.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None


def input_tokens_bound(value: Any) -> int:
    """An upper bound on the input's tokens: bytes of text, or the token arrays' lengths."""
    items = [value] if isinstance(value, str) or (value and isinstance(value[0], int)) else value
    total = 0
    for item in items:
        total += len(item.encode()) if isinstance(item, str) else len(item)
    return total


class EmbeddingsApi:
    route = router_path = ROUTE
    kind = "embedding"

    def validate(self, data: Any) -> EmbeddingsRequest:
        return validate_embeddings(data)

    async def prepare(self, data: dict[str, Any], req: Any, caller: Caller) -> dict[str, Any]:
        return data

    def plan(self, req: EmbeddingsRequest, data: dict[str, Any], model: CatalogModel) -> Plan:
        return Plan(input_tokens_bound(req.input), 0)

    async def present(self, req: Any, body: bytes, caller: Caller) -> bytes:
        return body

    def view(self, req: Any, caller: Caller) -> None:
        return None
