"""What the local cloud stand-ins share: a small ASGI server on 127.0.0.1 that can be told to misbehave.

A fake runs in a thread of the test process (`with FakeAzureOpenAI() as fake:`) or as its own
process (`python -m tests.fakes.azure_openai --port N`). Tests steer it directly (`fake.fail(500,
times=2)`, `fake.slow(1.5)`, `fake.reset()`); another process steers it over HTTP:

    POST /_fake/behaviour  {"fail_status": 503, "fail_times": 2, "fail_fraction": 0.5, "delay": 1.0,
                            "delay_times": 1, "chunk_delay": 0.05, "fail_mid_stream": true}
    POST /_fake/reset      back to healthy, request log cleared
    GET  /_fake/requests   [{"target": ..., "stream": ..., "status": ...}, ...]

Behaviour, applied to each request in this order: answer `fail_status` to the next `fail_times`
requests (every request while `fail_times` is null); else fail a `fail_fraction` of them (seeded,
so runs repeat); wait `delay` seconds before answering the next `delay_times` requests (all while
it is null): a timeout, seen from a client with a shorter one; in a stream, wait `chunk_delay`
between chunks and, with `fail_mid_stream`, break off with an error after the first content chunk
(with `fail_before_content`, after the role-only first event); `stall` seconds of silence after the
first content chunk; `drop_terminator`: end without [DONE] / messageStop. A failure's body names
`fail_code`; a 429/503 says `retry_after_ms` in Retry-After and Azure's retry-after-ms headers.

`router_process` runs the real router (`python -m services.router`) against these fakes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import math
import random
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import orjson

from qlensctl.local import free_port

Scope = dict[str, Any]


@dataclass
class Behaviour:
    fail_status: int | None = None
    fail_times: int | None = None
    fail_fraction: float = 0.0
    delay: float = 0.0
    delay_times: int | None = None
    chunk_delay: float = 0.0
    fail_mid_stream: bool = False
    fail_code: str | None = None  # the error code a failure's body names (e.g. context_length_exceeded)
    retry_after_ms: int | None = None  # a 429/503 asks to wait this long (Retry-After and retry-after-ms)
    fail_before_content: bool = False  # a stream breaks off after its role-only first event
    drop_terminator: bool = False  # a stream ends without its terminator ([DONE], messageStop)
    stall: float = 0.0  # a stream goes quiet this long after its first content chunk


@dataclass
class Seen:
    """One request as the fake saw it (no bodies kept: the log stays small under load)."""

    target: str
    stream: bool
    status: int
    at: float = field(default_factory=time.monotonic)


class Invalid(Exception):
    """A request the service refuses with 400 in OpenAI's format."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message, self.param, self.code = message, param, code

    def body(self) -> bytes:
        return orjson.dumps({"error": {"message": self.message, "type": "invalid_request_error",
                                       "param": self.param, "code": self.code}})


def count_tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))


def last_user_text(messages: Any) -> str:
    for m in reversed(messages if isinstance(messages, list) else []):
        if isinstance(m, dict) and m.get("role") == "user":
            content = m.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):  # OpenAI parts or Converse blocks
                return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def prompt_text(messages: Any) -> str:
    out = []
    for m in messages if isinstance(messages, list) else []:
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, str):
            out.append(content)
        elif isinstance(content, list):
            out.extend(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return " ".join(out)


def words(text: str) -> list[str]:
    """Stream pieces that join back to `text`."""
    parts = text.split(" ")
    return [p + " " for p in parts[:-1]] + [parts[-1]]


async def read_body(receive: Any) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def send_bytes(
    send: Any,
    status: int,
    body: bytes,
    content_type: str = "application/json",
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type.encode()),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def make_tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a 127.0.0.1 server certificate signed by it: (ca.pem, server.pem, server.key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "QLens test Key Vault CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_file, cert_file, key_file = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key_file.chmod(0o600)
    return ca_file, cert_file, key_file


class FakeServer:
    """Base: the server thread, the behaviour knobs, the admin endpoints and the request log."""

    name = "fake"

    def __init__(self, port: int | None = None, seed: int = 0) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.behaviour = Behaviour()
        self.seen: deque[Seen] = deque(maxlen=100_000)  # bounded: the benchmark reuses fakes
        self.streams_finished = 0  # streams sent to their last byte (shows chunks are relayed early)
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.tls: tuple[Path, Path] | None = None  # (certificate, key): served over https

    def use_tls(self, directory: Path) -> Path:
        """Serve https (call before `start`) with a certificate for 127.0.0.1 from a new CA; the
        CA's file, for the client to trust."""
        ca, cert, key = make_tls_files(directory)
        self.tls = (cert, key)
        return ca

    # --- steering ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    def fail(self, status: int = 500, times: int | None = None, fraction: float | None = None) -> None:
        """Answer `status` to the next `times` requests (all, if None), or to a `fraction` of them."""
        with self._lock:
            if fraction is not None:
                self.behaviour.fail_status, self.behaviour.fail_times = status, None
                self.behaviour.fail_fraction = fraction
            else:
                self.behaviour.fail_status, self.behaviour.fail_times = status, times
                self.behaviour.fail_fraction = 0.0

    def slow(self, delay: float = 0.0, chunk_delay: float = 0.0, times: int | None = None) -> None:
        """Wait `delay` before answering the next `times` requests (all, if None)."""
        with self._lock:
            self.behaviour.delay, self.behaviour.chunk_delay = delay, chunk_delay
            self.behaviour.delay_times = times

    def break_streams(self, on: bool = True) -> None:
        with self._lock:
            self.behaviour.fail_mid_stream = on

    def reset(self) -> None:
        with self._lock:
            self.behaviour = Behaviour()
            self.seen.clear()
            self.streams_finished = 0

    def calls(self, target: str | None = None) -> int:
        with self._lock:
            return sum(1 for s in self.seen if target is None or s.target == target)

    def _failure(self) -> int | None:
        """The status this request must fail with, if any (consumes `fail_times`)."""
        with self._lock:
            b = self.behaviour
            if b.fail_status is None:
                return None
            if b.fail_fraction > 0:
                return b.fail_status if self._rng.random() < b.fail_fraction else None
            if b.fail_times is None:
                return b.fail_status
            if b.fail_times > 0:
                b.fail_times -= 1
                return b.fail_status
            return None

    def _record(self, target: str, stream: bool, status: int) -> None:
        with self._lock:
            self.seen.append(Seen(target, stream, status))

    # --- ASGI ----------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path.startswith("/_fake/"):
            await self._admin(scope, receive, send)
            return
        try:
            await self.handle(scope, receive, send)
        except asyncio.CancelledError:  # stopped mid-stream (server shutdown): nothing to report
            return

    async def handle(self, scope: Scope, receive: Any, send: Any) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    async def _admin(self, scope: Scope, receive: Any, send: Any) -> None:
        path, method = scope["path"], scope["method"]
        if path == "/_fake/behaviour" and method == "POST":
            data = orjson.loads(await read_body(receive) or b"{}")
            known = {f.name for f in fields(Behaviour)}
            with self._lock:
                self.behaviour = Behaviour(**{k: v for k, v in data.items() if k in known})
            await send_bytes(send, 200, orjson.dumps(asdict(self.behaviour)))
        elif path == "/_fake/reset" and method == "POST":
            self.reset()
            await send_bytes(send, 200, b"{}")
        elif path == "/_fake/requests":
            with self._lock:
                seen = [asdict(s) for s in self.seen]
            await send_bytes(send, 200, orjson.dumps(seen))
        else:
            await send_bytes(send, 404, b'{"error": "unknown fake admin route"}')

    async def pause(self) -> None:
        with self._lock:
            b = self.behaviour
            delay = b.delay if b.delay_times is None or b.delay_times > 0 else 0.0
            if b.delay and b.delay_times:
                b.delay_times -= 1
        if delay:
            await asyncio.sleep(delay)

    # --- lifecycle -----------------------------------------------------------------------------

    def uvicorn_config(self, **extra: Any) -> Any:
        """How this fake is served, in a thread or as a process: quiet, on its own host and port."""
        import uvicorn

        if self.tls:
            extra.update(ssl_certfile=str(self.tls[0]), ssl_keyfile=str(self.tls[1]))
        return uvicorn.Config(self, host=self.host, port=self.port, log_config=None, log_level="warning",
                              access_log=False, lifespan="off", **extra)

    def start(self) -> FakeServer:
        import uvicorn

        self._server = uvicorn.Server(self.uvicorn_config(timeout_graceful_shutdown=0.3))
        self._thread = threading.Thread(target=self._server.run, name=f"{self.name}-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start on port {self.port}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(5)
        self._server = self._thread = None

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_forever(fake: FakeServer) -> None:
    """Process mode: run in the foreground until SIGTERM/SIGINT; prints `ready <port>` once listening."""
    import uvicorn

    server = uvicorn.Server(fake.uvicorn_config())

    async def run() -> None:
        task = asyncio.create_task(server.serve())
        while not server.started and not task.done():
            await asyncio.sleep(0.01)
        print(f"ready {fake.port}", flush=True)
        await task

    asyncio.run(run())


@contextmanager
def router_process(config: dict[str, Any], env: dict[str, str], workdir: Path) -> Iterator[Any]:
    """The router as a real process on a free port, configured by `config` (an environment as a
    dict) and `env` (credentials, endpoints). Yields its `qlensctl.local.ServiceProcess` (`.url`,
    `.log`); stops it afterwards, whatever happens."""
    import yaml

    from qlensctl.local import start_service, stop_pid, wait_ready

    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "router.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    isolated = {
        "AWS_CONFIG_FILE": str(workdir / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(workdir / "no-aws-credentials"),
        **env,
    }
    svc, proc = start_service("router", free_port(), path, workdir / "logs", isolated)
    try:
        wait_ready(svc.url, 30, alive=lambda: proc.poll() is None)
        yield svc
    finally:
        stop_pid(svc.pid)
