"""EmbeddedHelm: Helm's Go SDK in-process through helm_python; `select_helm` picks it for --helm.

Every failure is raised as a qlensctl.errors type with a hint (see qlensctl.helm.errors); nothing
here prints. helm_python loads an 85 MB library, so it is imported inside the methods.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from qlensctl.errors import ConfigError, QlensError
from qlensctl.helm import errors
from qlensctl.helm.base import (
    DEFAULT_TIMEOUT,
    HISTORY_MAX,
    RELEASE,
    LintMessage,
    LintReport,
    Release,
    image_tag,
)
from qlensctl.helm.errors import ReleaseNotFoundError
from qlensctl.helm.manifests import join_manifests

MODES = ("auto", "embedded")


class EmbeddedHelm:
    """The operations qlensctl needs from Helm, on one kube context (`namespace` is always
    explicit). One helm_python Config per namespace, reused."""

    kind = "embedded"

    def __init__(self, *, kubeconfig: str | Path | None = None, kube_context: str | None = None) -> None:
        # None: Helm's usual resolution ($KUBECONFIG, ~/.kube/config) and the current context
        self.kubeconfig = str(kubeconfig) if kubeconfig else None
        self.kube_context = kube_context
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
        """`helm upgrade --install`: install the release, or upgrade it when it exists. atomic: a
        failed install or upgrade is rolled back (and raised as OperationError). wait: until every
        object is ready, at most `timeout` seconds. dry_run: render and check against the API
        server, change nothing."""
        hp = _helm_python()
        cfg = self._config(namespace)
        exists = self._exists(release, namespace)
        action = "upgrade" if exists else "install"
        opts: dict[str, Any] = {
            "namespace": namespace,
            "timeout": int(timeout),
            "wait": "watcher" if wait else None,
            "rollback_on_failure": atomic,
            "dry_run": "server" if dry_run else None,
            "description": description,
        }
        try:
            with hp.Chart.load(str(chart)) as loaded:
                if exists:
                    out = cfg.upgrade(loaded, release, values, max_history=HISTORY_MAX, **opts)
                else:
                    out = cfg.install(loaded, release, values, create_namespace=create_namespace,
                                      **opts)
        except hp.HelmError as exc:
            raise self._translate(exc, action, release, namespace, atomic=atomic) from None
        # the summary carries neither; both are what this call just stored
        return _release_from_summary(out, description=description or "", values=values)

    def rollback(self, release: str, namespace: str, *, revision: int | None = None, wait: bool = True,
                 timeout: int = DEFAULT_TIMEOUT) -> Release:
        """Roll back to `revision` (default: the previous one); returns the new revision."""
        hp = _helm_python()
        cfg = self._config(namespace)
        try:
            cfg.rollback(release, version=revision, timeout=int(timeout), wait="watcher" if wait else None)
        except hp.HelmError as exc:
            raise self._translate(exc, "roll back", release, namespace) from None
        return self.status(release, namespace)  # the new revision; one read, not the whole history

    def history(self, release: str, namespace: str, *, max_revisions: int | None = None) -> list[Release]:
        """Revisions, oldest first, each with its description and the image tag it runs."""
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
        """The current revision, with its manifest."""
        hp = _helm_python()
        try:
            full = self._config(namespace).get_all(release)  # summary (with the manifest), info, values
        except hp.HelmError as exc:
            raise self._translate(exc, "read the status of", release, namespace) from None
        return _release_from_summary(full.get("summary") or {}, description=_info_description(full),
                                     values=full.get("config"))

    def get_values(self, release: str, namespace: str, *, revision: int | None = None,
                   all_values: bool = False) -> dict[str, Any]:
        """The user-supplied values (all_values: merged with the chart's defaults)."""
        hp = _helm_python()
        try:
            values = self._config(namespace).get_values(release, all_values=all_values, revision=revision)
        except hp.HelmError as exc:
            raise self._translate(exc, "read the values of", release, namespace) from None
        return dict(values or {})

    def template(self, chart: str | Path, values: dict[str, Any], namespace: str, *, release: str = RELEASE,
                 kube_version: str | None = None, api_versions: Sequence[str] = ()) -> str:
        """The manifests, offline, as `helm template` prints them. kube_version / api_versions
        set the capabilities the chart sees (e.g. "1.20.0" to render for an old cluster)."""
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
        """`helm lint --strict` with these values."""
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
            return errors.not_found(release, namespace)
        if isinstance(exc, hp.HelmKubeError):
            return errors.kube_error(detail)
        return errors.classify(
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
            "reinstall it: pip install helm-python-sdk",
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


def _v(kube_version: str) -> str:
    return kube_version if kube_version.startswith("v") else f"v{kube_version}"


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


def check_mode(mode: str) -> None:
    """--helm: `auto` and `embedded` are the same engine, the one the suite tests."""
    if mode == "binary":
        raise ConfigError("--helm binary is no longer offered: qlensctl runs Helm in-process",
                          "drop --helm (or use --helm embedded); releases stay readable by a helm CLI")
    if mode not in MODES:
        raise ConfigError(f"--helm {mode!r} is not one of {', '.join(MODES)}", "use --helm auto or embedded")


def select_helm(
    mode: str = "auto", *, kubeconfig: str | Path | None = None, kube_context: str | None = None
) -> EmbeddedHelm:
    """The engine for `--helm MODE` (always the embedded SDK), on that kubeconfig and context."""
    check_mode(mode)
    return EmbeddedHelm(kubeconfig=kubeconfig, kube_context=kube_context)
