"""nox sessions: tests, lint, typecheck, schema, bench. `nox -s tests` equals `scripts/test`."""

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
