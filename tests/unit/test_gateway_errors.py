"""The gateway app's error wiring, in process: framework errors and unexpected exceptions answer in
OpenAI's format, never with a traceback. (Peers are not needed: these requests never reach them.)"""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from services.common.config import ServiceConfig
from services.common.logging import request_id
from services.gateway.app import create_app


@pytest.fixture
def client():
    app = create_app(ServiceConfig(name="unit", auth={"required": True}))

    @app.get("/test/boom")
    async def boom():
        raise RuntimeError("internal detail with a secret: sk-do-not-leak")

    @app.get("/test/typed")
    async def typed(n: int):
        return {"n": n}

    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def test_an_unexpected_exception_is_a_bare_500_in_openai_format(client):
    r = client.get("/test/boom", headers={"x-request-id": "boom-1"})
    assert r.status_code == 500
    assert r.json()["error"]["type"] == "api_error" and r.json()["error"]["code"] == "internal_error"
    assert "sk-do-not-leak" not in r.text and "Traceback" not in r.text and "RuntimeError" not in r.text
    assert r.headers["x-request-id"] == "boom-1"


def test_fastapi_parameter_validation_is_400_in_openai_format(client):
    r = client.get("/test/typed", params={"n": "many"})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "n" and r.json()["error"]["type"] == "invalid_request_error"


def test_auth_is_checked_before_the_body_is_read(client):
    r = client.post("/v1/chat/completions", content=b"{definitely not json")
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"


def test_request_ids():
    assert request_id("abc-1.2_3") == "abc-1.2_3"
    generated = {request_id(v) for v in (None, "", "a b", "x" * 129, "a\r\nb", "ü")}
    assert len(generated) == 6 and all(len(g) == 32 and g.isalnum() for g in generated)
