"""`qlensctl --help` stays fast: importing the CLI (and printing its help) loads no heavy SDK.

Command modules import only typer and rich at module level; SDKs are imported inside the commands
that use them. `python -X importtime` lists every module a fresh interpreter loads.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

HEAVY = ("kubernetes", "openai", "boto3", "botocore", "azure", "fastapi", "helm_python", "pyhelm3",
         "redis", "httpx", "aiohttp")


def imported_packages(code: str) -> set[str]:
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    modules = set()
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name != "imported package":  # the header line
                modules.add(name)
    assert "qlensctl.main" in modules  # the measurement saw our import
    return {m.split(".", 1)[0] for m in modules}


@pytest.mark.parametrize(
    "code",
    [
        "import qlensctl.main",
        "from qlensctl.main import run; run(['--help'])",
    ],
    ids=["import", "help"],
)
def test_no_heavy_sdk_is_imported(code: str) -> None:
    loaded = imported_packages(code)
    heavy = sorted(loaded & set(HEAVY))
    assert not heavy, f"`{code}` imports {heavy}: move those imports inside the command functions"
