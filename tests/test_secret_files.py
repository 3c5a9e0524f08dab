"""``${file:PATH}`` in a config: secrets mounted as files (Docker and Kubernetes secrets)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.yamlsource import ConfigError, interpolate, parse_yaml
from tests.conftest import TWILIO_SID

CONFIG = f"""
storage: {{url: "{{storage_url}}"}}
server: {{metrics_token: "${{file:{{metrics}}}}"}}
channels:
  sms-main:
    type: twilio
    account_sid: "{TWILIO_SID}"
    auth_token: "${{file:{{token}}}}"
crms:
  trial: {{type: jsonl, path: out/crm.jsonl}}
routes:
  - {{from: [sms-main], to: trial}}
"""


def config_with(write_config: Callable[..., Path], metrics: str, token: str) -> Path:
    return write_config(CONFIG.replace("{metrics}", metrics).replace("{token}", token))


def test_a_secret_comes_from_a_file_without_its_final_newline(tmp_path: Path,
                                                              write_config: Callable[..., Path]) -> None:
    secrets = tmp_path / "run-secrets"
    secrets.mkdir()
    (secrets / "twilio_token").write_text("test-token-from-file\n", encoding="utf-8")
    (secrets / "metrics").write_text("metrics-token-0123456789\r\n", encoding="utf-8")
    config = load_config(config_with(write_config, str(secrets / "metrics"), "run-secrets/twilio_token"))
    assert config.channels["sms-main"].auth_token.get_secret_value() == "test-token-from-file"  # type: ignore[attr-defined]
    token = config.settings.server.metrics_token
    assert token is not None and token.get_secret_value() == "metrics-token-0123456789"


def test_a_missing_or_unreadable_secret_file_is_named_and_its_content_never_shown(
        tmp_path: Path, write_config: Callable[..., Path]) -> None:
    short = tmp_path / "short-token"
    short.write_text("tiny-secret\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(config_with(write_config, str(short), str(tmp_path / "absent")))
    lines = str(caught.value).splitlines()
    missing = f"config.yaml:8 channels.sms-main.auth_token: secret file {tmp_path / 'absent'} does not exist"
    assert any(line.endswith(missing) for line in lines), lines
    assert any("server.metrics_token: must be at least 16 characters" in line for line in lines), lines
    assert "tiny-secret" not in str(caught.value)
    with pytest.raises(ConfigError, match=r"secret file .*run-secrets is a directory"):
        (tmp_path / "run-secrets").mkdir()
        load_config(config_with(write_config, str(tmp_path / "run-secrets"), str(tmp_path / "run-secrets")))


def test_a_doubled_dollar_keeps_a_file_reference_literal() -> None:
    doc = parse_yaml('a: "$${file:/run/secrets/x}"\n', "t.yaml")
    assert interpolate(doc, {}) == [] and doc.data == {"a": "${file:/run/secrets/x}"}
