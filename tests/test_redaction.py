"""Masking before the CRM: card numbers (Luhn), national ids and custom patterns, per route, in what is sent and
what is stored; the original never in the logs; a reload takes a route's new rules. SQLite and PostgreSQL."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from sqlalchemy import select

from gateway.config import load_config
from gateway.delivery import DeliveryWorker
from gateway.pipeline import PipelineWorker
from gateway.reload import reload_runtime
from gateway.runtime import build_runtime
from gateway.sensitive import Masker
from gateway.storage.tables import inbox, messages
from gateway.worker import drain_once
from tests.conftest import PUBLIC_URL, TWILIO_SID, TWILIO_TOKEN
from tests.helpers import message_sid, twilio_inbox_item, twilio_params

ALL = Masker(cards=True, national_ids=frozenset({"us_ssn", "in_aadhaar", "uk_nino"}))
AADHAAR = "234567890124"  # 23456789012 and its Verhoeff check digit


@pytest.fixture(params=["sqlite", "postgresql"])
def write_config(request: pytest.FixtureRequest, write_config: Callable[..., Path]) -> Callable[..., Path]:
    """Each test that stores something runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return write_config
    url = request.getfixturevalue("postgres_url")

    def write(text: str | None = None, *, storage_url: str | None = None, name: str = "config.yaml") -> Path:
        return write_config(text, storage_url=storage_url or url, name=name)

    return write


@pytest.mark.parametrize(("text", "masked"), [
    ("my card 4242 4242 4242 4242 exp 12/29", "my card **** **** **** 4242 exp 12/29"),
    ("card 4000-0566-5566-5556", "card **** **** **** 5556"),
    ("card 5555555555554444.", "card **** **** **** 4444."),
    ("order 4242 4242 4242 4241 (not Luhn)", "order 4242 4242 4242 4241 (not Luhn)"),
    ("call +1 415 555 0100 or ts 1700000000.000100", "call +1 415 555 0100 or ts 1700000000.000100"),
    ("ssn 123-45-6789", "ssn ***-**-6789"),
    ("not an ssn: 666-45-6789, 123-00-6789", "not an ssn: 666-45-6789, 123-00-6789"),
    ("the wallet sample 078-05-1120 was never anyone's", "the wallet sample 078-05-1120 was never anyone's"),
    (f"aadhaar {AADHAAR[:4]} {AADHAAR[4:8]} {AADHAAR[8:]}", "aadhaar **** **** 0124"),
    ("aadhaar 2345 6789 0123 (check digit wrong)", "aadhaar 2345 6789 0123 (check digit wrong)"),
    ("NI number AB 12 34 56 C", "NI number ** ** ** ** *"),
    ("NI GB123456A is never issued", "NI GB123456A is never issued"),
])
def test_masking(text: str, masked: str) -> None:
    assert ALL.mask(text) == masked


CONFIG = f"""
storage: {{url: "{{storage_url}}"}}
server: {{public_url: "{PUBLIC_URL}"}}
channels:
  sms-main: {{type: twilio, account_sid: "{TWILIO_SID}", auth_token: "{TWILIO_TOKEN}"}}
  sms-plain: {{type: twilio, account_sid: "{TWILIO_SID}", auth_token: "{TWILIO_TOKEN}"}}
crms:
  trial: {{type: jsonl, path: out/crm.jsonl}}
routes:
  - from: [sms-main]
    to: trial
    redact:
      national_ids: [us_ssn]
      patterns: [{{regex: "PIN[- ]?\\\\d{{4}}", replacement: "PIN ****"}}]
  - from: [sms-plain]
    to: trial
    redact: {{cards: false}}
"""
TEXT = "Card 4242 4242 4242 4242, SSN 123-45-6789, door PIN 4711, order 4242 4242 4242 4241"


def test_masked_in_what_the_crm_gets_and_what_is_stored_never_logged(
        write_config: Callable[..., Path], caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    caplog.set_level(logging.DEBUG)
    rt = build_runtime(load_config(write_config(CONFIG)), http=requests.Session())
    try:
        for channel, n in (("sms-main", 1), ("sms-plain", 2)):
            params = twilio_params(message_sid(n), "+14155550100", TEXT, TWILIO_SID)
            rt.queues.store_inbox(channel, [twilio_inbox_item(params)], {}, PUBLIC_URL)
        drain_once(PipelineWorker(rt, "test-p"))
        drain_once(DeliveryWorker(rt, "test-d"))
        with rt.engine.connect() as conn:
            stored = dict(conn.execute(select(messages.c.connector, messages.c.data)).all())
            raw = conn.execute(select(inbox.c.body)).scalars().first()
    finally:
        rt.close()
    expected = "Card **** **** **** 4242, SSN ***-**-6789, door PIN ****, order 4242 4242 4242 4241"
    assert stored["sms-main"]["text"] == stored["sms-main"]["full_text"] == expected
    assert stored["sms-plain"]["text"] == TEXT  # that route masks nothing
    sent = {json.loads(line)["message"]["connector"]: json.loads(line)
            for line in (tmp_path / "out" / "crm.jsonl").read_text(encoding="utf-8").splitlines()}
    assert sent["sms-main"]["message"]["text"] == expected
    assert "4242 4242 4242 4242" not in json.dumps(sent["sms-main"])
    assert raw is not None and b"4242" in bytes(raw)  # the raw payload is kept as received, until retention
    assert "4242 4242 4242 4242" not in caplog.text and "123-45-6789" not in caplog.text


def test_a_reload_takes_the_routes_new_redaction(write_config: Callable[..., Path]) -> None:
    path = write_config(CONFIG)
    rt = build_runtime(load_config(path), http=requests.Session())
    try:
        pipeline = PipelineWorker(rt, "test-p")
        for n in (1, 2):
            if n == 2:
                text = path.read_text(encoding="utf-8").replace(
                    "redact: {cards: false}", "redact: {cards: true, national_ids: [us_ssn]}")
                path.write_text(text, encoding="utf-8")
                reload_runtime(rt)
            params = twilio_params(message_sid(n), "+14155550100", f"{n}: {TEXT}", TWILIO_SID)
            rt.queues.store_inbox("sms-plain", [twilio_inbox_item(params)], {}, PUBLIC_URL)
            drain_once(pipeline)
        with rt.engine.connect() as conn:
            texts = sorted(data["text"] for data in conn.execute(select(messages.c.data)).scalars())
    finally:
        rt.close()
    masked = "Card **** **** **** 4242, SSN ***-**-6789, door PIN 4711, order 4242 4242 4242 4241"
    assert texts == [f"1: {TEXT}", f"2: {masked}"]
