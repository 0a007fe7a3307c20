"""Deploy and roll back the `qlens` release: the orchestration behind deploy, rollback, status, history.

    deploy:   validate -> context guard -> [confirm] -> namespace -> deploy lock -> not pending?
              -> secrets -> backup values -> upgrade-or-install -> wait for the rollout
              -> (failed: rolled back) -> status
    rollback: history -> [confirm] -> deploy lock -> helm rollback to the previous good (or a
              given) revision -> wait
    emergency rollback: scale qlens-<service>-previous up, once Ready qlens-<service> to 0 (the
              guide's manual procedure, in the order that serves throughout), only for services
              that have a -previous deployment

The upgrade is Helm's atomic one (`--atomic`: wait, and roll back a rollout that fails or times
out; a failed first install is removed). While Helm waits, the deployments' rollout is read here
every half second, so the command shows live progress per deployment (Helm's own wait says
nothing until it is over) and can name the deployments that did not come up.

Deploy, rollback and the emergency rollback hold the namespace's deploy lock (a Lease, taken
with qlensctl.kube.locked) while they change anything, so a second deploy is refused at once,
naming the one running. A release left
pending-install/pending-upgrade by a command that was interrupted (Ctrl-C, a crash, a lost
connection) is refused too, with what to do: `qlensctl rollback ENV`.

Nothing here prints or exits: progress goes to callbacks, results are dataclasses, failures are
qlensctl errors. Secret values never leave qlensctl.secrets; results name keys only.
"""

from __future__ import annotations

import difflib
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from qlensctl import diagnose
from qlensctl.diagnose import PodProblem
from qlensctl.errors import ClusterError, ConfigError, OperationError, QlensError, RefusedError
from qlensctl.helm import RELEASE, Release, ReleaseNotFoundError
from qlensctl.kube import SERVICES, DeploymentStatus, Kube, deployment_name, locked, previous_deployment_name

VERSION_RE = re.compile(r"^v\d+\.\d+\.\d+$")
GOOD_STATUSES = ("deployed", "superseded")

Step = Callable[[str], None]
RolloutProgress = Callable[[list[DeploymentStatus]], None]


def _quiet(_: Any) -> None:
    pass


# -- history ------------------------------------------------------------------------------------------


def history(helm: Any, namespace: str) -> list[Release]:
    """The release's revisions, oldest first; [] when there is no release."""
    try:
        return sorted(helm.history(RELEASE, namespace), key=lambda r: r.revision)
    except ReleaseNotFoundError:
        return []


def current(revisions: Sequence[Release]) -> Release | None:
    return revisions[-1] if revisions else None


def check_not_pending(revisions: Sequence[Release], environment: Any) -> None:
    """Refuse to touch a release Helm still marks as being changed (pending-install,
    pending-upgrade, pending-rollback). Called under the deploy lock, so no qlensctl command is
    working on it: the one that set it was interrupted (or a `helm` outside qlensctl is running)."""
    now = current(revisions)
    if now is None or not now.status.startswith("pending"):
        return
    ns = environment.namespace
    since = f", since {now.updated}" if now.updated else ""
    message = (f"release {RELEASE} in {ns} is {now.status} (revision {now.revision}, version "
               f"{now.app_version}{since}): a deploy or rollback stopped before Helm finished (Ctrl-C, a "
               "crash, a lost connection), or a `helm` command outside qlensctl is still running; "
               "nothing was changed")
    good = _last_good(revisions[:-1])
    if good is not None:
        hint = (f"if no helm command is running on it, run `qlensctl rollback {environment.name}` (back to "
                f"revision {good.revision}, version {good.app_version}), then deploy again")
    else:
        hint = (f"nothing was ever deployed successfully: remove the stuck release with "
                f"`helm uninstall {RELEASE} -n {ns}`, then deploy again")
    raise RefusedError(message, hint)


# -- validation --------------------------------------------------------------------------------------


def check_version(environment: Any, version: str | None) -> str:
    """The image tag to deploy. Production needs an explicit `--version vX.Y.Z`."""
    from qlensctl import render

    if environment.is_production:
        if not version:
            raise ConfigError("production deploys need an explicit version",
                              "pass --version vX.Y.Z (e.g. --version v1.0.0)")
        if not VERSION_RE.match(version):
            raise ConfigError(f"production versions look like vX.Y.Z (got {version!r})",
                              "pass a release tag, e.g. --version v1.0.0")
    tag = render.image_tag(environment, version)
    if not tag:
        raise ConfigError(f"{environment.name} names no image tag", "pass --version TAG")
    return tag


# -- deploy ------------------------------------------------------------------------------------------


@dataclass
class DeployPlan:
    """Everything deploy decided before it changes anything."""

    environment: Any
    namespace: str
    tag: str
    values: dict[str, Any]
    secrets: dict[str, str] | None  # staging: {key: value} to write; None: Key Vault (production)
    revisions: list[Release]

    @property
    def is_upgrade(self) -> bool:
        return bool(self.revisions)


@dataclass
class DeployResult:
    environment: str
    namespace: str
    tag: str
    ok: bool
    revision: int | None
    status: str
    namespace_created: bool = False
    secrets: dict[str, list[str]] = field(default_factory=dict)  # created/updated/unchanged key names
    backup: Path | None = None
    rolled_back_to: int | None = None
    deployments: list[DeploymentStatus] = field(default_factory=list)
    message: str = ""
    unready: list[PodProblem] = field(default_factory=list)  # why, seen before the rollback

    def as_dict(self) -> dict[str, Any]:
        return {"environment": self.environment, "namespace": self.namespace, "version": self.tag,
                "ok": self.ok, "revision": self.revision, "status": self.status,
                "namespaceCreated": self.namespace_created, "secrets": self.secrets,
                "backup": str(self.backup) if self.backup else None, "rolledBackTo": self.rolled_back_to,
                "deployments": [d.as_dict() for d in self.deployments], "message": self.message,
                "unready": [p.as_dict() for p in self.unready]}


def plan_deploy(environment: Any, helm: Any, version: str | None,
                environ: Mapping[str, str] | None = None, check_secrets: bool = True) -> DeployPlan:
    """Validate and read; change nothing. Missing secrets are all named in one RefusedError
    (`check_secrets=False`, for a dry run: the secrets are not collected at all)."""
    from qlensctl import render
    from qlensctl import secrets as provider_secrets

    tag = check_version(environment, version)
    values = render.render_values(environment, version=tag)
    secret_values = None
    if environment.secrets.backend == "kubernetes" and check_secrets:
        secret_values = provider_secrets.collect_secrets(environment, environ)
    return DeployPlan(environment, environment.namespace, tag, values, secret_values,
                      history(helm, environment.namespace))


def deploy(plan: DeployPlan, kube: Kube, helm: Any, *, wait: bool = True, timeout: float = 300,
           backup_dir: Path | str | None = Path("backup"), on_step: Step = _quiet,
           on_rollout: RolloutProgress = _quiet, operation: str | None = None) -> DeployResult:
    """Apply a plan. With `wait`, the upgrade is atomic: a rollout that fails or times out is
    rolled back by Helm (a first install is removed) and the result says ok=False.

    Everything after the namespace happens under the namespace's deploy lock (`operation`, by
    default "qlensctl deploy ENV TAG", is what the lock tells a second command is running and the
    new revision's Helm description); a lock held by another command, or a release left pending
    by an interrupted one, is a RefusedError before anything changes."""
    env, ns = plan.environment, plan.namespace
    result = DeployResult(env.name, ns, plan.tag, ok=False, revision=None, status="pending")
    result.namespace_created = kube.ensure_namespace(ns)
    on_step(f"namespace {ns}: {'created' if result.namespace_created else 'exists'}")
    operation = operation or f"qlensctl deploy {env.name} {plan.tag}"
    with locked(kube, ns, operation, on_step):
        # the plan's history was read before the lock: another deploy may have finished since
        plan = replace(plan, revisions=history(helm, ns))
        check_not_pending(plan.revisions, env)
        return _deploy_locked(plan, kube, helm, result, wait=wait, timeout=timeout, backup_dir=backup_dir,
                              on_step=on_step, on_rollout=on_rollout, description=operation)


def _deploy_locked(plan: DeployPlan, kube: Kube, helm: Any, result: DeployResult, *, wait: bool,
                   timeout: float, backup_dir: Path | str | None, on_step: Step,
                   on_rollout: RolloutProgress, description: str) -> DeployResult:
    from qlensctl import render
    from qlensctl import secrets as provider_secrets

    env, ns = plan.environment, plan.namespace
    if plan.secrets is not None:
        sync = provider_secrets.sync_kubernetes_secret(kube.api, ns, plan.secrets, env.secrets.name)
        result.secrets = {"created": sync.created, "updated": sync.updated, "unchanged": sync.unchanged}
        on_step(f"Secret {env.secrets.name}: {_secret_summary(result.secrets)}")
    elif env.secrets.backend == "kubernetes":  # e.g. a restore: the values change, the Secret stays
        on_step(f"Secret {env.secrets.name}: unchanged (not synced by this command)")
    else:
        on_step(f"secrets: from Key Vault through ExternalSecret {env.secrets.name} (nothing to create)")
    if plan.is_upgrade and backup_dir is not None:
        result.backup = _backup(helm, env, backup_dir)
        on_step(f"backed up the current values to {result.backup}")
    on_step(f"{'upgrading' if plan.is_upgrade else 'installing'} release {RELEASE} in {ns} "
            f"(version {plan.tag}){f', waiting up to {timeout:.0f}s for the rollout' if wait else ''}")
    names = [deployment_name(s) for s in SERVICES]
    last: list[DeploymentStatus] = []
    watch = diagnose.Watch(kube, ns)
    try:
        _watching(kube, ns, names, watch.wrap(on_rollout) if wait else None, lambda: helm.upgrade_or_install(
            RELEASE, render.chart_dir(), plan.values, ns, wait=wait, atomic=wait, timeout=int(timeout),
            description=description), last)
    except (OperationError, ClusterError) as exc:
        after = history(helm, ns)
        stuck = "; ".join(f"{s.name}: {s.updated}/{s.desired} updated, {s.message}"
                          for s in last if not s.done)
        result.status = "failed"
        # what the operator needs at 3 a.m.: which deployments did not come up (Helm's own
        # message lists every object it waited for), and why their pods did not (seen while
        # waiting: the rollback has removed those pods by now)
        timed_out = any(w in exc.message.lower() for w in ("deadline", "not ready", "timed out"))
        result.message = (f"the rollout did not complete within {timeout:.0f}s ({stuck})"
                          if stuck and timed_out else exc.message)
        result.unready = watch.settle()
        result.deployments = kube.deployments(ns, names)
        if not after:
            result.rolled_back_to = 0 if wait else None
        elif wait and plan.is_upgrade and after[-1].revision > plan.revisions[-1].revision + 1:
            # Helm's atomic upgrade: the failed revision, then a rollback revision on top of it
            good = _last_good(plan.revisions)
            result.rolled_back_to = _rollback_source(after[-1]) or (good.revision if good else None)
            result.revision = after[-1].revision
        return result
    now = current(history(helm, ns))
    result.revision = now.revision if now else None
    result.status = now.status if now else "unknown"
    result.deployments = kube.deployments(ns, names)
    result.ok = True
    return result


def failure_hint(result: DeployResult) -> str:
    """What still exists after a failed deploy, and where to look next."""
    env, ns = result.environment, result.namespace
    events = f"events stay for about an hour: `kubectl get events -n {ns} --sort-by=.lastTimestamp`"
    if result.rolled_back_to:
        return (f"revision {result.rolled_back_to} serves again (`qlensctl status {env}`); the failed pods "
                f"were removed by the rollback, their reasons are above; {events}")
    if result.rolled_back_to == 0:
        return (f"nothing of the release is left in {ns} (`qlensctl status {env}` finds no release); fix "
                f"the cause above and deploy again; {events}")
    return f"see `qlensctl status {env}` and `kubectl get pods -n {ns}`; {events}"


def _watching(kube: Kube, namespace: str, names: list[str], on_rollout: RolloutProgress | None,
              action: Callable[[], Any], last: list[DeploymentStatus] | None = None,
              interval: float = 0.5) -> Any:
    """Run a blocking Helm action in a worker thread and, meanwhile, report the deployments'
    rollout every `interval` (Helm's own wait says nothing until it is over). `last` receives
    the latest states seen: what was stuck when a wait fails."""
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["result"] = action()
        except BaseException as exc:  # handed to the calling thread
            box["error"] = exc

    worker = threading.Thread(target=work, name="helm", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(interval)
        if on_rollout is not None and worker.is_alive():
            try:
                states = kube.deployments(namespace, names)
            except QlensError:  # a progress read that fails is not the deploy failing
                continue
            if last is not None:
                last[:] = states
            on_rollout(states)
    if "error" in box:
        raise box["error"]
    return box.get("result")


def _rollback_source(rev: Release) -> int | None:
    """N from Helm's description of a rollback revision, "Rollback to N"."""
    match = re.search(r"[Rr]ollback to (\d+)", rev.description)
    return int(match.group(1)) if match else None


def _secret_summary(groups: Mapping[str, list[str]]) -> str:
    parts = [f"{what} {', '.join(keys)}" for what, keys in groups.items() if keys]
    return "; ".join(parts) or "nothing to write"


def _backup(helm: Any, environment: Any, directory: Path | str) -> Path:
    from qlensctl import backup

    return backup.backup_values(helm, environment, directory)


def _last_good(revisions: Sequence[Release]) -> Release | None:
    """The newest revision that was successfully deployed (what a rollback returns to)."""
    for rev in reversed(revisions):
        if rev.status in GOOD_STATUSES:
            return rev
    return None


# -- dry run: what would change ----------------------------------------------------------------------


@dataclass
class ManifestDiff:
    added: list[str]
    removed: list[str]
    changed: list[str]
    unchanged: list[str]
    text: str  # unified diff, `helm diff`-style headers per object

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed)

    def as_dict(self) -> dict[str, Any]:
        return {"added": self.added, "removed": self.removed, "changed": self.changed,
                "unchanged": self.unchanged, "diff": self.text}


def _objects(manifest: str) -> dict[str, str]:
    """{"Kind/name": canonical YAML} for each object of a multi-document manifest.

    Secret data is replaced by the key names, so a diff never shows a secret value."""
    import yaml

    out: dict[str, str] = {}
    for doc in yaml.safe_load_all(manifest or ""):
        if not isinstance(doc, dict) or "kind" not in doc:
            continue
        if doc["kind"] == "Secret":
            for section in ("data", "stringData"):
                if isinstance(doc.get(section), dict):
                    doc[section] = {k: "(hidden)" for k in doc[section]}
        name = (doc.get("metadata") or {}).get("name", "?")
        out[f"{doc['kind']}/{name}"] = yaml.safe_dump(doc, sort_keys=True, default_flow_style=False)
    return out


def diff_manifests(deployed: str, proposed: str) -> ManifestDiff:
    old, new = _objects(deployed), _objects(proposed)
    added = sorted(set(new) - set(old))
    removed = sorted(set(old) - set(new))
    both = sorted(set(old) & set(new))
    changed = [k for k in both if old[k] != new[k]]
    chunks: list[str] = []
    for key in sorted(set(old) | set(new)):
        if key in both and key not in changed:
            continue
        verb = "added" if key in added else "removed" if key in removed else "changed"
        lines = difflib.unified_diff(old.get(key, "").splitlines(), new.get(key, "").splitlines(),
                                     f"deployed {key}", f"proposed {key}", n=3, lineterm="")
        chunks.append(f"# {key} ({verb})\n" + "\n".join(lines))
    return ManifestDiff(added, removed, changed, [k for k in both if k not in changed], "\n".join(chunks))


def dry_run(plan: DeployPlan, helm: Any) -> ManifestDiff:
    """The deployed release's manifest against what this deploy would apply; changes nothing.

    Like helm-diff, the proposal is a server-side dry-run upgrade: rendered with the cluster's
    real capabilities (API versions decide e.g. autoscaling/v2beta2 vs v2) and checked by the API
    server, but nothing is stored or applied."""
    from qlensctl import render

    proposed = helm.upgrade_or_install(RELEASE, render.chart_dir(), plan.values, plan.namespace,
                                       dry_run=True, wait=False, atomic=False).manifest
    deployed = helm.status(RELEASE, plan.namespace).manifest if plan.is_upgrade else ""
    return diff_manifests(deployed, proposed)


# -- rollback ----------------------------------------------------------------------------------------


@dataclass
class RollbackResult:
    environment: str
    namespace: str
    ok: bool
    from_revision: int
    to_revision: int
    new_revision: int | None
    before: list[Release]
    after: list[Release]
    deployments: list[DeploymentStatus] = field(default_factory=list)
    message: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"environment": self.environment, "namespace": self.namespace, "ok": self.ok,
                "from": self.from_revision, "to": self.to_revision, "revision": self.new_revision,
                "before": [r.to_dict() for r in self.before], "after": [r.to_dict() for r in self.after],
                "deployments": [d.as_dict() for d in self.deployments], "message": self.message}


def rollback_target(revisions: Sequence[Release], revision: int | None, environment: Any) -> Any:
    """The revision to return to: the given one, or the newest earlier one that was deployed
    successfully (a failed upgrade in between is skipped, unlike `helm rollback`'s plain N-1)."""
    if not revisions:
        raise ClusterError(f"no release {RELEASE} in namespace {environment.namespace}",
                           f"deploy it first: qlensctl deploy {environment.name}")
    now = revisions[-1]
    if revision is not None:
        match = [r for r in revisions if r.revision == revision]
        if not match:
            known = ", ".join(str(r.revision) for r in revisions)
            raise ConfigError(f"release {RELEASE} has no revision {revision}",
                              f"pick one of: {known} (see `qlensctl history {environment.name}`)")
        if revision == now.revision:
            raise ConfigError(f"revision {revision} is the current one: nothing to roll back to",
                              f"pick an earlier revision (see `qlensctl history {environment.name}`)")
        return match[0]
    earlier = _last_good(revisions[:-1])
    if earlier is None:
        raise OperationError(f"release {RELEASE} has no earlier successful revision to roll back to",
                             f"see `qlensctl history {environment.name}`; pass --revision N to choose")
    return earlier


def rollback(environment: Any, kube: Kube, helm: Any, target: Release, before: list[Release], *,
             wait: bool = True, timeout: float = 300, on_step: Step = _quiet,
             on_rollout: RolloutProgress = _quiet) -> RollbackResult:
    ns = environment.namespace
    names = [deployment_name(s) for s in SERVICES]
    ok, message = True, ""
    with locked(kube, ns, f"qlensctl rollback {environment.name} to revision {target.revision}", on_step):
        now = current(history(helm, ns))
        if now is not None and before and now.revision != before[-1].revision:
            raise RefusedError(
                f"release {RELEASE} in {ns} changed while this command was starting (now revision "
                f"{now.revision}, was {before[-1].revision}); nothing was changed",
                f"look at `qlensctl history {environment.name}` and run the rollback again")
        on_step(f"rolling back release {RELEASE} in {ns} to revision {target.revision}")
        try:
            _watching(kube, ns, names, on_rollout if wait else None,
                      lambda: helm.rollback(RELEASE, ns, revision=target.revision, wait=wait,
                                           timeout=int(timeout)))
        except (OperationError, ClusterError) as exc:
            why = diagnose.summary(diagnose.unready_pods(kube, ns))  # a failed rollback is not undone
            ok, message = False, exc.message + (f"\nunready pods:\n{why}" if why else "")
    states = kube.deployments(ns, names)
    after = history(helm, ns)
    return RollbackResult(environment.name, ns, ok, before[-1].revision, target.revision,
                          after[-1].revision if after else None, before, after, states, message)


# -- emergency rollback ------------------------------------------------------------------------------


@dataclass(frozen=True)
class EmergencyStep:
    service: str
    current: str
    current_replicas: int
    previous: str | None  # qlens-<service>-previous when it exists
    previous_replicas: int  # what it has now
    target_replicas: int  # what it gets

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def plan_emergency(environment: Any, kube: Kube) -> list[EmergencyStep]:
    """For each service: the current deployment's replicas and its `-previous` deployment, if any.

    The previous version gets the replicas the current one has (at least 1). Services with no
    `-previous` deployment are left alone: scaling them to 0 would take them down with nothing
    in their place. No `-previous` at all is an error, before anything changes."""
    ns = environment.namespace
    steps = []
    for service in SERVICES:
        cur = kube.deployment(ns, deployment_name(service))
        prev = kube.deployment(ns, previous_deployment_name(service))
        cur_n = int(cur.spec.replicas or 0) if cur is not None else 0
        prev_n = int(prev.spec.replicas or 0) if prev is not None else 0
        wanted = max(cur_n, getattr(environment.replicas, service, 1), 1)
        steps.append(EmergencyStep(service, deployment_name(service), cur_n,
                                   previous_deployment_name(service) if prev is not None else None,
                                   prev_n, wanted))
    if not any(s.previous for s in steps):
        raise OperationError(
            f"no qlens-<service>-previous deployments in {ns}: nothing to fall back to",
            f"use a Helm rollback instead: qlensctl rollback {environment.name}")
    return steps


def emergency_rollback(environment: Any, kube: Kube, steps: Sequence[EmergencyStep], *, wait: bool = True,
                       timeout: float = 300, on_step: Step = _quiet,
                       on_rollout: RolloutProgress = _quiet) -> tuple[bool, list[DeploymentStatus]]:
    """The guide's two scalings, previous version first: qlens-<service>-previous up, and (with
    `wait`) only once it is Ready the current version down to 0, so requests are served throughout
    (scaling the current one down first leaves the Services without endpoints until the previous
    pods start). A previous version that does not become Ready leaves the current one running."""
    with locked(kube, environment.namespace, f"qlensctl rollback {environment.name} --emergency", on_step):
        return _emergency_locked(environment, kube, steps, wait=wait, timeout=timeout, on_rollout=on_rollout,
                                 on_step=on_step)


def _emergency_locked(environment: Any, kube: Kube, steps: Sequence[EmergencyStep], *, wait: bool,
                      timeout: float, on_step: Step,
                      on_rollout: RolloutProgress) -> tuple[bool, list[DeploymentStatus]]:
    ns = environment.namespace
    active = [(s, s.previous) for s in steps if s.previous is not None]
    for s, previous in active:
        on_step(f"scaling {previous} from {s.previous_replicas} to {s.target_replicas}")
        kube.scale(ns, previous, s.target_replicas)
    names = [previous for _, previous in active]
    ok, states = (True, []) if not wait else kube.wait_rollout(ns, names, timeout, on_rollout)
    if not ok:
        why = diagnose.summary(diagnose.unready_pods(kube, ns))
        raise OperationError("the previous versions did not become ready in time; the current ones still run"
                             + (f"\nunready pods:\n{why}" if why else ""),
                             f"check `kubectl get pods -n {ns}`; scale the -previous deployments back to 0 "
                             f"with `kubectl scale -n {ns} deployment NAME --replicas=0`")
    for s, _ in active:
        on_step(f"scaling {s.current} from {s.current_replicas} to 0")
        kube.scale(ns, s.current, 0)
    return True, states or kube.deployments(ns, names)


# -- status ------------------------------------------------------------------------------------------


def status(environment: Any, kube: Kube, helm: Any, events: int = 10) -> dict[str, Any]:
    """Release, deploy lock, deployments, autoscalers, pods and recent events, as data (what
    `status --json` prints)."""
    ns = environment.namespace
    revisions = history(helm, ns)
    if not revisions:
        raise ClusterError(f"no release {RELEASE} in namespace {ns} (context {kube.context})",
                           f"deploy it with `qlensctl deploy {environment.name}`, or check --kube-context")
    now = revisions[-1]
    try:
        lock = kube.read_lock(ns)
    except QlensError:  # e.g. no permission to read Leases: the rest of the status still helps
        lock = None
    return {
        "environment": environment.name,
        "namespace": ns,
        "context": kube.context,
        "release": now.to_dict(),
        "lock": lock.as_dict() if lock is not None else None,  # a deploy or rollback in progress
        "deployments": [d.as_dict() for d in kube.deployments(ns)],
        "autoscalers": [h.as_dict() for h in kube.autoscalers(ns)],
        "pods": [p.as_dict() for p in kube.pods(ns)],
        "events": [e.as_dict() for e in kube.events(ns, events)],
    }
