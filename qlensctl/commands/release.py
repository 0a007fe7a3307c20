"""`deploy`, `rollback`, `status`, `history`: the release of QLens in an environment's namespace.

These commands parse options, confirm, and show progress and results; the work is done by
qlensctl.release (orchestration), qlensctl.kube (cluster reads, context guard) and the Helm
adapter (qlensctl.helm). Anything that changes production asks first unless --yes.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import typer

from qlensctl import output
from qlensctl.commands.options import HELM, JSON, KUBE_CONTEXT, YES

_ENV = typer.Argument(..., help="Environment (staging, production).")
_WAIT = typer.Option(True, "--wait/--no-wait", help="Wait for the rollout, showing progress.")
_TIMEOUT = typer.Option(300.0, "--timeout", min=1, help="Seconds to wait for the rollout.")


# -- live progress ---------------------------------------------------------------------------------


def _rollout_table(states: list[Any], title: str | None = None) -> Any:
    rows = []
    for s in states:
        mark = "[green]done[/green]" if s.done else "[red]failed[/red]" if s.failed else "[yellow]…[/yellow]"
        rows.append([s.name, s.desired, s.updated, s.ready, s.available, _images(s.images),
                     f"{mark} {s.message}"])
    return output.make_table(title, ["deployment", "desired", "updated", "ready", "available", "image",
                                     "state"], rows)


def _images(images: Iterable[str]) -> str:
    """Image names without their registry path: `qlens-gateway:v1.2.0`."""
    return ", ".join(i.rsplit("/", 1)[-1] for i in images)


class _Progress:
    """Rollout progress: a live table on a terminal, otherwise one line per change (CI logs). With
    --json it goes to stderr, so stdout holds only the JSON document."""

    def __init__(self, to_stderr: bool = False) -> None:
        self.console = output.err_console if to_stderr else output.console
        self.live: Any = None
        self.seen: dict[str, str] = {}

    def __enter__(self) -> _Progress:
        if self.console.is_terminal:
            from rich.live import Live

            self.live = Live(console=self.console, refresh_per_second=4, transient=True)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.__exit__(None, None, None)

    def step(self, message: str) -> None:
        if self.live is not None:
            self.live.console.print(f"[dim]•[/dim] {message}")
        else:
            self.console.print(f"• {message}", markup=False, highlight=False)

    def rollout(self, states: list[Any]) -> None:
        if self.live is not None:
            self.live.update(_rollout_table(states))
            return
        for s in states:
            line = f"{s.ready}/{s.desired} ready, {s.message}"
            if self.seen.get(s.name) != line:
                self.seen[s.name] = line
                self.console.print(f"  {s.name}: {line}", markup=False, highlight=False)


# -- deploy ----------------------------------------------------------------------------------------


def deploy(
    env: str = _ENV,
    version: str = typer.Option(None, "--version", show_default=False,
                                help="Image tag to deploy (production: required, vX.Y.Z)."),
    wait: bool = _WAIT,
    timeout: float = _TIMEOUT,
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would change (a manifest diff); "
                                                          "change nothing."),
    yes: bool = YES,
    kube_context: str = KUBE_CONTEXT,
    helm_kind: str = HELM,
    backup_dir: Path = typer.Option(Path("backup"), "--backup-dir",
                                    help="Where the current values are saved before an upgrade."),
    strict: bool = typer.Option(False, "--strict", help="Refuse (instead of warning) when the preflight "
                                                        "check finds the release cannot fit on the nodes."),
    as_json: bool = JSON,
) -> None:
    """Install or upgrade QLens in ENV; a rollout that fails is rolled back and reported failed.
    With --json, stdout is one document (the result, the preflight and, on failure, the unready
    pods' reasons), also when the deploy fails; the exit code is the same as without it."""
    from qlensctl import diagnose, release
    from qlensctl.cluster import connect
    from qlensctl.environments import load_environment
    from qlensctl.errors import OperationError, RefusedError

    environment = load_environment(env)
    release.check_version(environment, version)  # bad usage fails before the cluster is asked
    cluster = connect(environment, kube_context, helm_kind)
    kube, helm = cluster.kube, cluster.helm
    if dry_run:
        try:
            plan = release.plan_deploy(environment, helm, version)
        except RefusedError as exc:  # missing secrets: a real deploy would stop here; show the diff anyway
            output.warn(exc.message.replace("; nothing was changed", "") + " (a deploy would refuse)")
            plan = release.plan_deploy(environment, helm, version, check_secrets=False)
        _show_diff(plan, release.dry_run(plan, helm))
        return
    plan = release.plan_deploy(environment, helm, version)
    preflight = _preflight(environment, kube, plan, strict)
    verb = "Upgrade" if plan.is_upgrade else "Install"
    if environment.is_production:
        output.confirm(f"{verb} release qlens in {plan.namespace} (context {kube.context}) to version "
                       f"{plan.tag}?", yes)
    with _Progress(to_stderr=as_json) as progress:
        result = release.deploy(plan, kube, helm, wait=wait, timeout=timeout, backup_dir=backup_dir,
                                on_step=progress.step, on_rollout=progress.rollout)
    if as_json:
        output.emit_json({**result.as_dict(), "preflight": preflight.as_dict()})
    elif result.deployments:
        output.console.print(_rollout_table(result.deployments, f"Deployments in {plan.namespace}"))
    if not result.ok:
        why = diagnose.summary(result.unready)
        raise OperationError(
            f"deploy of {environment.name} {plan.tag} failed: {result.message}" + _undo_words(result)
            + (f"\nunready pods:\n{why}" if why else ""), release.failure_hint(result))
    if as_json:
        return
    state = "rolled out" if wait else "applied (not waited for)"
    output.info(f"[green]✓[/green] {environment.name}: release qlens revision {result.revision} "
                f"({result.status}), version {plan.tag}, {state}")


def _preflight(environment: Any, kube: Any, plan: Any, strict: bool) -> Any:
    """The capacity check (its report): a warning, or with --strict a refusal, naming the numbers."""
    from qlensctl import capacity
    from qlensctl.errors import RefusedError

    report = capacity.check(kube, plan.namespace, plan.values, plan.is_upgrade)
    if not report.checked:
        output.warn(f"preflight: capacity not checked ({report.note})")
        return report
    if report.fits:
        return report
    text = (f"preflight: {environment.name} does not fit on the nodes ({report.pods} pods at the peak of "
            f"the rollout, surge included): {report.describe()}")
    if strict:
        raise RefusedError(f"{text}; nothing was changed",
                           f"lower resources.requests in environments/{environment.name}.yaml, or add nodes")
    output.warn(f"{text}; pods that do not fit stay Pending (--strict refuses instead)")
    return report


def _undo_words(result: Any) -> str:
    if result.rolled_back_to:
        return f"; rolled back to revision {result.rolled_back_to}"
    if result.rolled_back_to == 0:
        return "; the failed install was removed"
    return ""


def _show_diff(plan: Any, diff: Any) -> None:
    from rich.syntax import Syntax

    where = f"release qlens in {plan.namespace}"
    if not plan.is_upgrade:
        output.info(f"Dry run: {where} does not exist; a deploy would install {len(diff.added)} objects "
                    f"(version {plan.tag}).")
    elif diff.empty:
        output.info(f"Dry run: no changes to {where} (version {plan.tag}).")
    else:
        output.info(f"Dry run: {where}: {len(diff.changed)} changed, {len(diff.added)} added, "
                    f"{len(diff.removed)} removed (version {plan.tag}).")
    if diff.text:
        if output.console.is_terminal:
            output.console.print(Syntax(diff.text, "diff", theme="ansi_dark", background_color="default"))
        else:
            output.console.print(diff.text, markup=False, highlight=False, soft_wrap=True)
    output.info("Nothing was changed.")


# -- rollback --------------------------------------------------------------------------------------


def rollback(
    env: str = _ENV,
    revision: int = typer.Option(None, "--revision", min=1, show_default=False,
                                 help="Revision to return to [default: the previous successful one]."),
    emergency: bool = typer.Option(False, "--emergency",
                                   help="The guide's emergency procedure: scale qlens-<service> to 0 and "
                                        "qlens-<service>-previous up."),
    wait: bool = _WAIT,
    timeout: float = _TIMEOUT,
    yes: bool = YES,
    kube_context: str = KUBE_CONTEXT,
    helm_kind: str = HELM,
    as_json: bool = JSON,
) -> None:
    """Roll the release back to the previous (or a given) revision; history before and after.
    With --json, stdout is one document (also when it fails; the exit code is unchanged)."""
    from qlensctl import release
    from qlensctl.cluster import connect
    from qlensctl.environments import load_environment
    from qlensctl.errors import ConfigError, OperationError

    if emergency and revision is not None:
        raise ConfigError("--emergency and --revision cannot be combined",
                          "--emergency scales deployments; --revision picks a Helm revision")
    environment = load_environment(env)
    if emergency:
        _emergency(environment, kube_context, wait, timeout, yes, as_json)
        return
    cluster = connect(environment, kube_context, helm_kind)
    kube, helm = cluster.kube, cluster.helm
    before = release.history(helm, environment.namespace)
    target = release.rollback_target(before, revision, environment)
    if not as_json:
        _history_table(before, f"History of qlens in {environment.namespace} (before)")
    if environment.is_production:
        output.confirm(f"Roll back release qlens in {environment.namespace} from revision "
                       f"{before[-1].revision} to revision {target.revision} ({target.chart})?", yes)
    with _Progress(to_stderr=as_json) as progress:
        result = release.rollback(environment, kube, helm, target, before, wait=wait, timeout=timeout,
                                  on_step=progress.step, on_rollout=progress.rollout)
    if as_json:
        output.emit_json(result.as_dict())
    else:
        _history_table(result.after, f"History of qlens in {environment.namespace} (after)")
        if result.deployments:
            title = f"Deployments in {environment.namespace}"
            output.console.print(_rollout_table(result.deployments, title))
    if not result.ok:
        raise OperationError(f"rollback of {environment.name} to revision {target.revision}: "
                             f"{result.message}",
                             f"see `qlensctl status {environment.name}`")
    if as_json:
        return
    output.info(f"[green]✓[/green] {environment.name}: rolled back to revision {target.revision} "
                f"(now revision {result.new_revision})")


def _emergency(environment: Any, kube_context: str | None, wait: bool, timeout: float, yes: bool,
               as_json: bool) -> None:
    from qlensctl import release
    from qlensctl.cluster import connect
    from qlensctl.errors import OperationError

    kube = connect(environment, kube_context).kube
    steps = release.plan_emergency(environment, kube)
    if not as_json:
        output.table(f"Emergency rollback plan for {environment.namespace}",
                     ["service", "scale down", "scale up"],
                     [[s.service, f"{s.current} {s.current_replicas} -> 0" if s.previous else "(left as is)",
                       f"{s.previous} {s.previous_replicas} -> {s.target_replicas}" if s.previous
                       else f"no qlens-{s.service}-previous"] for s in steps])
    output.confirm(f"Run the emergency rollback in {environment.namespace} (context {kube.context})?", yes)
    with _Progress(to_stderr=as_json) as progress:
        ok, states = release.emergency_rollback(environment, kube, steps, wait=wait, timeout=timeout,
                                                on_step=progress.step, on_rollout=progress.rollout)
    if as_json:
        output.emit_json({"environment": environment.name, "namespace": environment.namespace, "ok": ok,
                          "emergency": True, "steps": [s.as_dict() for s in steps],
                          "deployments": [d.as_dict() for d in states]})
    elif states:
        output.console.print(_rollout_table(states, f"Previous versions in {environment.namespace}"))
    if not ok:
        raise OperationError("the previous versions did not become ready in time",
                             f"check `kubectl get pods -n {environment.namespace}`")
    if as_json:
        return
    output.info(f"[green]✓[/green] {environment.name}: emergency rollback done; the current deployments "
                "are at 0 replicas")


# -- status and history ----------------------------------------------------------------------------


def status(
    env: str = _ENV,
    kube_context: str = KUBE_CONTEXT,
    helm_kind: str = HELM,
    events: int = typer.Option(10, "--events", min=0, max=100, help="How many recent events to show."),
    as_json: bool = JSON,
) -> None:
    """Release, deployments (desired/ready), autoscalers, pods and recent events."""
    from qlensctl import release
    from qlensctl.cluster import connect
    from qlensctl.environments import load_environment

    environment = load_environment(env)
    cluster = connect(environment, kube_context, helm_kind)
    kube, helm = cluster.kube, cluster.helm
    data = release.status(environment, kube, helm, events=events)
    if as_json:
        output.emit_json(data)
        return
    rel = data["release"]
    output.info(f"Release [bold]qlens[/bold] in {data['namespace']} (context {data['context']}): revision "
                f"{rel['revision']}, {rel['status']}, version {rel['app_version']}, chart {rel['chart']}, "
                f"updated {rel['updated']}")
    lock = data["lock"]
    if lock and lock["stale"]:
        output.warn(f"stale deploy lock: `{lock['operation']}` by {lock['holder']} stopped renewing it at "
                    f"{lock['renewed']}; the next deploy or rollback takes it over")
    elif lock:
        output.warn(f"in progress: `{lock['operation']}` by {lock['holder']} (since {lock['acquired']})")
    output.table("Deployments", ["deployment", "desired", "ready", "updated", "available", "image", "state"],
                 [[d["name"], d["desired"], d["ready"], d["updated"], d["available"],
                   _images(d["images"]), d["message"]]
                  for d in data["deployments"]])
    if data["autoscalers"]:
        output.table("Autoscalers", ["hpa", "target", "min", "max", "current", "desired", "cpu"],
                     [[h["name"], h["target"], h["min_replicas"], h["max_replicas"], h["current_replicas"],
                       h["desired_replicas"], _cpu(h)] for h in data["autoscalers"]])
    output.table("Pods", ["pod", "phase", "ready", "restarts", "node", "age"],
                 [[p["name"], p["phase"], p["ready"], p["restarts"], p["node"], p["age"]]
                  for p in data["pods"]])
    if data["events"]:
        output.table("Recent events", ["age", "type", "reason", "object", "message"],
                     [[e["last_seen"], e["type"], e["reason"], e["object"], e["message"]]
                      for e in data["events"]])


def _cpu(h: dict[str, Any]) -> str:
    current = "?" if h["current_cpu"] is None else f"{h['current_cpu']}%"
    return f"{current} / {h['target_cpu']}%" if h["target_cpu"] else current


def history(
    env: str = _ENV,
    kube_context: str = KUBE_CONTEXT,
    helm_kind: str = HELM,
    as_json: bool = JSON,
) -> None:
    """The release's revisions: revision, updated, status, chart, app version, description."""
    from qlensctl import release
    from qlensctl.cluster import connect
    from qlensctl.environments import load_environment
    from qlensctl.errors import ClusterError

    environment = load_environment(env)
    helm = connect(environment, kube_context, helm_kind).helm
    revisions = release.history(helm, environment.namespace)
    if not revisions:
        raise ClusterError(f"no release qlens in namespace {environment.namespace}",
                           f"deploy it with `qlensctl deploy {environment.name}`, or check --kube-context")
    if as_json:
        output.emit_json({"environment": environment.name, "namespace": environment.namespace,
                          "revisions": [r.to_dict() for r in revisions]})
        return
    _history_table(revisions, f"History of qlens in {environment.namespace}")


def _history_table(revisions: list[Any], title: str) -> None:
    output.table(title, ["revision", "updated", "status", "chart", "app version", "description"],
                 [[r.revision, r.updated, r.status, r.chart, r.app_version, r.description]
                  for r in revisions])
