"""Reading a provider's wait (Retry-After and Azure's headers), the stream commit point, and the
relayed-text bound that settles an abandoned stream."""

from __future__ import annotations

import time
from email.utils import formatdate

import pytest

from services.gateway.streams import StreamRelay, text_bytes
from services.router.providers.base import ChunkWriter, Usage, retry_after_seconds
from services.router.routing import until_committed


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),  # the precise one wins
        ({"x-ms-retry-after-ms": "250"}, 0.25),
        ({"retry-after": "7"}, 7.0),
        ({"retry-after": "soon"}, None),
        ({}, None),
        ({"retry-after-ms": "-5"}, 0.0),
    ],
)
def test_retry_after_seconds(headers: dict[str, str], seconds: float | None):
    assert retry_after_seconds(headers) == seconds


def test_retry_after_as_an_http_date():
    wait = retry_after_seconds({"retry-after": formatdate(time.time() + 30, usegmt=True)})
    assert wait is not None and 28 <= wait <= 30


async def _items(*items):
    for item in items:
        yield item


async def test_the_commit_point_is_the_first_chunk_with_content_or_a_tool_call():
    out = ChunkWriter("m", include_usage=False)
    role, text, call = out.role(), out.content("hi"), out.tool_call(0, "{", id="c", name="f")
    assert await until_committed(_items(role, text, out.finish("stop"))) == [role, text]
    assert await until_committed(_items(role, call)) == [role, call]
    assert await until_committed(_items(role, Usage(1, 0))) == [role, Usage(1, 0)]  # ended uncommitted
    assert await until_committed(_items()) == []


def test_text_bytes_bounds_the_relayed_text():
    out = ChunkWriter("m", include_usage=False)
    assert text_bytes(out.role()[6:-2]) == 0
    assert text_bytes(out.content('say "hi"')[6:-2]) == len('say \\"hi\\"')
    assert text_bytes(out.tool_call(0, '{"a":1}', id="c", name="f")[6:-2]) == len('{\\"a\\":1}')
    relay = StreamRelay(forward_usage=False, collect=False)
    for event in (out.role(), out.content("four"), out.content("more")):
        relay.event(event[:-2])
    assert relay.relayed == 8
