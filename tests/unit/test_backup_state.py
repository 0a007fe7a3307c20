"""`backup --state` with a Redis that cannot be reached: no process needed (one with Redis running:
tests/integration/test_backup_state.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from qlensctl.backup import backup_state, redis_location
from qlensctl.errors import OperationError


def test_unreachable_redis_names_the_place_never_the_password(tmp_path: Path) -> None:
    url = "redis://:SENTINEL-PW@127.0.0.1:1/0"
    with pytest.raises(OperationError) as info:
        backup_state(url, tmp_path / "values-20260314.yaml")
    assert "127.0.0.1:1/0" in info.value.message and "SENTINEL" not in str(info.value.message)
    assert not (tmp_path / "state-20260314.json").exists()
    assert redis_location(url) == "127.0.0.1:1/0"
