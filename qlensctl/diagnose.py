"""Why pods are not Ready: the reasons a failed rollout must print before it is rolled back.

A rollout that fails is undone at once (Helm's atomic upgrade rolls back, a failed install is
removed), and with it go the pods that knew why: afterwards only `kubectl get events` remembers,
and only for an hour. So while deploy (and restore, rollback, maintenance) wait, they call
`unready_pods` and keep the last answer; the error and `--json` then say, per pod:

- `Pending: FailedScheduling: 0/1 nodes are available: 1 Insufficient cpu.` (the scheduler's event,
  or the PodScheduled condition's message);
- `ImagePullBackOff: image ghcr.io/...:v9 ...` / `ErrImageNeverPull: ...` (the waiting state);
- `CrashLoopBackOff: exit code 3` with the last LOG_LINES lines of the crashed container's log;
- `readiness probe failed: HTTP probe failed with statuscode: 503` (the kubelet's Unhealthy event).

Pods being deleted (old ones leaving during a rollout) are not reasons and are skipped. Reading
never raises for a single pod: a log that cannot be read is left out, not the whole diagnosis.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from qlensctl.errors import QlensError
from qlensctl.kube import RELEASE_SELECTOR, Kube

LOG_LINES = 20
MAX_LOGS = 3  # crashed pods whose log is read per diagnosis (the rest usually say the same)
_PULL = ("ImagePullBackOff", "ErrImagePull", "ErrImageNeverPull", "InvalidImageName")


@dataclass(frozen=True)
class PodProblem:
    """One pod that is not Ready and why."""

    pod: str
    component: str  # gateway, router, cache (the pod's app.kubernetes.io/component)
    reason: str  # one line, e.g. "Pending: FailedScheduling: 0/1 nodes are available: ..."
    logs: tuple[str, ...] = field(default=())  # last lines of a crashed container

    def as_dict(self) -> dict[str, Any]:
        return {"pod": self.pod, "component": self.component, "reason": self.reason, "logs": list(self.logs)}

    def describe(self) -> str:
        """The reason, then the log lines indented (what the error message shows)."""
        lines = [f"{self.pod}: {self.reason}"]
        if self.logs:
            lines.append(f"  last {len(self.logs)} log lines:")
            lines.extend(f"    {line}" for line in self.logs)
        return "\n".join(lines)


def unready_pods(kube: Kube, namespace: str, selector: str = RELEASE_SELECTOR) -> list[PodProblem]:
    """Every pod of the release in `namespace` that is not Ready (and not being deleted), with its
    reason, sorted by name. [] when all are Ready or the pods cannot be listed."""
    try:
        pods = kube.core.list_namespaced_pod(namespace, label_selector=selector).items
    except Exception:  # a diagnosis that cannot be made must not hide the failure it explains
        return []
    unready = [p for p in pods if not p.metadata.deletion_timestamp and not _ready(p)]
    if not unready:
        return []
    events = _events_by_pod(kube, namespace)
    out, logs_read = [], 0
    for pod in sorted(unready, key=lambda p: p.metadata.name):
        reason, crashed = _reason(pod, events.get(pod.metadata.name, []))
        logs: tuple[str, ...] = ()
        if crashed is not None and logs_read < MAX_LOGS:
            logs_read += 1
            logs = _last_log_lines(kube, namespace, pod.metadata.name, crashed)
        component = (pod.metadata.labels or {}).get("app.kubernetes.io/component", "")
        out.append(PodProblem(pod.metadata.name, component, reason, logs))
    return out


def summary(problems: Iterable[PodProblem]) -> str:
    """All problems, one block per pod, for an error message ("" when there are none)."""
    return "\n".join(p.describe() for p in problems)


def _ready(pod: Any) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def _events_by_pod(kube: Kube, namespace: str) -> dict[str, list[Any]]:
    """The namespace's events about pods, newest last, by pod name."""
    try:
        items = kube.core.list_namespaced_event(namespace).items
    except Exception:
        return {}
    out: dict[str, list[Any]] = {}
    for e in items:
        if (e.involved_object.kind or "") == "Pod":
            out.setdefault(e.involved_object.name, []).append(e)
    def when(e: Any) -> str:
        return str(e.last_timestamp or e.event_time or e.metadata.creation_timestamp or "")

    for events in out.values():
        events.sort(key=when)
    return out


# what the scheduler says of a pod that a rollback is deleting: true, and never the reason it failed
_NOT_A_REASON = ("skip schedule deleting pod",)


def _latest(events: list[Any], reason: str, prefix: str = "") -> str | None:
    for e in reversed(events):
        message = (e.message or "").strip()
        if e.reason == reason and message.startswith(prefix) and not message.startswith(_NOT_A_REASON):
            return message
    return None


def _reason(pod: Any, events: list[Any]) -> tuple[str, str | None]:
    """(one-line reason, name of a crashed container whose log explains it, or None)."""
    status = pod.status
    if (status.phase or "") == "Pending" and not status.container_statuses:
        scheduled = next((c for c in status.conditions or [] if c.type == "PodScheduled"), None)
        if (scheduled is not None and scheduled.status == "False") or not pod.spec.node_name:
            message = _latest(events, "FailedScheduling") or (scheduled.message if scheduled else None)
            return f"Pending: FailedScheduling: {_one_line(message or 'not scheduled yet')}", None
    for c in status.container_statuses or []:
        waiting = c.state.waiting if c.state else None
        terminated = c.state.terminated if c.state else None
        last = c.last_state.terminated if c.last_state else None
        if waiting is not None and waiting.reason in _PULL:
            return f"{waiting.reason}: image {c.image}: {_one_line(waiting.message or '')}".rstrip(": "), None
        if waiting is not None and waiting.reason == "CrashLoopBackOff":
            code = last.exit_code if last is not None else "unknown"
            why = f" ({last.reason})" if last is not None and last.reason not in (None, "Error") else ""
            return f"CrashLoopBackOff: exit code {code}{why}, {c.restart_count} restarts", c.name
        if terminated is not None:
            return f"exited with code {terminated.exit_code} ({terminated.reason or 'Error'})", c.name
        if waiting is not None and waiting.reason and waiting.reason != "ContainerCreating":
            return f"{waiting.reason}: {_one_line(waiting.message or '')}".rstrip(": "), None
        if waiting is not None:
            return f"waiting: {waiting.reason}", None
    probe = _latest(events, "Unhealthy", "Readiness probe failed")
    if probe is not None:
        return f"readiness probe failed: {_one_line(probe.split(':', 1)[1].strip())}", None
    return f"{status.phase or 'Unknown'}, not Ready yet", None


def _last_log_lines(kube: Kube, namespace: str, pod: str, container: str) -> tuple[str, ...]:
    """The crashed run's last lines (`kubectl logs --previous`), else the current run's."""
    for previous in (True, False):
        try:
            text = kube.core.read_namespaced_pod_log(pod, namespace, container=container, previous=previous,
                                                     tail_lines=LOG_LINES)
        except Exception:
            continue
        lines = [line for line in (text or "").splitlines() if line.strip()]
        if lines:
            return tuple(line[:300] for line in lines[-LOG_LINES:])
    return ()


def _one_line(text: str) -> str:
    return " ".join(text.split())[:300]


class Watch:
    """What the pods said while a rollout was waited for, kept per pod: the reasons of pods that a
    rollback removes survive it. `check` is called on every progress poll and diagnoses at most
    every `every` polls (pods and events are two list calls). A pod's crash or scheduling reason
    is not replaced by a later transient one (a probe refused while it restarts), and `settle`
    forgets the pods that are Ready in the end: a pod that only started slowly was not the problem.
    """

    def __init__(self, kube: Kube, namespace: str, every: int = 4) -> None:
        self.kube, self.namespace, self.every = kube, namespace, every
        self._by_pod: dict[str, PodProblem] = {}
        self._polls = 0

    @property
    def problems(self) -> list[PodProblem]:
        return [self._by_pod[name] for name in sorted(self._by_pod)]

    def check(self, states: Iterable[Any]) -> None:
        self._polls += 1
        if all(s.done for s in states) or self._polls % self.every:
            return
        self.now()

    def wrap(self, progress: Callable[[list[Any]], None]) -> Callable[[list[Any]], None]:
        """`progress` that also checks the pods on the way."""
        def both(states: list[Any]) -> None:
            self.check(states)
            progress(states)
        return both

    def now(self) -> list[PodProblem]:
        try:
            found = unready_pods(self.kube, self.namespace)
        except QlensError:
            found = []
        for problem in found:
            known = self._by_pod.get(problem.pod)
            if known is None or not _transient(problem) or _transient(known):
                self._by_pod[problem.pod] = problem
        return self.problems

    def settle(self) -> list[PodProblem]:
        """Drop the pods that are Ready now; the ones that are gone keep what they last said."""
        try:
            pods = self.kube.core.list_namespaced_pod(self.namespace, label_selector=RELEASE_SELECTOR).items
        except Exception:  # keep what was seen: it explains the failure better than nothing
            return self.problems
        for pod in pods:
            if _ready(pod):
                self._by_pod.pop(pod.metadata.name, None)
        return self.problems


def _transient(problem: PodProblem) -> bool:
    """A reason a healthy pod also shows for a moment while it starts."""
    return not problem.logs and problem.reason.startswith(
        ("readiness probe failed", "waiting:", "Running, not Ready", "Pending, not Ready"))
