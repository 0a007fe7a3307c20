"""Everything qlensctl shows a person or a machine goes through here.

Tables and spinners (rich) for people; `emit_json` for machines (`--json`). Only command modules
call these; the layers below them return data.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

    console: Console
    err_console: Console

# Piped output (CI logs, `| less`) has no terminal width; rich would squeeze tables into 80
# columns and cut values with an ellipsis. Wide enough for every table we print.
PIPE_WIDTH = 160


_consoles: dict[bool, Console] = {}

# Set by `main.run` for each invocation: with --json, stdout carries one JSON document and nothing
# else, so spinners and prompts go to stderr; `emitted` says whether the document is out yet (an
# error after it must not print a second one).
_machine = {"json": False, "emitted": False}


def machine_output(as_json: bool) -> None:
    """Start of an invocation: is stdout for a JSON document (`--json`)?"""
    _machine.update(json=as_json, emitted=False)


def emitted() -> bool:
    """Has this invocation printed its JSON document?"""
    return _machine["emitted"]


def get_console(stderr: bool = False) -> Console:
    """The shared console (stdout) or error console, built on first use: importing rich costs
    ~30 ms that `qlensctl --help` and commands that fail early should not pay."""
    made = _consoles.get(stderr)
    if made is None:
        from rich.console import Console

        stream = sys.stderr if stderr else sys.stdout
        width = None if stream.isatty() or os.environ.get("COLUMNS") else PIPE_WIDTH
        made = _consoles[stderr] = Console(stderr=stderr, highlight=False, width=width)
    return made


def __getattr__(name: str) -> Any:
    """`output.console` / `output.err_console`, lazily (PEP 562)."""
    if name == "console":
        return get_console()
    if name == "err_console":
        return get_console(stderr=True)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def emit_json(data: Any) -> None:
    """Machine output: plain JSON on stdout, no colour, no wrapping."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    _machine["emitted"] = True


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    get_console().print(make_table(title, columns, rows))


def make_table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> Any:
    """The rich Table `table` prints, for a caller that shows it itself (a live display)."""
    from rich.table import Table

    t = Table(title=title, title_justify="left", header_style="bold")
    for col in columns:
        t.add_column(col, overflow="fold")  # wrap long values, never hide them behind an ellipsis
    for row in rows:
        t.add_row(*("" if v is None else str(v) for v in row))
    return t


def status_mark(ok: bool) -> str:
    return "[green]PASS[/green]" if ok else "[red]FAIL[/red]"


@contextmanager
def spinner(message: str) -> Iterator[Callable[[str], None]]:
    """A spinner while something waits; silent when its stream (stdout, with --json stderr) is not a
    terminal. It yields a function that replaces the spinner's message, so a layer's `progress`
    callback can be passed it as is."""
    console = get_console(stderr=_machine["json"])
    if console.is_terminal:
        with console.status(message) as status:
            yield lambda text: status.update(text)
    else:
        yield lambda text: None


def info(message: str) -> None:
    get_console().print(message)


def warn(message: str) -> None:
    get_console(stderr=True).print(f"[yellow]warning:[/yellow] {message}")


def confirm(question: str, yes: bool) -> None:
    """Ask before changing something that matters; without a terminal, `--yes` is required."""
    from qlensctl.errors import RefusedError

    if yes:
        return
    if not sys.stdin.isatty():
        raise RefusedError(f"{question} needs confirmation", "re-run with --yes to confirm")
    import typer

    if not typer.confirm(question, default=False, err=_machine["json"]):
        raise RefusedError("cancelled: nothing was changed", None)
