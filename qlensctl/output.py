"""Everything qlensctl shows a person or a machine goes through here.

Tables and spinners (rich) for people; `emit_json` for machines (`--json`). Only command modules
call these; the layers below them return data.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def emit_json(data: Any) -> None:
    """Machine output: plain JSON on stdout, no colour, no wrapping."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    t = Table(title=title, title_justify="left", header_style="bold")
    for col in columns:
        t.add_column(col)
    for row in rows:
        t.add_row(*("" if v is None else str(v) for v in row))
    console.print(t)


def status_mark(ok: bool) -> str:
    return "[green]PASS[/green]" if ok else "[red]FAIL[/red]"


@contextmanager
def spinner(message: str) -> Iterator[Any]:
    """A spinner while something waits; silent when stdout is not a terminal."""
    if console.is_terminal:
        with console.status(message) as status:
            yield status
    else:
        yield None


def info(message: str) -> None:
    console.print(message)


def warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/yellow] {message}")


def confirm(question: str, yes: bool) -> None:
    """Ask before changing something that matters; without a terminal, `--yes` is required."""
    from qlensctl.errors import RefusedError

    if yes:
        return
    if not sys.stdin.isatty():
        raise RefusedError(f"{question} needs confirmation", "re-run with --yes to confirm")
    import typer

    if not typer.confirm(question, default=False):
        raise RefusedError("cancelled: nothing was changed", None)
