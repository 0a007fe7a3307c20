"""qlensctl/diagnose.py: each unready pod's reason from the states, conditions and events the API
returns (kubernetes client models, as the API server's answers deserialize into)."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace
from typing import Any

from kubernetes.client import (
    CoreV1Event,
    V1ContainerState,
    V1ContainerStateRunning,
    V1ContainerStateTerminated,
    V1ContainerStateWaiting,
    V1ContainerStatus,
    V1ObjectMeta,
    V1ObjectReference,
    V1Pod,
    V1PodCondition,
    V1PodSpec,
    V1PodStatus,
)

from qlensctl import diagnose

T0 = dt.datetime(2026, 12, 2, 6, 0, tzinfo=dt.UTC)


def pod(name: str, *, phase: str = "Running", node: str | None = "node-1", ready: bool = False,
        containers: list[V1ContainerStatus] | None = None, conditions: list[V1PodCondition] | None = None,
        deleting: bool = False) -> V1Pod:
    conds = list(conditions or []) + [V1PodCondition(type="Ready", status="True" if ready else "False")]
    return V1Pod(metadata=V1ObjectMeta(name=name, labels={"app.kubernetes.io/component": "gateway"},
                                       deletion_timestamp=T0 if deleting else None),
                 spec=V1PodSpec(containers=[], node_name=node),
                 status=V1PodStatus(phase=phase, conditions=conds, container_statuses=containers))


def status(*, waiting: tuple[str, str] | None = None, terminated: int | None = None,
           last_exit: int | None = None, restarts: int = 0) -> V1ContainerStatus:
    state = V1ContainerState(
        waiting=V1ContainerStateWaiting(reason=waiting[0], message=waiting[1]) if waiting else None,
        terminated=V1ContainerStateTerminated(exit_code=terminated, reason="Error") if terminated is not None
        else None,
        running=V1ContainerStateRunning() if not waiting and terminated is None else None)
    last = V1ContainerState(terminated=V1ContainerStateTerminated(exit_code=last_exit, reason="Error")
                            if last_exit is not None else None)
    return V1ContainerStatus(name="gateway", image="ghcr.io/quantumlayer/qlens-gateway:v9", image_id="",
                             ready=False, restart_count=restarts, state=state, last_state=last)


def event(pod_name: str, reason: str, message: str, minute: int) -> CoreV1Event:
    return CoreV1Event(metadata=V1ObjectMeta(name=f"{pod_name}.{minute}"), reason=reason, message=message,
                       involved_object=V1ObjectReference(kind="Pod", name=pod_name),
                       last_timestamp=T0 + dt.timedelta(minutes=minute))


class FakeCore:
    def __init__(self, pods: list[V1Pod], events: list[CoreV1Event], logs: dict[tuple[str, bool], str]):
        self.pods, self.events, self.logs = pods, events, logs
        self.log_calls: list[dict[str, Any]] = []

    def list_namespaced_pod(self, namespace: str, label_selector: str) -> Any:
        return SimpleNamespace(items=self.pods)

    def list_namespaced_event(self, namespace: str) -> Any:
        return SimpleNamespace(items=self.events)

    def read_namespaced_pod_log(self, name: str, namespace: str, **kw: Any) -> str:
        self.log_calls.append({"name": name, **kw})
        return self.logs.get((name, kw["previous"]), "")


def diagnose_pods(pods: list[V1Pod], events: list[CoreV1Event] = (),  # type: ignore[assignment]
                  logs: dict[tuple[str, bool], str] | None = None) -> list[diagnose.PodProblem]:
    kube: Any = SimpleNamespace(core=FakeCore(pods, list(events), logs or {}))
    return diagnose.unready_pods(kube, "qlens-staging")


def test_each_kind_of_unready_pod_gets_its_reason():
    crash_log = "\n".join(f"line {i}" for i in range(1, 31))
    problems = diagnose_pods(
        [pod("a-pending", phase="Pending", node=None,
             conditions=[V1PodCondition(type="PodScheduled", status="False", reason="Unschedulable",
                                        message="condition message")]),
         pod("b-pull",
             containers=[status(waiting=("ErrImageNeverPull", 'Container image "x" is not present'))]),
         pod("c-crash", containers=[status(waiting=("CrashLoopBackOff", "back-off 10s"), last_exit=3,
                                           restarts=2)]),
         pod("d-probe", containers=[status()]),
         pod("e-ready", ready=True, containers=[status()]),
         pod("f-leaving", deleting=True, containers=[status()])],
        [event("a-pending", "FailedScheduling", "0/1 nodes are available: 1 Insufficient cpu.", 1),
         event("d-probe", "Unhealthy", "Readiness probe failed: HTTP probe failed with statuscode: 503", 2),
         event("d-probe", "Unhealthy", "Liveness probe failed: timeout", 3)],
        {("c-crash", True): crash_log})
    assert [(p.pod, p.reason) for p in problems] == [
        ("a-pending", "Pending: FailedScheduling: 0/1 nodes are available: 1 Insufficient cpu."),
        ("b-pull", 'ErrImageNeverPull: image ghcr.io/quantumlayer/qlens-gateway:v9: Container image "x" is '
                   "not present"),
        ("c-crash", "CrashLoopBackOff: exit code 3, 2 restarts"),
        ("d-probe", "readiness probe failed: HTTP probe failed with statuscode: 503"),
    ]
    crash = problems[2]
    assert crash.logs == tuple(f"line {i}" for i in range(11, 31))  # the last 20
    assert crash.as_dict()["component"] == "gateway"
    text = diagnose.summary(problems)
    assert "c-crash: CrashLoopBackOff: exit code 3, 2 restarts\n  last 20 log lines:\n    line 11\n" in text


def test_a_container_that_exited_reads_the_current_log_when_there_is_no_previous_one():
    problems = diagnose_pods([pod("p", containers=[status(terminated=1)])], [],
                             {("p", False): "config error: no such file\n"})
    assert problems[0].reason == "exited with code 1 (Error)"
    assert problems[0].logs == ("config error: no such file",)


def test_the_schedulers_note_on_a_pod_being_deleted_is_not_its_reason():
    """A rollback deletes the Pending pods; the scheduler's last word on them is then "skip
    schedule deleting pod", which would hide the Insufficient cpu that made the rollout fail."""
    problems = diagnose_pods([pod("p", phase="Pending", node=None)], [
        event("p", "FailedScheduling", "0/2 nodes are available: 1 Insufficient cpu.", 1),
        event("p", "FailedScheduling", "skip schedule deleting pod: ns/p", 2)])
    assert problems[0].reason == "Pending: FailedScheduling: 0/2 nodes are available: 1 Insufficient cpu."


def test_scheduling_message_falls_back_to_the_condition():
    problems = diagnose_pods([pod("p", phase="Pending", node=None, conditions=[
        V1PodCondition(type="PodScheduled", status="False", message="0/2 nodes are available")])])
    assert problems[0].reason == "Pending: FailedScheduling: 0/2 nodes are available"


def test_all_ready_or_pods_unreadable_is_no_problem():
    assert diagnose_pods([pod("p", ready=True, containers=[status()])]) == []

    class Broken:
        def list_namespaced_pod(self, *a: Any, **kw: Any) -> Any:
            raise OSError("connection refused")

    assert diagnose.unready_pods(SimpleNamespace(core=Broken()), "ns") == []  # type: ignore[arg-type]


def test_watch_keeps_the_last_diagnosis_seen():
    core = FakeCore([pod("p", containers=[status(waiting=("ImagePullBackOff", ""))])], [], {})
    watch = diagnose.Watch(SimpleNamespace(core=core), "ns", every=2)  # type: ignore[arg-type]
    busy = [SimpleNamespace(done=False)]
    watch.check(busy)
    assert watch.problems == []  # not its turn yet
    watch.check(busy)
    pulled = "ImagePullBackOff: image ghcr.io/quantumlayer/qlens-gateway:v9"
    assert [p.reason for p in watch.problems] == [pulled]
    core.pods = []  # the rollback removed the pods: what was seen is kept
    assert [p.pod for p in watch.now()] == ["p"]


def test_watch_keeps_a_crash_over_a_later_transient_reason_and_forgets_pods_ready_in_the_end():
    crashed = pod("gw", containers=[status(waiting=("CrashLoopBackOff", ""), last_exit=3, restarts=2)])
    starting = pod("cache", containers=[status(waiting=("ContainerCreating", ""))])
    core = FakeCore([crashed, starting], [], {("gw", True): "boom\n"})
    watch = diagnose.Watch(SimpleNamespace(core=core), "ns", every=1)  # type: ignore[arg-type]
    watch.now()
    assert [p.pod for p in watch.problems] == ["cache", "gw"]
    # the crashing pod restarts (Running, not Ready): its exit code is what explains the failure
    core.pods = [pod("gw", containers=[status()]), starting]
    watch.now()
    assert {p.pod: p.reason for p in watch.problems}["gw"] == "CrashLoopBackOff: exit code 3, 2 restarts"
    # the rollback removed gw; cache was only slow and is Ready now
    core.pods = [pod("cache", ready=True, containers=[status()])]
    left = [(p.pod, p.reason) for p in watch.settle()]
    assert left == [("gw", "CrashLoopBackOff: exit code 3, 2 restarts")]
