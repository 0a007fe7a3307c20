"""JSON log lines, one per request. Prompts, keys and secrets are never passed in."""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

import orjson


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            entry.update(fields)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def setup_logging(service: str, level: str = "INFO") -> logging.Logger:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # uvicorn's access log formats a line per request on the hot path; ours replaces it
    logging.getLogger("uvicorn.access").disabled = True
    return logging.getLogger(f"qlens.{service}")


def log_event(logger: logging.Logger, msg: str, level: int = logging.INFO, **fields: Any) -> None:
    if logger.isEnabledFor(level):
        logger.log(level, msg, extra={"fields": fields})


def now() -> float:
    return time.perf_counter()


_SAFE_ID = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")


def request_id(value: str | None) -> str:
    """The client's x-request-id when it is a safe token ([A-Za-z0-9._-], 1..128), else a new one.

    Anything else (CR/LF, spaces, quotes, overlong) is never reflected into headers or logs.
    """
    if value and len(value) <= 128 and _SAFE_ID.issuperset(value):
        return value
    return os.urandom(16).hex()  # uuid4().hex's shape (32 hex digits) at a sixth of its cost


def log_line(logger: logging.Logger, msg: str, **fields: Any) -> None:
    """An INFO line in the same JSON shape as JSONFormatter, written with one write(2).

    For the per-request line on the hot path: the logging module's record machinery (caller
    lookup, handler locks, formatting) costs several times more than the line itself. Lines stay
    well under PIPE_BUF, so concurrent writers never interleave them.
    """
    if logger.isEnabledFor(logging.INFO):
        entry = {"ts": round(time.time(), 3), "level": "info", "logger": logger.name, "msg": msg, **fields}
        try:
            os.write(2, orjson.dumps(entry, default=str) + b"\n")
        except OSError:  # a closed or full stderr must not fail a request
            pass
