"""Typed errors raised by qlensctl's layers; `main` maps them to one message, a hint and an exit code.

Layers (environments, render, helm, kube, secrets, local, smoke) never print or exit: they raise
one of these. Exit 1 = the operation failed; exit 2 = bad usage or configuration.
"""

from __future__ import annotations

from typing import Any


class QlensError(Exception):
    """Base: `message` says what failed, `hint` says what to do."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def as_dict(self) -> dict[str, Any]:
        """The error as `--json` prints it (under "error"): its class names the kind of failure."""
        return {"type": type(self).__name__, "message": self.message, "hint": self.hint,
                "exitCode": self.exit_code}


class ConfigError(QlensError):
    """Bad usage or configuration: an invalid environment file, an unknown environment, bad flags."""

    exit_code = 2


class OperationError(QlensError):
    """An operation was attempted and failed (a failed deploy, a smoke check, a dead process)."""

    exit_code = 1


class ClusterError(OperationError):
    """The cluster could not be reached or refused a request."""


class RefusedError(QlensError):
    """A safety guard refused the operation before anything changed (wrong context, missing secrets)."""

    exit_code = 2


def first_line(exc: BaseException) -> str:
    """An exception's message cut to one line of at most 200 characters (its type when empty):
    what a foreign library raised, fit for the one-line error message."""
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__
