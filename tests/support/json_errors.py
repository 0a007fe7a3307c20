"""The error document a `qlensctl ... --json` failure prints, checked the same way everywhere."""

from __future__ import annotations

import json
from typing import Any

from tests.support.cli import Result


def json_error(result: Result) -> dict[str, Any]:
    """The `error` object of a failed run, checked to be all of stdout and to carry the run's exit
    code; the text for people is still on stderr."""
    doc = json.loads(result.out)
    assert list(doc) == ["error"], result.out
    error = doc["error"]
    assert set(error) == {"type", "message", "hint", "exitCode"}, error
    assert error["exitCode"] == result.code, (error, result.code)
    assert "error:" in result.err or "Error:" in result.err, result.err
    return error
