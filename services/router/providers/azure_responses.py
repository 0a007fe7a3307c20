"""Chat completions <-> Azure's Responses API, for deployments configured with `api: responses`.

Every request reaches the router as a chat completion (the gateway translates /v1/responses into
one, so budgets, cache, fallbacks and the response store work the same whichever deployment
answers). A deployment served by Azure's Responses API (`POST /openai/v1/responses`, the
deployment named by the body's `model`) gets that chat request as the Responses request it means,
and its answer, or each streamed event, comes back as chat completion bytes.

Azure is sent `store: false` and the whole conversation: the conversation is QLens's to keep
(the gateway's response store, tenant-scoped), so no prompt is left stored in Azure and a chain
continues on whichever deployment serves the next turn.

A chat parameter the Responses API has no equivalent for (`stop`, `n` > 1, penalties, `seed`,
logprobs, ...) is refused with a 400 naming it, never dropped.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

from services.common.sse import SSESplitter
from services.router.providers.base import (
    ChunkWriter,
    ProviderError,
    Usage,
    completion_body,
    message_text,
    new_completion_id,
    tool_call,
)
from services.router.retry import FailureKind

CUT_OFF = "Azure OpenAI ended the Responses stream without response.completed"

# chat parameters carried over as they are, and those the caller's SDK sends at their no-op value
_SAME = ("temperature", "top_p", "user", "parallel_tool_calls", "metadata")
_NOOP: dict[str, tuple[Any, ...]] = {
    "n": (1,),
    "logprobs": (False,),
    "presence_penalty": (0, 0.0),
    "frequency_penalty": (0, 0.0),
}
_HANDLED = frozenset(
    {
        "model",
        "messages",
        "stream",
        "stream_options",
        "tools",
        "tool_choice",
        "store",
        "max_tokens",
        "max_completion_tokens",
        "response_format",
        "reasoning_effort",
        *_SAME,
        *_NOOP,
    }
)
_INCOMPLETE = {"max_output_tokens": "length", "content_filter": "content_filter"}


def refuse(param: str, why: str) -> ProviderError:
    return ProviderError(FailureKind.CLIENT, f"Unsupported parameter: '{param}': {why}.", status=400)


def responses_request(body: dict[str, Any], deployment: str) -> dict[str, Any]:
    """The Responses request a chat-completions `body` amounts to, for `deployment`."""
    for name, value in body.items():
        if name not in _HANDLED and value is not None:
            raise refuse(name, "this model is served by Azure's Responses API, which has no such parameter")
        if name in _NOOP and value is not None and value not in _NOOP[name]:
            raise refuse(name, f"only {_NOOP[name][0]!r} is possible on Azure's Responses API")
    out: dict[str, Any] = {"model": deployment, "input": _input(body.get("messages") or []), "store": False}
    for name in _SAME:
        if body.get(name) is not None:
            out[name] = body[name]
    cap = body.get("max_completion_tokens") or body.get("max_tokens")
    if cap is not None:
        out["max_output_tokens"] = cap
    if body.get("tools"):
        out["tools"] = [_tool(t) for t in body["tools"]]
    if body.get("tool_choice") is not None:
        out["tool_choice"] = _tool_choice(body["tool_choice"])
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_object":
        out["text"] = {"format": {"type": "json_object"}}
    elif isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        spec = fmt.get("json_schema") or {}
        keep = {k: spec[k] for k in ("name", "schema", "strict", "description") if spec.get(k) is not None}
        out["text"] = {"format": {"type": "json_schema", **keep}}
    if body.get("reasoning_effort") is not None:
        out["reasoning"] = {"effort": body["reasoning_effort"]}
    if body.get("stream"):
        out["stream"] = True
    return out


def _input(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for m in messages:
        role = m.get("role")
        if role == "tool":
            items.append(
                {
                    "type": "function_call_output",
                    "call_id": m.get("tool_call_id"),
                    "output": message_text(m.get("content")),
                }
            )
            continue
        content = m.get("content")
        if role == "user" and isinstance(content, list):
            items.append({"type": "message", "role": "user", "content": [_part(p) for p in content]})
        elif content is not None or role != "assistant":
            items.append({"type": "message", "role": role, "content": message_text(content)})
        for call in m.get("tool_calls") or ():
            fn = call.get("function") or {}
            items.append(
                {
                    "type": "function_call",
                    "call_id": call.get("id"),
                    "name": fn.get("name"),
                    "arguments": fn.get("arguments"),
                }
            )
    return items


def _part(part: dict[str, Any]) -> dict[str, Any]:
    if part.get("type") == "image_url":
        image = part.get("image_url") or {}
        out = {"type": "input_image", "image_url": image.get("url")}
        if image.get("detail"):
            out["detail"] = image["detail"]
        return out
    if part.get("type") == "text":
        return {"type": "input_text", "text": part.get("text")}
    raise ProviderError(
        FailureKind.CLIENT,
        f"content parts of type {part.get('type')!r} are not supported "
        "by Azure's Responses API through QLens",
        status=400,
    )


def _tool(tool: dict[str, Any]) -> dict[str, Any]:
    if tool.get("type") != "function":
        raise refuse("tools", f"tool type {tool.get('type')!r}: only function tools are translated")
    fn = tool.get("function") or {}
    return {
        "type": "function",
        **{k: fn[k] for k in ("name", "description", "parameters", "strict") if fn.get(k) is not None},
    }


def _tool_choice(choice: Any) -> Any:
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "function", "name": (choice.get("function") or {}).get("name")}
    return choice


# --- the answer ---------------------------------------------------------------------------------------


def usage_of(response: dict[str, Any]) -> Usage:
    usage = response.get("usage") or {}
    return Usage(int(usage.get("input_tokens") or 0), int(usage.get("output_tokens") or 0))


def _failed(response: dict[str, Any]) -> ProviderError:
    error = response.get("error") or {}
    return ProviderError(
        FailureKind.SERVER, f"Azure OpenAI response failed: {error.get('message') or 'no detail'}"
    )


def finish_reason(response: dict[str, Any], called: bool) -> str:
    if response.get("status") == "incomplete":
        reason = (response.get("incomplete_details") or {}).get("reason")
        return _INCOMPLETE.get(str(reason), "length")
    return "tool_calls" if called else "stop"


def completion(raw: bytes) -> tuple[bytes, Usage]:
    """A Responses `response` object -> the chat.completion bytes it amounts to, and its usage."""
    try:
        response = orjson.loads(raw)
        if response.get("status") == "failed":
            raise _failed(response)
        text, calls = "", []
        for item in response.get("output") or ():
            if item.get("type") == "message":
                text += "".join(
                    p.get("text", "") for p in item.get("content") or () if p.get("type") == "output_text"
                )
            elif item.get("type") == "function_call":
                calls.append(tool_call(item["call_id"], item["name"], item["arguments"]))
        usage = usage_of(response)
        body = completion_body(
            id=new_completion_id(),
            model=str(response.get("model") or ""),
            text=text,
            finish_reason=finish_reason(response, bool(calls)),
            usage=usage,
            created=response.get("created_at"),
            tool_calls=calls,
        )
    except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError):
        raise ProviderError(
            FailureKind.DEPLOYMENT, "Azure OpenAI answered with a malformed response"
        ) from None
    return body, usage


class ResponsesEvents:
    """Azure's Responses SSE bytes -> `chat.completion.chunk` events (`finished` once it completed)."""

    cut_off = CUT_OFF

    def __init__(self, wants_usage: bool) -> None:
        self._splitter = SSESplitter()
        self._out = ChunkWriter("", wants_usage)
        self._started = False
        self._calls: dict[str, int] = {}  # function_call item id -> its tool_calls index
        self.usage = Usage(0, 0)
        self.finished = False

    def feed(self, data: bytes) -> Iterator[bytes]:
        for event in self._splitter.feed(data):
            for line in event.split(b"\n"):
                if line.startswith(b"data:") and not self.finished:
                    try:
                        yield from self._event(orjson.loads(line[5:]))
                    except (KeyError, TypeError, AttributeError, orjson.JSONDecodeError):
                        raise ProviderError(
                            FailureKind.DEPLOYMENT, "Azure OpenAI sent a malformed Responses event"
                        ) from None

    def _event(self, event: dict[str, Any]) -> Iterator[bytes]:
        kind = event.get("type")
        if kind == "response.created":
            self._out.model = str((event.get("response") or {}).get("model") or "")
        elif kind == "response.output_text.delta" and event.get("delta"):
            yield from self._start()
            yield self._out.content(event["delta"])
        elif kind == "response.output_item.added" and event["item"].get("type") == "function_call":
            item = event["item"]
            yield from self._start()
            index = self._calls[item["id"]] = len(self._calls)
            yield self._out.tool_call(
                index, item.get("arguments") or "", id=item["call_id"], name=item["name"]
            )
        elif kind == "response.function_call_arguments.delta" and event.get("delta"):
            yield self._out.tool_call(self._calls[event["item_id"]], event["delta"])
        elif kind in ("response.completed", "response.incomplete"):
            response = event["response"]
            self.usage, self.finished = usage_of(response), True
            yield from self._start()
            yield self._out.finish(finish_reason(response, bool(self._calls)))
            if self._out.include_usage:
                yield self._out.usage(self.usage)
        elif kind == "response.failed":
            raise _failed(event.get("response") or {})
        elif kind == "error":
            raise ProviderError(
                FailureKind.SERVER, f"Azure OpenAI stream failed: {event.get('message') or 'no detail'}"
            )

    def _start(self) -> Iterator[bytes]:
        """The role-only first chunk a chat stream opens with, once."""
        if not self._started:
            self._started = True
            yield self._out.role()
