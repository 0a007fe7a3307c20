"""Environments as data: the shipped files carry the deployment guide's facts, and every way a file
can be wrong gives one clear line naming the file and the key path, exit code 2, no traceback.

The error paths go through `qlensctl.main.run` (the console script's entry), which is where
exceptions become messages and exit codes; `tests/unit/test_cli.py` covers the rest of the CLI.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from qlensctl.environments import Environment, environment_names, load_environment
from qlensctl.errors import ConfigError
from tests.support.cli import run_cli

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "environments"


# --- the shipped environments ------------------------------------------------------------------


def shipped(name: str) -> Environment:
    return load_environment(name, SHIPPED)


def test_the_three_environments_are_shipped_and_valid() -> None:
    assert environment_names(SHIPPED) == ["local", "production", "staging"]
    for name in ("local", "staging", "production"):
        assert shipped(name).name == name


def test_staging_facts_from_the_deployment_guide() -> None:
    env = shipped("staging")
    assert env.namespace == "qlens-staging"
    assert env.domain == "qlens-staging.local"
    assert env.cost_controls.enabled
    assert env.cost_controls.daily_limits.total == 100
    assert (env.replicas.gateway, env.replicas.router, env.replicas.cache) == (1, 1, 1)
    assert env.cache.backend == "memory"
    assert env.monitoring == "basic"
    assert env.tls.enabled is False
    assert env.secrets.backend == "kubernetes" and env.secrets.name == "qlens-secrets"


def test_production_facts_from_the_deployment_guide() -> None:
    env = shipped("production")
    assert env.namespace == "qlens-production"
    assert env.domain == "qlens.quantumlayer.ai"
    limits = env.cost_controls.daily_limits
    assert (limits.total, limits.per_tenant, limits.per_user) == (1000, 200, 50)
    assert (env.replicas.gateway, env.replicas.router, env.replicas.cache) == (3, 3, 2)
    assert env.autoscaling.enabled
    assert (env.autoscaling.min_replicas, env.autoscaling.max_replicas) == (2, 10)
    assert env.autoscaling.target_cpu_utilization_percentage == 70
    assert env.cache.backend == "redis"
    assert env.cost_controls.store == "redis"  # budgets shared by the 3 gateway replicas
    assert env.monitoring == "full"
    assert env.tls.enabled is True
    assert env.auth.required is True
    assert env.kube_context == "qlens-production"  # production deploys only to its pinned context
    assert env.external_secrets.enabled and env.external_secrets.backend == "azurekv"
    assert env.external_secrets.refresh_interval == 3600
    assert env.is_production


@pytest.mark.parametrize("name", ["staging", "production"])
def test_providers_from_the_deployment_guide(name: str) -> None:
    providers = shipped(name).providers
    assert providers.azure_open_ai.enabled is True
    assert providers.azure_open_ai.deployments == {"gpt-4": "gpt-4", "gpt-35-turbo": "gpt-35-turbo"}
    assert providers.aws_bedrock.enabled is True
    [claude] = providers.aws_bedrock.models
    assert claude.id == "claude-3-sonnet"
    assert claude.model_id == "anthropic.claude-3-sonnet-20240229-v1:0"
    assert claude.name == "Claude 3 Sonnet"
    models = shipped(name).models
    assert {"gpt-4", "gpt-35-turbo", "claude-3-sonnet"} <= set(models)
    assert [d.label for d in models["claude-3-sonnet"].deployments] == [
        "awsBedrock/anthropic.claude-3-sonnet-20240229-v1:0"
    ]


def test_staging_does_not_pin_a_kube_context_and_local_needs_no_cloud() -> None:
    assert shipped("staging").kube_context is None
    local = shipped("local")
    assert local.cache.backend == "memory"
    assert local.providers.echo.enabled is True
    assert [d.label for d in local.models["echo"].deployments] == ["echo/echo"]
    # every cloud model falls back to echo, so a laptop without credentials still answers
    assert all("echo" in m.fallbacks for n, m in local.models.items() if n != "echo")
    assert local.providers.azure_open_ai.enabled == "auto"


def test_public_dict_spells_keys_as_the_file_does() -> None:
    data = shipped("production").public_dict()
    assert data["costControls"]["dailyLimits"] == {"total": 1000.0, "perTenant": 200.0, "perUser": 50.0}
    assert data["providers"]["awsBedrock"]["models"][0]["modelId"] == (
        "anthropic.claude-3-sonnet-20240229-v1:0")
    assert data["autoscaling"]["targetCPUUtilizationPercentage"] == 70
    # the dict loads back into the same environment: `env show --json` output is a valid file
    assert Environment.model_validate(data) == shipped("production")


# --- every validation error path ----------------------------------------------------------------


@pytest.fixture
def env_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A checkout-like folder holding a copy of the shipped files; errors name `environments/X.yaml`."""
    directory = tmp_path / "environments"
    directory.mkdir()
    for path in SHIPPED.glob("*.yaml"):
        (directory / path.name).write_text(path.read_text())
    monkeypatch.delenv("QLENS_ENVIRONMENTS", raising=False)
    monkeypatch.chdir(tmp_path)
    return directory


def staging_data() -> dict[str, Any]:
    return yaml.safe_load((SHIPPED / "staging.yaml").read_text())


def write_staging(env_dir: Path, change: Callable[[dict[str, Any]], None]) -> None:
    data = staging_data()
    change(data)
    (env_dir / "staging.yaml").write_text(yaml.safe_dump(data, sort_keys=False))


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = data
        for key in parents:
            node = node[key]
        node[last] = value
    return change


def _delete(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda data: data.pop(key)


def _bad_deployment_provider(data: dict[str, Any]) -> None:
    data["models"]["claude-3-sonnet"]["deployments"][0]["provider"] = "bedrock"


BAD_DATA = {
    "wrong type (number)": (
        _set("costControls.dailyLimits.total", "lots"),
        "costControls.dailyLimits.total: must be a number",
    ),
    "wrong type (mapping)": (_set("replicas", 3), "replicas: must be a mapping"),
    "wrong type (bool)": (_set("tls.enabled", "maybe"), "tls.enabled: must be true or false"),
    "wrong type (list)": (
        _set("providers.awsBedrock.models", "claude"),
        "providers.awsBedrock.models: must be a list",
    ),
    "unknown key": (
        _set("monitorin", "basic"),
        "monitorin: is not a known setting (check the spelling)",
    ),
    "unknown nested key": (
        _set("cache.ttl", 5),
        "cache.ttl: is not a known setting (check the spelling)",
    ),
    "missing required": (_delete("namespace"), "namespace: is required"),
    "bad enum": (_set("cache.backend", "disk"), "cache.backend: must be 'memory' or 'redis'"),
    "bad enum in a list": (
        _bad_deployment_provider,
        "models.claude-3-sonnet.deployments[0].provider: "
        "must be 'azureOpenAI', 'awsBedrock' or 'echo'",
    ),
    "out of range": (
        _set("replicas.gateway", -1),
        "replicas.gateway: must be greater than or equal to 0",
    ),
    "unknown fallback model": (
        _set("models.gpt-4.fallbacks", ["gpt-5"]),
        "models.gpt-4.fallbacks: unknown model 'gpt-5'",
    ),
    "name/file mismatch": (
        _set("name", "prod"),
        "name: is 'prod' but the file is staging.yaml",
    ),
}


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_invalid_environment_names_file_and_key_path_exit_2(case: str, env_dir: Path) -> None:
    change, expected = BAD_DATA[case]
    write_staging(env_dir, change)
    result = run_cli("env", "show", "staging")
    assert result.code == 2, result
    assert f"error: environments/staging.yaml: {expected}" in result.err.splitlines()
    assert "hint:" in result.err
    assert "Traceback" not in result.err
    assert result.out == ""  # nothing half-shown


def test_the_layer_raises_a_config_error_for_the_same_paths(env_dir: Path) -> None:
    write_staging(env_dir, _set("costControls.dailyLimits.total", "lots"))
    with pytest.raises(ConfigError) as caught:
        load_environment("staging")
    assert caught.value.exit_code == 2
    expected = "environments/staging.yaml: costControls.dailyLimits.total: must be a number"
    assert caught.value.message == expected


def test_every_error_of_a_file_is_reported_at_once(env_dir: Path) -> None:
    def two_mistakes(data: dict[str, Any]) -> None:
        data["cache"]["backend"] = "disk"
        data["costControls"]["dailyLimits"]["total"] = "lots"

    write_staging(env_dir, two_mistakes)
    result = run_cli("env", "show", "staging")
    assert result.code == 2
    assert "error: environments/staging.yaml: cache.backend: must be 'memory' or 'redis'" in result.err
    assert "error: environments/staging.yaml: costControls.dailyLimits.total: must be a number" in result.err


def test_malformed_yaml_names_the_line(env_dir: Path) -> None:
    (env_dir / "staging.yaml").write_text("name: staging\nnamespace: qlens-staging\n\tdomain: x\n")
    result = run_cli("env", "show", "staging")
    assert result.code == 2
    [line] = [x for x in result.err.splitlines() if x.startswith("error:")]
    assert line.startswith("error: environments/staging.yaml: ")
    assert "(line 3, column 1)" in line
    assert "Traceback" not in result.err


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", ""], ids=["list", "scalar", "empty"])
def test_a_file_that_is_not_a_mapping(text: str, env_dir: Path) -> None:
    (env_dir / "staging.yaml").write_text(text)
    result = run_cli("env", "show", "staging")
    assert result.code == 2
    assert "error: environments/staging.yaml: must be a YAML mapping of settings" in result.err


def test_unknown_environment_name_lists_the_known_ones(env_dir: Path) -> None:
    result = run_cli("env", "show", "qa")
    assert result.code == 2
    assert "unknown environment 'qa'" in result.err
    assert "use one of: local, production, staging" in result.err


def test_a_missing_environment_file_path(env_dir: Path) -> None:
    result = run_cli("env", "show", "./nowhere.yaml")
    assert result.code == 2
    assert "error: ./nowhere.yaml: no such environment file" in result.err


def test_an_environment_file_by_path_may_have_any_name(env_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "my-staging-copy.yaml"
    path.write_text((SHIPPED / "staging.yaml").read_text())
    result = run_cli("env", "show", str(path), "--json")
    assert result.code == 0, result
    assert json.loads(result.out)["namespace"] == "qlens-staging"


def test_qlens_environments_points_at_another_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = tmp_path / "elsewhere"
    other.mkdir()
    data = staging_data()
    data["name"] = "qa"
    data["namespace"] = "qlens-qa"
    (other / "qa.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.setenv("QLENS_ENVIRONMENTS", str(other))
    result = run_cli("env", "list", "--json")
    assert result.code == 0, result
    assert [e["name"] for e in json.loads(result.out)] == ["qa"]


def test_a_broken_file_fails_env_list_too_naming_it(env_dir: Path) -> None:
    write_staging(env_dir, _set("cache.backend", "disk"))
    result = run_cli("env", "list")
    assert result.code == 2
    assert "environments/staging.yaml: cache.backend" in result.err
