"""Day-2 operations: `scale`, `backup`, `restore`, `maintenance start|end`.

Each command validates its input before it touches the cluster, shows what it will change,
asks before changing production (unless --yes) and prints what it did. The work is done by the
layers: qlensctl.scaling (replica counts, HPAs, readiness), qlensctl.backup (values and Redis
state files), qlensctl.smoke and qlensctl.portforward (the smoke test that ends maintenance) and
the Helm adapter.

Whatever changes replicas holds the namespace's deploy lock (qlensctl.kube, the Lease deploy and
rollback hold) while it does, so a scale never lands in the middle of a deploy's rollout (Helm's
atomic upgrade would fight it, or roll it away) and a deploy never starts between maintenance
end's checks and its scale-back. `restore` is a deploy and takes the lock through release.deploy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from qlensctl import output
from qlensctl.commands.options import HELM, JSON, KUBE_CONTEXT, YES

maintenance_app = typer.Typer(help="Maintenance windows: extra replicas during, health checks after.",
                              no_args_is_help=True)

_REDIS_URL = typer.Option(None, "--redis-url", envvar="QLENS_REDIS_URL", show_default=False, show_envvar=True,
                          help="Redis holding usage counters and cache entries (never printed).")


# -- cluster access ------------------------------------------------------------------------------


def _kube(environment: Any, kube_context: str | None) -> Any:
    from qlensctl.cluster import connect

    return connect(environment, kube_context).kube  # the context guard; fails fast if unreachable


def _locked(kube: Any, namespace: str, operation: str) -> Any:
    """qlensctl.kube.locked, with a taken-over stale lock shown as a warning."""
    from qlensctl.kube import locked

    return locked(kube, namespace, operation, output.warn)


# -- scale ---------------------------------------------------------------------------------------


def scale(
    env: str = typer.Argument(..., help="Environment (staging, production)."),
    service: str = typer.Argument(..., help="gateway, router or cache."),
    replicas: str = typer.Argument(..., help="Replica count, 0..100."),
    kube_context: str = KUBE_CONTEXT,
    yes: bool = YES,
    as_json: bool = JSON,
) -> None:
    """Set a deployment's replicas; says what an HPA will do with the count."""
    from qlensctl import scaling
    from qlensctl.environments import load_environment
    from qlensctl.errors import ConfigError

    try:
        count = int(replicas)
    except ValueError:
        raise ConfigError(f"replicas must be a whole number (got {replicas!r})",
                          f"e.g. `qlensctl scale {env} {service} 3`") from None
    scaling.check_request(service, count)
    environment = load_environment(env)
    kube = _kube(environment, kube_context)
    change = scaling.plan(kube, environment.namespace, service, count)
    if change.autoscaler:
        output.warn(f"{change.deployment} is managed by an autoscaler: {change.autoscaler.verdict(count)}")
    if environment.is_production and change.before != change.after:
        output.confirm(f"Scale {change.deployment} in {environment.namespace} from {change.before} to "
                       f"{change.after} replicas?", yes)
    with _locked(kube, environment.namespace, f"qlensctl scale {environment.name} {service} {count}"):
        done = scaling.apply(kube, environment.namespace, change)
    result = scaling.ScaleResult(environment.name, environment.namespace, [done])
    if as_json:
        output.emit_json(result.as_dict())
        return
    _changes_table(result, f"Scaled ({environment.name})")


def _changes_table(result: Any, title: str) -> None:
    rows = [[c.deployment, c.before, c.after, c.autoscaler.name if c.autoscaler else "-"]
            for c in result.changes]
    output.table(title, ["deployment", "before", "after", "autoscaler"], rows)


# -- backup --------------------------------------------------------------------------------------


def backup(
    env: str = typer.Argument(..., help="Environment whose release to back up."),
    directory: Path = typer.Option(Path("backup"), "--dir", help="Folder for backup files."),
    state: bool = typer.Option(False, "--state", help="Also save Redis usage counters and cache entries."),
    redis_url: str = _REDIS_URL,
    kube_context: str = KUBE_CONTEXT,
    helm_kind: str = HELM,
    as_json: bool = JSON,
) -> None:
    """Save the release's values to DIR/values-YYYYMMDD.yaml (never overwriting)."""
    from qlensctl import backup as backups
    from qlensctl.cluster import connect
    from qlensctl.environments import load_environment

    environment = load_environment(env)
    helm = connect(environment, kube_context, helm_kind).helm
    path = backups.backup_values(helm, environment, directory)
    saved = backups.read_backup(path)
    result: dict[str, Any] = {"environment": environment.name, "file": str(path), "revision": saved.revision,
                              "chart": saved.chart, "redacted": saved.redacted, "state": None}
    if saved.redacted:
        output.warn(f"left out of the backup because they look secret: {', '.join(saved.redacted)}")
    if state:
        result["state"] = _backup_state(redis_url, path)
    if as_json:
        output.emit_json(result)
        return
    output.info(f"Backed up release qlens (revision {saved.revision}, chart {saved.chart}) of "
                f"{environment.name} to [bold]{path}[/bold]")
    if result["state"] and result["state"].get("file"):
        output.info(f"Redis state: {result['state']['keys']} keys to [bold]{result['state']['file']}[/bold]")
    output.info(f"Restore with: qlensctl restore {environment.name} {path}")


def _backup_state(redis_url: str | None, values_file: Path) -> dict[str, Any]:
    """Redis state next to the values file; an unreachable Redis is a warning, not a failure."""
    from qlensctl import backup as backups
    from qlensctl.errors import OperationError

    if not redis_url:
        output.warn("--state: no Redis URL (set QLENS_REDIS_URL or pass --redis-url); state not saved")
        return {"file": None, "keys": 0, "skipped": "no Redis URL"}
    try:
        path, count = backups.backup_state(redis_url, values_file)
    except OperationError as exc:
        output.warn(f"--state: {exc.message}; state not saved")
        return {"file": None, "keys": 0, "skipped": exc.message}
    return {"file": str(path), "keys": count}


# -- restore -------------------------------------------------------------------------------------


def restore(
    env: str = typer.Argument(..., help="Environment to restore."),
    file: Path = typer.Argument(..., help="A values-YYYYMMDD.yaml written by `qlensctl backup`."),
    state: bool = typer.Option(False, "--state", help="Also restore Redis from the state file beside FILE."),
    redis_url: str = _REDIS_URL,
    directory: Path = typer.Option(Path("backup"), "--dir", help="Where the pre-restore backup goes."),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Wait for the rollout."),
    timeout: float = typer.Option(300.0, "--timeout", min=1, help="Seconds to wait for the rollout."),
    kube_context: str = KUBE_CONTEXT,
    helm_kind: str = HELM,
    yes: bool = YES,
    as_json: bool = JSON,
) -> None:
    """Upgrade the release with a backup's values (the guide's recovery procedure).

    The file is checked first (YAML, a QLens backup, this environment's); the current values are
    backed up; the upgrade is watched and rolled back if the rollout fails, as `deploy` does.
    """
    from qlensctl import backup as backups
    from qlensctl import release
    from qlensctl.cluster import connect
    from qlensctl.environments import load_environment
    from qlensctl.errors import ConfigError, OperationError

    environment = load_environment(env)
    saved = backups.read_backup(file)
    backups.check_backup_for(saved, environment)
    state_file = backups.state_file_for(saved.path) if state else None
    if state_file is not None:
        if not redis_url:
            raise ConfigError("--state needs the Redis URL", "set QLENS_REDIS_URL or pass --redis-url")
        backups.read_state(state_file)  # a bad state file is refused before anything changes
    if saved.redacted:
        output.warn(f"the backup left out secret-looking values ({', '.join(saved.redacted)}): "
                    "the chart's defaults apply to them")
    cluster = connect(environment, kube_context, helm_kind)
    kube, helm = cluster.kube, cluster.helm
    revisions = release.history(helm, environment.namespace)
    if environment.is_production:
        output.confirm(f"Upgrade release qlens in {environment.namespace} with the values from {saved.path} "
                       f"(taken {saved.taken}, revision {saved.revision})?", yes)
    image = saved.values.get("image")
    tag = str(image.get("tag")) if isinstance(image, dict) and image.get("tag") else "from backup"
    plan = release.DeployPlan(environment, environment.namespace, tag, saved.values, None, revisions)
    # what the deploy lock tells a second command is running, and Helm's description of the revision
    operation = f"qlensctl restore {environment.name} {saved.path.name}"
    with output.spinner(f"restoring {environment.name} from {saved.path}") as update:
        result = release.deploy(plan, kube, helm, wait=wait, timeout=timeout, backup_dir=directory,
                                on_step=update, operation=operation)
    if not result.ok:
        from qlensctl import diagnose

        note = f"; rolled back to revision {result.rolled_back_to}" if result.rolled_back_to else ""
        why = diagnose.summary(result.unready)
        raise OperationError(f"restore of {environment.name} failed: {result.message}{note}"
                             + (f"\nunready pods:\n{why}" if why else ""), release.failure_hint(result))
    restored = expired = 0
    if state_file is not None:
        restored, expired = backups.restore_state(redis_url, state_file)
    outcome = backups.RestoreResult(saved, result, state_file, restored, expired)
    if as_json:
        output.emit_json(outcome.as_dict())
        return
    if result.backup:
        output.info(f"The values it replaced are saved in {result.backup}")
    output.info(f"Restored {environment.name} from {saved.path}: "
                f"release qlens is at revision {result.revision}")
    if outcome.state_file is not None:
        output.info(f"Redis: {outcome.restored} keys restored, {outcome.expired} had expired since the "
                    "backup")


# -- maintenance ---------------------------------------------------------------------------------


@maintenance_app.command("start")
def maintenance_start(
    env: str = typer.Argument(..., help="Environment."),
    replicas: int = typer.Option(None, "--replicas", min=0, max=100, show_default=False,
                                 help="Scale every service to this count [default: one more than now]."),
    directory: Path = typer.Option(Path("backup"), "--dir", help="Folder for the pre-maintenance backup."),
    kube_context: str = KUBE_CONTEXT,
    helm_kind: str = HELM,
    yes: bool = YES,
    as_json: bool = JSON,
) -> None:
    """Back up the values, then add a replica to every service for redundancy."""
    from qlensctl import backup as backups
    from qlensctl import scaling
    from qlensctl.cluster import connect
    from qlensctl.environments import load_environment

    environment = load_environment(env)
    cluster = connect(environment, kube_context, helm_kind)
    kube, helm = cluster.kube, cluster.helm
    ns = environment.namespace
    plans = []
    for service in scaling.SERVICES:
        now = scaling.current_replicas(kube, ns, service)
        target = replicas if replicas is not None else min(now + 1, scaling.MAX_REPLICAS)
        plans.append(scaling.plan(kube, ns, service, target))
    if environment.is_production:
        output.confirm(f"Start maintenance on {ns}: back up the values, then scale {_summary(plans)}?", yes)
    with _locked(kube, ns, f"qlensctl maintenance start {environment.name}"):
        path = backups.backup_values(helm, environment, directory)
        done = [scaling.apply(kube, ns, p) for p in plans]
    for c in done:
        if c.autoscaler and not c.autoscaler.min_replicas <= c.after <= c.autoscaler.max_replicas:
            output.warn(f"{c.deployment}: {c.autoscaler.verdict(c.after)}")
    started = scaling.MaintenanceStart(environment.name, ns, done, path)
    if as_json:
        output.emit_json(started.as_dict())
        return
    output.info(f"Backed up the values to {path}")
    _changes_table(started, f"Maintenance started ({environment.name})")
    output.info(f"When done: qlensctl maintenance end {environment.name}")


@maintenance_app.command("end")
def maintenance_end(
    env: str = typer.Argument(..., help="Environment."),
    url: str = typer.Option(None, "--url", show_default=False,
                            help="Smoke-test the gateway at this URL [default: the environment's URL]."),
    port_forward: bool = typer.Option(False, "--port-forward",
                                      help="Smoke-test through a port-forward to svc/qlens-gateway (through "
                                           "the API server, like `kubectl port-forward`)."),
    api_key: str = typer.Option(None, "--api-key", envvar="QLENS_API_KEY", show_default=False,
                                help="API key for the smoke test (never printed)."),
    timeout: float = typer.Option(120.0, "--timeout", min=1, help="Seconds to wait for every deployment."),
    model: str = typer.Option(None, "--model", show_default=False,
                              help="Model the smoke test asks (as smoke-test) [default: smokeTest.model]."),
    kube_context: str = KUBE_CONTEXT,
    yes: bool = YES,
    as_json: bool = JSON,
) -> None:
    """Check health, smoke-test the gateway, then scale back to the environment's replicas.

    The smoke test goes to the environment's URL (its Ingress domain), or with --port-forward to
    svc/qlens-gateway, or to --url. If anything is unhealthy or a check fails the extra replicas
    stay and the command fails: scaling down a sick deployment would only make it worse. The
    deploy lock is held from the health check to the scale-back, so no deploy slips in between.
    """
    from qlensctl import scaling, smoke
    from qlensctl.environments import load_environment
    from qlensctl.errors import ConfigError, OperationError

    if url and port_forward:
        raise ConfigError("--port-forward and --url are exclusive",
                          "--port-forward reaches the gateway of ENV; --url is for any other address")
    environment = load_environment(env)
    smoke_url = smoke.check_url(url) if url else None  # a bad --url: exit 2 now
    smoke.require_key(environment.auth.required, api_key, environment.name)  # before the cluster is asked
    kube = _kube(environment, kube_context)
    ns = environment.namespace
    with _locked(kube, ns, f"qlensctl maintenance end {environment.name}"):
        with output.spinner("waiting for every deployment to be ready"):
            try:
                states = scaling.wait_healthy(kube, ns, timeout)
            except OperationError as exc:
                raise OperationError(f"{exc.message}; replicas left as they are", exc.hint) from None
        where, smoke_results = _smoke(environment, kube, smoke_url, port_forward, api_key,
                                      model or environment.smoke_test.model)
        bad = smoke.failed(smoke_results)
        if bad:
            hint = f"fix it and run `qlensctl maintenance end {environment.name}` again"
            if not (port_forward or url):
                hint += "; if its URL is not reachable from here, add --port-forward"
            raise OperationError(
                f"smoke test of {where} failed ({'; '.join(r.name + ': ' + r.detail for r in bad)}); "
                "replicas left as they are", hint)
        targets = {"gateway": environment.replicas.gateway, "router": environment.replicas.router,
                   "cache": environment.replicas.cache}
        plans = [scaling.plan(kube, ns, s, targets[s]) for s in scaling.SERVICES]
        if environment.is_production and any(p.before != p.after for p in plans):
            output.confirm(f"End maintenance on {ns}: scale {_summary(plans)}?", yes)
        done = [scaling.apply(kube, ns, p) for p in plans]
    ended = scaling.MaintenanceEnd(environment.name, ns, done, states, where, smoke_results)
    if as_json:
        output.emit_json(ended.as_dict())
        return
    output.table("Health", ["deployment", "ready", "result"],
                 [[s.name, f"{s.ready}/{s.desired}", output.status_mark(s.done)] for s in states])
    output.info(f"Smoke test of {where}: all {len(smoke_results)} checks passed")
    _changes_table(ended, f"Maintenance ended ({environment.name})")


def _smoke(environment: Any, kube: Any, url: str | None, port_forward: bool,
           api_key: str | None, model: str | None) -> tuple[str, list[Any]]:
    """The smoke checks against --url, a port-forward to svc/qlens-gateway, or the environment's
    URL; returns where they ran (for messages) and the results. Problems of the forward's streams
    during the checks are warnings: they explain failed checks."""
    from qlensctl import smoke

    if not port_forward:
        where = url or smoke.environment_url(environment)
        with output.spinner(f"smoke-testing {where}"):
            return where, smoke.run_smoke(where, None, api_key, model=model)
    with output.spinner(f"smoke-testing {environment.name} through a port-forward") as update:
        run = smoke.run_through_port_forward(kube, environment, api_key, progress=update, model=model)
    for note in run.stream_errors:
        output.warn(f"port-forward: {note}")
    return f"svc/{smoke.GATEWAY_SERVICE} ({run.route})", run.results


def _summary(plans: list[Any]) -> str:
    return ", ".join(f"{p.service} {p.before}->{p.after}" for p in plans)
