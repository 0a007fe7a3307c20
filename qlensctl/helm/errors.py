"""The Helm SDK's failures as qlensctl errors, each with a hint saying what to do.

helm_python raises a few exception types (not found, Kubernetes unreachable, cancelled by the
timeout, anything else) and carries Helm's own message as text. What went wrong beyond the type
is only in that text, so `classify` reads it: schema violations and the chart's own `fail` are
configuration problems (exit 2), a release Helm is still busy with or that was rolled back is a
failed operation (exit 1). Pure functions of the message, so each class has a unit test
(tests/unit/test_helm_errors.py) that fails when Helm rewords one.
"""

from __future__ import annotations

import re

from qlensctl.errors import ClusterError, ConfigError, OperationError, QlensError


class ReleaseNotFoundError(OperationError):
    """The release (or the revision asked for) does not exist in that namespace."""


def not_found(release: str, namespace: str) -> ReleaseNotFoundError:
    return ReleaseNotFoundError(
        f"release {release!r} not found in namespace {namespace}",
        f"deploy it first (qlensctl deploy ENV), or check the namespace and the kube context "
        f"(`helm list -n {namespace}`)",
    )


def kube_error(detail: str) -> QlensError:
    """Helm could not use the kube context: an unknown context (exit 2) or an unreachable server."""
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


def classify(
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
            f"{action} of {release} in {namespace} failed and was rolled back: {first_lines(detail)}",
            f"see which pods are not ready with `kubectl get pods -n {namespace}`; the previous revision "
            "is serving",
        )
    if timed_out:
        return OperationError(
            f"{action} of {release} in {namespace} timed out: {first_lines(detail)}",
            f"raise --timeout, or look at `kubectl get pods -n {namespace}`",
        )
    if action in ("render", "lint"):
        return ConfigError(
            f"the chart failed to {action}: {first_lines(detail)}",
            "check the values and charts/qlens; re-run with --debug for details",
        )
    return OperationError(
        f"could not {action} {release or 'the chart'} in {namespace}: {first_lines(detail)}",
        "re-run with --debug for details",
    )


def first_lines(text: str, n: int = 4) -> str:
    """The first `n` non-empty lines of a long Helm message, on one line."""
    lines = [line for line in text.splitlines() if line.strip()]
    return "; ".join(lines[:n]) + (" ..." if len(lines) > n else "")
