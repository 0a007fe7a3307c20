"""The benchmark harness keeps working: its fake provider speaks OpenAI and Azure OpenAI to the real
openai SDK, its load generators send what they claim, and a short direct-only run writes its files.

No timing assertions: speed is what the harness reports, not what the tests check.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator

import pytest

from bench import fake_provider, growth, profile, report, stats, workload, wrk
from bench.client import Connection


class ProviderThread:
    """The fake provider's server on its own event loop in a thread, port picked by the OS."""

    def __init__(self, settings: fake_provider.Settings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self.started = threading.Event()
        self.task: asyncio.Task | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def main() -> None:
            ready = self.loop.create_future()
            self.task = asyncio.ensure_future(fake_provider.serve(0, self.settings, ready=ready))
            self.port = await ready
            self.started.set()
            try:
                await self.task
            except asyncio.CancelledError:
                pass

        self.loop.run_until_complete(main())
        self.loop.close()

    def __enter__(self) -> ProviderThread:
        self.thread.start()
        assert self.started.wait(10), "fake provider did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.task.cancel)  # type: ignore[union-attr]
        self.thread.join(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stats(self) -> dict:
        conn = Connection("127.0.0.1", self.port)
        try:
            return json.loads(conn.request("GET", "/stats").body)
        finally:
            conn.close()


@pytest.fixture
def provider() -> Iterator[ProviderThread]:
    with ProviderThread(fake_provider.Settings(stream_gap_ms=2.0, track_bodies=True)) as p:
        yield p


def test_fake_provider_speaks_openai_and_azure_to_the_real_sdk(provider: ProviderThread) -> None:
    from openai import AzureOpenAI, OpenAI

    messages = [{"role": "user", "content": "hi"}]
    direct = OpenAI(base_url=f"{provider.url}/v1", api_key="x", max_retries=0)
    azure = AzureOpenAI(azure_endpoint=provider.url, api_key="x", api_version="2024-06-01", max_retries=0)
    try:
        a = direct.chat.completions.create(model="gpt-4", messages=messages)
        b = azure.chat.completions.create(model="gpt-4", messages=messages)
        chunks = list(azure.chat.completions.create(model="gpt-4", messages=messages, stream=True,
                                                    stream_options={"include_usage": True}))
        plain = list(direct.chat.completions.create(model="gpt-4", messages=messages, stream=True))
    finally:
        direct.close()
        azure.close()

    for c in (a, b):
        assert c.choices[0].message.content == fake_provider.COMPLETION_TEXT
        assert c.usage is not None and c.usage.total_tokens == 20
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == fake_provider.COMPLETION_TEXT
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8
    assert all(ch.usage is None for ch in plain)  # usage only when asked for
    s = provider.stats()
    assert (s["direct"], s["azure"], s["streams"]) == (2, 2, 2)
    assert s["by_deployment"] == {"gpt-4": 2}


def test_fake_provider_answers_unknown_paths_with_an_openai_error(provider: ProviderThread) -> None:
    conn = Connection("127.0.0.1", provider.port)
    try:
        r = conn.request("POST", "/v1/embeddings", b"{}", {"Content-Type": "application/json"})
    finally:
        conn.close()
    assert r.status == 404
    assert json.loads(r.body)["error"]["code"] == "not_found"


def test_client_reads_plain_and_chunked_answers_on_one_keepalive_connection(provider: ProviderThread) -> None:
    conn = Connection("127.0.0.1", provider.port)
    try:
        plain = conn.request("POST", "/v1/chat/completions", workload.body("a"), workload.headers(None))
        streamed = conn.request("POST", "/v1/chat/completions", workload.body("b", stream=True))
        again = conn.request("POST", "/v1/chat/completions", workload.body("c"))
        first_sock = conn.sock
    finally:
        conn.close()
    assert plain.status == again.status == streamed.status == 200
    assert json.loads(plain.body)["usage"]["total_tokens"] == 20
    assert plain.first_chunk_ns == plain.elapsed_ns
    events = [e for e in streamed.body.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]" and len(events) >= 4
    # the first chunk is recorded when it arrives, before the later chunks the provider spaces out
    assert 0 < streamed.first_chunk_ns < streamed.elapsed_ns
    assert first_sock is not None
    assert provider.stats()["direct"] == 3


@pytest.mark.parametrize("chunks", [3, 10, 1000])
def test_a_prompt_marker_sets_the_stream_length_and_a_padded_body_has_the_asked_size(
        provider: ProviderThread, chunks: int) -> None:
    body = workload.body(f"x bench-chunks={chunks} bench-gap-ms=0", stream=True, size=16 * 1024)
    assert len(body) == 16 * 1024 and json.loads(body)["stream"] is True
    conn = Connection("127.0.0.1", provider.port)
    try:
        r = conn.request("POST", "/v1/chat/completions", body)
        default = conn.request("POST", "/v1/chat/completions", workload.body("y", stream=True))
    finally:
        conn.close()
    events = [json.loads(e[len(b"data: "):]) for e in r.body.split(b"\n\n") if e and e != b"data: [DONE]"]
    content = [e for e in events if e["choices"] and e["choices"][0]["delta"].get("content")]
    assert len(content) == chunks
    assert events[-1]["choices"][0]["finish_reason"] == "stop"
    assert default.body.count(b"data: ") == len(fake_provider.stream_events(4, include_usage=False))


def test_open_streams_client_reads_each_stream_to_its_end(provider: ProviderThread) -> None:
    conn = Connection("127.0.0.1", provider.port)
    bodies = [workload.body(f"s{i} bench-chunks=5 bench-gap-ms=1", stream=True) for i in range(20)]
    raws = [conn.request_bytes("POST", "/v1/chat/completions", b) for b in bodies]
    bad = conn.request_bytes("POST", "/v1/embeddings", b"{}")

    async def run() -> list:
        t0 = asyncio.get_running_loop().time()
        return await asyncio.gather(*(growth._one_stream(provider.port, r, t0, 10) for r in [*raws, bad]))

    results = asyncio.run(run())
    assert all(first is not None and end is not None and first <= end for first, end in results[:-1])
    assert results[-1] == (None, None)  # a 404 is not a stream that finished
    assert provider.stats()["streams"] == 20


def test_wrk_sends_unique_bodies_or_one_repeated_body(provider: ProviderThread) -> None:
    assert wrk.wrk_binary(), "wrk is required (scripts/test installs it: apt-get install -y wrk)"
    unique = wrk.run(provider.url, "/v1/chat/completions", api_key="k", unique=True,
                     connections=4, duration_s=1, prefix="u")
    after_unique = provider.stats()
    same = wrk.run(provider.url, "/v1/chat/completions", api_key="k", unique=False,
                   connections=4, duration_s=1, prefix="s")
    after_same = provider.stats()
    assert unique.requests > 0 and unique.error_count == 0 and same.error_count == 0
    # every answered request had its own body; wrk may count a few in-flight ones differently
    assert after_unique["distinct_bodies"] >= unique.requests
    assert after_same["distinct_bodies"] == after_unique["distinct_bodies"] + 1
    assert unique.latency_ms["p50"] <= unique.latency_ms["p99"]


def test_wrk_script_quotes_the_workload_and_parses_its_result_line() -> None:
    script = wrk.lua_script("/v1/chat/completions", "qlk-secret", unique=True, stream=True)
    assert workload.BODY_PREFIX in script and workload.suffix(True) in script
    assert '["Authorization"] = [==[Bearer qlk-secret]==]' in script
    line = (wrk.MARKER + '{"requests":100,"duration_us":2000000,"bytes":1,"errors":{"connect":0,"read":0,'
            '"write":0,"status":2,"timeout":0},"latency_us":{"min":100,"mean":250.0,"max":900,"p50":200,'
            '"p90":400,"p99":800}}')
    r = wrk.parse_output("Running 2s test\n" + line + "\n")
    assert r.rps == 50 and r.error_count == 2 and r.latency_ms["p99"] == 0.8
    with pytest.raises(RuntimeError, match="no result line"):
        wrk.parse_output("unable to connect")


def test_workload_bodies_are_valid_json_and_differ_only_by_id() -> None:
    a, b = json.loads(workload.body("1")), json.loads(workload.body("2", stream=True))
    assert a["model"] == b["model"] == workload.MODEL
    assert a["messages"][0]["content"] != b["messages"][0]["content"]
    assert b["stream"] is True and "stream" not in a


def test_percentiles_and_summary() -> None:
    values = [float(v) for v in range(1, 101)]
    assert stats.percentile(values, 50) == pytest.approx(50.5)
    assert stats.percentile(values, 99) == pytest.approx(99.01)
    assert stats.percentile([7.0], 99) == 7.0
    s = stats.summary(list(reversed(values)))
    assert (s["n"], s["min"], s["max"]) == (100, 1.0, 100.0)


def test_targets_are_judged_from_the_results() -> None:
    results = {
        "sequential": {"direct": {"latency_ms": {"p50": 0.1, "p99": 0.3}},
                       "miss": {"latency_ms": {"p50": 0.9, "p99": 7.0}},
                       "hit": {"latency_ms": {"p50": 0.3}}},
        "wrk": {"miss": {"rps": 1800.0, "errors": {}, "cpu_ms_per_request": {"total": 3.0}}},
        "peers": {"portkey": {"wrk": {"rps": 1000.0}}},
        "features": {"off": {"added_p50_ms": 0.0}, "auth-10k": {"added_p50_ms": 0.15},
                     "tracing-100": {"added_p50_ms": 0.3}, "all-on": {"added_p50_ms": 0.9}},
        "scaling": {"ratio": 1.8},
        "growth": {"open_streams": {"rss_growth_mb_per_1000_streams": 60.0, "starved": 2}},
        "memory": {"gateway": {"rss_at_rest_mb": 80.0}, "router": {"rss_at_rest_mb": 130.0}},
        "cli": {"qlensctl --help": {"ok": True, "median_ms": 120.0},
                "qlensctl render staging": {"ok": False}},
    }
    verdict = {row["target"]: (row["measured"], row["met"]) for row in report.evaluate(results)}
    assert verdict["miss overhead p50, c=1"] == (pytest.approx(0.8), True)
    assert verdict["miss overhead p99, c=1"] == (pytest.approx(6.7), False)
    assert verdict["hit p50 end to end, c=1"] == (0.3, True)
    assert verdict["miss req/s, c=32, no errors"] == (1800.0, True)
    assert verdict["miss req/s over Portkey's, c=32"] == (1.8, False)
    assert verdict["p50 added by one optional feature (worst)"] == (0.3, False)
    assert verdict["scaling out: 2 replicas on 2 cores / 1 on 1"] == (1.8, True)
    assert verdict["RSS per 1,000 open streams"] == (60.0, True)
    assert verdict["open streams starved"] == (2, False)
    assert verdict["qlensctl --help"] == (120.0, True)
    assert verdict["CPU per miss request, all services"] == (3.0, False)
    assert verdict["RSS per service at rest (largest)"] == (130.0, False)
    assert verdict["stream TTFB over direct, p50"] == (None, None)
    assert verdict["stream chunks forwarded as they arrive"] == (None, None)
    assert verdict["qlensctl render staging"] == (None, None)
    results["wrk"]["miss"]["errors"] = {"status": 3}  # throughput with errors does not count
    met = {r["target"]: r["met"] for r in report.evaluate(results)}
    assert met["miss req/s, c=32, no errors"] is False


def test_the_miss_path_is_split_into_hops() -> None:
    seq = {"direct": 0.1, "miss": 3.0, "hop-router": 1.6, "hop-cache": 0.2}
    results = {"sequential": {k: {"latency_ms": {"p50": v}} for k, v in seq.items()}}
    parts = report.breakdown(results)
    assert parts is not None
    assert parts["router + Azure adapter (REST)"] == pytest.approx(1.5)
    assert parts["gateway (own work, its HTTP in and out)"] == pytest.approx(1.2)
    assert parts["total overhead (miss - direct)"] == pytest.approx(2.9)
    del results["sequential"]["hop-cache"]
    assert report.breakdown(results) is None  # no guessing without every hop


def test_a_stream_that_arrives_all_at_once_is_reported_as_buffered() -> None:
    def results(qlens_total: float) -> dict:
        return {"sequential": {
            "stream-direct": {"latency_ms": {"p50": 6.0}, "ttfb_ms": {"p50": 0.1}},
            "stream-miss": {"latency_ms": {"p50": qlens_total}, "ttfb_ms": {"p50": 9.0}},
        }}

    def verdict(r: dict) -> tuple:
        row = next(x for x in report.evaluate(r) if x["target"] == "stream chunks forwarded as they arrive")
        return row["measured"], row["met"]

    assert verdict(results(14.9)) == (1.0, True)  # spread over 5.9 ms like the provider's
    assert verdict(results(9.2))[1] is False  # everything came with the first chunk


def test_profile_summary_groups_samples_by_package_and_function() -> None:
    collapsed = "\n".join([
        'process 1:"python";run (uvicorn/main.py:10);handle (/x/site-packages/starlette/routing.py:5) 6',
        'process 1:"python";run (uvicorn/main.py:10);dumps (/x/site-packages/orjson/__init__.py:1) 3',
        'process 1:"python";run (uvicorn/main.py:10);chat (/w/services/gateway/app.py:40) 1',
    ])
    s = profile.summarise(collapsed)
    assert s["samples"] == 10
    assert s["self_by_package_pct"][0] == ["starlette", 60.0]
    assert ["services/gateway", 10.0] in s["self_by_package_pct"]
    assert s["inclusive_pct"][0][1] == 100.0  # `run` is on every stack


def test_direct_only_run_writes_json_and_plot(tmp_path) -> None:
    import signal

    from bench.run import main

    handler = signal.getsignal(signal.SIGTERM)
    rc = main(["--direct-only", "--quick", "--no-cli", "--no-wrk", "--no-pin", "--out", str(tmp_path)])
    assert rc == 0
    assert signal.getsignal(signal.SIGTERM) is handler  # the caller's process is left as it was
    data = json.loads((tmp_path / "latest.json").read_text())
    assert data["sequential"]["direct"]["errors"] == 0
    assert data["sequential"]["direct"]["latency_ms"]["n"] == 2 * 40
    assert data["sequential"]["stream-direct"]["ttfb_ms"]["n"] == 2 * 10
    assert "miss" not in data["sequential"]
    assert (tmp_path / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fake_provider_takes_real_otlp_exports(provider: ProviderThread) -> None:
    """The features scenario's tracing-100 variant exports its spans here (a collector that keeps nothing)."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{provider.url}/v1/traces")))
    with tracer_provider.get_tracer("bench-test").start_as_current_span("one"):
        pass
    tracer_provider.shutdown()
    assert provider.stats()["traces"] == 1


def test_feature_variants_are_valid_service_configs() -> None:
    from bench import features
    from bench.stack import _merge, bench_environment
    from services.common.config import ServiceConfig

    for name, v in features.variants(4318).items():
        env = _merge(bench_environment(v["auth"], None), v["overrides"])
        cfg = ServiceConfig.model_validate(env)
        assert cfg.cost_controls.enabled == (name in ("budgets-redis", "rate-limits", "all-on")), name
        assert cfg.observability.tracing.enabled == (name in ("tracing-100", "all-on")), name


def test_wrk_script_carries_extra_headers_for_a_peer_gateway() -> None:
    script = wrk.lua_script("/v1/chat/completions", None, True,
                            extra_headers={"x-portkey-provider": "openai"})
    assert '["x-portkey-provider"] = [==[openai]==]' in script
    assert '["Content-Type"] = [==[application/json]==]' in script
