"""`qlensctl smoke-test ENV --port-forward` against the real control plane (`target`: tests/k8s/harness.py).

To forward a port, the API server dials the kubelet of the pod's node (the port the Node
advertises in status.daemonEndpoints) and relays the client's websocket to the kubelet's
`/portForward/{namespace}/{pod}`. This control plane has no kubelet, so:

- by default nothing answers there, and the forward is refused by the real API server: the
  command must find the Ready gateway pod through the API and report that refusal in one line
  naming the pod (as it would for a cluster whose RBAC or network refuses port-forwarding);
- `KubeletPortForward` below plays that one kubelet endpoint (HTTPS, websocket channels, as the
  real kubelet speaks them) and carries the pod's port to a real local QLens stack, so a real
  forward through the real API server runs every smoke check end to end.

No Ready pod and no release are reported before any forward is asked for (production without a
key and the context guard, before the cluster is asked at all: tests/unit/test_release_logic.py).
"""

from __future__ import annotations

import base64
import hashlib
import json
import select
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from qlensctl.local import free_port, port_in_use
from tests.k8s.fake_kubelet import NODE
from tests.k8s.harness import Target, assert_one_clear_error, deploy_staging
from tests.support.stack import StackFactory

pytestmark = pytest.mark.cluster

GATEWAY = "qlens-gateway"
GATEWAY_PODS = "app.kubernetes.io/component=gateway"
ALL_PASS = {"gateway /health", "gateway /health/ready", "models", "chat completion", "cache hit",
            "gateway /metrics"}


def ready_gateway_pods(target: Target, ns: str) -> list[str]:
    pods = target.core.list_namespaced_pod(ns, label_selector=GATEWAY_PODS).items
    return [p.metadata.name for p in pods
            if any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])]


def advertise_kubelet_port(target: Target, port: int) -> None:
    """Where the API server dials the fake node's kubelet (0: its default, 10250)."""
    target.core.patch_node_status(NODE, {"status": {"daemonEndpoints": {"kubeletEndpoint": {"Port": port}}}})


def forward_threads() -> list[str]:
    names = ("port-forward ", "Kubernetes port forward")  # ours (qlensctl.portforward), the client's
    return [t.name for t in threading.enumerate() if t.name.startswith(names)]


def assert_forward_closed(local_url: str) -> None:
    """The command closed its forward: the local port is free and no forwarding thread is left
    (the client's proxy thread ends once its websocket is closed: allow it a moment)."""
    assert not port_in_use(int(local_url.rsplit(":", 1)[1]))
    deadline = time.monotonic() + 10
    while forward_threads() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert forward_threads() == []


# -- refused, or nothing to forward to -------------------------------------------------------------


@pytest.fixture
def no_kubelet(target: Target) -> Iterator[None]:
    """The fake node advertises a kubelet port where nothing listens."""
    advertise_kubelet_port(target, free_port())
    try:
        yield
    finally:
        advertise_kubelet_port(target, 0)


def test_port_forward_finds_the_ready_gateway_pod_and_reports_the_clusters_refusal(
        target: Target, no_kubelet: None) -> None:
    ns = target.staging_ns

    # nothing deployed yet: no Service to forward to
    nothing = target.qlensctl("smoke-test", "staging", "--port-forward")
    lines = assert_one_clear_error(nothing)
    assert lines[0] == f"error: no Service {GATEWAY} in namespace {ns}"

    deploy_staging(target, "v1")
    [pod] = ready_gateway_pods(target, ns)

    result = target.qlensctl("smoke-test", "staging", "--port-forward")
    lines = assert_one_clear_error(result)
    assert len(lines) == 2
    # the pod is the one the API server reports Ready; the reason is the API server's own words
    assert lines[0].startswith(f"error: the cluster refused to port-forward to pod {pod} in {ns}: HTTP 500")
    assert "error dialing backend" in lines[0] and "connection refused" in lines[0]
    assert "without --port-forward" in lines[-1] and "--url" in lines[-1]
    assert "Smoke test" not in result.out  # no checks ran through a forward that does not exist
    assert forward_threads() == []

    # `--env` is the same environment as the positional ENV
    alias = target.qlensctl("smoke-test", "--env", "staging", "--port-forward")
    assert alias.code == 1 and f"pod {pod}" in alias.err


def test_port_forward_with_no_ready_gateway_pod_says_so(target: Target) -> None:
    ns = target.staging_ns
    deploy_staging(target, "v1")
    target.apps.patch_namespaced_deployment_scale(GATEWAY, ns, {"spec": {"replicas": 0}})
    deadline = time.monotonic() + 30
    while target.core.list_namespaced_pod(ns, label_selector=GATEWAY_PODS).items:
        assert time.monotonic() < deadline, "the gateway pods did not go away"
        time.sleep(0.2)

    none = target.qlensctl("smoke-test", "staging", "--port-forward")
    lines = assert_one_clear_error(none)
    assert lines[0].startswith(f"error: no Ready pod behind Service {GATEWAY} in {ns}: no pod matches ")
    assert GATEWAY_PODS in lines[0]
    assert "qlensctl status" in lines[-1]

    # a pod that matches the selector but is not Ready (the fake kubelet never starts `:unready`)
    service = target.core.read_namespaced_service(GATEWAY, ns)
    target.core.create_namespaced_pod(ns, {
        "metadata": {"name": "gateway-not-ready", "labels": service.spec.selector},
        "spec": {"containers": [{"name": "gateway", "image": "example/gateway:unready",
                                 "ports": [{"name": "http", "containerPort": 8080}]}]},
    })
    pending = target.qlensctl("smoke-test", "staging", "--port-forward")
    lines = assert_one_clear_error(pending)
    assert lines[0] == (f"error: no Ready pod behind Service {GATEWAY} in {ns}: 1 pod(s), none Ready: "
                        "gateway-not-ready (Pending, 0/1 ready)")


# -- a real forward --------------------------------------------------------------------------------


class KubeletPortForward:
    """The kubelet's `/portForward/{namespace}/{pod}` endpoint, as much as the API server and the
    kubernetes client use: HTTPS, a websocket with subprotocol v4.channel.k8s.io, the port's data
    and error channels (0 and 1) each announced with the port number (2 bytes, little endian),
    then channel 0's bytes carried to 127.0.0.1:`upstream`, where the "pod" really listens. When
    the pod's port refuses, it says so on the error channel and closes, as the kubelet does.
    """

    GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455

    def __init__(self, cert: str, key: str, upstream: int) -> None:
        self.upstream = upstream
        self.paths: list[str] = []
        self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._tls.load_cert_chain(cert, key)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._listener = socket.socket()

    def start(self) -> KubeletPortForward:
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(8)
        self._listener.settimeout(0.2)
        self.port = int(self._listener.getsockname()[1])
        self._spawn(self._accept)
        return self

    def stop(self) -> None:
        self._stop.set()
        self._listener.close()
        for thread in self._threads:
            thread.join(5)

    def _spawn(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True, name="fake kubelet streams")
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                raw, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._spawn(self._serve, raw)

    def _serve(self, raw: socket.socket) -> None:
        raw.settimeout(10)
        try:
            conn = self._tls.wrap_socket(raw, server_side=True)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                head += chunk
            head, buffered = head.split(b"\r\n\r\n", 1)
            lines = head.decode().split("\r\n")
            path = lines[0].split()[1]
            self.paths.append(path)
            headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
            digest = hashlib.sha1((headers["sec-websocket-key"] + self.GUID).encode()).digest()
            conn.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                          f"Sec-WebSocket-Accept: {base64.b64encode(digest).decode()}\r\n"
                          "Sec-WebSocket-Protocol: v4.channel.k8s.io\r\n\r\n").encode())
            port = int(parse_qs(urlsplit(path).query)["port"][0])  # the client's `ports`, as relayed
            for channel in (0, 1):
                conn.sendall(_frame(bytes([channel]) + port.to_bytes(2, "little")))
        except (OSError, KeyError, IndexError, ValueError):
            raw.close()
            return
        try:
            upstream = socket.create_connection(("127.0.0.1", self.upstream), timeout=10)
        except OSError as exc:
            message = f"error forwarding port {port} to pod: dial tcp 127.0.0.1:{port}: {exc.strerror}"
            conn.sendall(_frame(b"\x01" + message.encode()))
            conn.close()
            return
        conn.settimeout(None)
        try:
            self._relay(conn, upstream, buffered)
        finally:
            upstream.close()
            conn.close()

    def _relay(self, conn: ssl.SSLSocket, upstream: socket.socket, buffered: bytes) -> None:
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([conn, upstream], [], [], 0.2)
                if conn in ready or conn.pending():
                    data = conn.recv(65536)
                    if not data:
                        return
                    buffered += data
                frames, buffered = _parse_frames(buffered)
                for opcode, payload in frames:
                    if opcode == 8:  # close
                        return
                    if opcode == 2 and payload[:1] == b"\x00":
                        upstream.sendall(payload[1:])
                if upstream in ready:
                    data = upstream.recv(65536)
                    if not data:
                        return
                    conn.sendall(_frame(b"\x00" + data))
            except OSError:
                return


def _frame(payload: bytes, opcode: int = 2) -> bytes:
    """One unmasked websocket frame (server to client)."""
    size = len(payload)
    if size < 126:
        head = bytes([0x80 | opcode, size])
    elif size < 1 << 16:
        head = bytes([0x80 | opcode, 126]) + size.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 127]) + size.to_bytes(8, "big")
    return head + payload


def _parse_frames(buf: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """The complete (masked, client to server) frames at the start of `buf`, and the rest."""
    frames = []
    while len(buf) >= 2:
        opcode, masked, size, at = buf[0] & 0x0F, buf[1] & 0x80, buf[1] & 0x7F, 2
        if size == 126:
            if len(buf) < 4:
                break
            size, at = int.from_bytes(buf[2:4], "big"), 4
        elif size == 127:
            if len(buf) < 10:
                break
            size, at = int.from_bytes(buf[2:10], "big"), 10
        mask = buf[at:at + 4] if masked else b""
        at += len(mask)
        if len(buf) < at + size:
            break
        payload = buf[at:at + size]
        if masked:
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        frames.append((opcode, payload))
        buf = buf[at + size:]
    return frames, buf


@pytest.fixture
def kubelet(target: Target, make_stack: StackFactory) -> Iterator[tuple[KubeletPortForward, Any]]:
    """A real QLens stack as the gateway pod's port, behind the fake node's kubelet port."""
    running = make_stack()
    upstream = int(running.gateway_url.rsplit(":", 1)[1])
    pki = target.cluster.plane.pki  # any certificate will do: the API server does not verify kubelets here
    server = KubeletPortForward(str(pki / "apiserver.crt"), str(pki / "apiserver.key"), upstream).start()
    advertise_kubelet_port(target, server.port)
    try:
        yield server, running
    finally:
        advertise_kubelet_port(target, 0)
        server.stop()


def test_a_real_port_forward_through_the_api_server_passes_every_check(
        target: Target, kubelet: tuple[KubeletPortForward, Any]) -> None:
    streams, running = kubelet
    ns = target.staging_ns
    deploy_staging(target, "v1")
    [pod] = ready_gateway_pods(target, ns)

    result = target.qlensctl("smoke-test", "staging", "--port-forward", "--model", "echo", "--json")
    assert result.code == 0, result.text
    report = json.loads(result.out)
    assert report["ok"] is True
    assert f"-> pod/{pod}:8080 in {ns}" in report["source"]
    assert {c["name"]: c["status"] for c in report["checks"]} == dict.fromkeys(ALL_PASS, "pass")
    # every byte went through the API server to that pod's kubelet endpoint: the first stream
    # checks the forward, the next carries the checks (one keep-alive connection)
    assert len(streams.paths) >= 2
    assert all(p.startswith(f"/portForward/{ns}/{pod}?") for p in streams.paths)
    assert_forward_closed(report["target"])

    # the pod's port refuses: the checks fail, and the kubelet's reason is shown
    running.stop_service("gateway")
    down = target.qlensctl("smoke-test", "staging", "--port-forward")
    assert down.code == 1, down.text
    assert "Traceback" not in down.text
    assert "error: smoke test failed: gateway /health" in down.err
    assert f"warning: port-forward: pod {pod} port 8080: error forwarding port 8080" in down.err
    assert "qlensctl status staging" in down.err
