"""The `qlensctl` entry point: one typer app assembled from one module per command group.

Command modules import only typer and rich at module level; SDKs (kubernetes, helm, openai,
boto3, azure, fastapi) are imported inside the commands that use them so `--help` stays fast.
All errors end here: one line of what failed, one of what to do, exit 1 or 2; a traceback only
with `--debug`.
"""

from __future__ import annotations

import sys

import typer

from qlensctl import __version__
from qlensctl.commands import chart, env, keys, local, ops, release, secrets, smoke
from qlensctl.errors import QlensError
from qlensctl.output import get_console

app = typer.Typer(
    name="qlensctl",
    help="Deploy, operate and run QLens, the LLM gateway.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"qlensctl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version."),
) -> None:
    """Deploy, operate and run QLens, the LLM gateway."""


for module in (env, local, smoke, chart, release, ops, secrets, keys):
    module.register(app)


def run(argv: list[str] | None = None) -> None:
    """Console-script entry: run the app and map every error to a message and an exit code."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        app(args=args, prog_name="qlensctl", standalone_mode=True)
    except QlensError as exc:
        from rich.markup import escape  # messages hold key paths like `deployments[0]`: not markup

        err_console = get_console(stderr=True)
        if debug:
            err_console.print_exception()
        lines = exc.message.splitlines() or [type(exc).__name__]
        for line in lines:
            err_console.print(f"[red]error:[/red] {escape(line)}", highlight=False, soft_wrap=True)
        if exc.hint:
            err_console.print(f"[dim]hint:[/dim] {escape(exc.hint)}", soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        get_console(stderr=True).print("[yellow]interrupted[/yellow]")
        sys.exit(130)
    except Exception as exc:  # an unexpected bug: still no traceback unless asked
        err_console = get_console(stderr=True)
        if debug:
            err_console.print_exception()
        from rich.markup import escape

        err_console.print(f"[red]error:[/red] unexpected {type(exc).__name__}: {escape(str(exc))}",
                          soft_wrap=True)
        err_console.print("[dim]hint:[/dim] re-run with --debug for the traceback and report it")
        sys.exit(1)


if __name__ == "__main__":
    run()
