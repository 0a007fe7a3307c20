"""A local Azure Key Vault (secrets API) and managed-identity token endpoint, over real HTTPS.

Azure Key Vault cannot be reached from the test machines, so this server speaks its wire protocol
on 127.0.0.1 and the real `azure-keyvault-secrets` + `azure-identity` SDKs talk to it unchanged:

- `GET/PUT /secrets/{name}[/{version}]?api-version=...` with Key Vault's JSON bodies and errors
  (404 `SecretNotFound`). A request without a bearer token gets Key Vault's 401 challenge,
  `WWW-Authenticate: Bearer authorization="https://login.microsoftonline.com/<tenant>",
  resource="https://<domain>"`, which the SDK's ChallengeAuthPolicy answers with a token.
  A real vault `my-vault.vault.azure.net` names the resource `vault.azure.net`; the SDK checks that
  the vault's host ends with `.<resource domain>`. Our vault is `127.0.0.1:<port>`, so its resource
  is `https://0.0.1:<port>`: the SDK's domain check runs for real and passes.
- `GET /msi/token?resource=...` with header `X-IDENTITY-HEADER`: the App Service managed-identity
  endpoint. Point `IDENTITY_ENDPOINT`/`IDENTITY_HEADER` at it (see `identity_env`) and
  azure-identity's DefaultAzureCredential gets its token here, as it would on Azure.
- TLS with a CA and a server certificate generated at start (the `cryptography` package); trust it
  with `REQUESTS_CA_BUNDLE=<ca_file>` (see `client_env`) or `connection_verify=<ca_file>`.

It can be told to fail (`fail_next(status, count)`) and records each request's method, path and
whether it carried a valid token (never a body), so tests can assert the challenge happened.
"""

from __future__ import annotations

import json
import secrets as pysecrets
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.fakes._common import make_tls_files

TENANT = "72f988bf-0000-4000-8000-00000000qlens"


@dataclass
class StoredSecret:
    value: str
    version: str
    created: int
    updated: int
    tags: dict[str, str] = field(default_factory=dict)
    content_type: str | None = None


@dataclass
class Seen:
    method: str
    path: str
    authorized: bool
    status: int


class FakeKeyVault:
    """Start with `FakeKeyVault(tmp_dir).start()`, stop with `.stop()` (or use as a context manager)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.token = "kv-token-" + pysecrets.token_hex(16)
        self.identity_header = "idh-" + pysecrets.token_hex(8)
        self.secrets: dict[str, list[StoredSecret]] = {}  # name -> versions, newest last
        self.requests: list[Seen] = []
        self.tokens_issued = 0
        self._failures: list[int] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.ca_file: Path | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> FakeKeyVault:
        self.ca_file, cert, key = make_tls_files(self.dir)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        vault = self

        class Handler(_Handler):
            fake = vault

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-keyvault", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> FakeKeyVault:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what tests use --------------------------------------------------------------------------

    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def resource(self) -> str:
        return f"https://0.0.1:{self.port}"

    def identity_env(self) -> dict[str, str]:
        """Environment variables that make DefaultAzureCredential use this server's token endpoint."""
        return {"IDENTITY_ENDPOINT": f"{self.url}/msi/token", "IDENTITY_HEADER": self.identity_header}

    def client_env(self) -> dict[str, str]:
        """Everything a process needs to reach this vault through the Azure SDKs."""
        assert self.ca_file is not None
        ca = str(self.ca_file)
        return {**self.identity_env(), "REQUESTS_CA_BUNDLE": ca, "SSL_CERT_FILE": ca}

    def value(self, name: str) -> str | None:
        with self._lock:
            versions = self.secrets.get(name)
            return versions[-1].value if versions else None

    def versions(self, name: str) -> int:
        with self._lock:
            return len(self.secrets.get(name, []))

    def fail_next(self, status: int, count: int = 1) -> None:
        """The next `count` vault requests (after authentication) answer `status`."""
        with self._lock:
            self._failures.extend([status] * count)

    def _take_failure(self) -> int | None:
        with self._lock:
            return self._failures.pop(0) if self._failures else None


class _Handler(BaseHTTPRequestHandler):
    fake: FakeKeyVault
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read .requests
        pass

    # -- plumbing --------------------------------------------------------------------------------

    def _send(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-ms-request-id", pysecrets.token_hex(8))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        self._send(status, {"error": {"code": code, "message": message}}, headers)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _record(self, authorized: bool, status: int) -> None:
        with self.fake._lock:
            self.fake.requests.append(Seen(self.command, urlsplit(self.path).path, authorized, status))

    # -- routes ----------------------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._route()

    def do_PUT(self) -> None:  # noqa: N802
        self._route()

    def do_DELETE(self) -> None:  # noqa: N802
        self._route()

    def _route(self) -> None:
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        body = self._body()
        segments = [s for s in parts.path.split("/") if s]
        if segments == ["msi", "token"] and self.command == "GET":
            return self._token(query)
        if not segments or segments[0] != "secrets" or len(segments) not in (2, 3):
            self._record(False, 404)
            return self._error(404, "NotFound", f"no route {parts.path}")
        auth = self.headers.get("Authorization", "")
        if auth != f"Bearer {self.fake.token}":
            # Key Vault's challenge: where to get a token, and for which resource
            self._record(False, 401)
            challenge = (
                f'Bearer authorization="https://login.microsoftonline.com/{TENANT}", '
                f'resource="{self.fake.resource}"'
            )
            return self._error(
                401,
                "Unauthorized",
                "AKV10000: Request is missing a Bearer or PoP token.",
                {"WWW-Authenticate": challenge},
            )
        if "api-version" not in query:
            self._record(True, 400)
            return self._error(
                400, "MissingApiVersionParameter", "The api-version query parameter is required."
            )
        failure = self.fake._take_failure()
        if failure is not None:
            self._record(True, failure)
            headers = {"Retry-After": "0"} if failure == 429 else None
            return self._error(
                failure, "Throttled" if failure == 429 else "InternalError", "injected failure", headers
            )
        name = segments[1]
        if self.command == "PUT" and len(segments) == 2:
            return self._put(name, body)
        if self.command == "GET":
            return self._get(name, segments[2] if len(segments) == 3 else None)
        self._record(True, 405)
        return self._error(405, "MethodNotAllowed", f"{self.command} is not supported here")

    def _token(self, query: dict[str, list[str]]) -> None:
        if self.headers.get("X-IDENTITY-HEADER") != self.fake.identity_header:
            self._record(False, 401)
            return self._send(401, {"error": "invalid_request", "error_description": "bad X-IDENTITY-HEADER"})
        resource = (query.get("resource") or [""])[0]
        with self.fake._lock:
            self.fake.tokens_issued += 1
        self._record(False, 200)
        self._send(
            200,
            {
                "access_token": self.fake.token,
                "expires_on": str(int(time.time()) + 3600),
                "resource": resource,
                "token_type": "Bearer",
                "client_id": "qlens-test",
            },
        )

    def _bundle(self, name: str, s: StoredSecret) -> dict[str, Any]:
        out: dict[str, Any] = {
            "value": s.value,
            "id": f"{self.fake.url}/secrets/{name}/{s.version}",
            "attributes": {
                "enabled": True,
                "created": s.created,
                "updated": s.updated,
                "recoveryLevel": "Recoverable+Purgeable",
                "recoverableDays": 90,
            },
            "tags": s.tags,
        }
        if s.content_type:
            out["contentType"] = s.content_type
        return out

    def _put(self, name: str, body: bytes) -> None:
        try:
            doc = json.loads(body or b"{}")
            value = doc["value"]
            if not isinstance(value, str):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            self._record(True, 400)
            return self._error(400, "BadParameter", "The request body must be JSON with a string 'value'.")
        if not all(c.isalnum() or c == "-" for c in name) or len(name) > 127:
            self._record(True, 400)
            return self._error(400, "BadParameter", "Secret names may contain only 0-9, a-z, A-Z and -.")
        now = int(time.time())
        with self.fake._lock:
            versions = self.fake.secrets.setdefault(name, [])
            created = versions[0].created if versions else now
            stored = StoredSecret(
                value=value,
                version=pysecrets.token_hex(16),
                created=created,
                updated=now,
                tags=dict(doc.get("tags") or {}),
                content_type=doc.get("contentType"),
            )
            versions.append(stored)
        self._record(True, 200)
        self._send(200, self._bundle(name, stored))

    def _get(self, name: str, version: str | None) -> None:
        with self.fake._lock:
            versions = list(self.fake.secrets.get(name, []))
        if version:
            chosen = next((v for v in versions if v.version == version), None)
        else:
            chosen = versions[-1] if versions else None
        if chosen is None:
            self._record(True, 404)
            return self._error(
                404, "SecretNotFound", f"A secret with (name/id) {name} was not found in this key vault."
            )
        self._record(True, 200)
        self._send(200, self._bundle(name, chosen))
