"""Contracts with the private internals QLens relies on (issue 17), checked against the installed
versions: uvicorn's HttpToolsProtocol (services/common/http_limits.py subclasses it) and helm_python's
`_native.call_string` (qlensctl/helm/embedded.py renders through it). pyproject pins each below its next
release that could change them; when a bump breaks one, this file says which and where."""

from __future__ import annotations

import asyncio
import inspect


def test_uvicorn_httptools_protocol_has_what_bounded_protocol_uses() -> None:
    from uvicorn.config import Config
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    from uvicorn.server import ServerState

    from services.common.http_limits import BoundedHttpToolsProtocol

    # the hooks BoundedHttpToolsProtocol overrides, with the signatures it calls super() with
    for name, params in {"connection_made": ["self", "transport"], "on_headers_complete": ["self"],
                         "connection_lost": ["self", "exc"], "data_received": ["self", "data"]}.items():
        assert list(inspect.signature(getattr(HttpToolsProtocol, name)).parameters) == params, name
    for name in ("timeout_keep_alive_handler", "_unset_keepalive_if_required"):
        assert callable(getattr(HttpToolsProtocol, name)), name

    async def app(scope: dict, receive: object, send: object) -> None:  # never called
        raise AssertionError

    config = Config(app=app, http="httptools", log_config=None)
    config.load()
    async def make() -> BoundedHttpToolsProtocol:  # it takes the running loop
        return BoundedHttpToolsProtocol(config, ServerState(), app_state={})

    proto = asyncio.run(make())
    for attr in ("loop", "timeout_keep_alive", "server_state", "timeout_keep_alive_task", "cycle", "scope"):
        assert hasattr(proto, attr), attr
    # what the subclass reads from a request cycle (set per request by the parser callbacks)
    source = inspect.getsource(HttpToolsProtocol)
    for used in ("self.cycle = RequestResponseCycle(", "self.flow = FlowControl(", "keep_alive"):
        assert used in source, used
    cycle_source = inspect.getsource(inspect.getmodule(HttpToolsProtocol).RequestResponseCycle)  # type: ignore[union-attr]
    for attr in ("self.more_body", "self.response_complete", "self.keep_alive"):
        assert attr in cycle_source, attr


def test_helm_python_native_render_entry_point() -> None:
    from helm_python import Chart, _native

    params = inspect.signature(_native.call_string).parameters
    assert list(params) == ["func_name", "args"]  # call_string("helm_render", chart, values, opts)
    assert params["args"].kind is inspect.Parameter.VAR_POSITIONAL
    assert callable(Chart._raw)
