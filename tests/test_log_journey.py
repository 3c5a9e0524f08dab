"""A message's whole journey logged as the processes log it (INFO): no phone number, address or message text.

The webhook arrives signed, one copy with a sender the channel cannot read, the CRM first fails and then refuses
the write with an answer quoting the customer and the message (as receivers echo what they were sent). Every line
written is read back: identifiers appear only as their short hash, the same on every line, and never the words.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
import responses
from sqlalchemy import update
from twilio.request_validator import RequestValidator

from gateway.config import load_config
from gateway.delivery import DeliveryWorker
from gateway.logs import QUIET, setup_logging_for, withheld
from gateway.pipeline import PipelineWorker
from gateway.privacy import short_hash
from gateway.runtime import Runtime, build_runtime
from gateway.storage.db import utcnow
from gateway.storage.tables import outbox
from gateway.web import create_app
from gateway.worker import drain_once
from tests.conftest import PUBLIC_URL, TWILIO_SID, TWILIO_TOKEN
from tests.helpers import message_sid, twilio_params

PHONE, EMAIL = "+14155550100", "asha.rao@example.com"
TEXT = "Please send the spare key to the blue cottage, reach me at asha.rao@example.com"
HOOK_URL = "https://crm.example.net/hook"


def config(include_pii: bool) -> str:
    return f"""
storage: {{url: "{{storage_url}}"}}
server: {{public_url: "{PUBLIC_URL}"}}
logging: {{level: INFO, include_pii: {str(include_pii).lower()}}}
privacy: {{key: "test-privacy-key-0123456789"}}
workers: {{retry: {{max_attempts: 2, initial_seconds: 0.01, max_seconds: 0.01, jitter_seconds: 0}}}}
channels:
  sms-main: {{type: twilio, account_sid: "{TWILIO_SID}", auth_token: "{TWILIO_TOKEN}"}}
crms:
  hook: {{type: webhook, url: "{HOOK_URL}", secret: "test-hook-secret"}}
routes:
  - {{from: [sms-main], to: hook}}
"""


@pytest.fixture
def logged(capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[[Runtime], str]]:
    """Logging set up from the runtime's config as ``gateway run`` does; returns what it wrote."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {name: logging.getLogger(name).level for name in QUIET}

    def setup(rt: Runtime) -> str:
        setup_logging_for(rt.config, "text")
        return ""

    yield setup
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, value in levels.items():
        logging.getLogger(name).setLevel(value)


def journey(rt: Runtime) -> None:
    client = create_app(rt).test_client()
    for sid, sender in ((message_sid(1), PHONE), (message_sid(2), PHONE + "99999")):
        params = twilio_params(sid, sender, TEXT, TWILIO_SID)
        signature = RequestValidator(TWILIO_TOKEN).compute_signature(f"{PUBLIC_URL}/hooks/sms-main", params)
        answer = client.post("/hooks/sms-main", data=params, headers={"X-Twilio-Signature": signature})
        assert answer.status_code == 200
    drain_once(PipelineWorker(rt, "test-p"))
    echo = {"error": f"contact {PHONE} / {EMAIL} refused", "received": {"text": TEXT}}
    with responses.RequestsMock() as mock:
        mock.post(HOOK_URL, status=503, json=echo)
        drain_once(DeliveryWorker(rt, "test-d"))
    with rt.engine.begin() as conn:  # the retry is due now
        conn.execute(update(outbox).values(available_at=utcnow()))
    with responses.RequestsMock() as mock:
        mock.post(HOOK_URL, status=422, json=echo)
        drain_once(DeliveryWorker(rt, "test-d"))


def test_a_journey_logs_no_number_address_or_text(write_config: Callable[..., Path],
                                                  logged: Callable[[Runtime], str],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    rt = build_runtime(load_config(write_config(config(False))), http=requests.Session())
    try:
        logged(rt)
        capsys.readouterr()
        journey(rt)
        written = capsys.readouterr().err
    finally:
        rt.close()
    assert "dead-lettered" in written and "quarantined" in written and "retry in" in written  # the whole journey
    assert "blue cottage" not in written and "spare key" not in written and "[message text]" in written
    assert PHONE not in written and PHONE[1:] not in written and EMAIL not in written


def test_include_pii_shows_identifiers_but_never_the_text(capsys: pytest.CaptureFixture[str],
                                                          logged: Callable[[Runtime], str],
                                                          write_config: Callable[..., Path]) -> None:
    for include_pii in (False, True):
        rt = build_runtime(load_config(write_config(config(include_pii))), http=requests.Session())
        try:
            logged(rt)
            capsys.readouterr()
            words = "Please send the spare key to the blue cottage"
            with withheld([words]):
                logging.getLogger("gateway.test").warning("customer %s <%s> wrote: %s", PHONE, EMAIL, words[5:40])
            written = capsys.readouterr().err
        finally:
            rt.close()
        assert "spare key" not in written
        if include_pii:
            assert PHONE in written and EMAIL in written
        else:
            key = b"test-privacy-key-0123456789"
            assert f"phone#{short_hash(key, PHONE)} <email#{short_hash(key, EMAIL)}>" in written
