"""The routing loop: deployment choice, circuit breakers, retries, deadline and fallback.

For a request for model M the router tries M's deployments, then each fallback model's, in order.
Within one model it makes up to `retries.maxAttempts` attempts: each picks a deployment with the
model's strategy among those whose circuit lets a call through, preferring one this request has
not tried yet; before a retry it waits an exponential backoff with jitter. Everything is bounded
by the request deadline: a call gets at most what is left of it, a backoff never outlasts it.

How it ends:
- an answer (possibly from a fallback model, which the caller reports in headers and logs);
- the provider rejected the request itself (400-class): passed back at once, no retry;
- the deadline passed: 504 `deadline_exceeded`;
- every option failed or was open: 429 `provider_rate_limited` if the last failure was a rate
  limit, 502 `provider_error` if it was a misconfigured deployment or a malformed answer,
  else 503 `no_healthy_deployment`.

A stream counts as answered once a chunk with content, a tool call or a finish arrived (a
role-only first chunk, as Bedrock sends, does not): only failures before it are retried. A 429 or
503 that says how long to wait (`Retry-After`, Azure's `retry-after-ms`) cools that deployment
down for that long; when every deployment is cooling down the client is told the real wait.
A stream with no event for `routing.streamIdleSeconds` ends with an error event.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import re
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from services.common import tracing
from services.common.config import Routing
from services.common.errors import APIError
from services.common.logging import log_event
from services.common.metrics import (
    FALLBACKS,
    PROVIDER_LATENCY,
    PROVIDER_REQUESTS,
    RETRIES,
    TOKENS,
    observe_llm_latency,
)
from services.router.catalog import Catalog, DeploymentState, Member, ModelRoute
from services.router.circuit import Permit
from services.router.providers.base import Completion, ProviderError, StreamItem, Usage, sse_event
from services.router.retry import FailureKind, backoff_seconds
from services.router.telemetry import child

logger = logging.getLogger("qlens.router")

DONE = b"data: [DONE]\n\n"


@dataclass
class Served:
    """Who answered a request, for headers, metrics and the log line."""

    requested: str
    model: str  # the public model that answered (differs from `requested` after a fallback)
    deployment: DeploymentState
    attempts: int
    upstream_seconds: float
    permit: Permit | None = None  # the circuit's permit of the call that answered
    reason: str | None = None  # a special fallback's cause: "context_window" or "content_policy"

    @property
    def fallback(self) -> bool:
        return self.model != self.requested


Call = Callable[[DeploymentState, dict[str, Any]], Awaitable[Any]]


class Router:
    def __init__(
        self,
        catalog: Catalog,
        routing: Routing,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self.catalog = catalog
        self.routing = routing
        self._clock = clock
        self._rng = rng or random.Random()
        self._sleep = sleep

    def deadline(self) -> float:
        return self._clock() + self.routing.deadline_seconds

    # --- public entry points -------------------------------------------------------------------

    async def complete(self, body: dict[str, Any], deadline: float) -> tuple[Completion, Served]:
        async def call(dep: DeploymentState, request: dict[str, Any]) -> Completion:
            assert dep.provider is not None
            if not tracing.ENABLED:
                return await dep.provider.complete(dep.target, request)
            with tracing.span(*_provider_span(dep, request)) as span:
                try:
                    completion = await dep.provider.complete(dep.target, request)
                except ProviderError as exc:
                    tracing.fail(span, exc.kind.value)
                    raise
                u = completion.usage
                tracing.genai_response(span, completion.body, u.prompt_tokens, u.completion_tokens)
                return completion

        started = self._clock()
        completion, served = await self._route(body, deadline, call, keeps_in_flight=False)
        _count_tokens(served.model, completion.usage)
        total = self._clock() - started
        observe_llm_latency(served.model, total, total, completion.usage.completion_tokens, stream=False)
        return completion, served

    async def embed(self, body: dict[str, Any], deadline: float) -> tuple[Completion, Served]:
        async def call(dep: DeploymentState, request: dict[str, Any]) -> Completion:
            embed = getattr(dep.provider, "embed", None)
            if embed is None:  # a chat-only provider listed under an embedding model
                raise ProviderError(FailureKind.DEPLOYMENT, f"{dep.provider_name} does not serve embeddings")
            completion: Completion = await embed(dep.target, request)
            return completion

        completion, served = await self._route(body, deadline, call, keeps_in_flight=False)
        _count_tokens(served.model, completion.usage)
        return completion, served

    async def stream(self, body: dict[str, Any], deadline: float) -> Relay:
        """Open a stream; returns once its first chunk arrived, with the rest to relay."""

        async def call(
            dep: DeploymentState, request: dict[str, Any]
        ) -> tuple[AsyncGenerator[StreamItem, None], list[StreamItem], Any]:
            assert dep.provider is not None
            # the provider span lasts until the stream ends (Relay.close), not only to its first chunk
            span = tracing.start(*_provider_span(dep, request)) if tracing.ENABLED else None
            events = dep.provider.stream(dep.target, request)
            try:
                with tracing.current(span):
                    first = await until_committed(events)
                if not first:
                    raise ProviderError(FailureKind.SERVER, f"{dep.label} ended the stream without an event")
            except BaseException as exc:
                tracing.finish(span, exc.kind.value if isinstance(exc, ProviderError) else type(exc).__name__)
                await events.aclose()
                raise
            return events, first, span

        started = self._clock()
        (events, first, span), served = await self._route(body, deadline, call, keeps_in_flight=True)
        relay = Relay(events, first, served, deadline, self.routing, self._clock)
        relay.started, relay.first_at, relay.provider_span = started, self._clock(), span
        return relay

    # --- the loop ------------------------------------------------------------------------------

    async def _route(
        self, body: dict[str, Any], deadline: float, call: Call, keeps_in_flight: bool
    ) -> tuple[Any, Served]:
        requested = body["model"]
        if requested not in self.catalog.models:
            raise APIError(
                404, f"The model `{requested}` does not exist", code="model_not_found", param="model"
            )
        retries = self.routing.retries
        last: ProviderError | None = None
        upstream = 0.0
        total_attempts = 0
        queue = self.catalog.chain(requested)
        reason: str | None = None  # why a special fallback was taken
        while queue:
            route = queue.pop(0)
            request = route_body(body, route, requested)
            tried: set[str] = set()
            excluded: set[str] = set()  # misconfigured for this request: never again
            attempt = 0
            while attempt < retries.max_attempts:
                cooled = False
                if not self._candidates(route, excluded):
                    # every deployment is cooling down as its provider asked: with no fallback
                    # left, wait for the first one if that fits in the deadline, else stop here
                    wait = None if queue else self._cooling(route, excluded)
                    if wait is None or self._clock() + wait + _WAKE_SLACK >= deadline:
                        break
                    # a sleep can end before the cooldown does (uvloop rounds timers to whole ms and
                    # times them from its cached loop clock): sleep again for what is left, a few times
                    until = self._clock() + wait
                    for _ in range(3):
                        await self._sleep(max(until - self._clock(), 0.0) + _WAKE_SLACK)
                        if self._candidates(route, excluded):
                            break
                    cooled = True
                    if not self._candidates(route, excluded):
                        break
                pause = 0.0
                if attempt > 0:
                    RETRIES.inc()
                if attempt > 0 and not cooled:  # after a cooldown the provider's wait was the pause
                    pause = backoff_seconds(
                        attempt, retries.backoff_base_ms, retries.backoff_max_ms, self._rng
                    )
                    pause = max(0.0, min(pause, deadline - self._clock()))
                    await self._sleep(pause)
                remaining = deadline - self._clock()
                if remaining <= 0:
                    raise _deadline_error(requested, self.routing.deadline_seconds)
                picked = self._pick(route, tried, excluded)
                if picked is None:
                    break
                member, permit = picked
                dep = member.deployment
                assert dep.provider is not None
                tried.add(dep.label)
                attempt += 1
                total_attempts += 1
                budget = min(dep.provider.timeouts.total, remaining)
                span = _attempt_span(dep, route.name, total_attempts, pause) if tracing.ENABLED else None
                dep.in_flight += 1
                started = self._clock()
                try:
                    async with asyncio.timeout(budget):
                        with tracing.current(span):
                            result = await call(dep, request)
                except (ProviderError, TimeoutError) as exc:
                    dep.in_flight -= 1
                    elapsed = self._clock() - started
                    upstream += elapsed
                    err = (
                        exc
                        if isinstance(exc, ProviderError)
                        else ProviderError(
                            FailureKind.TIMEOUT, f"{dep.label} did not answer within {budget:.3g}s"
                        )
                    )
                    _observe(dep, err.kind.value, elapsed)
                    tracing.finish(span, err.kind.value, **{"qlens.outcome": err.kind.value})
                    if err.kind is FailureKind.CLIENT:
                        dep.breaker.release(permit)
                        special = _special_fallbacks(route, err)
                        if not special:
                            raise _client_error(err) from None
                        # the prompt is too long for this model, or its provider's policy refused
                        # it: only the fallbacks configured for that, in their order
                        queue[:] = [self.catalog.models[f] for f in special if f in self.catalog.models]
                        last, reason = err, err.reason
                        break
                    if err.kind is FailureKind.TIMEOUT and budget < dep.provider.timeouts.total:
                        dep.breaker.release(permit)  # our deadline cut it short: says nothing of its health
                        if not isinstance(exc, ProviderError):  # the request's deadline ran out
                            raise _deadline_error(requested, self.routing.deadline_seconds) from None
                    else:
                        dep.breaker.record_failure(permit)
                    if err.kind is FailureKind.DEPLOYMENT:
                        excluded.add(dep.label)
                    if err.retry_after is not None:  # the provider said how long: cool down that long
                        wait = min(err.retry_after, MAX_COOLDOWN_SECONDS)
                        dep.cooldown_until = max(dep.cooldown_until, self._clock() + wait)
                    log_event(
                        logger,
                        "provider call failed",
                        logging.WARNING,
                        deployment=dep.label,
                        model=route.name,
                        outcome=err.kind.value,
                        attempt=attempt,
                        error=err.message,
                    )
                    last = err
                    continue
                except BaseException as exc:  # cancelled (client gone) or a bug: leave the books straight
                    dep.in_flight -= 1
                    dep.breaker.release(permit)
                    tracing.finish(span, type(exc).__name__, **{"qlens.outcome": "cancelled"})
                    raise
                elapsed = self._clock() - started
                upstream += elapsed
                if not keeps_in_flight:
                    dep.in_flight -= 1
                dep.breaker.record_success(permit)
                dep.observe_latency(elapsed)
                _observe(dep, "success", elapsed)
                tracing.finish(span, **{"qlens.outcome": "success"})
                served = Served(requested, route.name, dep, total_attempts, upstream, permit, reason)
                if served.fallback:
                    FALLBACKS.inc()
                    log_event(
                        logger,
                        "served by fallback model",
                        requested=requested,
                        model=route.name,
                        deployment=dep.label,
                        reason=last.message if last else "no usable deployment",
                    )
                return result, served
        if self._clock() >= deadline:
            raise _deadline_error(requested, self.routing.deadline_seconds)
        if last is not None and last.kind is FailureKind.CLIENT:  # no special fallback could answer
            raise _client_error(last)
        raise _exhausted_error(requested, last, self._cooldown_left(requested))

    def _candidates(self, route: ModelRoute, excluded: set[str]) -> list[Member]:
        now = self._clock()
        return [
            m
            for m in route.usable
            if m.deployment.label not in excluded
            and m.deployment.cooldown_until <= now
            and m.deployment.breaker.available()
        ]

    def _cooling(self, route: ModelRoute, excluded: set[str]) -> float | None:
        """Seconds until one of the route's deployments stops cooling down (None: none is)."""
        now = self._clock()
        waits = [
            m.deployment.cooldown_until - now
            for m in route.usable
            if m.deployment.label not in excluded and m.deployment.breaker.available()
        ]
        waits = [w for w in waits if w > 0]
        return min(waits) if waits else None

    def _cooldown_left(self, requested: str) -> float | None:
        """Seconds until the first deployment of the chain stops cooling down (None: none is)."""
        now = self._clock()
        waits = [m.deployment.cooldown_until - now for r in self.catalog.chain(requested) for m in r.usable]
        waits = [w for w in waits if w > 0]
        return min(waits) if waits else None

    def _pick(self, route: ModelRoute, tried: set[str], excluded: set[str]) -> tuple[Member, Permit] | None:
        """A member to call and its circuit's permit (among candidates, so the permit is granted)."""
        candidates = self._candidates(route, excluded)
        if not candidates:
            return None
        fresh = [m for m in candidates if m.deployment.label not in tried]
        member = route.strategy.choose(fresh or candidates)
        permit = member.deployment.breaker.acquire()
        return None if permit is None else (member, permit)


class Relay:
    """A stream after its first chunk: forwarded as it comes, ended with [DONE].

    A failure now cannot be retried (the client has bytes); it becomes an OpenAI error event.
    `close()` settles the books (calls in flight, the upstream stream, tokens, the caller's
    `on_close`) exactly once, whether the stream finished, failed, or the client went away,
    even before the first chunk was pulled, when the generator's own `finally` would never run.
    """

    def __init__(
        self,
        events: AsyncGenerator[StreamItem, None],
        first: list[StreamItem],
        served: Served,
        deadline: float,
        routing: Routing,
        clock: Callable[[], float],
    ) -> None:
        self.served = served
        self.outcome = "client_gone"
        self.on_close: Callable[[Relay], None] | None = None
        self._events = events
        self._first = first
        self._deadline = deadline
        self._routing = routing
        self._clock = clock
        self._usage: Usage | None = None
        self._closed = False
        self._timeout: asyncio.Timeout | None = None  # the stream's deadline, while pumping
        self._client_left = False
        # set by Router.stream: when the request began and its first chunk arrived (clock
        # seconds, for TTFT/TPOT), and the provider call's span, ended here with the usage
        self.started: float | None = None
        self.first_at: float | None = None
        self.provider_span: Any = None
        self._genai: tracing.GenAIStream | None = None  # made by `_watched`, when tracing is on

    async def pump(self, send: Callable[[bytes], Awaitable[Any]]) -> None:
        """Pass every event to `send` as it arrives, then [DONE] (or an error event); settle.

        One timeout for the whole stream, around the sends too: a timeout per chunk costs a timer
        per event, and a timeout around a generator's `yield` would fire in its consumer instead.
        """
        dep = self.served.deployment
        if self.provider_span is not None:  # tracing on: the span learns the model and finish reasons
            send = self._watched(send)
        loop = asyncio.get_running_loop()
        idle = self._routing.stream_idle_seconds
        end = loop.time() + (self._deadline - self._clock())  # the request deadline, in loop time
        try:
            async with asyncio.timeout_at(min(end, loop.time() + idle) if idle else end) as self._timeout:
                for item in self._first:
                    if isinstance(item, Usage):
                        self._usage = item
                    else:
                        await send(item)
                idle = self._routing.stream_idle_seconds
                async for item in self._events:
                    if isinstance(item, Usage):
                        self._usage = item
                    else:
                        await send(item)
                    if idle is not None:  # the next event is due within streamIdleSeconds
                        self._timeout.reschedule(min(end, loop.time() + idle))
            self._timeout = None
            self.outcome = "success"
            await send(DONE)
        except (ProviderError, TimeoutError) as exc:
            self._timeout = None
            if self._client_left and isinstance(exc, TimeoutError):
                return  # `abort` ended the wait: nobody to tell, the provider did nothing wrong
            if isinstance(exc, ProviderError):
                self.outcome, code, message = exc.kind.value, "provider_error", exc.message
            elif idle is not None and loop.time() < end:
                self.outcome, code = "idle_timeout", "stream_idle_timeout"
                message = f"the provider sent no event for {idle:g}s (routing.streamIdleSeconds)"
            else:
                self.outcome, code = "timeout", "deadline_exceeded"
                message = (
                    f"the request deadline ({self._routing.deadline_seconds:g}s) passed during the stream"
                )
            dep.breaker.record_failure(self.served.permit)
            child(PROVIDER_REQUESTS, dep.provider_name, dep.label, "stream_" + self.outcome).inc()
            log_event(
                logger,
                "stream failed after the first chunk",
                logging.WARNING,
                deployment=dep.label,
                model=self.served.model,
                outcome=self.outcome,
                error=message,
            )
            await send(sse_event(APIError(502, message, code=code).body()))
        finally:
            await self.close()

    def _watched(self, send: Callable[[bytes], Awaitable[Any]]) -> Callable[[bytes], Awaitable[Any]]:
        genai = self._genai = tracing.GenAIStream()

        async def watched(event: bytes) -> Any:
            genai.observe(event)
            return await send(event)

        return watched

    def abort(self) -> None:
        """The client went away (called from another task): stop waiting for the provider now.

        Expiring the stream's own timeout cancels the pump where it waits, and the timeout turns
        that into a TimeoutError inside `pump` itself, never a stray cancellation of the task.
        """
        self._client_left = True
        if self._timeout is not None and not self._timeout.expired():
            self._timeout.reschedule(-1.0)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        dep = self.served.deployment
        dep.in_flight -= 1
        try:
            await self._events.aclose()
        except Exception:  # the upstream stream was already broken: nothing left to release
            pass
        if self._usage is not None:
            _count_tokens(self.served.model, self._usage)
            if self.outcome == "success" and self.started is not None and self.first_at is not None:
                observe_llm_latency(self.served.model, self.first_at - self.started,
                                    self._clock() - self.started, self._usage.completion_tokens, stream=True)
        if self.provider_span is not None:
            usage = self._usage
            tokens = (usage.prompt_tokens, usage.completion_tokens) if usage else (None, None)
            genai = self._genai or tracing.GenAIStream()  # a stream that failed before pumping
            genai.finish(self.provider_span, *tokens)
            tracing.finish(self.provider_span, None if self.outcome == "success" else self.outcome)
        if self.outcome == "client_gone":
            log_event(
                logger, "client went away during the stream", deployment=dep.label, model=self.served.model
            )
        if self.on_close is not None:
            self.on_close(self)


# --- helpers ---------------------------------------------------------------------------------


_TOKEN_PARAMS = ("max_tokens", "max_completion_tokens")
MAX_COOLDOWN_SECONDS = 300.0  # a provider's Retry-After is honoured up to this
# a chunk that commits the stream: text, a tool call or a finish (a role-only chunk does not)
_COMMITS = re.compile(rb'"(?:content|refusal)":"[^"]|"tool_calls":\[|"finish_reason":"')


async def until_committed(events: AsyncGenerator[StreamItem, None]) -> list[StreamItem]:
    """The stream's first items, up to the first that commits the answer (all of them if it ended
    first). A failure before then is retried or falls back: the client has seen nothing that counts."""
    head: list[StreamItem] = []
    async for item in events:
        head.append(item)
        if isinstance(item, bytes) and _COMMITS.search(item):
            break
    return head


def _special_fallbacks(route: ModelRoute, err: ProviderError) -> list[str]:
    if err.reason == "context_window":
        return list(route.config.context_window_fallbacks)
    if err.reason == "content_policy":
        return list(route.config.content_policy_fallbacks)
    return []


def route_body(body: dict[str, Any], route: ModelRoute, requested: str) -> dict[str, Any]:
    """The request as `route`'s model takes it: its name, and the output cap under the parameter
    its family accepts (reasoning models reject `max_tokens`, older deployments `max_completion_tokens`)."""
    request = body if route.name == requested else {**body, "model": route.name}
    want = route.config.token_parameter
    other = _TOKEN_PARAMS[0] if want == _TOKEN_PARAMS[1] else _TOKEN_PARAMS[1]
    if other in request:
        request = {k: v for k, v in request.items() if k != other}
        if body[other] is not None:
            request.setdefault(want, body[other])
    return request


def _observe(dep: DeploymentState, outcome: str, seconds: float) -> None:
    dep.last_ok = outcome == "success"
    child(PROVIDER_REQUESTS, dep.provider_name, dep.label, outcome).inc()
    child(PROVIDER_LATENCY, dep.provider_name, dep.label).observe(seconds)


def _attempt_span(dep: DeploymentState, model: str, attempt: int, pause: float) -> Any:
    return tracing.start("router.attempt", {
        "qlens.deployment": dep.label, "qlens.provider": dep.provider_name, "qlens.model": model,
        "qlens.attempt": attempt, "qlens.circuit_state": dep.breaker.state.label,
        "qlens.retry_delay_ms": round(pause * 1000, 3),
    })


def _provider_span(dep: DeploymentState, request: dict[str, Any]) -> tuple[str, dict[str, Any], str]:
    """Name, attributes and kind of a provider call's span (GenAI conventions: "chat {model}")."""
    system = getattr(dep.provider, "gen_ai_system", dep.provider_name)
    return f"chat {dep.target}", tracing.genai_attributes(system, dep.target, request), "client"


def _count_tokens(model: str, usage: Usage) -> None:
    if usage.prompt_tokens:
        child(TOKENS, model, "prompt").inc(usage.prompt_tokens)
    if usage.completion_tokens:
        child(TOKENS, model, "completion").inc(usage.completion_tokens)


def _client_error(err: ProviderError) -> APIError:
    status = err.status if err.status and 400 <= err.status < 500 and err.status != 429 else 400
    return APIError(status, err.message, code="provider_rejected_request")


_WAKE_SLACK = 0.002  # seconds past a provider's cooldown before the deployment is asked again


def _deadline_error(model: str, seconds: float) -> APIError:
    return APIError(
        504,
        f"no answer for model `{model}` within the {seconds:g}s deadline",
        code="deadline_exceeded",
        type="timeout_error",
    )


def _exhausted_error(model: str, last: ProviderError | None, cooldown: float | None = None) -> APIError:
    if cooldown is not None and (last is None or last.kind in (FailureKind.RATE_LIMITED, FailureKind.SERVER)):
        return APIError(
            429 if last is None or last.kind is FailureKind.RATE_LIMITED else 503,
            f"every deployment for model `{model}` is cooling down as its provider asked; "
            f"retry after {math.ceil(cooldown)}s",
            code="provider_rate_limited",
            headers={"retry-after": str(math.ceil(cooldown))},
        )
    if last is None:
        return APIError(
            503,
            f"no healthy deployment for model `{model}` or its fallbacks (providers off or circuits open)",
            code="no_healthy_deployment",
        )
    if last.kind is FailureKind.RATE_LIMITED:
        return APIError(
            429,
            f"every deployment for model `{model}` is rate limited: {last.message}",
            code="provider_rate_limited",
            headers={"retry-after": "1"},
        )
    if last.kind is FailureKind.DEPLOYMENT:
        return APIError(
            502, f"no deployment for model `{model}` could answer: {last.message}", code="provider_error"
        )
    return APIError(
        503,
        f"no healthy deployment for model `{model}` or its fallbacks (last error: {last.message})",
        code="no_healthy_deployment",
    )
