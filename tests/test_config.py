"""Config: env references, path-named errors from the hub and from each plugin's Settings."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hub.cli import main
from hub.config import ConfigError, config_json_schema, load_config, parse_config

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "example.yaml"


def example():
    return yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))


def test_example_config_is_valid(capsys):
    assert main(["check-config", str(EXAMPLE)]) == 0
    assert "valid" in capsys.readouterr().out


def test_env_references_and_defaults(monkeypatch):
    monkeypatch.setenv("TTDLQG_TOKEN", "from-the-environment")
    config = parse_config(example())
    assert config.destination_settings().token.get_secret_value() == "from-the-environment"
    monkeypatch.delenv("TTDLQG_TOKEN")
    assert parse_config(example()).destination_settings().token.get_secret_value() == "demo-ttdlqg-token"


def test_missing_env_var_names_the_path(monkeypatch):
    data = example()
    data["signers"][0]["settings"]["password"] = "${HOCBA_TEST_UNSET_VAR}"
    monkeypatch.delenv("HOCBA_TEST_UNSET_VAR", raising=False)
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert "signers[0].settings.password: environment variable HOCBA_TEST_UNSET_VAR is not set" in info.value.errors


def test_every_error_on_its_own_line_with_its_path(tmp_path, capsys):
    data = example()
    data["adapters"][0]["settings"]["base_url"] = "not a url"
    data["adapters"][0]["settings"]["page_size"] = 0
    data["adapters"].append({"name": "x", "type": "no-such-vendor"})
    data["signing"]["steps"].reverse()
    data["http"]["bind"] = "nowhere"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    assert main(["check-config", str(bad)]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert any(line.startswith("http.bind:") for line in lines), lines
    assert any(line.startswith("signing.steps:") for line in lines), lines
    # Plugin sections are checked by the plugin's own Settings once the hub's shape is valid.
    data["signing"]["steps"].reverse()
    data["http"]["bind"] = "127.0.0.1:8080"
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    paths = [line.split(":")[0] for line in info.value.errors]
    assert "adapters[0].settings.base_url" in paths
    assert "adapters[0].settings.page_size" in paths
    assert f"adapters[{len(data['adapters']) - 1}].type" in paths


def test_destination_must_deliver_and_unknown_keys_are_errors():
    data = example()
    data["routes"][0]["type"] = "vnpt"
    data["adapters"][0]["settings"]["colour"] = "blue"
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    text = "\n".join(info.value.errors)
    assert "routes[0].type: 'vnpt' cannot deliver" in text
    assert "adapters[0].settings.colour" in text
    # The old spelling names its own key.
    data["destination"] = data.pop("routes")[0]
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert "destination.type: 'vnpt' cannot deliver" in info.value.errors


def test_unreadable_and_non_yaml_files(tmp_path):
    with pytest.raises(ConfigError):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("adapters: [\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(broken)
    assert "not valid YAML" in info.value.errors[0]


def test_committed_schema_is_current():
    committed = json.loads((ROOT / "config" / "schema.json").read_text(encoding="utf-8"))
    assert committed == json.loads(json.dumps(config_json_schema())), (
        "config/schema.json is stale: run `hocba-hub schema --config > config/schema.json`"
    )


def test_plugins_command_lists_builtins_with_package_and_version():
    out = subprocess.run([sys.executable, "-m", "hub.cli", "plugins", "--json"],
                         capture_output=True, text=True, check=True).stdout
    listed = {(p["kind"], p["name"]): p for p in json.loads(out)}
    for key in [("adapter", "vnpt"), ("adapter", "moet"), ("signer", "pkcs12")]:
        assert listed[key]["package"] == "hocba-hub" and listed[key]["version"]


def test_load_plugins_env_restricts_loading():
    out = subprocess.run([sys.executable, "-m", "hub.cli", "plugins", "--json"], capture_output=True,
                         text=True, check=True, env={**__import__("os").environ, "HOCBA_HUB_LOAD_PLUGINS": "moet"}).stdout
    assert [p["name"] for p in json.loads(out)] == ["moet"]
