"""Environment -> Helm values: the deployment guide's values-<env>.yaml.

    environments/<env>.yaml --load_environment--> Environment --templates/values.yaml.j2--> YAML

Why a Jinja2 template rather than yaml.dump of a dict: the output is a file people read, diff in
review and keep as backups, so it follows the guide's layout and carries comments; the template
decides the layout, the environment supplies the data, the chart (charts/qlens) decides the rest.

Guarantees: deterministic (the same environment and tag give byte-identical text: no dates, no
host names, key order from the environment file and the models) and no secret values (the
Environment model has no secret fields; values only name Secrets and keys). Only jinja2, yaml and
the environment models are imported here, so `qlensctl render` stays fast: Helm is not loaded.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from qlensctl.environments import Environment, load_environment
from qlensctl.errors import ConfigError, OperationError

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES_VAR = "QLENS_TEMPLATES"
CHART_VAR = "QLENS_CHART"
VALUES_TEMPLATE = "values.yaml.j2"
# libyaml when present: the same YAML, several times faster (render runs on every command)
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
# a Docker tag: what `--version` may be (production deploys further require vX.Y.Z)
TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def templates_dir() -> Path:
    """`$QLENS_TEMPLATES`, else the checkout's templates/ folder."""
    return Path(os.environ.get(TEMPLATES_VAR) or ROOT / "templates")


def chart_dir() -> Path:
    """`$QLENS_CHART`, else the checkout's charts/qlens."""
    return Path(os.environ.get(CHART_VAR) or ROOT / "charts" / "qlens")


def check_tag(tag: str) -> str:
    if not TAG_RE.match(tag):
        raise ConfigError(
            f"--version {tag!r} is not a valid image tag",
            "use letters, digits, '.', '_' or '-' (e.g. v1.0.0), at most 128 characters",
        )
    return tag


def image_tag(env: Environment, version: str | None) -> str | None:
    """The tag the release runs: `--version` wins over the environment's image.tag."""
    return check_tag(version) if version else env.image.tag


def render_values_yaml(env: Environment, *, version: str | None = None) -> str:
    """The values file for `env` (commented YAML, what `qlensctl render ENV` prints)."""
    template = _jinja_env().get_template(VALUES_TEMPLATE)
    text = template.render(env=_tidy(env.public_dict()), tag=image_tag(env, version),
                           credentials=_credentials(env))
    try:
        yaml.load(text, Loader=_LOADER)
    except yaml.YAMLError as exc:  # a template bug, not the user's: say where
        raise OperationError(
            f"templates/{VALUES_TEMPLATE} produced invalid YAML for {env.name}: {exc}",
            "this is a bug in the templates; re-run with --debug and report it",
        ) from None
    return text


def _credentials(env: Environment) -> list[dict[str, str]]:
    """The provider credentials the chart wires up (container env, ExternalSecret): those of every
    provider that is not `enabled: false`, as the provider registry declares them. Names only."""
    from services.router.providers.registry import credentials

    return [{"env": c.env_var, "key": c.secret_key, "vaultName": c.vault_secret}
            for c in credentials(env.providers, auto=True)]


def render_values(env: Environment, *, version: str | None = None) -> dict[str, Any]:
    """The values as data, ready for Helm."""
    return parse_values(render_values_yaml(env, version=version))


def parse_values(text: str) -> dict[str, Any]:
    data = yaml.load(text, Loader=_LOADER) or {}
    if not isinstance(data, dict):
        raise ConfigError("values must be a YAML mapping", "check the values file")
    return data


def values_for(env_name: str, *, version: str | None = None) -> tuple[Environment, dict[str, Any]]:
    """Load an environment by name or path and render its values."""
    env = load_environment(env_name)
    return env, render_values(env, version=version)


# --- template machinery ----------------------------------------------------------------------------


def _jinja_env() -> Any:
    import jinja2

    directory = templates_dir()
    if not (directory / VALUES_TEMPLATE).is_file():
        raise ConfigError(
            f"no {VALUES_TEMPLATE} in {directory}",
            f"run from a QLens checkout, or set {TEMPLATES_VAR} to the folder holding {VALUES_TEMPLATE}",
        )
    jenv = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(directory)),
        bytecode_cache=_bytecode_cache(jinja2),
        undefined=jinja2.StrictUndefined,  # a typo in a template fails loudly, never renders ""
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    jenv.filters["q"] = _scalar
    jenv.filters["block"] = _block
    return jenv


def _bytecode_cache(jinja2: Any) -> Any:
    """Compiled templates cached per user (keyed by source checksum), so a render skips the
    compile step; no cache when the folder cannot be written."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "qlens" / "jinja"
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return jinja2.FileSystemBytecodeCache(str(base))


def _scalar(value: Any) -> str:
    """One YAML scalar, written the way yaml writes it in block(): plain when unambiguous, quoted
    when it would read back as something else ('2024-06-01', 'no', '1.0')."""
    if isinstance(value, dict | list):
        raise TypeError("q is for scalars; use block(n) for mappings and lists")
    text = yaml.dump(value, Dumper=_DUMPER, default_flow_style=True, allow_unicode=True, width=1000)
    return text.removesuffix("\n").removesuffix("\n...").strip()


def _block(value: Any, indent: int) -> str:
    """A mapping or list as block YAML under a `key:` (leading newline), or inline when empty."""
    if not isinstance(value, dict | list):
        return " " + _scalar(value)
    if not value:
        return " {}" if isinstance(value, dict) else " []"
    text = yaml.dump(
        value, Dumper=_DUMPER, sort_keys=False, default_flow_style=False, allow_unicode=True, width=1000
    )
    pad = " " * indent
    return "\n" + "\n".join(pad + line for line in text.rstrip("\n").split("\n"))


def _tidy(value: Any) -> Any:
    """Whole floats as ints (1000, not 1000.0), as the deployment guide writes them."""
    if isinstance(value, dict):
        return {k: _tidy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_tidy(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value
