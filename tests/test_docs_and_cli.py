"""Generated artefacts stay in step with the code; CLI commands that need no server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from gateway.cli import main
from gateway.docs import connectors_markdown
from gateway.mapping import render_mapping_schema, run_mapping_tests
from gateway.model import render_json_schema
from gateway.plugins import ChannelConnector, DuplicateConnectorType, Registry
from tests.conftest import ROOT

MAPPINGS = sorted(p for p in (ROOT / "mappings").glob("*.yaml") if not p.name.endswith(".tests.yaml"))


def test_message_schema_file_is_current() -> None:
    published = (ROOT / "docs/schema/message.schema.json").read_text(encoding="utf-8")
    assert published == render_json_schema(), "docs/schema/message.schema.json is stale: run 'gateway schema'"


def test_mapping_schema_file_is_current() -> None:
    published = (ROOT / "docs/schema/mapping.schema.json").read_text(encoding="utf-8")
    assert published == render_mapping_schema(), "docs/schema/mapping.schema.json is stale: run 'gateway schema'"
    assert json.loads(published)["additionalProperties"] is False


def test_schema_check_command_detects_a_stale_file(tmp_path: Path) -> None:
    (tmp_path / "message.schema.json").write_text("{}")
    result = CliRunner().invoke(main, ["schema", "--check", "--output-dir", str(tmp_path)])
    assert result.exit_code == 1 and "stale" in result.output
    assert CliRunner().invoke(main, ["schema", "--output-dir", str(tmp_path)]).exit_code == 0
    assert json.loads((tmp_path / "message.schema.json").read_text())["title"] == "Message"
    assert CliRunner().invoke(main, ["schema", "--check", "--output-dir", str(tmp_path)]).exit_code == 0


def test_connector_reference_is_current() -> None:
    published = (ROOT / "docs/connectors.md").read_text(encoding="utf-8")
    assert published == connectors_markdown(Registry.from_entry_points()), (
        "docs/connectors.md is stale: run 'gateway connectors --markdown > docs/connectors.md'")


def test_connectors_command_lists_types_and_their_settings() -> None:
    result = CliRunner().invoke(main, ["connectors"])
    assert result.exit_code == 0
    for name in ("twilio (channel)", "zendesk (crm)", "jsonl (crm)", "webhook (crm)"):
        assert name in result.output
    assert "auth_token" in result.output and "secret" in result.output


def test_builtin_connectors_register_through_entry_points() -> None:
    registry = Registry.from_entry_points()
    assert {"twilio", "zendesk", "jsonl", "webhook"} <= set(registry.names())
    assert "twilio" in registry.names("channel")
    assert {"zendesk", "jsonl", "webhook"} <= set(registry.names("crm"))


def test_a_duplicate_connector_type_is_an_error() -> None:
    registry = Registry.from_entry_points()

    class Impostor(ChannelConnector):  # type: ignore[misc]
        pass

    with pytest.raises(DuplicateConnectorType, match="twilio"):
        registry.add("twilio", Impostor)  # type: ignore[type-abstract]


@pytest.mark.parametrize("mapping", MAPPINGS, ids=lambda p: p.name)
def test_shipped_mapping_passes_its_sibling_tests(mapping: Path) -> None:
    assert run_mapping_tests(mapping) == []


def test_mapping_test_command_reports_a_failing_case(tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text("crm: jsonl\nfields:\n  subject: 'Hi {{ customer.display_name }}'\n")
    (tmp_path / "m.tests.yaml").write_text(
        "cases:\n  - name: wrong\n    input: {customer: {display_name: Ann}}\n    expect: {subject: Hi Bob}\n")
    result = CliRunner().invoke(main, ["mapping", "test", str(tmp_path / "m.yaml")])
    assert result.exit_code == 1
    assert "expected 'Hi Bob', got 'Hi Ann'" in result.output
    good = CliRunner().invoke(main, ["mapping", "test", *map(str, MAPPINGS)])
    assert good.exit_code == 0, good.output


def test_mapping_without_tests_fails(tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text("crm: jsonl\nfields: {a: b}\n")
    assert "missing" in run_mapping_tests(tmp_path / "m.yaml")[0]


def test_an_entry_point_named_unlike_its_connector_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib.metadata import EntryPoint

    from gateway import plugins

    wrong = EntryPoint(name="sms", value="connectors.twilio:TwilioChannel", group=plugins.ENTRY_POINT_GROUP)
    monkeypatch.setattr(plugins, "entry_points", lambda group: [wrong])
    with pytest.raises(plugins.ConnectorNameMismatch, match=r"'sms'.*'twilio'"):
        Registry.from_entry_points()


def test_connectors_lists_each_type_s_abilities() -> None:
    result = CliRunner().invoke(main, ["connectors"])
    assert result.exit_code == 0, result.output
    blocks = {block.split(" ", 1)[0]: block for block in result.output.split("\n\n") if block.strip()}
    assert "abilities: polling" in blocks["imap"]
    assert "directory_sync" in blocks["zendesk"] and "contact_merge" in blocks["zendesk"]
    assert "abilities: webhook" in blocks["twilio"].replace(", send_replies", "")
