"""The Helm message classifier (qlensctl.helm.errors): each class of Helm message becomes the
right qlensctl error (and so exit code) with a hint that says what to do.

The messages are Helm's own wording: the first two were captured from the embedded SDK rendering
bad values (tests/unit/test_chart.py renders them live), the others are the format strings of
Helm's pkg/action (upgrade, rollback, the pending-release guard) and client-go's context lookup.
A Helm upgrade that rewords one of them fails here, not in front of an operator.
"""

from __future__ import annotations

import pytest

from qlensctl.errors import ClusterError, ConfigError, OperationError, QlensError
from qlensctl.helm.errors import ReleaseNotFoundError, classify, first_lines, kube_error, not_found

NS = "qlens-staging"
SCHEMA = ("values don't meet the specifications of the schema(s) in the following chart(s):\nqlens:\n"
          "- at '/replicas/gateway': got string, want integer\n"
          "- at '/ports/router': got string, want integer\n")
CHART_FAIL = ("execution error at (qlens/templates/configmap.yaml:1:4): these values are for namespace "
              "qlens-staging, not other: install with --namespace qlens-staging")
ROLLED_BACK = ("release qlens failed, and has been rolled back due to rollback-on-failure being set: "
               "resource Deployment/qlens-staging/qlens-gateway not ready. status: InProgress")


@pytest.mark.parametrize(
    ("detail", "action", "flags", "kind", "code", "message_words", "hint_words"),
    [
        pytest.param(SCHEMA, "upgrade", {}, ConfigError, 2,
                     ["values.schema.json", "at '/replicas/gateway': got string, want integer",
                      "at '/ports/router'"], ["environment file"], id="schema"),
        pytest.param(CHART_FAIL, "render", {}, ConfigError, 2,
                     ["the chart refused these values: these values are for namespace qlens-staging, "
                      "not other"],
                     ["environment file"], id="chart-fail"),
        pytest.param("release has no 99 version", "roll back", {}, ReleaseNotFoundError, 1,
                     ["qlens: release has no 99 version"], ["qlensctl history", NS], id="no-revision"),
        pytest.param("another operation (install/upgrade/rollback) is in progress", "upgrade", {},
                     OperationError, 1, ["another Helm operation on it is in progress"],
                     ["wait for it to finish", "qlensctl rollback"], id="pending"),
        pytest.param(ROLLED_BACK, "upgrade", {"atomic": True}, OperationError, 1,
                     ["upgrade of qlens in qlens-staging failed and was rolled back",
                      "qlens-gateway not ready"], ["kubectl get pods -n qlens-staging", "previous revision"],
                     id="rolled-back"),
        pytest.param("context deadline exceeded", "install", {"atomic": True, "timed_out": True},
                     OperationError, 1, ["failed and was rolled back: context deadline exceeded"],
                     ["previous revision"], id="atomic-timeout"),
        pytest.param("context deadline exceeded", "roll back", {"timed_out": True}, OperationError, 1,
                     ["roll back of qlens in qlens-staging timed out"], ["raise --timeout"], id="timeout"),
        pytest.param("parse error at (qlens/templates/x.yaml:3): unexpected EOF", "lint", {}, ConfigError, 2,
                     ["the chart failed to lint: parse error"], ["charts/qlens"], id="chart-broken"),
        pytest.param("something unforeseen\nsecond line", "upgrade", {}, OperationError, 1,
                     ["could not upgrade qlens in qlens-staging: something unforeseen; second line"],
                     ["--debug"], id="other"),
    ],
)
def test_each_class_of_helm_message_is_its_error_with_a_hint(
    detail: str, action: str, flags: dict[str, bool], kind: type[QlensError], code: int,
    message_words: list[str], hint_words: list[str],
) -> None:
    err = classify(detail, action, "qlens", NS, **flags)
    assert type(err) is kind
    assert err.exit_code == code
    for word in message_words:
        assert word in err.message, err.message
    assert err.hint
    for word in hint_words:
        assert word in err.hint, err.hint


def test_a_timeout_without_atomic_is_not_called_a_rollback() -> None:
    err = classify("context deadline exceeded", "upgrade", "qlens", NS, timed_out=True)
    assert "rolled back" not in err.message and "timed out" in err.message


def test_kube_errors_tell_an_unknown_context_from_an_unreachable_server() -> None:
    unknown = kube_error('context "no-such-context" does not exist')
    assert type(unknown) is ConfigError and unknown.exit_code == 2
    assert "unknown kube context" in unknown.message and "kubectl config get-contexts" in (unknown.hint or "")
    dead = kube_error('Kubernetes cluster unreachable: Get "https://127.0.0.1:1/version": dial tcp '
                      "127.0.0.1:1: connect: connection refused")
    assert type(dead) is ClusterError and dead.exit_code == 1
    assert "cannot reach the Kubernetes API server" in dead.message and "connection refused" in dead.message


def test_not_found_names_the_release_and_namespace() -> None:
    err = not_found("qlens", NS)
    assert isinstance(err, OperationError) and err.exit_code == 1
    assert err.message == "release 'qlens' not found in namespace qlens-staging"
    assert "helm list -n qlens-staging" in (err.hint or "")


def test_long_messages_are_cut_to_their_first_lines() -> None:
    assert first_lines("a\n\nb\nc\nd\ne\nf") == "a; b; c; d ..."
    assert first_lines("only") == "only"
