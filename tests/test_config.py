"""Config loading: every error at once with its line, interpolation, secrets masked."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from gateway.cli import main
from gateway.config import load_config
from gateway.yamlsource import ConfigError, interpolate, parse_yaml
from tests.conftest import ROOT, TWILIO_TOKEN

BROKEN = """\
storage:
  url: "sqlite:///x.db"
  bogus: 1
server:
  listen: "nohost"
  public_url: "gw.example.com"
channels:
  sms-us:
    type: twilio
    account_sid: "AC123"
  sms-eu:
    type: nosuch
crms:
  zd:
    type: zendesk
    subdomain: acme
    api_token: "${GW_TEST_UNSET_TOKEN}"
routes:
  - from: [sms-us, ghost]
    to: nowhere
"""


def test_every_error_is_reported_with_file_line_and_path(write_config: Callable[..., Path]) -> None:
    path = write_config(BROKEN)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    lines = [str(issue) for issue in caught.value.issues]
    name = str(path)
    assert f"{name}:3 storage.bogus: unknown key" in lines
    assert f"{name}:5 server.listen: must be HOST:PORT, such as 127.0.0.1:8080" in lines
    assert any(line.startswith(f"{name}:6 server.public_url:") for line in lines)
    assert any(line.startswith(f"{name}:10 channels.sms-us.account_sid:") for line in lines)
    assert f"{name}:8 channels.sms-us.auth_token: field required (twilio)" in lines
    assert any(line.startswith(f"{name}:12 channels.sms-eu.type: unknown channel connector type 'nosuch'")
               for line in lines)
    assert any(line.startswith(f"{name}:17 crms.zd.api_token: environment variable GW_TEST_UNSET_TOKEN is not set")
               for line in lines)
    assert f"{name}:19 routes[0].from[1]: no channel named 'ghost'" in lines
    assert f"{name}:20 routes[0].to: no crm named 'nowhere'" in lines
    assert [issue.line for issue in caught.value.issues] == sorted(issue.line or 0 for issue in caught.value.issues)


def test_check_command_lists_errors_and_exits_1(write_config: Callable[..., Path]) -> None:
    path = write_config(BROKEN)
    result = CliRunner().invoke(main, ["check", "-c", str(path)])
    assert result.exit_code == 1
    assert f"{path}:19 routes[0].from[1]: no channel named 'ghost'" in result.output
    assert "error(s)" in result.output


def test_check_command_accepts_the_example_config() -> None:
    result = CliRunner().invoke(main, ["check", "-c", str(ROOT / "config.example.yaml")])
    assert result.exit_code == 0, result.output
    assert "valid" in result.output


def test_yaml_syntax_error_has_a_line(write_config: Callable[..., Path]) -> None:
    path = write_config("storage:\n  url: [unclosed\nserver: {}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.issues[0].line is not None
    assert "YAML syntax" in caught.value.issues[0].message


def test_interpolation_with_defaults_and_escapes() -> None:
    doc = parse_yaml('a: "${GW_X}"\nb: "${GW_MISSING:-fallback}"\nc: "$${GW_X}"\nd: "${GW_EMPTY:-d}"\n', "t.yaml")
    issues = interpolate(doc, {"GW_X": "value", "GW_EMPTY": ""})
    assert issues == []
    assert doc.data == {"a": "value", "b": "fallback", "c": "${GW_X}", "d": "d"}


def test_unknown_connector_key_is_refused(write_config: Callable[..., Path]) -> None:
    text = (ROOT / "config.example.yaml").read_text().replace("    type: jsonl\n", "    type: jsonl\n    colour: red\n")
    path = write_config(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert [issue.path for issue in caught.value.issues] == ["crms.trial.colour"]
    assert caught.value.issues[0].message == "unknown key (jsonl)"


def test_secrets_are_masked_when_printed(write_config: Callable[..., Path]) -> None:
    config = load_config(write_config())
    channel = config.channels["sms-main"]
    for text in (repr(channel), str(channel), repr(config), channel.model_dump_json()):
        assert TWILIO_TOKEN not in text
    assert channel.auth_token.get_secret_value() == TWILIO_TOKEN


def test_missing_mapping_file_is_a_config_error(write_config: Callable[..., Path]) -> None:
    path = write_config("""
        crms:
          trial: {type: jsonl, mapping: mappings/nope.yaml}
    """)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.issues[0].path == "crms.trial.mapping"
    assert "does not exist" in caught.value.issues[0].message


def test_broken_mapping_template_is_reported_with_its_own_file_and_line(
        write_config: Callable[..., Path], tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text("crm: jsonl\nfields:\n  a: ok\n  b: '{{ message.text '\n")
    path = write_config("""
        crms:
          trial: {type: jsonl, mapping: m.yaml}
    """)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    issue = caught.value.issues[0]
    assert (issue.file, issue.line, issue.path) == (str(tmp_path / "m.yaml"), 4, "fields.b")
    assert "template syntax" in issue.message
