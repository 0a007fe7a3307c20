"""The `qlensctl` entry point: the whole command tree, in one place, under four help panels.

Each command lives in a module of qlensctl/commands/ (one per group); this file only says where
it appears. Command modules import only typer and rich at module level; SDKs (kubernetes, helm,
openai, boto3, azure, fastapi) are imported inside the commands that use them so `--help` stays
fast. All errors end here: one line of what failed, one of what to do, exit 1 or 2; a traceback
only with `--debug`; with `--json`, the same as one JSON document on stdout.
"""

from __future__ import annotations

import sys
from typing import Any, NoReturn

import typer
from typer.core import TyperGroup

from qlensctl import __version__, output
from qlensctl.commands import chart, dashboard, env, keys, local, ops, release, secrets, smoke, tenants, usage
from qlensctl.errors import QlensError
from qlensctl.output import get_console

DEPLOY, OPERATE, LOCAL, CONFIG = PANELS = ("Deploy", "Operate", "Local", "Config")


class _PanelGroup(TyperGroup):
    """Plain-text help with the commands listed under their `rich_help_panel`, in PANELS order.

    typer draws panels only with its rich help formatter, whose imports (rich.markdown, ...)
    would cost more than the rest of `qlensctl --help` together, and which reads help text as
    markup (a `[default: ...]` in a help string would vanish). So the panels are drawn here."""

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        panels: dict[str, list[tuple[str, str]]] = {}
        commands = [(n, c) for n in self.list_commands(ctx)
                    if (c := self.get_command(ctx, n)) is not None and not c.hidden]
        limit = formatter.width - 6 - max((len(n) for n, _ in commands), default=0)
        for name, command in commands:
            panel = getattr(command, "rich_help_panel", None) or "Commands"
            panels.setdefault(panel, []).append((name, command.get_short_help_str(limit)))
        for panel in sorted(panels, key=lambda p: PANELS.index(p) if p in PANELS else len(PANELS)):
            with formatter.section(panel):
                formatter.write_dl(panels[panel])


app = typer.Typer(
    name="qlensctl",
    cls=_PanelGroup,
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


# -- the command tree ---------------------------------------------------------------------------
# Deploy: ship the release to a cluster, look at it, undo it.
app.command("deploy", rich_help_panel=DEPLOY)(release.deploy)
app.command("rollback", rich_help_panel=DEPLOY)(release.rollback)
app.command("status", rich_help_panel=DEPLOY)(release.status)
app.command("history", rich_help_panel=DEPLOY)(release.history)

# Operate: day-2 work on a running release.
# scale: a negative REPLICAS ("-1") reaches the command, which explains the range, instead of
# click reading it as an unknown option
app.command("scale", rich_help_panel=OPERATE, context_settings={"ignore_unknown_options": True})(ops.scale)
app.command("backup", rich_help_panel=OPERATE)(ops.backup)
app.command("restore", rich_help_panel=OPERATE)(ops.restore)
app.add_typer(ops.maintenance_app, name="maintenance", rich_help_panel=OPERATE)
app.command("smoke-test", rich_help_panel=OPERATE)(smoke.smoke_test)
app.add_typer(keys.keys_app, name="keys", rich_help_panel=OPERATE)
app.add_typer(tenants.tenants_app, name="tenants", rich_help_panel=OPERATE)
app.command("usage", rich_help_panel=OPERATE)(usage.usage)

# Local: the three services as processes on this machine.
app.command("up", rich_help_panel=LOCAL)(local.up)
app.command("down", rich_help_panel=LOCAL)(local.down)

# Config: environments, the values and manifests they render to, provider secrets.
app.add_typer(env.env_app, name="env", rich_help_panel=CONFIG)
app.command("render", rich_help_panel=CONFIG)(chart.render)
app.command("template", rich_help_panel=CONFIG)(chart.template)
app.command("lint", rich_help_panel=CONFIG)(chart.lint)
app.command("dashboard", rich_help_panel=CONFIG)(dashboard.dashboard)
app.add_typer(secrets.secrets_app, name="secrets", rich_help_panel=CONFIG)


def run(argv: list[str] | None = None) -> None:
    """Console-script entry: run the app and map every error to a message and an exit code.

    With --json, a failure is also one JSON document on stdout, `{"error": {"type", "message",
    "hint", "exitCode"}}`, unless the command already printed its own (deploy, rollback and
    smoke-test print their result, `"ok": false`, before they fail); the text for people still
    goes to stderr.
    Usage errors (click's, shown by typer's standalone mode without --json) are caught here
    then, so they get their document too."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    as_json = "--json" in (args[:args.index("--")] if "--" in args else args)
    output.machine_output(as_json)
    try:
        code = app(args=args, prog_name="qlensctl", standalone_mode=not as_json)
        if as_json and isinstance(code, int) and code:  # typer.Exit(N) without standalone mode
            sys.exit(code)
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
        _exit(exc.as_dict(), as_json)
    except typer.TyperException as exc:  # click's errors (typer vendors click); reach here only with --json
        show = getattr(exc, "show", None)  # the usage and "Error: ..." click prints without --json
        if show is not None:
            show()
        ctx = getattr(exc, "ctx", None)
        _exit({"type": "UsageError" if exc.exit_code == 2 else type(exc).__name__,
               "message": exc.format_message(),
               "hint": f"see `{ctx.command_path if ctx is not None else 'qlensctl'} --help`",
               "exitCode": exc.exit_code}, as_json)
    except typer.Abort:  # likewise: end of input at a prompt
        get_console(stderr=True).print("Aborted!", highlight=False)
        _exit({"type": "Aborted", "message": "aborted", "hint": None, "exitCode": 1}, as_json)
    except KeyboardInterrupt:
        get_console(stderr=True).print("[yellow]interrupted[/yellow]")
        sys.exit(130)
    except Exception as exc:  # an unexpected bug: still no traceback unless asked
        err_console = get_console(stderr=True)
        if debug:
            err_console.print_exception()
        from rich.markup import escape

        message = f"unexpected {type(exc).__name__}: {exc}"
        hint = "re-run with --debug for the traceback and report it"
        err_console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
        err_console.print(f"[dim]hint:[/dim] {hint}")
        _exit({"type": "UnexpectedError", "message": message, "hint": hint, "exitCode": 1}, as_json)


def _exit(error: dict[str, Any], as_json: bool) -> NoReturn:
    """Exit with the error's code; with --json, print it first as the one document on stdout."""
    if as_json and not output.emitted():
        output.emit_json({"error": error})
    sys.exit(error["exitCode"])


if __name__ == "__main__":
    run()
