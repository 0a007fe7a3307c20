"""Kubernetes access for qlensctl: kubeconfig and context, the context guard, and what deploy,
rollback and status read or change (namespaces, deployments and their rollout, pods, events, HPAs),
plus the namespace's deploy lock (a Lease) that keeps two deploys from running at once.

Every request is bounded: 5 s to connect, 30 s to read, one retry, so an unreachable cluster is
an error within seconds, never a hang. Every failure becomes a qlensctl error with a hint:
a missing kubeconfig or unknown context is a ConfigError (exit 2); a cluster that cannot be
reached or refuses is a ClusterError (exit 1). Nothing here prints; the kubernetes package is
imported inside functions, and each `Kube` has its own ApiClient (the package's global
configuration is never touched, so two clusters can be used side by side, as the tests do).
"""

from __future__ import annotations

import datetime as dt
import getpass
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from qlensctl.errors import ClusterError, ConfigError, QlensError, RefusedError, first_line

CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 30.0
RETRIES = 1
SERVICES = ("gateway", "router", "cache")
RELEASE_SELECTOR = "app.kubernetes.io/instance=qlens"


def deployment_name(service: str) -> str:
    return f"qlens-{service}"


def previous_deployment_name(service: str) -> str:
    """The deployment guide's emergency fallback: `qlens-<service>-previous`."""
    return f"qlens-{service}-previous"


# -- kubeconfig and context ------------------------------------------------------------------------


def kubeconfig_location() -> str:
    """What the kubernetes client reads: $KUBECONFIG (may be a `:` list), else ~/.kube/config."""
    return os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")


def _contexts(kubeconfig: str | None) -> tuple[list[str], str | None]:
    """All context names in the kubeconfig and the current one."""
    from kubernetes import config

    location = kubeconfig or kubeconfig_location()
    files = [p for p in location.split(os.pathsep) if p]
    if not any(os.path.isfile(p) for p in files):
        raise ConfigError(f"no kubeconfig at {location}",
                          "set KUBECONFIG to your cluster's kubeconfig, or create ~/.kube/config "
                          "(e.g. `az aks get-credentials`)")
    try:
        contexts, active = config.list_kube_config_contexts(config_file=kubeconfig or kubeconfig_location())
    except config.ConfigException as exc:
        if "current-context" in str(exc):  # contexts exist but none is selected
            contexts, active = _contexts_without_current(kubeconfig), None
        else:
            raise ConfigError(f"kubeconfig {location} is not usable: {first_line(exc)}",
                              "check the file with `kubectl config view`") from None
    except Exception as exc:  # unreadable or not YAML
        raise ConfigError(f"kubeconfig {location} is not usable: {first_line(exc)}",
                          "check the file with `kubectl config view`") from None
    names = [c["name"] for c in contexts or []]
    return names, (active or {}).get("name")


def _contexts_without_current(kubeconfig: str | None) -> list[dict[str, Any]]:
    import yaml

    location = kubeconfig or kubeconfig_location()
    out: list[dict[str, Any]] = []
    for path in location.split(os.pathsep):
        if path and os.path.isfile(path):
            with open(path) as f:
                out.extend((yaml.safe_load(f) or {}).get("contexts") or [])
    return out


def current_context(kubeconfig: str | None = None) -> str | None:
    return _contexts(kubeconfig)[1]


def resolve_context(requested: str | None, kubeconfig: str | None = None) -> str:
    """The context to use: `requested` if given (it must exist), else the kubeconfig's current one."""
    names, active = _contexts(kubeconfig)
    chosen = requested or active
    if not chosen:
        raise ConfigError(f"no current kube context in {kubeconfig or kubeconfig_location()}",
                          f"pass --kube-context (one of: {', '.join(names) or 'none'}) or run "
                          "`kubectl config use-context NAME`")
    if chosen not in names:
        raise ConfigError(f"kube context {chosen!r} is not in {kubeconfig or kubeconfig_location()}",
                          f"use one of: {', '.join(names) or 'none'}")
    return chosen


def check_context(environment: Any, requested: str | None, kubeconfig: str | None = None) -> str:
    """The context guard: an environment that pins a context (production) is deployed only there.

    It passes when the current context is the pinned one, or `--kube-context` names it; anything
    else is refused before the cluster is touched. Returns the context to use.
    """
    pinned = getattr(environment, "kube_context", None)
    if pinned and requested and requested != pinned:
        raise RefusedError(
            f"{environment.name} is pinned to kube context {pinned!r}, not {requested!r}; "
            "nothing was changed",
            f"use --kube-context {pinned}, or change kubeContext in environments/{environment.name}.yaml",
        )
    if pinned and not requested:
        active = current_context(kubeconfig)
        if active != pinned:
            raise RefusedError(
                f"the current kube context is {active!r} but {environment.name} deploys only to "
                f"{pinned!r}; nothing was changed",
                f"run `kubectl config use-context {pinned}` or pass --kube-context {pinned}",
            )
    return resolve_context(requested or pinned, kubeconfig)


# -- errors ----------------------------------------------------------------------------------------


def _unreachable_reason(exc: BaseException) -> str:
    text = str(exc)
    for needle, reason in (("Connection refused", "connection refused"), ("timed out", "timed out"),
                           ("CERTIFICATE_VERIFY_FAILED", "TLS certificate not trusted"),
                           ("Name or service not known", "unknown host"),
                           ("nodename nor servname", "unknown host")):
        if needle in text:
            return reason
    return type(exc).__name__


def is_transport_error(exc: BaseException) -> bool:
    return isinstance(exc, OSError) or type(exc).__module__.startswith(("urllib3", "ssl", "socket"))


def cluster_error(exc: BaseException, what: str, server: str = "the cluster") -> Exception:
    """One qlensctl error for anything the kubernetes client raised while doing `what`."""
    from kubernetes.client.rest import ApiException

    if isinstance(exc, ApiException):
        if exc.status in (401, 403):
            return ClusterError(f"{what}: {server} refused (HTTP {exc.status} {exc.reason})",
                                "your kube credentials lack permission here; check the context's user")
        if exc.status == 404:
            return ClusterError(f"{what}: not found",
                                "check the kube context and that QLens is deployed (`qlensctl status ENV`)")
        return ClusterError(f"{what}: HTTP {exc.status} {exc.reason}: {_api_message(exc)}",
                            "the API server's message says why; re-run with --debug for the details")
    if is_transport_error(exc):
        return ClusterError(f"cannot reach {server} ({_unreachable_reason(exc)}) while {what}",
                            "is the cluster up? check KUBECONFIG and `kubectl config current-context`")
    return exc if isinstance(exc, Exception) else ClusterError(f"{what}: {exc}", None)


def _api_message(exc: Any) -> str:
    import json

    try:
        return str(json.loads(exc.body).get("message", ""))[:300]
    except Exception:
        return ""


# -- the client ------------------------------------------------------------------------------------


def _bounded(api: Any) -> Any:
    """Give every request of this ApiClient a (connect, read) timeout unless the caller set one.

    The kubernetes client has no default timeout (a request to a blackholed server waits for
    minutes); this wraps this one client's REST layer, not the package.
    """
    rest = api.rest_client
    original = rest.request

    def request(*args: Any, _request_timeout: Any = None, **kwargs: Any) -> Any:
        return original(*args, _request_timeout=_request_timeout or (CONNECT_TIMEOUT, READ_TIMEOUT), **kwargs)

    rest.request = request
    return api


def new_api_client(context: str, kubeconfig: str | None = None) -> Any:
    from kubernetes import client, config

    configuration = client.Configuration()
    try:
        # always an explicit path: the client's default is $KUBECONFIG as it was at import time
        config.load_kube_config(config_file=kubeconfig or kubeconfig_location(), context=context,
                                client_configuration=configuration, persist_config=False)
    except config.ConfigException as exc:
        raise ConfigError(f"kube context {context!r}: {first_line(exc)}",
                          "check it with `kubectl config view --minify --context " + context + "`") from None
    except Exception as exc:  # e.g. an exec credential plugin that is not installed
        raise ConfigError(f"kube context {context!r} cannot be loaded: {first_line(exc)}",
                          "check the context's user (credential plugins such as kubelogin must be on "
                          "PATH)") from None
    configuration.retries = RETRIES
    return _bounded(client.ApiClient(configuration))


# -- what the commands read ------------------------------------------------------------------------


@dataclass(frozen=True)
class DeploymentStatus:
    """One Deployment's rollout, judged the way `kubectl rollout status` judges it."""

    name: str
    desired: int
    updated: int
    ready: int
    available: int
    images: tuple[str, ...]
    done: bool
    failed: bool
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "desired": self.desired, "updated": self.updated, "ready": self.ready,
                "available": self.available, "images": list(self.images), "done": self.done,
                "failed": self.failed, "message": self.message}


@dataclass(frozen=True)
class PodInfo:
    name: str
    phase: str
    ready: str  # "1/1"
    restarts: int
    node: str
    age: str

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class EventInfo:
    last_seen: str
    type: str
    reason: str
    object: str
    message: str
    count: int = 1

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class HpaInfo:
    name: str
    target: str
    min_replicas: int
    max_replicas: int
    current_replicas: int
    desired_replicas: int
    target_cpu: int | None
    current_cpu: int | None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def judge_rollout(d: Any) -> DeploymentStatus:
    """kubectl's rollout-status rules: observed the new spec, all replicas updated, old ones gone,
    updated ones available; a Progressing=False/ProgressDeadlineExceeded condition is a failure."""
    spec, st, meta = d.spec, d.status, d.metadata
    desired = int(spec.replicas if spec.replicas is not None else 1)
    updated, ready = int(st.updated_replicas or 0), int(st.ready_replicas or 0)
    available, total = int(st.available_replicas or 0), int(st.replicas or 0)
    images = tuple(c.image for c in spec.template.spec.containers)
    failed, done = False, False
    if (st.observed_generation or 0) < (meta.generation or 0):
        message = "waiting for the controller to see the new spec"
    elif any(c.type == "Progressing" and c.reason == "ProgressDeadlineExceeded" for c in st.conditions or []):
        failed, message = True, "progress deadline exceeded"
    elif updated < desired:
        message = f"{updated} of {desired} replicas updated"
    elif total > updated:
        message = f"{total - updated} old replicas still running"  # kubectl: "pending termination"
    elif available < updated:
        message = f"{available} of {updated} updated replicas available"
    else:
        done, message = True, "rolled out"
    return DeploymentStatus(meta.name, desired, updated, ready, available, images, done, failed, message)


def _age(ts: Any, now: dt.datetime | None = None) -> str:
    if ts is None:
        return ""
    now = now or dt.datetime.now(dt.UTC)
    seconds = max(0, int((now - ts).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@dataclass
class Kube:
    """A connected client for one context; methods return plain data or raise qlensctl errors."""

    api: Any
    context: str
    server: str = field(default="the cluster")
    kubeconfig: str = field(default_factory=kubeconfig_location)  # file(s) the context came from

    @classmethod
    def open(cls, context: str, kubeconfig: str | None = None) -> Kube:
        """A client for `context`; no request is made yet. Commands connect through
        qlensctl.cluster.connect, which guards the context and checks the server answers."""
        api = new_api_client(context, kubeconfig)
        return cls(api, context, api.configuration.host or "the cluster", kubeconfig or kubeconfig_location())

    @property
    def kubeconfig_file(self) -> str | None:
        """The kubeconfig as one file, for tools that take a single path (Helm); None for a list."""
        return None if os.pathsep in self.kubeconfig else self.kubeconfig

    def close(self) -> None:
        self.api.close()

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            raise cluster_error(exc, what, self.server) from None

    def _get(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Like _call, but a 404 is None rather than an error."""
        from kubernetes.client.rest import ApiException

        try:
            return fn(*args, **kwargs)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise cluster_error(exc, what, self.server) from None
        except Exception as exc:
            raise cluster_error(exc, what, self.server) from None

    @property
    def core(self) -> Any:
        from kubernetes import client

        return client.CoreV1Api(self.api)

    @property
    def apps(self) -> Any:
        from kubernetes import client

        return client.AppsV1Api(self.api)

    def ping(self) -> str:
        """The server's version; the first request, so an unreachable cluster fails fast and clearly."""
        from kubernetes import client

        info = self._call("asking for its version", client.VersionApi(self.api).get_code)
        return str(info.git_version)

    # namespaces
    def namespace_exists(self, namespace: str) -> bool:
        return self._get(f"reading namespace {namespace}", self.core.read_namespace, namespace) is not None

    def ensure_namespace(self, namespace: str) -> bool:
        """Create the namespace if it is missing; True when it was created."""
        from kubernetes.client.rest import ApiException

        if self.namespace_exists(namespace):
            return False
        body = {"metadata": {"name": namespace, "labels": {"app.kubernetes.io/part-of": "qlens"}}}
        try:
            self.core.create_namespace(body)
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise cluster_error(exc, f"creating namespace {namespace}", self.server) from None
        except Exception as exc:
            raise cluster_error(exc, f"creating namespace {namespace}", self.server) from None
        return True

    # deployments
    def deployment(self, namespace: str, name: str) -> Any | None:
        return self._get(f"reading deployment {name}", self.apps.read_namespaced_deployment, name, namespace)

    def deployments(self, namespace: str, names: Sequence[str] | None = None) -> list[DeploymentStatus]:
        """The rollout state of the named deployments (those that exist), else of the release's."""
        if names is None:
            items = self._call(f"listing deployments in {namespace}", self.apps.list_namespaced_deployment,
                               namespace, label_selector=RELEASE_SELECTOR).items
        else:
            items = [d for d in (self.deployment(namespace, n) for n in names) if d is not None]
        return sorted((judge_rollout(d) for d in items), key=lambda s: s.name)

    def scale(self, namespace: str, name: str, replicas: int) -> int:
        result = self._call(f"scaling deployment {name}", self.apps.patch_namespaced_deployment_scale,
                            name, namespace, {"spec": {"replicas": replicas}})
        return int(result.spec.replicas or 0)

    def wait_rollout(self, namespace: str, names: Sequence[str], timeout: float,
                     progress: Callable[[list[DeploymentStatus]], None] | None = None,
                     interval: float = 0.5) -> tuple[bool, list[DeploymentStatus]]:
        """Poll until every named deployment is rolled out, one fails, or `timeout` passes.

        Returns (all done, last states); `progress` gets every poll's states (for a live display).
        """
        deadline = time.monotonic() + timeout
        while True:
            states = self.deployments(namespace, names)
            if progress:
                progress(states)
            if states and all(s.done for s in states) and len(states) == len(names):
                return True, states
            if any(s.failed for s in states) or time.monotonic() >= deadline:
                return False, states
            time.sleep(interval)

    # pods, events, autoscalers
    def pods(self, namespace: str) -> list[PodInfo]:
        items = self._call(f"listing pods in {namespace}", self.core.list_namespaced_pod, namespace,
                           label_selector=RELEASE_SELECTOR).items
        out = []
        for p in sorted(items, key=lambda p: p.metadata.name):
            statuses = p.status.container_statuses or []
            ready = sum(1 for c in statuses if c.ready)
            phase = "Terminating" if p.metadata.deletion_timestamp else (p.status.phase or "Unknown")
            out.append(PodInfo(p.metadata.name, phase, f"{ready}/{len(p.spec.containers)}",
                               sum(int(c.restart_count or 0) for c in statuses), p.spec.node_name or "",
                               _age(p.metadata.creation_timestamp)))
        return out

    def events(self, namespace: str, limit: int = 10) -> list[EventInfo]:
        """The most recent events in the namespace, oldest first."""
        items = self._call(f"listing events in {namespace}", self.core.list_namespaced_event, namespace).items

        def when(e: Any) -> dt.datetime:
            ts = e.last_timestamp or e.event_time or e.metadata.creation_timestamp
            return ts or dt.datetime.min.replace(tzinfo=dt.UTC)

        recent = sorted(items, key=when)[-limit:]
        return [EventInfo(_age(when(e)), e.type or "", e.reason or "",
                          f"{(e.involved_object.kind or '').lower()}/{e.involved_object.name}",
                          (e.message or "").strip()[:200], int(e.count or 1)) for e in recent]

    def autoscalers(self, namespace: str) -> list[HpaInfo]:
        """HPAs through autoscaling/v1, which every Kubernetes version serves."""
        from kubernetes import client

        api = client.AutoscalingV1Api(self.api)
        items = self._call(f"listing autoscalers in {namespace}",
                           api.list_namespaced_horizontal_pod_autoscaler, namespace).items
        return [HpaInfo(h.metadata.name, f"{h.spec.scale_target_ref.kind}/{h.spec.scale_target_ref.name}",
                        int(h.spec.min_replicas or 1), int(h.spec.max_replicas),
                        int(h.status.current_replicas or 0), int(h.status.desired_replicas or 0),
                        h.spec.target_cpu_utilization_percentage, h.status.current_cpu_utilization_percentage)
                for h in sorted(items, key=lambda h: h.metadata.name)]

    # the deploy lock
    def lock(self, namespace: str, operation: str, *, name: str | None = None,
             seconds: int | None = None) -> NamespaceLock:
        """The namespace's deploy lock, to hold (`with kube.lock(ns, "qlensctl deploy staging v2"):`)
        while a command changes the release."""
        return NamespaceLock(self, namespace, operation, name=name or DEPLOY_LOCK,
                             seconds=seconds or LOCK_SECONDS)

    def read_lock(self, namespace: str, name: str | None = None) -> LockInfo | None:
        """Who holds the namespace's deploy lock now (None: nobody, or the Lease is gone)."""
        from kubernetes import client

        lease = self._get(f"reading Lease {namespace}/{name or DEPLOY_LOCK}",
                          client.CoordinationV1Api(self.api).read_namespaced_lease,
                          name or DEPLOY_LOCK, namespace)
        return None if lease is None else _lock_info(lease)


# -- the deploy lock -------------------------------------------------------------------------------
#
# Helm marks a release pending-install/pending-upgrade while it works on it, but only once it has
# started, and a second `helm upgrade` can slip in before that (and would also redo the secrets
# and the backup first). So deploy and rollback hold a coordination.k8s.io Lease in the namespace
# for as long as they change anything: `create` is atomic (409 when it exists), so exactly one
# command gets it. The holder renews it every LOCK_SECONDS / 3 and deletes it when it is done,
# also on Ctrl-C. A holder that died (kill -9, a laptop closed) stops renewing: once the Lease is
# LOCK_SECONDS past its last renewal it is stale and the next command takes it over (a replace
# conditioned on the resourceVersion it read, so two takers cannot both win). Expiry is judged
# with this machine's clock against the holder's: the margin absorbs ordinary clock skew.

DEPLOY_LOCK = "qlens-deploy-lock"
LOCK_SECONDS = 60
_OPERATION = "qlens.io/operation"


@dataclass(frozen=True)
class LockInfo:
    """A deploy lock as stored in its Lease."""

    namespace: str
    holder: str  # user@host pid N
    operation: str  # what it is doing, e.g. "qlensctl deploy staging v2"
    acquired: dt.datetime
    renewed: dt.datetime
    seconds: int

    @property
    def expires(self) -> dt.datetime:
        return self.renewed + dt.timedelta(seconds=self.seconds)

    def expired(self, now: dt.datetime | None = None) -> bool:
        return (now or dt.datetime.now(dt.UTC)) >= self.expires

    def describe(self, now: dt.datetime | None = None) -> str:
        """"`qlensctl deploy staging v2` by alice@laptop pid 4242, started 12s ago"."""
        return f"`{self.operation}` by {self.holder}, started {_age(self.acquired, now)} ago"

    def as_dict(self) -> dict[str, Any]:
        return {"holder": self.holder, "operation": self.operation, "acquired": _stamp(self.acquired),
                "renewed": _stamp(self.renewed), "expires": _stamp(self.expires), "stale": self.expired()}


@contextmanager
def locked(kube: Kube, namespace: str, operation: str,
           on_step: Callable[[str], None]) -> Iterator[NamespaceLock]:
    """Hold the namespace's deploy lock for the block: the one way deploy, restore, rollback,
    scale, maintenance and emergency rollback take it. Another command holding it is a
    LockHeldError (exit 2, nothing changed) naming that command; a stale lock (its holder died) is
    taken over and `on_step` says whose it was."""
    with kube.lock(namespace, operation) as lock:
        if lock.taken_over is not None:
            on_step(f"took over a stale deploy lock: {lock.taken_over.describe()} (that process is gone)")
        yield lock


class LockHeldError(RefusedError):
    """Another command holds the namespace's deploy lock; nothing was changed."""

    def __init__(self, message: str, hint: str | None, lock: LockInfo) -> None:
        super().__init__(message, hint)
        self.lock = lock


def lock_identity() -> str:
    """Who a lock names as its holder: user@host and the process id (unique while it runs)."""
    try:
        user = getpass.getuser()
    except Exception:  # no user name in a bare container
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()} pid {os.getpid()}"


def _stamp(when: dt.datetime) -> str:
    """A Lease MicroTime: RFC 3339 with microseconds, UTC."""
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _lock_info(lease: Any) -> LockInfo:
    spec, meta = lease.spec, lease.metadata
    epoch = dt.datetime.fromtimestamp(0, dt.UTC)
    renewed = spec.renew_time or spec.acquire_time or meta.creation_timestamp or epoch
    return LockInfo(meta.namespace or "", spec.holder_identity or "(nobody)",
                    (meta.annotations or {}).get(_OPERATION, "(unknown operation)"),
                    spec.acquire_time or renewed, renewed, int(spec.lease_duration_seconds or LOCK_SECONDS))


class NamespaceLock:
    """A held (or to-be-held) deploy lock; a context manager that renews it while held.

    `taken_over` is the stale lock this one replaced, if any (its holder died mid-command: the
    release may have been left pending, which the caller checks next)."""

    def __init__(self, kube: Kube, namespace: str, operation: str, *, name: str = DEPLOY_LOCK,
                 seconds: int = LOCK_SECONDS, identity: str | None = None) -> None:
        self.kube, self.namespace, self.operation, self.name = kube, namespace, operation, name
        self.seconds = seconds
        self.identity = identity or lock_identity()
        self.taken_over: LockInfo | None = None
        self._lease: Any = None
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    @property
    def _api(self) -> Any:
        from kubernetes import client

        return client.CoordinationV1Api(self.kube.api)

    def _body(self, acquired: dt.datetime, resource_version: str | None = None) -> dict[str, Any]:
        metadata: dict[str, Any] = {"name": self.name, "labels": {"app.kubernetes.io/part-of": "qlens"},
                                    "annotations": {_OPERATION: self.operation}}
        if resource_version:
            metadata["resourceVersion"] = resource_version
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata,
                "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": self.seconds,
                         "acquireTime": _stamp(acquired), "renewTime": _stamp(dt.datetime.now(dt.UTC))}}

    def _held(self, info: LockInfo) -> LockHeldError:
        left = max(0, int((info.expires - dt.datetime.now(dt.UTC)).total_seconds()))
        return LockHeldError(
            f"another command is changing the release in {self.namespace}: {info.describe()}; "
            "nothing was changed",
            f"wait for it to finish and run this again; if that process is gone, its lock "
            f"({self.name}) expires by itself at {info.expires:%H:%M:%S} UTC (in {left}s)",
            info)

    def acquire(self) -> NamespaceLock:
        from kubernetes.client.rest import ApiException

        what = f"taking the deploy lock in {self.namespace}"
        now = dt.datetime.now(dt.UTC)
        for _ in range(3):  # a lock released between our create and our read: try again
            try:
                self._lease = self._api.create_namespaced_lease(self.namespace, self._body(now))
                return self
            except ApiException as exc:
                if exc.status != 409:
                    raise cluster_error(exc, what, self.kube.server) from None
            except Exception as exc:
                raise cluster_error(exc, what, self.kube.server) from None
            lease = self.kube._get(what, self._api.read_namespaced_lease, self.name, self.namespace)
            if lease is None:
                continue
            info = _lock_info(lease)
            if not info.expired():
                raise self._held(info)
            try:  # stale: take it over, on the condition that nobody else did first
                self._lease = self._api.replace_namespaced_lease(
                    self.name, self.namespace, self._body(now, lease.metadata.resource_version))
            except ApiException as exc:
                if exc.status != 409:
                    raise cluster_error(exc, what, self.kube.server) from None
                continue  # someone else took it over: read who
            except Exception as exc:
                raise cluster_error(exc, what, self.kube.server) from None
            self.taken_over = info
            return self
        raise ClusterError(f"{what}: the Lease {self.name} kept changing", "run the command again")

    def renew(self) -> bool:
        """Push the expiry forward; False when the lock is no longer ours (it went stale and was
        taken over: this process was stalled for longer than the lock lasts)."""
        from kubernetes.client.rest import ApiException

        if self._lease is None:
            return False
        body = self._body(self._lease.spec.acquire_time or dt.datetime.now(dt.UTC),
                          self._lease.metadata.resource_version)
        try:
            self._lease = self._api.replace_namespaced_lease(self.name, self.namespace, body)
        except ApiException as exc:
            if exc.status in (404, 409):
                self._lease = None
                return False
            raise cluster_error(exc, "renewing the deploy lock", self.kube.server) from None
        except Exception as exc:
            raise cluster_error(exc, "renewing the deploy lock", self.kube.server) from None
        return True

    def release(self) -> None:
        """Delete the Lease if it is still ours. Never raises: a lock that cannot be deleted
        (cluster gone) expires by itself after LOCK_SECONDS."""
        from kubernetes import client

        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(10)
        if self._lease is None:
            return
        options = client.V1DeleteOptions(
            preconditions=client.V1Preconditions(resource_version=self._lease.metadata.resource_version))
        try:
            self._api.delete_namespaced_lease(self.name, self.namespace, body=options)
        except Exception:  # 404/409: gone or taken over; anything else: it expires by itself
            pass
        self._lease = None

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                if not self.renew():
                    return
            except QlensError:  # a failed renewal is retried; the lock outlives a few
                continue

    def __enter__(self) -> NamespaceLock:
        self.acquire()
        self._renewer = threading.Thread(target=self._renew_loop, name="qlens-lock", daemon=True)
        self._renewer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
