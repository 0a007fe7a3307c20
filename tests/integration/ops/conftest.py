"""Helpers for the day-2 operations tests: run `qlensctl` as a real process, plant sentinel secrets."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.cli import ROOT, Result, qlensctl

PROVIDER_VARS = ("AZURE_OPENAI_ENDPOINT", "AZURE_OPENAI_API_KEY", "AWS_REGION", "AWS_ACCESS_KEY_ID",
                 "AWS_SECRET_ACCESS_KEY", "QLENS_REDIS_URL")


@dataclass
class Run(Result):
    """A `qlensctl` process's result that names its arguments when an assertion shows it."""

    args: list[str] = field(default_factory=list)

    def __str__(self) -> str:  # what a failed assertion shows
        head = f"qlensctl {' '.join(self.args)} -> {self.code}"
        return f"{head}\n--- stdout\n{self.out}\n--- stderr\n{self.err}"


class Cli:
    """`qlensctl` in a subprocess, with a clean environment plus what the test adds."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.env: dict[str, str] = {}
        self.runs: list[Run] = []

    def __call__(self, *args: str, env: Mapping[str, str] | None = None, timeout: float = 240) -> Run:
        base = {k: v for k, v in os.environ.items() if k not in PROVIDER_VARS and not k.startswith("AZURE_")}
        base.update({"COLUMNS": "200", "NO_COLOR": "1", "PYTHONPATH": str(ROOT)})
        base.update(self.env)
        base.update(env or {})
        proc = qlensctl(*args, env=base, cwd=self.cwd, timeout=timeout)
        run = Run(proc.returncode, proc.stdout, proc.stderr, list(args))
        self.runs.append(run)
        return run

    def all_output(self) -> str:
        return "".join(r.text for r in self.runs)


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    work = tmp_path / "work"
    work.mkdir()
    return Cli(work)


@pytest.fixture
def sentinels() -> dict[str, str]:
    """Provider credentials with unmistakable values; no output or file may ever contain them."""
    tag = secrets.token_hex(6)
    return {
        "AZURE_OPENAI_ENDPOINT": f"https://sentinel-endpoint-{tag}.openai.azure.com",
        "AZURE_OPENAI_API_KEY": f"SENTINEL-AZKEY-{tag}",
        "AWS_REGION": "us-east-1",  # not secret, and too common to search for
        "AWS_ACCESS_KEY_ID": f"AKIASENTINEL{tag.upper()}",
        "AWS_SECRET_ACCESS_KEY": f"SENTINEL-AWSSECRET-{tag}",
        "QLENS_REDIS_URL": f"redis://:SENTINEL-REDISPW-{tag}@127.0.0.1:1/0",
    }


def secret_values(sentinels: Mapping[str, str]) -> list[str]:
    """The sentinel strings worth searching for (the region is a plain word)."""
    out = [v for k, v in sentinels.items() if k != "AWS_REGION"]
    out.append(sentinels["QLENS_REDIS_URL"].split(":")[2].split("@")[0])  # the password alone
    return out


def assert_no_secrets(text: str, sentinels: Mapping[str, str], where: str = "output") -> None:
    for value in secret_values(sentinels):
        assert value not in text, f"a secret value appeared in {where}"
