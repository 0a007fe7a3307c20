"""OpenAI's error body on every 4xx/5xx: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

from typing import Any

import orjson

# status -> OpenAI error type, as OpenAI's API reports them
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


class APIError(Exception):
    """Raised anywhere in a service; the app turns it into the OpenAI error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type or _TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.body())


def error_body(status: int, message: str, code: str | None = None, param: str | None = None) -> bytes:
    return APIError(status, message, code=code, param=param).to_bytes()


# --- FastAPI wiring: every error a service answers, its own or the framework's, in OpenAI format ---



_FRAMEWORK_MESSAGES = {
    404: "Unknown request URL: {method} {path}. Please check the URL for typos.",
    405: "Method {method} is not allowed for {path}.",
}


def error_response(exc: APIError, headers: dict[str, str] | None = None) -> Any:
    """A starlette Response carrying `exc` in OpenAI's error format."""
    from starlette.responses import Response

    merged = {**exc.headers, **(headers or {})}
    return Response(exc.to_bytes(), status_code=exc.status, headers=merged, media_type="application/json")


def install_error_handlers(app: Any, extra_headers: Any = None, logger: Any = None) -> None:
    """Make FastAPI's own 404/405/422 and any unexpected exception answer in OpenAI format.

    `extra_headers(request) -> dict` adds headers such as x-request-id. Validation errors from
    FastAPI parameters become 400 (OpenAI's status for a bad request) naming the field in `param`.
    An unexpected exception is logged with its traceback and answered 500 without any detail.
    """
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    def headers_for(request: Any) -> dict[str, str]:
        return extra_headers(request) if extra_headers else {}

    async def on_api_error(request: Any, exc: APIError) -> Any:
        return error_response(exc, headers_for(request))

    async def on_http_error(request: Any, exc: HTTPException) -> Any:
        template = _FRAMEWORK_MESSAGES.get(exc.status_code)
        if template:
            message = template.format(method=request.method, path=request.url.path)
        else:
            message = str(exc.detail) if isinstance(exc.detail, str) else "Request failed."
        api = APIError(exc.status_code, message, headers=dict(exc.headers or {}))
        return error_response(api, headers_for(request))

    async def on_validation_error(request: Any, exc: RequestValidationError) -> Any:
        errors = exc.errors()
        first = errors[0] if errors else {}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "header")]
        param = ".".join(loc) or None
        msg = first.get("msg", "invalid")
        message = f"Invalid value for '{param}': {msg}." if param else "Invalid request."
        return error_response(APIError(400, message, param=param, code="invalid_value"), headers_for(request))

    async def on_unexpected(request: Any, exc: Exception) -> Any:
        if logger is not None:
            logger.error("unhandled error", exc_info=exc, extra={"fields": {"path": request.url.path}})
        api = APIError(500, "The server had an error while processing your request.", code="internal_error")
        return error_response(api, headers_for(request))

    app.add_exception_handler(APIError, on_api_error)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(Exception, on_unexpected)
