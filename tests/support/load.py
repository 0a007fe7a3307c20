"""A bounded, steady request loop against a running gateway, for zero-downtime proofs.

    with LoadLoop("http://10.0.0.2:30080", rate=60) as load:
        ...  # roll, delete a pod, fail a rollout
    report = load.report
    assert report.failed == 0, report.describe()

Worker threads share a pacing clock, so the loop sends `rate` chat completions per second (the
echo model) until stopped or `max_seconds`/`max_requests` is reached, whichever is first: a test
that forgets to stop it cannot load the machine forever. Every request opens its own connection,
so each one is balanced by the Service anew (a kept-alive connection would stay on one pod and
prove nothing about endpoints). A failure is any non-2xx status or transport error; the first few
are kept verbatim for the assertion message. The `x-qlens-*` header values are counted.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx

REQUEST = {"model": "echo", "messages": [{"role": "user", "content": "load loop"}]}


@dataclass
class LoadReport:
    sent: int = 0
    ok: int = 0
    failed: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)
    headers: Counter[str] = field(default_factory=Counter)  # "x-qlens-cache=miss" -> count

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0

    def describe(self) -> str:
        return (f"{self.sent} requests in {self.seconds:.1f} s ({self.rate:.0f}/s): {self.ok} ok, "
                f"{self.failed} failed; first errors: {self.errors[:5]}")


class LoadLoop:
    def __init__(self, base_url: str, rate: float = 60, workers: int = 32, max_seconds: float = 300,
                 max_requests: int = 30000, headers: dict[str, str] | None = None) -> None:
        self.url = base_url.rstrip("/") + "/v1/chat/completions"
        self.interval = 1.0 / rate
        self.workers = workers
        self.max_seconds = max_seconds
        self.max_requests = max_requests
        self.request_headers = {**(headers or {}), "connection": "close"}
        self.report = LoadReport()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._next = 0.0
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> LoadLoop:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._t0 = self._next = time.monotonic()
        self._threads = [threading.Thread(target=self._work, daemon=True) for _ in range(self.workers)]
        for t in self._threads:
            t.start()

    def stop(self) -> LoadReport:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)
        self.report.seconds = time.monotonic() - self._t0
        return self.report

    def _slot(self) -> bool:
        """Wait for this worker's next send time; False when the loop is over."""
        with self._lock:
            now = time.monotonic()
            if (self._stop.is_set() or self.report.sent >= self.max_requests
                    or now - self._t0 >= self.max_seconds):
                return False
            self._next = max(self._next + self.interval, now - 1.0)  # no burst after a stall
            at = self._next
            self.report.sent += 1
        time.sleep(max(0.0, at - time.monotonic()))
        return True

    def _work(self) -> None:
        with httpx.Client(timeout=10) as client:
            while self._slot():
                try:
                    r = client.post(self.url, json=REQUEST, headers=self.request_headers)
                    error = None if r.is_success else f"HTTP {r.status_code}: {r.text[:200]}"
                    seen = [f"{k}={v}" for k, v in r.headers.items() if k.startswith("x-qlens-")
                            and k != "x-qlens-overhead-ms"]
                except httpx.HTTPError as exc:
                    error, seen = f"{type(exc).__name__}: {exc}", []
                with self._lock:
                    self.report.headers.update(seen)
                    if error is None:
                        self.report.ok += 1
                    else:
                        self.report.failed += 1
                        if len(self.report.errors) < 20:
                            self.report.errors.append(error)
