"""nox sessions: tests, lint, typecheck, schema, bench, lock. `nox -s tests` equals `scripts/test`."""

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True


@nox.session(python=False)
def tests(session: nox.Session) -> None:
    """The whole suite, provisioning what it needs (scripts/test)."""
    session.run("scripts/test", *session.posargs, external=True)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "qlensctl", "services", "tests", "bench")


@nox.session
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".[dev]")
    session.run("mypy", "qlensctl", "services")


@nox.session(python=False)
def schema(session: nox.Session) -> None:
    """Regenerate charts/qlens/values.schema.json from the pydantic models (commit the result);
    `nox -s schema -- --check` only says whether it is up to date."""
    session.run(".venv/bin/python", "-m", "qlensctl.values_schema", *session.posargs, external=True)


@nox.session(python=False)
def bench(session: nox.Session) -> None:
    """The benchmark harness (bench/README.md); not part of the test suite."""
    session.run(".venv/bin/python", "-m", "bench", *session.posargs, external=True)


@nox.session
def lock(session: nox.Session) -> None:
    """Refresh requirements/services.txt, the services' runtime dependencies pinned with hashes
    that the Dockerfile installs (--require-hashes), from requirements/services.in.

    `uv pip compile --universal`: one lock valid for every Python 3.11.x the images may have (the
    Debian base's 3.11.2 needs async-timeout for redis, a newer 3.11 does not), with markers; only
    the public package index is consulted, so every hash is the one a build elsewhere downloads."""
    session.install("uv>=0.4")
    session.run(
        "uv", "pip", "compile", "--quiet", "--universal", "--python-version", "3.11", "--generate-hashes",
        "--upgrade", "--output-file", "requirements/services.txt", "requirements/services.in",
        env={"UV_CUSTOM_COMPILE_COMMAND": "nox -s lock", "UV_NATIVE_TLS": "1"},
    )
