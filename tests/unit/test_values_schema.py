"""charts/qlens/values.schema.json is generated from the pydantic models and must be up to date.

Helm itself validating values against the file is tested in test_chart.py
(`test_values_schema_rejects_a_wrong_type_naming_the_path`); here: the committed file is exactly
what the models generate, the generator's --check says so, and the models accept what the chart
really gets (its values.yaml merged with each environment's rendered values, as Helm merges them).
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import TypeAdapter

from qlensctl import values_schema
from qlensctl.environments import Environment, load_environment
from qlensctl.render import render_values
from services.router.providers.registry import PROVIDERS

ROOT = Path(__file__).resolve().parents[2]
CHART_VALUES = ROOT / "charts" / "qlens" / "values.yaml"


def merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Helm's coalescing of values: mappings merge key by key, anything else is replaced."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def test_the_committed_schema_is_what_the_models_generate() -> None:
    committed = values_schema.SCHEMA_PATH.read_text()
    assert committed == values_schema.schema_text(), (
        "charts/qlens/values.schema.json is out of date: run `nox -s schema` "
        "(python -m qlensctl.values_schema) and commit the result")


def test_check_mode_fails_on_a_stale_file_and_writing_fixes_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    stale = tmp_path / "values.schema.json"
    stale.write_text(values_schema.schema_text().replace('"minimum": 1', '"minimum": 2', 1))
    monkeypatch.setattr(values_schema, "SCHEMA_PATH", stale)
    assert values_schema.main(["--check"]) == 1
    assert "out of date: run `nox -s schema`" in capsys.readouterr().err
    assert values_schema.main([]) == 0
    assert values_schema.main(["--check"]) == 0
    assert stale.read_text() == values_schema.schema_text()
    assert values_schema.main(["--bogus"]) == 2


def test_the_module_entry_point_checks_the_committed_file() -> None:
    proc = subprocess.run([sys.executable, "-m", "qlensctl.values_schema", "--check"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_the_schema_is_self_contained_draft_07_and_names_the_registrys_providers() -> None:
    schema = json.loads(values_schema.SCHEMA_PATH.read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    text = json.dumps(schema)
    assert "$ref" not in text and "$defs" not in text
    assert schema["additionalProperties"] is False
    assert list(schema["properties"]["providers"]["properties"]) == list(PROVIDERS)
    deployment = schema["properties"]["models"]["additionalProperties"]["properties"]["deployments"]["items"]
    assert deployment["properties"]["provider"]["enum"] == list(PROVIDERS)
    # a setting added to a model reaches the schema without anyone editing it (costControls.limits
    # was missing from the hand-written file)
    assert set(schema["properties"]["costControls"]["properties"]["limits"]["properties"]) == {
        "total", "perTenant", "perUser", "perKey"}


@pytest.mark.parametrize("env", ["local", "staging", "production"])
def test_what_the_chart_gets_is_valid_for_the_models(env: str) -> None:
    defaults = yaml.safe_load(CHART_VALUES.read_text())
    values_schema.ChartValues.model_validate(defaults)
    rendered = render_values(load_environment(str(ROOT / "environments" / f"{env}.yaml")), version="v1.0.0")
    values_schema.ChartValues.model_validate(merged(defaults, rendered))


def test_the_models_refuse_a_bad_or_missing_chart_value() -> None:
    defaults = yaml.safe_load(CHART_VALUES.read_text())
    with pytest.raises(ValueError, match="networkPolicy.dnsPorts.0"):
        values_schema.ChartValues.model_validate(merged(defaults, {"networkPolicy": {"dnsPorts": [0]}}))
    without = {k: v for k, v in defaults.items() if k != "rbac"}
    with pytest.raises(ValueError, match="rbac"):
        values_schema.ChartValues.model_validate(without)


SERVICE_SECTIONS = ("providers", "models", "routing", "cache", "cost_controls", "auth", "gateway", "ports")


@pytest.mark.parametrize("name", SERVICE_SECTIONS)
def test_values_yaml_documents_the_service_configuration_with_the_models_defaults(name: str) -> None:
    """values.yaml repeats each service section (so the chart works alone): with the models'
    defaults, or a default changed in one place would silently differ in the other."""
    field = Environment.model_fields[name]
    chart_default = yaml.safe_load(CHART_VALUES.read_text())[field.alias or name]
    assert field.annotation is not None
    parsed = TypeAdapter(field.annotation).validate_python(chart_default)
    assert parsed == field.get_default(call_default_factory=True)
