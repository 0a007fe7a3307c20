"""A local port forwarded to a Service in the cluster: `kubectl port-forward svc/NAME LOCAL:PORT`.

Like kubectl, `forward_service(kube, namespace, service, port)` resolves the Service to one Ready
pod behind its selector and the Service port to the container port it targets, then carries each
connection to 127.0.0.1:<local port> to that pod through the API server (the kubernetes client's
`portforward`, a websocket to `pods/portforward`). The client carries one stream per websocket, so
every accepted connection gets its own; a thread accepts and one thread per connection copies
bytes both ways. One stream is opened before `forward_service` returns, so a cluster that refuses
to forward is a `ClusterError` naming the pod here, not a vague failure of whatever uses the port.

Nothing here prints or exits. `Forward.close()` (or leaving its `with` block) stops the listener
and every connection; `Forward.errors` keeps what went wrong with streams after the first.
"""

from __future__ import annotations

import json
import re
import select
import socket
import threading
from dataclasses import dataclass, field
from typing import Any

from qlensctl.errors import ClusterError

LOCAL_HOST = "127.0.0.1"
ACCEPT_POLL = 0.2  # how often the accept and copy loops look at the stop flag (seconds)
CHUNK = 64 * 1024
JOIN_TIMEOUT = 5.0


@dataclass(frozen=True)
class Endpoint:
    """Where a Service port leads: one Ready pod and the container port on it."""

    pod: str
    port: int


def resolve_service(kube: Any, namespace: str, service: str, port: int) -> Endpoint:
    """The Ready pod and container port behind `service:port`, as kubectl port-forward picks them."""
    from kubernetes.client.rest import ApiException

    from qlensctl.kube import cluster_error

    try:
        svc = kube.core.read_namespaced_service(service, namespace)
    except ApiException as exc:
        if exc.status == 404:
            raise ClusterError(f"no Service {service} in namespace {namespace}",
                               "is QLens deployed there? `qlensctl status ENV` shows the release") from None
        raise cluster_error(exc, f"reading Service {service}", kube.server) from None
    except Exception as exc:
        raise cluster_error(exc, f"reading Service {service}", kube.server) from None

    ports = svc.spec.ports or []
    chosen = next((p for p in ports if p.port == port), None)
    if chosen is None:
        have = ", ".join(str(p.port) for p in ports) or "none"
        raise ClusterError(f"Service {service} in {namespace} has no port {port} (it has: {have})",
                           f"compare the environment's ports with `kubectl get svc {service} -n {namespace}`")
    selector = svc.spec.selector or {}
    if not selector:
        raise ClusterError(f"Service {service} in {namespace} has no pod selector, so no pod to forward to",
                           "it was not made by charts/qlens: redeploy with `qlensctl deploy ENV`")

    label_selector = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
    try:
        pods = kube.core.list_namespaced_pod(namespace, label_selector=label_selector).items
    except Exception as exc:
        raise cluster_error(exc, f"listing the pods of Service {service}", kube.server) from None
    pods = sorted(pods, key=lambda p: p.metadata.name)
    ready = [p for p in pods if _is_ready(p)]
    if not ready:
        seen = ", ".join(f"{p.metadata.name} ({_pod_state(p)})" for p in pods)
        raise ClusterError(
            f"no Ready pod behind Service {service} in {namespace}: "
            + (f"{len(pods)} pod(s), none Ready: {seen}" if pods else f"no pod matches {label_selector}"),
            "is the rollout done? `qlensctl status ENV` shows the pods and recent events",
        )
    pod = ready[0]
    return Endpoint(pod.metadata.name, _container_port(pod, chosen.target_port, port))


def _is_ready(pod: Any) -> bool:
    if pod.metadata.deletion_timestamp or (pod.status.phase or "") != "Running":
        return False
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def _pod_state(pod: Any) -> str:
    if pod.metadata.deletion_timestamp:
        return "Terminating"
    statuses = pod.status.container_statuses or []
    ready = sum(1 for c in statuses if c.ready)
    return f"{pod.status.phase or 'Unknown'}, {ready}/{len(pod.spec.containers)} ready"


def _container_port(pod: Any, target: Any, service_port: int) -> int:
    """A Service's targetPort on `pod`: a number as is, a name looked up in the containers."""
    if target is None or target == "":
        return service_port
    if isinstance(target, int) or str(target).isdigit():
        return int(target)
    for container in pod.spec.containers:
        for p in container.ports or []:
            if p.name == target:
                return int(p.container_port)
    raise ClusterError(f"pod {pod.metadata.name} has no container port named {target!r}",
                       "the Service and its pods disagree: is a rollout half done? `qlensctl status ENV`")


def describe_refusal(exc: BaseException) -> str:
    """What the API server said when it would not open the stream, in one line.

    A failed websocket handshake reads "Handshake status 500 Internal Server Error -+-+- {headers}
    -+-+- {"kind":"Status","message":...}"; the client wraps it in an ApiException and (kubernetes
    36) then fails decoding that exception's missing body, so the text may be only in the chain.
    Keep the status and the Status message, drop the headers.
    """
    texts, seen = [], set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        texts.append(str(getattr(current, "reason", None) or current))
        current = current.__cause__ or current.__context__
    text = next((t for t in texts if "Handshake status" in t), texts[0] if texts else "")
    status = re.search(r"Handshake status (\d{3}[^-]*)", text)
    message = re.search(r'"message"\s*:\s*"((?:[^"\\]|\\.)*)"', text)
    if message:
        try:
            detail = json.loads(f'"{message.group(1)}"')
        except ValueError:
            detail = message.group(1)
    else:
        detail = text.split(" -+-+- ", 1)[0] or type(exc).__name__
    head = f"HTTP {status.group(1).strip()}: " if status and message else ""
    return (head + detail.strip())[:300]


@dataclass
class Forward:
    """A running forward from 127.0.0.1:`local_port` to `pod`:`remote_port`."""

    kube: Any
    namespace: str
    pod: str
    remote_port: int
    local_port: int = 0
    errors: list[str] = field(default_factory=list)
    _listener: socket.socket | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)  # guards _open
    _connecting: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)
    _open: set[socket.socket] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://{LOCAL_HOST}:{self.local_port}"

    def open_stream(self) -> Any:
        """One stream to the pod's port (a kubernetes.stream PortForward), or a ClusterError."""
        from kubernetes import client
        from kubernetes.stream import portforward

        # portforward() swaps the ApiClient's request function while it connects: one at a time
        with self._connecting:
            try:
                return portforward(client.CoreV1Api(self.kube.api).connect_get_namespaced_pod_portforward,
                                   self.pod, self.namespace, ports=str(self.remote_port))
            except Exception as exc:
                raise ClusterError(
                    f"the cluster refused to port-forward to pod {self.pod} in {self.namespace}: "
                    f"{describe_refusal(exc)}",
                    "smoke-test through the environment's URL instead (without --port-forward), "
                    "or pass --url",
                ) from None

    def start(self, local_port: int = 0) -> Forward:
        self.open_stream().close()  # refused now, or never for a reason of the cluster's setup
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((LOCAL_HOST, local_port))  # 0: the kernel picks a free port, no race
        listener.listen(16)
        listener.settimeout(ACCEPT_POLL)
        self._listener, self.local_port = listener, int(listener.getsockname()[1])
        self._spawn(self._accept_loop, "accept")
        return self

    def close(self) -> None:
        self._stop.set()
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            sockets = list(self._open)
        for sock in sockets:
            _close(sock)
        for thread in self._threads:
            thread.join(JOIN_TIMEOUT)

    def __enter__(self) -> Forward:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the bridge ------------------------------------------------------------------------------
    def _spawn(self, target: Any, name: str, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True,
                                  name=f"port-forward {self.pod}:{self.remote_port} {name}")
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:  # closed by close()
                return
            conn.settimeout(None)
            self._spawn(self._serve, "connection", conn)

    def _serve(self, conn: socket.socket) -> None:
        self._track(conn)
        try:
            stream = self.open_stream()
        except ClusterError as exc:
            self.errors.append(exc.message)
            self._untrack(conn)
            return
        remote = stream.socket(self.remote_port)
        self._track(remote)
        try:
            _pump(conn, remote, self._stop)
        finally:
            self._untrack(conn)
            self._untrack(remote)
            stream.close()
            error = stream.error(self.remote_port)
            if error:
                self.errors.append(f"pod {self.pod} port {self.remote_port}: {error.strip()[:300]}")

    def _track(self, sock: Any) -> None:
        with self._lock:
            self._open.add(sock)

    def _untrack(self, sock: Any) -> None:
        with self._lock:
            self._open.discard(sock)
        _close(sock)


def _pump(a: Any, b: Any, stop: threading.Event) -> None:
    """Copy bytes both ways until either side ends (HTTP needs no half-close) or `stop` is set."""
    peers = {a.fileno(): b, b.fileno(): a}
    sockets = {a.fileno(): a, b.fileno(): b}
    while not stop.is_set():
        try:
            readable, _, _ = select.select(list(sockets.values()), [], [], ACCEPT_POLL)
            for sock in readable:
                data = sock.recv(CHUNK)
                if not data:
                    return
                peers[sock.fileno()].sendall(data)
        except (OSError, ValueError):  # a socket closed under us
            return


def _close(sock: Any) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


def forward_service(kube: Any, namespace: str, service: str, port: int, local_port: int = 0) -> Forward:
    """Start forwarding 127.0.0.1:`local_port` (0: any free one) to `service`:`port` in `namespace`."""
    endpoint = resolve_service(kube, namespace, service, port)
    return Forward(kube, namespace, endpoint.pod, endpoint.port).start(local_port)
