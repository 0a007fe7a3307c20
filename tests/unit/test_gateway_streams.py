"""SSE relay, stream -> completion folding, replay of stored completions, and the cache entry format."""

from __future__ import annotations

import orjson

from services.common.config import ServiceConfig
from services.gateway.catalog import Catalog
from services.gateway.streams import (
    DONE,
    SSESplitter,
    StreamRelay,
    completion_from_chunks,
    decode_entry,
    encode_entry,
    replay_chunks,
)

USAGE = {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}
BASE = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1700000000, "model": "echo"}


def chunk(delta=None, finish=None, usage=None, choices=True):
    choice = {"index": 0, "delta": delta or {}, "finish_reason": finish}
    body = {**BASE, "choices": [choice] if choices else [], "usage": usage}
    return b"data: " + orjson.dumps(body)


STREAM = [chunk({"role": "assistant", "content": "Echo: "}), chunk({"content": "hello"}),
          chunk(finish="stop"), chunk(usage=USAGE, choices=False), b"data: [DONE]"]


def relay_all(relay: StreamRelay, events) -> list[bytes]:
    return [b for b in map(relay.event, events) if b is not None]


def test_splitter_yields_complete_events_across_arbitrary_chunk_boundaries():
    wire = b"".join(e + b"\n\n" for e in STREAM)
    for size in (1, 3, 7, 64, len(wire)):
        s = SSESplitter()
        events = []
        for i in range(0, len(wire), size):
            events += s.feed(wire[i:i + size])
        assert events == STREAM and s.rest == b""


def test_splitter_accepts_crlf_framing():
    assert SSESplitter().feed(b"data: 1\r\n\r\ndata: 2\r\n\r\n") == [b"data: 1", b"data: 2"]


def test_relay_drops_the_usage_chunk_the_client_did_not_ask_for_but_keeps_usage():
    relay = StreamRelay(forward_usage=False, collect=False)
    out = relay_all(relay, STREAM)
    assert len(out) == 4 and out[-1] == DONE
    assert not any(b'"prompt_tokens"' in b for b in out)
    assert relay.usage == USAGE and relay.done


def test_relay_forwards_the_usage_chunk_when_asked():
    relay = StreamRelay(forward_usage=True, collect=False)
    out = relay_all(relay, STREAM)
    assert len(out) == 5 and b'"prompt_tokens":9' in out[3]


def test_usage_on_a_content_chunk_is_stripped_not_the_content():
    relay = StreamRelay(forward_usage=False, collect=False)
    out = relay.event(chunk({"content": "last"}, finish="stop", usage=USAGE))
    data = orjson.loads(out.removeprefix(b"data: "))
    assert data["usage"] is None and data["choices"][0]["delta"]["content"] == "last"
    assert relay.usage == USAGE


def test_relay_folds_a_finished_stream_into_the_completion_it_amounts_to():
    relay = StreamRelay(forward_usage=False, collect=True)
    relay_all(relay, STREAM)
    completion = relay.completion()
    assert completion["object"] == "chat.completion"
    assert completion["choices"][0]["message"] == {"role": "assistant", "content": "Echo: hello"}
    assert completion["choices"][0]["finish_reason"] == "stop"
    assert completion["usage"] == USAGE and completion["id"] == "chatcmpl-1"


def test_unfinished_failed_or_tool_call_streams_are_not_cached():
    unfinished = StreamRelay(forward_usage=False, collect=True)
    relay_all(unfinished, STREAM[:2])
    assert unfinished.completion() is None

    failed = StreamRelay(forward_usage=False, collect=True)
    relay_all(failed, STREAM[:2] + [b'data: {"error": {"message": "boom"}}'])
    assert failed.failed and failed.completion() is None

    tools = [chunk({"tool_calls": [{"index": 0, "function": {"name": "f"}}]}), chunk(finish="tool_calls")]
    assert completion_from_chunks([orjson.loads(c[6:]) for c in tools], USAGE) is None


def test_replay_of_a_stored_completion_is_a_valid_stream_that_says_the_same():
    relay = StreamRelay(forward_usage=False, collect=True)
    relay_all(relay, STREAM)
    stored = relay.completion()
    events = replay_chunks(stored, include_usage=True)
    assert events[-1] == DONE
    chunks = [orjson.loads(e[len(b"data: "):-2]) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "Echo: hello"
    assert chunks[-1]["usage"] == USAGE and chunks[-1]["choices"] == []
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    without_usage = replay_chunks(stored, include_usage=False)
    assert not any(b'"usage"' in e for e in without_usage)


def test_cache_entries_round_trip_and_foreign_bytes_are_ignored():
    body = b'{"id":"x","choices":[]}'
    meta, out = decode_entry(encode_entry("echo/echo", "echo", body))
    assert out == body and meta["provider"] == "echo/echo" and meta["model"] == "echo"
    for foreign in (b"", b"just bytes", b'{"v": 99}\n{}', b"[1]\n{}", b'{"v": 1}\n'):
        assert decode_entry(foreign) is None


def test_reservation_pricing_covers_the_dearest_model_on_the_fallback_chain():
    cfg = ServiceConfig.model_validate({
        "name": "t",
        "models": {
            "a": {"deployments": [{"provider": "echo", "target": "a"}], "fallbacks": ["b"],
                  "pricing": {"input": 1, "output": 1}},
            "b": {"deployments": [{"provider": "echo", "target": "b"}], "fallbacks": ["c", "a"],
                  "pricing": {"input": 0.5, "output": 3}},
            "c": {"deployments": [{"provider": "echo", "target": "c"}], "pricing": {"input": 2, "output": 0}},
        },
    })
    cat = Catalog(cfg)
    assert "a" in cat and "zzz" not in cat
    top = cat.reservation_pricing("a")
    assert (top.input, top.output) == (2, 3)
    assert cat.pricing("a").output == 1  # settling uses the model that served
    assert cat.reservation_pricing("c").output == 0
