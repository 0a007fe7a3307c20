"""The smoke-check layer behind `qlensctl smoke-test`: is a running QLens actually serving?

`run_smoke(gateway_url, service_urls, api_key)` runs the checks in order and returns one
`CheckResult` each; it never prints, never exits and does not stop at the first failure, so an
operator sees everything that is wrong at once. A check that needs an earlier one (the completion
needs a model from /v1/models) is reported as `skip` when that one failed.

The checks: `/health` and `/health/ready` on every service we can reach (all three when
`service_urls` is given, as for a local stack; otherwise only the gateway, whose readiness body
must name its router and cache checks), `GET /v1/models`, one chat completion (the model asked
for: `--model`, else the environment's `smokeTest.model`; else `echo` when served, else the first
listed), the same request again answered from the cache
(`x-qlens-cache: hit`, same content), and `/metrics` exposing `qlens_` samples.

`targets(...)` turns the CLI's ENV / `--url` / state folder into those URLs: a local stack's three
services, or for a cluster environment its public URL (`environment_url`: the gateway's Ingress on
the environment's domain). `run_through_port_forward` (`--port-forward` of `smoke-test` and of
`maintenance end`) runs them through a port-forward to svc/qlens-gateway instead (qlensctl.portforward).
`require_key` refuses, before any request, an environment that requires API keys when none was
given. The API key goes only into the Authorization header: it never appears in a result.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from qlensctl import local
from qlensctl.errors import ConfigError

if TYPE_CHECKING:
    import httpx

    from qlensctl.environments import Environment
    from qlensctl.kube import Kube

Status = Literal["pass", "fail", "skip"]
Progress = Callable[[str], None]

PREFERRED_MODEL = "echo"
# the background cache write may land just after the first answer: ask again a few times
CACHE_HIT_ATTEMPTS = 4
CACHE_HIT_PAUSE = 0.25
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
GATEWAY_SERVICE = "qlens-gateway"  # the chart's Service in front of the gateway pods


@dataclass
class CheckResult:
    name: str
    status: Status
    ms: float
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "pass"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ms": round(self.ms, 1)}


@dataclass
class Targets:
    """Where to point the checks: the gateway, and each service when they are all reachable."""

    gateway_url: str
    service_urls: dict[str, str] | None
    source: str  # how they were found, for the table's title
    hint: str = "the detail column says why"  # what to do when checks fail
    needs_key: bool = False  # the environment requires an API key (auth.required)
    model: str | None = None  # the environment's smokeTest.model


class _Failed(Exception):
    """A check's failure, with the detail to show."""


def failed(results: list[CheckResult]) -> list[CheckResult]:
    return [r for r in results if r.status == "fail"]


def targets(env: str | None, url: str | None, state_dir: Path) -> Targets:
    """Resolve ENV / `--url` (default: local) to URLs.

    A detached stack recorded in `state_dir` for that environment wins (it knows its ports);
    otherwise `local` means the ports in environments/local.yaml on 127.0.0.1, and any other
    environment means its cluster, reached at `environment_url` through its Ingress.
    """
    if url:
        if env:
            raise ConfigError("an environment (ENV or --env) and --url are exclusive", "pass one of them")
        return Targets(gateway_url=check_url(url), service_urls=None, source=url)

    from qlensctl.environments import load_environment

    env = env or "local"
    stack = local.load_state(state_dir)
    if stack is not None and stack.env == env and "gateway" in stack.services:
        return Targets(stack.gateway_url, stack.urls(), f"{env} (detached stack in {state_dir})",
                       hint=f"the detail column says why; service logs are in {state_dir / 'logs'}")
    environment = load_environment(env)  # an unknown or invalid environment is a configuration error
    if env != "local":
        public = environment_url(environment)
        return Targets(public, None, f"{env} ({public}, the gateway's Ingress)",
                       hint=f"the detail column says why; if {environment.domain} is not reachable from "
                            f"here, try `qlensctl smoke-test {env} --port-forward`",
                       needs_key=environment.auth.required, model=environment.smoke_test.model)
    ports = environment.ports
    base = f"http://{local.DEFAULT_HOST}"
    urls = {name: f"{base}:{getattr(ports, name)}" for name in local.SERVICE_ORDER}
    return Targets(urls["gateway"], urls, f"{env} (default ports)",
                   hint=f"the detail column says why; is it running? `qlensctl up --env {env}`",
                   model=environment.smoke_test.model)


def environment_url(environment: Any) -> str:
    """Where a cluster environment serves clients: its domain, over https when TLS is on (the
    chart's Ingress terminates TLS for that host exactly when `tls.enabled`)."""
    scheme = "https" if environment.tls.enabled else "http"
    return f"{scheme}://{environment.domain}"


def require_key(required: bool, api_key: str | None, env: str) -> None:
    """An environment with auth.required answers every API call 401 without a key: say so now
    rather than after a table of failures."""
    if required and not api_key:
        raise ConfigError(
            f"{env} requires an API key (auth.required is on), and none was given",
            f"pass --api-key KEY or set QLENS_API_KEY (create one with `qlensctl keys create {env} "
            "--tenant T --user U`)",
        )


def check_url(url: str) -> str:
    """A `--url` as the checks use it (no trailing slash); anything but http(s) is a ConfigError."""
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018  (raises for a port out of range)
    except ValueError:
        parts = urlsplit("")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"--url {url!r} is not an http(s) URL", "e.g. --url http://127.0.0.1:8080")
    return url.rstrip("/")


def run_smoke(
    gateway_url: str,
    service_urls: Mapping[str, str] | None = None,
    api_key: str | None = None,
    timeout: float = 30.0,
    progress: Progress | None = None,
    model: str | None = None,
) -> list[CheckResult]:
    """Run every check against a running QLens; see the module docstring. `model`: the one to ask
    (it must be listed), else `echo` when served, else the first listed."""
    import httpx

    gateway_url = gateway_url.rstrip("/")
    urls = {n: u.rstrip("/") for n, u in (service_urls or {}).items()}
    urls["gateway"] = gateway_url
    results: list[CheckResult] = []
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def check(name: str, fn: Callable[[], str]) -> bool:
        if progress:
            progress(name)
        start = time.perf_counter()
        status: Status = "fail"
        try:
            detail, status = fn(), "pass"
        except _Failed as exc:
            detail = str(exc)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            detail = _describe_http_error(exc)
        ms = (time.perf_counter() - start) * 1000
        results.append(CheckResult(name, status, ms, _redact(detail, api_key)))
        return status == "pass"

    def skip(name: str, why: str) -> None:
        results.append(CheckResult(name, "skip", 0.0, why))

    host = urlsplit(gateway_url).hostname or ""
    with httpx.Client(timeout=timeout, trust_env=host not in LOOPBACK, follow_redirects=False) as client:
        reachable = [n for n in local.SERVICE_ORDER if n in urls]  # a service before its clients
        for name in reachable:
            must_name = ("router", "cache") if service_urls is None and name == "gateway" else ()
            check(f"{name} /health", partial(_health, client, urls[name]))
            check(f"{name} /health/ready", partial(_ready, client, urls[name], must_name))

        chosen: list[str] = []
        check("models", partial(_models, client, gateway_url, headers, chosen, model))
        request = {
            "model": chosen[0] if chosen else "",
            # a fresh prompt per run: the first answer must come from a provider, not an old entry
            "messages": [{"role": "user", "content": f"qlens smoke test {uuid.uuid4().hex}"}],
            "max_tokens": 16,
            "temperature": 0,
        }
        first: list[str] = []
        if not chosen:
            skip("chat completion", "needs a model from /v1/models")
            skip("cache hit", "needs a chat completion")
        elif not check("chat completion", partial(_completion, client, gateway_url, headers, request, first)):
            skip("cache hit", "needs a chat completion")
        else:
            check("cache hit", partial(_cache_hit, client, gateway_url, headers, request, first[0]))

        for name in reachable:
            check(f"{name} /metrics", partial(_metrics, client, urls[name]))
    return results


@dataclass
class ForwardedRun:
    """The checks run through a port-forward, and how they got there."""

    results: list[CheckResult]
    url: str  # the local end, http://127.0.0.1:PORT (closed by now)
    route: str  # "port-forward http://127.0.0.1:PORT -> pod/NAME:8080 in NAMESPACE", for titles
    stream_errors: list[str]  # what went wrong with the forward's streams: they explain failed checks


def run_through_port_forward(kube: Kube, environment: Environment, api_key: str | None,
                             timeout: float = 30.0, progress: Progress | None = None,
                             model: str | None = None) -> ForwardedRun:
    """Forward a free local port to svc/qlens-gateway in the environment's namespace (through the
    API server, like `kubectl port-forward`), run the gateway's checks through it, close it.
    `progress` hears what it is doing, in words ("port-forwarding ...", "checking models")."""
    from qlensctl import portforward

    def say(message: str) -> None:
        if progress:
            progress(message)

    namespace, port = environment.namespace, environment.ports.gateway
    say(f"port-forwarding svc/{GATEWAY_SERVICE} {port} in {namespace}")
    with portforward.forward_service(kube, namespace, GATEWAY_SERVICE, port) as forward:
        route = f"port-forward {forward.url} -> pod/{forward.pod}:{forward.remote_port} in {namespace}"
        results = run_smoke(forward.url, None, api_key, timeout=timeout,
                            progress=lambda name: say(f"checking {name}"),
                            model=model or environment.smoke_test.model)
    return ForwardedRun(results, forward.url, route, list(dict.fromkeys(forward.errors)))


# --- the checks: each returns a short detail or raises _Failed -----------------------------------


def _health(client: httpx.Client, base: str) -> str:
    r = client.get(f"{base}/health")
    _expect(r, 200)
    return "alive"


def _ready(client: httpx.Client, base: str, must_name: tuple[str, ...]) -> str:
    r = client.get(f"{base}/health/ready")
    body = _json(r)
    checks = body.get("checks") if isinstance(body, dict) else None
    checks = checks if isinstance(checks, dict) else {}
    if r.status_code != 200:
        bad = [f"{n} ({c.get('error', 'failed')})" for n, c in checks.items()
               if isinstance(c, dict) and not c.get("ok")]
        raise _Failed(f"HTTP {r.status_code}: not ready" + (f": {', '.join(bad)}" if bad else ""))
    degraded = [f"{n} ({c.get('error', 'failed')})" for n, c in checks.items()
                if isinstance(c, dict) and not c.get("ok")]
    if degraded:  # Ready without an optional dependency (the gateway bypassing its cache)
        raise _Failed(f"ready, but degraded: {', '.join(degraded)}")
    missing = [peer for peer in must_name if not any(peer in n for n in checks)]
    if missing:
        raise _Failed(f"ready, but its body names no {' or '.join(missing)} check, so they are unverified")
    return "ready: " + ", ".join(checks) if checks else "ready"


def _models(client: httpx.Client, gateway: str, headers: dict[str, str], chosen: list[str],
            wanted: str | None = None) -> str:
    r = client.get(f"{gateway}/v1/models", headers=headers)
    _expect(r, 200)
    body = _json(r)
    data = body.get("data") if isinstance(body, dict) else None
    items = data if isinstance(data, list) else []
    ids = [str(m["id"]) for m in items if isinstance(m, dict) and m.get("id")]
    if not ids:
        raise _Failed("the gateway serves no models")
    if wanted and wanted not in ids:
        raise _Failed(f"model {wanted} is not served (the gateway lists {', '.join(ids)}); pass --model")
    chosen.append(wanted or (PREFERRED_MODEL if PREFERRED_MODEL in ids else ids[0]))
    return f"{len(ids)} model(s); using {chosen[0]}"


def _completion(client: httpx.Client, gateway: str, headers: dict[str, str], request: dict[str, Any],
                content: list[str]) -> str:
    r = client.post(f"{gateway}/v1/chat/completions", headers=headers, json=request)
    _expect(r, 200)
    text = _message(r)
    content.append(text)
    provider = r.headers.get("x-qlens-provider", "?")
    return f"{request['model']} via {provider}, cache {r.headers.get('x-qlens-cache', '?')}"


def _cache_hit(client: httpx.Client, gateway: str, headers: dict[str, str], request: dict[str, Any],
               first: str) -> str:
    seen = []
    for attempt in range(CACHE_HIT_ATTEMPTS):
        if attempt:
            time.sleep(CACHE_HIT_PAUSE)
        r = client.post(f"{gateway}/v1/chat/completions", headers=headers, json=request)
        _expect(r, 200)
        state = r.headers.get("x-qlens-cache", "(no header)")
        seen.append(state)
        if state == "hit":
            if _message(r) != first:
                raise _Failed("x-qlens-cache: hit, but the answer differs from the first one")
            return f"hit on attempt {attempt + 1}"
        if state in ("bypass", "(no header)"):
            break  # the cache is off or unreachable: asking again will not help
    raise _Failed(f"the repeated request was not served from the cache (x-qlens-cache: {', '.join(seen)})")


def _metrics(client: httpx.Client, base: str) -> str:
    r = client.get(f"{base}/metrics")
    _expect(r, 200)
    names = {line.split("{", 1)[0].split(" ", 1)[0] for line in r.text.splitlines()
             if line.startswith("qlens_")}
    if not names:
        raise _Failed("no qlens_ samples in /metrics")
    # every service counts what it served (DESIGN.md); the completion above went through all three
    if "qlens_requests_total" not in names:
        raise _Failed(f"{len(names)} qlens_ series but no qlens_requests_total samples")
    return f"{len(names)} qlens_ series, requests counted"


# --- helpers --------------------------------------------------------------------------------------


def _expect(r: httpx.Response, status: int) -> None:
    if r.status_code == status:
        return
    message = ""
    body = _json(r)
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        message = str(error.get("message") or error.get("code") or "")
    elif isinstance(body, dict) and "detail" in body:
        message = str(body["detail"])
    if r.status_code == 401:
        message = (message or "unauthorized") + " (pass --api-key or set QLENS_API_KEY)"
    raise _Failed(f"HTTP {r.status_code}" + (f": {message[:200]}" if message else ""))


def _json(r: httpx.Response) -> Any:
    try:
        return r.json()
    except ValueError:
        if r.status_code == 200:
            raise _Failed(f"answered 200 but not JSON: {r.text[:80]!r}") from None
        return {}


def _message(r: httpx.Response) -> str:
    body = _json(r)
    try:
        content = body["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise _Failed("answer has no choices[0].message.content") from None
    if not isinstance(content, str):
        raise _Failed("choices[0].message.content is not text")
    return content


def _describe_http_error(exc: Exception) -> str:
    import httpx

    where = ""
    try:
        where = f" {exc.request.url.netloc.decode()}"  # type: ignore[attr-defined]
    except (AttributeError, RuntimeError):
        pass
    if isinstance(exc, httpx.ConnectError):
        reason = str(exc)
        if "refused" in reason.lower() or not reason:
            return f"cannot connect to{where}: connection refused (not running?)"
        return f"cannot connect to{where}: {reason[:160]}"  # DNS, TLS certificate, unreachable...
    if isinstance(exc, httpx.TimeoutException):
        return f"no answer from{where} in time ({type(exc).__name__})"
    return f"{type(exc).__name__} from{where}: {exc}"


def _redact(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text
