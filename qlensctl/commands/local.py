"""`qlensctl up` / `qlensctl down`: the whole stack as local processes, no cluster needed."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import typer

from qlensctl import output


def up(
    env: str = typer.Option("local", "--env", "-e",
                            help="Environment to run (its file configures the services)."),
    detach: bool = typer.Option(False, "--detach", "-d",
                                help="Return at once; stop later with `qlensctl down`."),
    gateway_port: int = typer.Option(8080, "--gateway-port", help="Gateway port."),
    router_port: int = typer.Option(8081, "--router-port", help="Router port."),
    cache_port: int = typer.Option(8082, "--cache-port", help="Cache service port."),
    state_dir: Path = typer.Option(None, "--state-dir", show_default=False,
                                   help="Where a detached stack is recorded "
                                        "[default: ~/.local/state/qlens]."),
    timeout: float = typer.Option(30.0, "--timeout", help="Seconds each service may take to become ready."),
    as_json: bool = typer.Option(False, "--json", help="Print the started services as JSON."),
) -> None:
    """Start cache, router and gateway locally; Ctrl-C stops all three."""
    from qlensctl import local
    from qlensctl.environments import environment_path, load_environment
    from qlensctl.errors import ConfigError

    environment = load_environment(env)
    config = Path(env) if env.endswith((".yaml", ".yml")) else environment_path(env)
    state = state_dir or local.default_state_dir()
    existing = local.load_state(state)
    if existing and any(s.alive() for s in existing.services.values()):
        raise ConfigError(
            f"a detached stack is already running (gateway {existing.gateway_url})",
            "stop it with `qlensctl down` first",
        )
    ports = {"gateway": gateway_port, "router": router_port, "cache": cache_port}
    with output.spinner("starting QLens") as update:
        stack = local.start_stack(environment.name, config.resolve(), ports, state / "logs",
                                  timeout=timeout, progress=update)
    if as_json:
        output.emit_json({"env": stack.env, "services": stack.urls(),
                          "pids": {n: s.pid for n, s in stack.services.items()}})
    else:
        output.table(
            f"QLens running ({environment.name})",
            ["service", "url", "pid", "status", "log"],
            [[n, s.url, s.pid, "[green]ready[/green]", s.log] for n, s in stack.services.items()],
        )
    if detach:
        path = local.save_state(stack, state)
        if not as_json:
            output.info(f"Detached. Point the openai SDK at {stack.gateway_url}/v1 ; "
                        f"stop with `qlensctl down` (state in {path}).")
        return

    if not as_json:  # with --json, stdout holds only the JSON document
        output.info(f"Point the openai SDK at {stack.gateway_url}/v1 . Press Ctrl-C to stop.")
    else:
        sys.stdout.flush()  # a supervisor reading the pipe sees the services before we block
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        while not stopping:
            dead = [n for n, s in stack.services.items() if not s.alive()]
            if dead:
                output.warn(f"{', '.join(dead)} exited; stopping the stack (logs in {state / 'logs'})")
                break
            time.sleep(0.3)
    finally:
        stopped = local.stop_stack(stack)
        if not as_json:
            output.info(f"stopped {', '.join(stopped)}")
    if not stopping:
        raise typer.Exit(1)


def down(
    state_dir: Path = typer.Option(None, "--state-dir", help="Where the detached stack was recorded."),
) -> None:
    """Stop a stack started with `qlensctl up --detach`."""
    from qlensctl import local

    state = state_dir or local.default_state_dir()
    stack = local.load_state(state)
    if stack is None:
        output.info("No detached QLens stack is recorded; nothing to stop.")
        return
    stopped = local.stop_stack(stack)
    local.clear_state(state)
    if stopped:
        output.info(f"Stopped {', '.join(stopped)} ({stack.env}).")
    else:
        output.info(f"The recorded {stack.env} stack was no longer running; cleared its state.")
