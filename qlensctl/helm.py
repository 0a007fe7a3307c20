"""The Helm adapter: one small interface and the engine behind it.

qlensctl needs eight Helm operations: upgrade_or_install (atomic, wait, timeout), rollback,
history, status, get_values, template, lint and uninstall. `Helm` fixes their signatures and
results (`Release`, `LintReport`, plain dicts and text) and one class implements them:

- `EmbeddedHelm`: the Helm SDK in-process (`helm_python`, package helm-python-sdk: Helm's Go code
  behind a C ABI). Nothing to install, so it works on any machine with the Python package.

There used to be a second engine, the user's `helm` binary through pyhelm3. No `helm` binary can be
installed where QLens is built and tested, so that engine never ran in the test suite while
`auto` picked it on most operators' machines: the engine users got was not the one we tested. It
was removed; `auto` (the default) and `embedded` both mean the SDK. Releases are stored as Helm
stores them (Secrets in the release namespace), so a `helm` CLI can still read and roll them back.
Every failure is raised as a qlensctl.errors type with a hint; nothing here prints.
Heavy imports (helm_python loads an 85 MB library) happen inside the methods that need them.
"""

from __future__ import annotations

import json
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import yaml

from qlensctl.errors import ClusterError, ConfigError, OperationError, QlensError

if TYPE_CHECKING:
    from qlensctl.kube import Kube

RELEASE = "qlens"
DEFAULT_TIMEOUT = 300  # seconds, for waits on rollouts
HISTORY_MAX = 10  # revisions Helm keeps per release
MODES = ("auto", "embedded")

# Helm's install order (releaseutil.InstallOrder): `template` output follows it, like `helm template`.
_INSTALL_ORDER = (
    "PriorityClass Namespace NetworkPolicy ResourceQuota LimitRange PodSecurityPolicy PodDisruptionBudget "
    "ServiceAccount Secret SecretList ConfigMap StorageClass PersistentVolume PersistentVolumeClaim "
    "CustomResourceDefinition ClusterRole ClusterRoleList ClusterRoleBinding ClusterRoleBindingList Role "
    "RoleList RoleBinding RoleBindingList Service DaemonSet Pod ReplicationController ReplicaSet Deployment "
    "HorizontalPodAutoscaler StatefulSet Job CronJob IngressClass Ingress APIService"
).split()


class ReleaseNotFoundError(OperationError):
    """The release (or the revision asked for) does not exist in that namespace."""


@dataclass(frozen=True)
class Release:
    """One revision of a release, as `helm history` / `helm status` describe it."""

    name: str
    namespace: str
    revision: int
    status: str  # deployed, superseded, failed, pending-install, pending-upgrade, uninstalled, ...
    chart: str  # name-version, e.g. qlens-0.1.0
    chart_version: str
    # the version of QLens this revision runs: its values' image.tag (what `deploy --version` sets);
    # the chart's appVersion only when the values name no tag (the chart then falls back to it)
    app_version: str
    updated: str  # ISO 8601, UTC
    description: str = ""  # "qlensctl deploy staging v2", "Rollback to 3", "Upgrade ... failed: ..."
    manifest: str = field(default="", repr=False)  # filled by status and upgrade_or_install

    def to_dict(self) -> dict[str, Any]:
        """For `--json`: everything but the manifest."""
        data = asdict(self)
        data.pop("manifest")
        return data


@dataclass(frozen=True)
class LintMessage:
    severity: str  # info, warning, error
    path: str
    message: str


@dataclass(frozen=True)
class LintReport:
    messages: tuple[LintMessage, ...]

    @property
    def errors(self) -> list[LintMessage]:
        return [m for m in self.messages if m.severity == "error"]

    @property
    def warnings(self) -> list[LintMessage]:
        return [m for m in self.messages if m.severity == "warning"]

    @property
    def ok(self) -> bool:
        """Clean: no error and no warning (info lines, like "icon is recommended", are fine)."""
        return not self.errors and not self.warnings


@dataclass(frozen=True)
class UpgradeOptions:
    """How `upgrade_or_install` runs; the flags of `helm upgrade --install` with these names."""

    atomic: bool
    wait: bool
    timeout: int  # seconds
    create_namespace: bool
    dry_run: bool
    description: str | None


class Helm(ABC):
    """The operations qlensctl needs from Helm. `namespace` is always explicit."""

    kind: ClassVar[str]

    def __init__(self, *, kubeconfig: str | Path | None = None, kube_context: str | None = None) -> None:
        # None: Helm's usual resolution ($KUBECONFIG, ~/.kube/config) and the current context
        self.kubeconfig = str(kubeconfig) if kubeconfig else None
        self.kube_context = kube_context

    def upgrade_or_install(
        self,
        release: str,
        chart: str | Path,
        values: dict[str, Any],
        namespace: str,
        *,
        atomic: bool = True,
        wait: bool = True,
        timeout: int = DEFAULT_TIMEOUT,
        create_namespace: bool = False,
        dry_run: bool = False,
        description: str | None = None,
    ) -> Release:
        """Install the release, or upgrade it when it exists. atomic: a failed install or upgrade
        is rolled back (and raised as OperationError). wait: until every object is ready, at most
        `timeout` seconds. dry_run: render and check against the API server, change nothing."""
        options = UpgradeOptions(atomic, wait, int(timeout), create_namespace, dry_run, description)
        return self._upgrade_or_install(release, str(chart), values, namespace, options)

    @abstractmethod
    def _upgrade_or_install(
        self, release: str, chart: str, values: dict[str, Any], namespace: str, options: UpgradeOptions
    ) -> Release:
        """The engine's `helm upgrade --install` with those options."""

    @abstractmethod
    def rollback(
        self,
        release: str,
        namespace: str,
        *,
        revision: int | None = None,
        wait: bool = True,
        timeout: int = DEFAULT_TIMEOUT,
    ) -> Release:
        """Roll back to `revision` (default: the previous one); returns the new revision."""

    @abstractmethod
    def history(self, release: str, namespace: str, *, max_revisions: int | None = None) -> list[Release]:
        """Revisions, oldest first, each with its description and the image tag it runs."""

    @abstractmethod
    def status(self, release: str, namespace: str) -> Release:
        """The current revision, with its manifest."""

    @abstractmethod
    def get_values(
        self, release: str, namespace: str, *, revision: int | None = None, all_values: bool = False
    ) -> dict[str, Any]:
        """The user-supplied values (all_values: merged with the chart's defaults)."""

    @abstractmethod
    def template(
        self,
        chart: str | Path,
        values: dict[str, Any],
        namespace: str,
        *,
        release: str = RELEASE,
        kube_version: str | None = None,
        api_versions: Sequence[str] = (),
    ) -> str:
        """The manifests, offline, as `helm template` prints them. kube_version / api_versions
        set the capabilities the chart sees (e.g. "1.20.0" to render for an old cluster)."""

    @abstractmethod
    def lint(
        self, chart: str | Path, values: dict[str, Any], namespace: str, *, kube_version: str | None = None
    ) -> LintReport:
        """`helm lint --strict` with these values."""

    @abstractmethod
    def uninstall(
        self, release: str, namespace: str, *, wait: bool = False, timeout: int = DEFAULT_TIMEOUT
    ) -> None:
        """Remove the release and its objects."""


# --- the embedded SDK ----------------------------------------------------------------------------------


class EmbeddedHelm(Helm):
    """Helm's Go SDK in-process through helm_python (one Config per namespace, reused)."""

    kind = "embedded"

    def __init__(self, *, kubeconfig: str | Path | None = None, kube_context: str | None = None) -> None:
        super().__init__(kubeconfig=kubeconfig, kube_context=kube_context)
        self._configs: dict[str, Any] = {}
        _helm_python()  # fail now, with a hint, if the library cannot load

    def _config(self, namespace: str) -> Any:
        if namespace not in self._configs:
            check_kubeconfig(self.kubeconfig)
            hp = _helm_python()
            try:
                self._configs[namespace] = hp.Config(
                    kubeconfig_path=self.kubeconfig, kube_context=self.kube_context, namespace=namespace
                )
            except hp.HelmError as exc:
                raise self._translate(exc, "connect", "", namespace) from None
        return self._configs[namespace]

    def close(self) -> None:
        for cfg in self._configs.values():
            cfg.close()
        self._configs.clear()

    def _upgrade_or_install(
        self, release: str, chart: str, values: dict[str, Any], namespace: str, options: UpgradeOptions
    ) -> Release:
        hp = _helm_python()
        cfg = self._config(namespace)
        exists = self._exists(release, namespace)
        action = "upgrade" if exists else "install"
        opts: dict[str, Any] = {
            "namespace": namespace,
            "timeout": options.timeout,
            "wait": "watcher" if options.wait else None,
            "rollback_on_failure": options.atomic,
            "dry_run": "server" if options.dry_run else None,
            "description": options.description,
        }
        try:
            with hp.Chart.load(chart) as loaded:
                if exists:
                    out = cfg.upgrade(loaded, release, values, max_history=HISTORY_MAX, **opts)
                else:
                    out = cfg.install(loaded, release, values, create_namespace=options.create_namespace,
                                      **opts)
        except hp.HelmError as exc:
            raise self._translate(exc, action, release, namespace, atomic=options.atomic) from None
        # the summary carries neither; both are what this call just stored
        return _release_from_summary(out, description=options.description or "", values=values)

    def rollback(self, release: str, namespace: str, *, revision: int | None = None, wait: bool = True,
                 timeout: int = DEFAULT_TIMEOUT) -> Release:
        hp = _helm_python()
        cfg = self._config(namespace)
        try:
            cfg.rollback(release, version=revision, timeout=int(timeout), wait="watcher" if wait else None)
        except hp.HelmError as exc:
            raise self._translate(exc, "roll back", release, namespace) from None
        return self.status(release, namespace)  # the new revision; one read, not the whole history

    def history(self, release: str, namespace: str, *, max_revisions: int | None = None) -> list[Release]:
        return self._history(release, namespace, max_revisions=max_revisions, details=True)

    def _history(
        self, release: str, namespace: str, *, max_revisions: int | None, details: bool
    ) -> list[Release]:
        """helm_python's history summaries lack each revision's description and values, so with
        `details` every revision is also read whole (`helm get all --revision N`, at most
        HISTORY_MAX of them): the description says who deployed what or "Rollback to N", and the
        values give the image tag that revision runs."""
        hp = _helm_python()
        cfg = self._config(namespace)
        try:
            summaries = cfg.history(release, max_revisions=max_revisions)
            out = [
                self._detailed(cfg, release, s) if details else _release_from_summary(s) for s in summaries
            ]
        except hp.HelmError as exc:
            raise self._translate(exc, "read the history of", release, namespace) from None
        return sorted(out, key=lambda r: r.revision)

    @staticmethod
    def _detailed(cfg: Any, release: str, summary: dict[str, Any]) -> Release:
        hp = _helm_python()
        try:
            full = cfg.get_all(release, revision=int(summary.get("revision", 0)))
        except hp.HelmNotFoundError:  # pruned (history-max) between the two reads
            return _release_from_summary(summary)
        return _release_from_summary(summary, description=_info_description(full), values=full.get("config"))

    def status(self, release: str, namespace: str) -> Release:
        hp = _helm_python()
        try:
            full = self._config(namespace).get_all(release)  # summary (with the manifest), info, values
        except hp.HelmError as exc:
            raise self._translate(exc, "read the status of", release, namespace) from None
        return _release_from_summary(full.get("summary") or {}, description=_info_description(full),
                                     values=full.get("config"))

    def get_values(self, release: str, namespace: str, *, revision: int | None = None,
                   all_values: bool = False) -> dict[str, Any]:
        hp = _helm_python()
        try:
            values = self._config(namespace).get_values(release, all_values=all_values, revision=revision)
        except hp.HelmError as exc:
            raise self._translate(exc, "read the values of", release, namespace) from None
        return dict(values or {})

    def template(self, chart: str | Path, values: dict[str, Any], namespace: str, *, release: str = RELEASE,
                 kube_version: str | None = None, api_versions: Sequence[str] = ()) -> str:
        hp = _helm_python()
        try:
            with hp.Chart.load(str(chart)) as loaded:
                files = _render_with_capabilities(
                    loaded, values, release, namespace, kube_version, api_versions
                )
        except hp.HelmError as exc:
            raise self._translate(exc, "render", release, namespace) from None
        return join_manifests(files)

    def lint(self, chart: str | Path, values: dict[str, Any], namespace: str, *,
             kube_version: str | None = None) -> LintReport:
        hp = _helm_python()
        try:
            report = hp.lint(
                str(chart),
                values,
                strict=True,
                namespace=namespace,
                kube_version=_v(kube_version) if kube_version else None,
            )
        except hp.HelmError as exc:
            raise self._translate(exc, "lint", "", namespace) from None
        names = {1: "info", 2: "warning", 3: "error"}
        return LintReport(
            tuple(
                LintMessage(
                    names.get(int(m.get("severity", 0)), "info"),
                    str(m.get("path", "")),
                    str(m.get("error", "")).strip(),
                )
                for m in report.get("messages", [])
            )
        )

    def uninstall(self, release: str, namespace: str, *, wait: bool = False,
                  timeout: int = DEFAULT_TIMEOUT) -> None:
        hp = _helm_python()
        try:
            self._config(namespace).uninstall(release, timeout=int(timeout), wait="watcher" if wait else None)
        except hp.HelmError as exc:
            raise self._translate(exc, "uninstall", release, namespace) from None

    def _exists(self, release: str, namespace: str) -> bool:
        """Any revision at all (a failed first install too: upgrading it is what `--install` does)."""
        try:
            return bool(self._history(release, namespace, max_revisions=1, details=False))
        except ReleaseNotFoundError:
            return False

    @staticmethod
    def _translate(
        exc: Exception, action: str, release: str, namespace: str, *, atomic: bool = False
    ) -> QlensError:
        hp = _helm_python()
        detail = str(getattr(exc, "detail", "") or exc).strip()
        if isinstance(exc, hp.HelmNotFoundError):
            return _not_found(release, namespace)
        if isinstance(exc, hp.HelmKubeError):
            return _cluster_error(detail)
        return _classify(
            detail,
            action,
            release,
            namespace,
            atomic=atomic,
            timed_out=isinstance(exc, hp.HelmCancelledError),
        )


def _helm_python() -> Any:
    try:
        import helm_python
    except Exception as exc:  # ImportError, or the native library failing to load
        raise ConfigError(
            f"the embedded Helm SDK cannot be loaded: {exc}",
            "reinstall it (pip install helm-python-sdk), or install Helm 3+ and use --helm binary",
        ) from None
    return helm_python


def _render_with_capabilities(
    chart: Any,
    values: dict[str, Any],
    release: str,
    namespace: str,
    kube_version: str | None,
    api_versions: Sequence[str],
) -> dict[str, str]:
    """Chart.render, plus the Kubernetes version and extra API versions the chart should see.

    helm_python's Python wrapper does not expose these yet but the library's render call accepts
    them (`helm template --kube-version/--api-versions`), so they are passed through its C ABI."""
    from helm_python import _native

    opts: dict[str, Any] = {"name": release, "namespace": namespace, "is_install": True}
    if kube_version:
        opts["kube_version"] = _v(kube_version)
    if api_versions:
        opts["api_versions"] = list(api_versions)
    rendered = _native.call_string("helm_render", chart._raw(), json.dumps(values), json.dumps(opts))
    files: dict[str, str] = json.loads(rendered)
    return files


def _release_from_summary(
    summary: dict[str, Any], *, description: str | None = None, values: Any = None
) -> Release:
    """helm_python's release summary (+ what it leaves out: the description and the values)."""
    name = str(summary.get("chart_name", ""))
    version = str(summary.get("chart_version", ""))
    return Release(
        name=str(summary.get("name", "")),
        namespace=str(summary.get("namespace", "")),
        revision=int(summary.get("revision", 0)),
        status=str(summary.get("status", "")),
        chart=f"{name}-{version}" if name else version,
        chart_version=version,
        app_version=image_tag(values) or str(summary.get("app_version", "")),
        updated=str(summary.get("deployed_at", "")),
        description=str(description if description is not None else summary.get("description", "") or ""),
        manifest=str(summary.get("manifest", "") or ""),
    )


def _info_description(full: dict[str, Any]) -> str:
    return str((full.get("info") or {}).get("description", "") or "")


def image_tag(values: Any) -> str:
    """The image tag a revision's user-supplied values deploy (`image.tag`), "" when they set none."""
    image = values.get("image") if isinstance(values, dict) else None
    tag = image.get("tag") if isinstance(image, dict) else None
    return str(tag) if tag not in (None, "") else ""


# --- shared: errors, output, selection ----------------------------------------------------------------


def _v(kube_version: str) -> str:
    return kube_version if kube_version.startswith("v") else f"v{kube_version}"


def _not_found(release: str, namespace: str) -> ReleaseNotFoundError:
    return ReleaseNotFoundError(
        f"release {release!r} not found in namespace {namespace}",
        f"deploy it first (qlensctl deploy ENV), or check the namespace and the kube context "
        f"(`helm list -n {namespace}`)",
    )


def check_kubeconfig(explicit: str | None) -> None:
    """Fail early when there is no kubeconfig at all. Without one, client-go falls back to
    http://localhost:8080, which on a laptop running `qlensctl up` is the QLens gateway."""
    if explicit:
        if not Path(explicit).is_file():
            raise ConfigError(
                f"kubeconfig {explicit} does not exist", "pass an existing file or set KUBECONFIG"
            )
        return
    listed = [p for p in os.environ.get("KUBECONFIG", "").split(os.pathsep) if p]
    candidates = listed or [str(Path.home() / ".kube" / "config")]
    if any(Path(p).is_file() for p in candidates) or os.environ.get("KUBERNETES_SERVICE_HOST"):
        return
    raise ConfigError(
        f"no kubeconfig: {', '.join(candidates)} not found",
        "set KUBECONFIG (or create ~/.kube/config) for your cluster, e.g. with your cloud's get-credentials",
    )


def _cluster_error(detail: str) -> QlensError:
    low = detail.lower()
    if "context" in low and ("does not exist" in low or "not found" in low):
        return ConfigError(
            f"unknown kube context: {detail}", "list contexts with `kubectl config get-contexts`"
        )
    return ClusterError(
        f"cannot reach the Kubernetes API server: {detail}",
        "check `kubectl config current-context` and that the cluster is reachable (VPN, credentials)",
    )


_FAIL_MESSAGE = re.compile(r"execution error at \([^)]*\):\s*(.*)", re.DOTALL)


def _classify(
    detail: str, action: str, release: str, namespace: str, *, atomic: bool = False, timed_out: bool = False
) -> QlensError:
    """Everything that is not 'not found' or 'unreachable': bad values, chart errors, failed releases."""
    low = detail.lower()
    if "don't meet the specifications of the schema" in low or low.startswith("- at '/"):
        problems = [
            line.strip().removeprefix("- ") for line in detail.splitlines() if line.strip().startswith("- ")
        ]
        return ConfigError(
            "the values do not match charts/qlens/values.schema.json: " + "; ".join(problems or [detail]),
            "fix that key in the environment file (or the values file) and run the command again",
        )
    m = _FAIL_MESSAGE.search(detail)
    if m:  # the chart's own `fail` / `required`: a configuration problem it explains itself
        return ConfigError(
            f"the chart refused these values: {m.group(1).strip()}",
            "fix the environment file (or the values file) and run the command again",
        )
    if "has no" in low and "version" in low:
        return ReleaseNotFoundError(
            f"{release}: {detail}", f"see the revisions with `qlensctl history` (namespace {namespace})"
        )
    if "another operation" in low and "in progress" in low:
        return OperationError(
            f"could not {action} {release} in {namespace}: another Helm operation on it is in progress",
            "wait for it to finish; if it was interrupted, `qlensctl rollback` makes the release deployed",
        )
    if "rolled back" in low or (atomic and timed_out):
        return OperationError(
            f"{action} of {release} in {namespace} failed and was rolled back: {_first_lines(detail)}",
            "see which pods are not ready with `kubectl get pods -n "
            + namespace
            + "`; the previous revision is serving",
        )
    if timed_out:
        return OperationError(
            f"{action} of {release} in {namespace} timed out: {_first_lines(detail)}",
            "raise --timeout, or look at `kubectl get pods -n " + namespace + "`",
        )
    if action in ("render", "lint"):
        return ConfigError(
            f"the chart failed to {action}: {_first_lines(detail)}",
            "check the values and charts/qlens; re-run with --debug for details",
        )
    return OperationError(
        f"could not {action} {release or 'the chart'} in {namespace}: {_first_lines(detail)}",
        "re-run with --debug for details",
    )


def _first_lines(text: str, n: int = 4) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return "; ".join(lines[:n]) + (" ..." if len(lines) > n else "")


def join_manifests(files: dict[str, str]) -> str:
    """Rendered template files -> one YAML stream like `helm template`: documents in Helm's
    install order (then file name, then position), each under a `# Source:` line. Empty
    documents (disabled features) are left out. Deterministic by construction."""
    docs = []
    for path in sorted(files):
        if not path.endswith((".yaml", ".yml")) or "/templates/" not in path:
            continue  # NOTES.txt, helpers
        for index, doc in enumerate(re.split(r"(?m)^---\s*$", files[path])):
            body = doc.strip("\n")
            try:
                obj = yaml.safe_load(body)
            except yaml.YAMLError:
                obj = {}
            if not obj:
                continue
            kind = obj.get("kind", "") if isinstance(obj, dict) else ""
            rank = _INSTALL_ORDER.index(kind) if kind in _INSTALL_ORDER else len(_INSTALL_ORDER)
            docs.append((rank, path, index, body))
    docs.sort(key=lambda d: d[:3])
    return "".join(f"---\n# Source: {path}\n{body.strip()}\n" for _, path, _, body in docs)


def manifests(text: str) -> list[dict[str, Any]]:
    """The objects of a YAML stream (template output or a release manifest)."""
    return [doc for doc in yaml.safe_load_all(text) if doc]


def select_helm(
    mode: str = "auto", *, kubeconfig: str | Path | None = None, kube_context: str | None = None
) -> Helm:
    """The embedded Helm SDK: `auto` and `embedded` are the same engine, the one the suite tests."""
    if mode == "binary":
        raise ConfigError("--helm binary is no longer offered: qlensctl runs Helm in-process",
                          "drop --helm (or use --helm embedded); releases stay readable by a helm CLI")
    if mode not in MODES:
        raise ConfigError(f"--helm {mode!r} is not one of {', '.join(MODES)}", "use --helm auto or embedded")
    return EmbeddedHelm(kubeconfig=kubeconfig, kube_context=kube_context)


def helm_for(kube: Kube, mode: str = "auto") -> Helm:
    """Helm on the cluster `kube` talks to: the same kubeconfig file and context, passed explicitly
    (the embedded Helm SDK reads $KUBECONFIG only once, when it loads, so left to itself an
    in-process caller that changed $KUBECONFIG would reach an earlier cluster)."""
    return select_helm(mode, kubeconfig=kube.kubeconfig_file, kube_context=kube.context)


def connect(environment: Any, kube_context: str | None, mode: str = "auto") -> tuple[Kube, Helm]:
    """The kube client (through the environment's context guard) and Helm for the same context.
    An unreachable cluster fails in the first, in seconds, before Helm is loaded."""
    from qlensctl.kube import Kube

    kube = Kube.for_environment(environment, kube_context)
    return kube, helm_for(kube, mode)
