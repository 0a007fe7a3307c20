"""Cache keys: equal requests hash equal, anything that changes the answer changes the key."""

from __future__ import annotations

import pytest
from starlette.datastructures import Headers

from services.common.config import Cache
from services.gateway.cachekey import cache_key, cacheable, normalize

BASE = {
    "model": "gpt-4",
    "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
    "temperature": 0.2,
    "max_tokens": 50,
}


def test_key_is_sha256_hex_and_stable():
    k = cache_key("acme", BASE)
    assert len(k) == 64 and int(k, 16) >= 0
    assert cache_key("acme", dict(BASE)) == k


def test_key_ignores_ordering_of_keys_at_every_level():
    reordered = {
        "max_tokens": 50,
        "temperature": 0.2,
        "messages": [{"content": "be brief", "role": "system"}, {"content": "hi", "role": "user"}],
        "model": "gpt-4",
    }
    assert cache_key("acme", reordered) == cache_key("acme", BASE)


def test_key_ignores_stream_stream_options_user_and_nulls():
    variant = {**BASE, "stream": True, "stream_options": {"include_usage": True}, "user": "bob",
               "seed": None}
    assert cache_key("acme", variant) == cache_key("acme", BASE)


def test_integral_floats_equal_ints_but_bools_stay_bools():
    assert cache_key("acme", {**BASE, "temperature": 1}) == cache_key("acme", {**BASE, "temperature": 1.0})
    assert cache_key("acme", {**BASE, "logprobs": True}) != cache_key("acme", {**BASE, "logprobs": 1})


def test_tenant_is_part_of_the_key():
    assert cache_key("acme", BASE) != cache_key("globex", BASE)
    # length-prefixed parts: no way to shift bytes between tenant and model
    assert cache_key("ab", {**BASE, "model": "c"}) != cache_key("a", {**BASE, "model": "bc"})


@pytest.mark.parametrize(
    "change",
    [
        {"model": "gpt-35-turbo"},
        {"messages": [{"role": "user", "content": "hi!"}]},
        {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "Hi"}]},
        {"temperature": 0.3},
        {"max_tokens": 51},
        {"top_p": 0.5},
        {"seed": 7},
        {"stop": ["\n"]},
        {"presence_penalty": 0.1},
        {"frequency_penalty": 0.1},
        {"response_format": {"type": "json_object"}},
        {"logit_bias": {"50256": -100}},
        {"some_future_param": 1},
    ],
)
def test_answer_changing_parameters_change_the_key(change):
    assert cache_key("acme", {**BASE, **change}) != cache_key("acme", BASE)


def test_normalize_is_canonical_json():
    assert normalize({"b": 1, "a": {"d": 2.0, "c": None}}) == b'{"a":{"c":null,"d":2.0},"b":1}'


CFG = Cache()


def test_plain_request_is_cacheable():
    assert cacheable(BASE, {}, CFG)


@pytest.mark.parametrize(
    "value", ["no-cache", "no-store", "No-Store", "max-age=0, no-cache", "private,no-store"]
)
def test_client_opt_out(value):
    assert not cacheable(BASE, {"Cache-Control": value}, CFG)
    assert not cacheable(BASE, Headers({"cache-control": value}), CFG)


def test_other_cache_control_directives_do_not_opt_out():
    assert cacheable(BASE, {"cache-control": "max-age=60"}, CFG)


def test_disabled_cache_and_streaming_policy():
    assert not cacheable(BASE, {}, Cache(enabled=False))
    assert cacheable({**BASE, "stream": True}, {}, CFG)
    assert not cacheable({**BASE, "stream": True}, {}, Cache(cache_streaming=False))
    assert cacheable(BASE, {}, None)  # defaults apply


def test_multiple_choices_and_tools_are_not_cached():
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    assert not cacheable({**BASE, "n": 2}, {}, CFG)
    assert cacheable({**BASE, "n": 1}, {}, CFG)
    assert not cacheable({**BASE, "tools": tools}, {}, CFG)
    assert not cacheable({**BASE, "tools": tools, "tool_choice": "required"}, {}, CFG)
    assert cacheable({**BASE, "tools": tools, "tool_choice": "none"}, {}, CFG)
    assert not cacheable({**BASE, "functions": [{"name": "f"}]}, {}, CFG)


def test_huge_integral_floats_in_unknown_fields_still_hash():
    # found by the fuzzer: int(-2.1e51) is past 64 bits and the JSON writer refused it (a 500)
    a = cache_key("t", {"model": "m", "messages": [], "x": -2.1e51})
    b = cache_key("t", {"model": "m", "messages": [], "x": -2.2e51})
    assert a != b
