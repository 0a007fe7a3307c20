"""Resources per environment (issue 19): production keeps the guide's sizing, staging requests what
a small shared cluster can schedule; both live in the environment files, so `env show` prints
them and the rendered values carry them."""

from __future__ import annotations

import yaml

from qlensctl.environments import load_environment
from qlensctl.render import render_values_yaml
from tests.support.cli import run_cli

LIMITS = {"cpu": "2000m", "memory": "2Gi"}
EXPECTED = {
    "production": {"requests": {"cpu": "1000m", "memory": "1Gi"}, "limits": LIMITS},
    "staging": {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": LIMITS},
}


def test_env_show_prints_each_environments_resources() -> None:
    for name, expected in EXPECTED.items():
        result = run_cli("env", "show", name)
        assert result.code == 0, result.text
        assert yaml.safe_load(result.out)["resources"] == expected


def test_rendered_values_carry_them() -> None:
    for name, expected in EXPECTED.items():
        assert yaml.safe_load(render_values_yaml(load_environment(name)))["resources"] == expected


def test_staging_fits_a_two_core_node() -> None:
    """One replica of each service plus one surge pod during a rolling update, under 2 cores."""
    env = load_environment("staging")
    millicores = int(env.resources.requests.cpu.removesuffix("m"))
    pods = sum(env.replicas.model_dump().values()) + 1
    assert millicores * pods <= 2000
