"""POST /v1/responses: the OpenAI Responses API, served on the chat path.

The request is translated into the chat completion it means (responses_schema.py), which then
takes the path every chat request takes (chat.Endpoint: auth, limits, cache, router, settle);
the answer, or each streamed chunk, is translated back: a `response` object with `message` and
`function_call` output items, or the Responses event stream (`response.created`,
`response.in_progress`, `response.output_item.added`, `response.content_part.added`,
`response.output_text.delta`, `response.function_call_arguments.delta`, the matching `.done`
events, `response.completed` with usage; `error` when the provider's stream fails).

`store` (OpenAI's default: true) keeps the conversation (the chat messages so far, this answer
included) in the cache service under the caller's tenant, for `cache.responsesTtlSeconds`; a
later request with `previous_response_id` continues it. An unknown id, an expired one, or
another tenant's is 404 in OpenAI's format. The conversation is written before the answer (or
the stream's `response.completed`) goes out, so a client that chains at once finds it.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from typing import Any
from urllib.parse import quote

import orjson

from services.common.config import CatalogModel, ServiceConfig
from services.common.errors import APIError
from services.common.logging import log_event
from services.gateway.auth import Caller
from services.gateway.budget import estimate_prompt_tokens
from services.gateway.chat import Plan, output_plan
from services.gateway.peers import Cache
from services.gateway.responses_schema import ResponsesRequest, chat_body, input_messages, validate_responses

ROUTE = "/v1/responses"
STORE_VERSION = 1
_ID = re.compile(r"^resp_[A-Za-z0-9]{1,100}$")
_DATA = b"data: "

log = logging.getLogger("qlens.gateway.responses")

# chat finish_reason -> (status, incomplete reason)
_STATUS = {"length": ("incomplete", "max_output_tokens"), "content_filter": ("incomplete", "content_filter")}


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(24)}"


def not_found(response_id: str) -> APIError:
    return APIError(404, f"Response with id '{response_id}' not found.", param="previous_response_id",
                    code="previous_response_not_found")


class ResponsesApi:
    route = ROUTE
    router_path = "/v1/chat/completions"
    kind = "chat"

    def __init__(self, config: ServiceConfig, cache: Cache) -> None:
        self.cache = cache
        self.store_on = config.cache.enabled  # the store lives in the cache service
        self.ttl = config.cache.responses_ttl_seconds

    def validate(self, data: Any) -> ResponsesRequest:
        return validate_responses(data)

    async def prepare(self, data: dict[str, Any], req: ResponsesRequest, caller: Caller) -> dict[str, Any]:
        history = await self._history(req.previous_response_id, caller) if req.previous_response_id else []
        history += input_messages(req.input)
        if not history:
            raise APIError(400, "Invalid value for 'input': it has no message to answer.", param="input",
                           code="invalid_value")
        req._id, req._history = new_id("resp"), history
        return chat_body(req, history)

    async def _history(self, response_id: str, caller: Caller) -> list[dict[str, Any]]:
        if not self.store_on:
            raise APIError(400, "previous_response_id needs the response store, which is off in this "
                                "environment (cache.enabled: false).", param="previous_response_id",
                           code="unsupported_parameter")
        if not _ID.fullmatch(response_id):
            raise not_found(response_id)
        got = await self.cache.get(quote(caller.tenant, safe=""), response_id)
        if got is None:
            raise APIError(503, "The response store is unreachable; retry shortly.", code="store_unavailable")
        if got is False:
            raise not_found(response_id)  # unknown, expired, or another tenant's: the same answer
        try:
            stored = orjson.loads(got)
            messages = stored["messages"] if stored.get("v") == STORE_VERSION else None
        except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError):
            messages = None
        if not isinstance(messages, list):
            raise not_found(response_id)
        return messages

    def plan(self, req: ResponsesRequest, data: dict[str, Any], model: CatalogModel) -> Plan:
        prompt = estimate_prompt_tokens(data["messages"], data.get("tools"))
        return output_plan(data, None, model, prompt)

    async def present(self, req: ResponsesRequest, body: bytes, caller: Caller) -> bytes:
        completion = orjson.loads(body)
        choice = (completion.get("choices") or [{}])[0]
        message = choice.get("message") or {}
        text = message.get("content")
        calls = [(new_id("fc"), c) for c in message.get("tool_calls") or ()]
        output = []
        if text or not calls:
            output.append(_message_item(new_id("msg"), text or "", "completed"))
        output += [_call_item(item_id, c["id"], c["function"]["name"], c["function"]["arguments"],
                              "completed") for item_id, c in calls]
        response = self.response(req, output, choice.get("finish_reason"), completion.get("usage"))
        response["store"] = await self._store(req, caller, response, message)
        return orjson.dumps(response)

    def view(self, req: ResponsesRequest, caller: Caller) -> ResponsesStream:
        return ResponsesStream(self, req, caller)

    # --- the response object and the store --------------------------------------------------------

    def response(self, req: ResponsesRequest, output: list[dict[str, Any]], finish: str | None,
                 usage: dict[str, Any] | None, status: str | None = None) -> dict[str, Any]:
        state, reason = _STATUS.get(finish or "", ("completed", None))
        out: dict[str, Any] = {
            "id": req._id, "object": "response", "created_at": int(time.time()),
            "status": status or state, "error": None,
            "incomplete_details": {"reason": reason} if reason and not status else None,
            "instructions": req.instructions, "max_output_tokens": req.max_output_tokens,
            "model": req.model, "output": output, "parallel_tool_calls": req.parallel_tool_calls is not False,
            "previous_response_id": req.previous_response_id, "store": req.stores and self.store_on,
            "temperature": req.temperature, "top_p": req.top_p,
            "text": req.text or {"format": {"type": "text"}},
            "tool_choice": req.tool_choice or "auto", "tools": req.tools or [],
            "metadata": req.metadata or {}, "user": req.user, "usage": None,
        }
        if usage:
            prompt = int(usage.get("prompt_tokens") or 0)
            completion = int(usage.get("completion_tokens") or 0)
            out["usage"] = {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": 0},
                            "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": 0},
                            "total_tokens": prompt + completion}
        return out

    async def _store(self, req: ResponsesRequest, caller: Caller, response: dict[str, Any],
                     message: dict[str, Any]) -> bool:
        """Keep the conversation with this answer; whether it was stored (what `store` then says)."""
        if not (req.stores and self.store_on):
            return False
        turn = {"role": "assistant", "content": message.get("content")}
        if message.get("tool_calls"):
            turn["tool_calls"] = message["tool_calls"]
        value = orjson.dumps({"v": STORE_VERSION, "messages": [*req._history, turn], "response": response})
        stored = await self.cache.put(quote(caller.tenant, safe=""), req._id, value, self.ttl)
        if not stored:
            log_event(log, "response not stored", logging.WARNING, response_id=req._id)
        return stored


def _message_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    content = [{"type": "output_text", "text": text, "annotations": []}] if status == "completed" else []
    return {"type": "message", "id": item_id, "status": status, "role": "assistant", "content": content}


def _call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {"type": "function_call", "id": item_id, "call_id": call_id, "name": name,
            "arguments": arguments, "status": status}


class ResponsesStream:
    """Chat-completion SSE events (as the gateway relays them) -> Responses API events."""

    def __init__(self, api: ResponsesApi, req: ResponsesRequest, caller: Caller) -> None:
        self.api, self.req, self.caller = api, req, caller
        self.seq = 0
        self.text: str | None = None  # the message item's text, once it started
        self.text_index = -1
        self.text_id = new_id("msg")
        self.calls: dict[int, dict[str, Any]] = {}  # chat tool-call index -> its item (and output index)
        self.outputs = 0
        self.finish: str | None = None
        self.usage: dict[str, Any] | None = None
        self.ended = False

    def _event(self, kind: str, **fields: Any) -> bytes:
        payload = orjson.dumps({"type": kind, "sequence_number": self.seq, **fields})
        self.seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + payload + b"\n\n"

    def head(self) -> bytes:
        response = self.api.response(self.req, [], None, None, status="in_progress")
        return self._event("response.created", response=response) + self._event("response.in_progress",
                                                                                 response=response)

    async def feed(self, event: bytes) -> bytes:
        if not event.startswith(_DATA) or self.ended:
            return b""  # keep-alives and anything after the end are not Responses events
        payload = event[len(_DATA):].strip()
        if payload == b"[DONE]":
            return await self._complete()
        try:
            chunk = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return b""
        if not isinstance(chunk, dict):
            return b""
        if isinstance(chunk.get("error"), dict):
            self.ended = True
            err = chunk["error"]
            message = str(err.get("message") or "the stream failed")
            return self._event("error", code=err.get("code"), message=message, param=err.get("param"))
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        out = []
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue  # a Responses answer has one choice
            delta = choice.get("delta") or {}
            if delta.get("content"):
                out.append(self._text(delta["content"]))
            for call in delta.get("tool_calls") or ():
                out.append(self._call(call))
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
        return b"".join(out)

    def _text(self, delta: str) -> bytes:
        out = b""
        if self.text is None:
            self.text, self.text_index = "", self.outputs
            self.outputs += 1
            out += self._event("response.output_item.added", output_index=self.text_index,
                               item=_message_item(self.text_id, "", "in_progress"))
            out += self._event("response.content_part.added", **self._at(),
                               part={"type": "output_text", "text": "", "annotations": []})
        self.text += delta
        return out + self._event("response.output_text.delta", **self._at(), delta=delta, logprobs=[])

    def _at(self) -> dict[str, Any]:
        """Where the message's text part is, as its events say it."""
        return {"item_id": self.text_id, "output_index": self.text_index, "content_index": 0}

    def _call(self, call: dict[str, Any]) -> bytes:
        out = b""
        index = call.get("index", 0)
        fn = call.get("function") or {}
        item = self.calls.get(index)
        if item is None:
            item = self.calls[index] = {"output_index": self.outputs, "id": new_id("fc"),
                                        "call_id": call.get("id") or new_id("call"),
                                        "name": fn.get("name") or "", "arguments": ""}
            self.outputs += 1
            out += self._event("response.output_item.added", output_index=item["output_index"],
                               item=_call_item(item["id"], item["call_id"], item["name"], "", "in_progress"))
        if fn.get("arguments"):
            item["arguments"] += fn["arguments"]
            out += self._event("response.function_call_arguments.delta", item_id=item["id"],
                               output_index=item["output_index"], delta=fn["arguments"])
        return out

    async def _complete(self) -> bytes:
        """Close every open item; store; `response.completed` (or `.incomplete`) with the usage."""
        self.ended = True
        out = b""
        items: list[tuple[int, dict[str, Any]]] = []
        if self.text is not None:
            part = {"type": "output_text", "text": self.text, "annotations": []}
            out += self._event("response.output_text.done", **self._at(), text=self.text, logprobs=[])
            out += self._event("response.content_part.done", **self._at(), part=part)
            item = _message_item(self.text_id, self.text, "completed")
            out += self._event("response.output_item.done", output_index=self.text_index, item=item)
            items.append((self.text_index, item))
        for call in self.calls.values():
            out += self._event("response.function_call_arguments.done", item_id=call["id"],
                               output_index=call["output_index"], arguments=call["arguments"])
            item = _call_item(call["id"], call["call_id"], call["name"], call["arguments"], "completed")
            out += self._event("response.output_item.done", output_index=call["output_index"], item=item)
            items.append((call["output_index"], item))
        output = [item for _, item in sorted(items, key=lambda pair: pair[0])]
        response = self.api.response(self.req, output, self.finish, self.usage)
        message: dict[str, Any] = {"content": self.text}
        if self.calls:
            message["tool_calls"] = [{"id": c["call_id"], "type": "function",
                                      "function": {"name": c["name"], "arguments": c["arguments"]}}
                                     for c in self.calls.values()]
        response["store"] = await self.api._store(self.req, self.caller, response, message)
        kind = "response.incomplete" if response["status"] == "incomplete" else "response.completed"
        return out + self._event(kind, response=response)
