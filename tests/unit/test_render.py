"""`qlensctl render`: environment -> Helm values through templates/values.yaml.j2.

What is checked: the deployment guide's values structure appears as the guide writes it, each
environment's facts come through, the output is byte-identical across runs and processes, no
secret value can reach it, a bad environment file fails with its key path (exit 2), `-o FILE`
writes the file, and rendering never loads Helm. Charts are not involved here (test_chart.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from qlensctl.environments import load_environment
from qlensctl.errors import ConfigError
from qlensctl.render import render_values, render_values_yaml
from tests.support.cli import ROOT, run_cli

ENVS = ("local", "staging", "production")


@pytest.fixture(autouse=True)
def _checkout_environments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QLENS_ENVIRONMENTS", str(ROOT / "environments"))


def values(env: str, version: str | None = None) -> dict:
    return render_values(load_environment(env), version=version)


# --- the guide's structure ---------------------------------------------------------------------


def test_the_guides_values_structure_is_there_as_the_guide_writes_it() -> None:
    v = values("production", "v1.0.0")
    assert v["environment"] == "production"
    assert v["namespace"] == "qlens-production"
    assert v["providers"]["azureOpenAI"]["enabled"] is True
    assert v["providers"]["azureOpenAI"]["deployments"] == {"gpt-4": "gpt-4", "gpt-35-turbo": "gpt-35-turbo"}
    assert v["providers"]["awsBedrock"]["models"] == [
        {
            "id": "claude-3-sonnet",
            "modelId": "anthropic.claude-3-sonnet-20240229-v1:0",
            "name": "Claude 3 Sonnet",
        }
    ]
    assert v["costControls"]["enabled"] is True
    assert v["costControls"]["dailyLimits"] == {"total": 1000, "perTenant": 200, "perUser": 50}
    assert v["externalSecrets"] == {
        "enabled": True,
        "backend": "azurekv",
        "refreshInterval": 3600,
        "vaultUrl": "https://qlens-production.vault.azure.net",
    }
    assert v["autoscaling"] == {
        "enabled": True,
        "minReplicas": 2,
        "maxReplicas": 10,
        "targetCPUUtilizationPercentage": 70,
    }
    assert v["resources"] == {
        "requests": {"cpu": "1000m", "memory": "1Gi"},
        "limits": {"cpu": "2000m", "memory": "2Gi"},
    }


def test_whole_numbers_are_written_as_the_guide_writes_them() -> None:
    text = render_values_yaml(load_environment("production"))
    assert "    total: 1000\n" in text and "1000.0" not in text
    assert "  refreshInterval: 3600\n" in text


@pytest.mark.parametrize(
    ("env", "replicas", "cache", "limits", "auth", "tls", "monitoring", "external"),
    [
        (
            "local",
            (1, 1, 1),
            "memory",
            {"total": 10, "perTenant": None, "perUser": None},
            False,
            False,
            "basic",
            False,
        ),
        (
            "staging",
            (1, 1, 1),
            "memory",
            {"total": 100, "perTenant": None, "perUser": None},
            False,
            False,
            "basic",
            False,
        ),
        (
            "production",
            (3, 3, 2),
            "redis",
            {"total": 1000, "perTenant": 200, "perUser": 50},
            True,
            True,
            "full",
            True,
        ),
    ],
)
def test_each_environment_renders_its_facts(
    env, replicas, cache, limits, auth, tls, monitoring, external
) -> None:
    v = values(env)
    assert (v["replicas"]["gateway"], v["replicas"]["router"], v["replicas"]["cache"]) == replicas
    assert v["cache"]["backend"] == cache
    assert v["costControls"]["dailyLimits"] == limits
    assert v["auth"]["required"] is auth
    assert v["tls"]["enabled"] is tls
    assert v["monitoring"] == {"mode": monitoring,
                               "alerts": load_environment(env).public_dict()["observability"]["alerts"]}
    assert v["externalSecrets"]["enabled"] is external
    assert v["secrets"]["backend"] == ("keyVault" if external else "kubernetes")
    assert v["domain"] == load_environment(env).domain


def test_the_service_sections_are_the_environments_service_config() -> None:
    """Whatever the services will read from the ConfigMap is exactly what the environment says."""
    from services.common.config import ServiceConfig

    for env in ENVS:
        environment = load_environment(env)
        v = values(env)
        rendered = ServiceConfig.model_validate({**v, "name": v["environment"]})
        assert rendered.model_dump() == ServiceConfig.model_validate(environment.public_dict()).model_dump()


def assert_written_as_in_the_file(raw: object, rendered: object, path: str) -> None:
    """Every key the file sets is in `rendered` with the file's value (defaults may be added)."""
    if isinstance(raw, dict):
        assert isinstance(rendered, dict), f"{path}: {rendered!r} is not a mapping"
        for key, value in raw.items():
            assert key in rendered, f"{path}.{key} is in the environment file but not in the values"
            assert_written_as_in_the_file(value, rendered[key], f"{path}.{key}")
    elif isinstance(raw, list):
        assert isinstance(rendered, list) and len(rendered) == len(raw), f"{path}: {rendered!r}"
        for i, (a, b) in enumerate(zip(raw, rendered, strict=True)):
            assert_written_as_in_the_file(a, b, f"{path}[{i}]")
    else:
        assert rendered == raw, f"{path}: the file says {raw!r}, the values {rendered!r}"


def test_every_service_setting_in_the_file_reaches_the_values() -> None:
    """Against the raw file, not the loaded model: a key dropped on the way whose value equals its
    default would look the same after validation, and is caught here."""
    from services.common.config import ServiceConfig

    sections = {f.alias or name for name, f in ServiceConfig.model_fields.items()} - {"name"}
    for env in ENVS:
        raw = yaml.safe_load((ROOT / "environments" / f"{env}.yaml").read_text())
        v = values(env)
        assert v["environment"] == raw["name"]
        present = sections & set(raw)
        assert {"providers", "models", "routing", "cache", "costControls", "auth"} <= present, env
        for section in sorted(present):
            assert_written_as_in_the_file(raw[section], v.get(section), section)


# --- image tag ---------------------------------------------------------------------------------


def test_version_sets_the_image_tag_and_production_has_none_without_it() -> None:
    assert values("production")["image"]["tag"] is None
    assert values("production", "v1.0.0")["image"]["tag"] == "v1.0.0"
    assert values("staging")["image"]["tag"] == "latest"
    assert values("staging", "v2.0.1")["image"]["tag"] == "v2.0.1"


@pytest.mark.parametrize("tag", ["v1.0.0 ; rm -rf /", "-v1", "a" * 129, "v1/2"])
def test_a_bad_tag_is_a_config_error(tag: str) -> None:
    with pytest.raises(ConfigError, match="not a valid image tag"):
        render_values(load_environment("staging"), version=tag)


# --- determinism and secrets -------------------------------------------------------------------


def test_render_is_byte_identical_across_runs_and_processes() -> None:
    """In-process twice, and in two interpreters with different hash seeds (set/dict order)."""
    for env in ENVS:
        environment = load_environment(env)
        assert render_values_yaml(environment) == render_values_yaml(environment)
    outputs = set()
    for seed in ("1", "2"):
        proc = subprocess.run(
            [sys.executable, "-m", "qlensctl.main", "render", "production", "--version", "v1.0.0"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
            env={**os.environ, "PYTHONHASHSEED": seed, "QLENS_ENVIRONMENTS": str(ROOT / "environments")},
        )
        assert proc.returncode == 0, proc.stderr
        outputs.add(proc.stdout)
    assert len(outputs) == 1
    assert outputs.pop() == render_values_yaml(load_environment("production"), version="v1.0.0")


def test_no_secret_value_reaches_the_values(monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = {
        "AZURE_OPENAI_ENDPOINT": "https://sentinel-endpoint-7f3a.openai.azure.com",
        "AZURE_OPENAI_API_KEY": "sentinel-azure-key-7f3a",
        "AWS_ACCESS_KEY_ID": "AKIASENTINEL7F3A",
        "AWS_SECRET_ACCESS_KEY": "sentinel-aws-secret-7f3a",
        "QLENS_REDIS_URL": "redis://:sentinel-redis-pass-7f3a@redis:6379/0",
    }
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    for env in ENVS:
        result = run_cli("render", env)
        assert result.code == 0, result.err
        assert "7f3a" not in result.out  # no credential, in any environment
        assert "qlens-secrets" in result.out  # only the Secret's name


# --- the command -------------------------------------------------------------------------------


def test_render_prints_the_values_file() -> None:
    result = run_cli("render", "staging")
    assert result.code == 0, result.err
    assert result.out == render_values_yaml(load_environment("staging"))
    assert result.out.startswith("# QLens Helm values for the staging environment")
    assert yaml.safe_load(result.out)["namespace"] == "qlens-staging"


def test_render_output_file(tmp_path: Path) -> None:
    target = tmp_path / "values-staging.yaml"
    result = run_cli("render", "staging", "-o", str(target))
    assert result.code == 0, result.err
    assert target.read_text() == render_values_yaml(load_environment("staging"))
    assert str(target) in result.out


def test_render_to_an_unwritable_place_is_a_clear_error(tmp_path: Path) -> None:
    result = run_cli("render", "staging", "-o", str(tmp_path / "missing-dir" / "values.yaml"))
    assert result.code == 2
    assert "cannot write" in result.err and "Traceback" not in result.err


def _setting(dotted: str, value: object):
    """An edit of an environment's data: set `a.b.c` to value (creating mappings on the way)."""

    def edit(data: dict) -> None:
        *parents, leaf = dotted.split(".")
        for key in parents:
            data = data.setdefault(key, {})
        data[leaf] = value

    return edit


@pytest.mark.parametrize(
    ("key_path", "value", "problem"),
    [
        ("costControls.dailyLimits.total", "a lot", "must be a number"),
        ("replicas.gateway", "three", "must be a number"),
        ("autoscaling.enabled", "sometimes", "must be true or false"),
        ("providers.azureOpenAI.deployments", ["gpt-4"], "must be a mapping"),
    ],
)
def test_a_wrong_type_fails_render_with_the_key_path(
    tmp_path: Path, key_path: str, value, problem: str
) -> None:
    data = yaml.safe_load((ROOT / "environments" / "staging.yaml").read_text())
    _setting(key_path, value)(data)
    path = tmp_path / "staging.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    out = tmp_path / "values.yaml"
    result = run_cli("render", str(path), "-o", str(out))
    assert result.code == 2
    assert f"{key_path}: {problem}" in result.err
    assert "Traceback" not in result.err
    assert not out.exists()  # nothing written


def test_unknown_environment_is_exit_2() -> None:
    result = run_cli("render", "qa")
    assert result.code == 2
    assert "unknown environment 'qa'" in result.err


def test_render_never_loads_helm() -> None:
    """`render` is the fast path: no Helm SDK, no Kubernetes client."""
    code = (
        "import sys\n"
        "from qlensctl.main import run\n"
        "try:\n    run(['render', 'production'])\n"
        "except SystemExit as exc:\n    assert not exc.code, exc.code\n"
        "heavy = sorted(m for m in ('helm_python', 'pyhelm3', 'kubernetes') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        env={**os.environ, "QLENS_ENVIRONMENTS": str(ROOT / "environments")},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "environment: production" in proc.stdout
