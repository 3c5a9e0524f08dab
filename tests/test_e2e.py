"""End to end on SQLite: the real ``gateway run`` (web server + workers) as a process, fed by the real CLI and by
signed Twilio webhooks, writing into a JSON-lines CRM file or into a local fake Zendesk."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, func, select

from gateway.storage.tables import inbox, messages, outbox
from tests.fake_zendesk import MARKER, FakeZendesk
from tests.helpers import (
    ROOT,
    TWILIO_SID,
    TWILIO_TOKEN,
    GatewayProcess,
    free_port,
    message_sid,
    send_twilio,
    twilio_params,
    wait_for,
    wait_ready,
    write_gateway_config,
    zendesk_crm,
)

NATIONAL = "(415) 555-0100"
INTERNATIONAL = "+14155550100"


@pytest.fixture
def fake_zendesk() -> Iterator[FakeZendesk]:
    with FakeZendesk() as fake:
        yield fake


def start_gateway(tmp_path: Path, crms: str, routes: str) -> tuple[Path, str, GatewayProcess]:
    port = free_port()
    config = write_gateway_config(tmp_path, storage_url=f"sqlite:///{tmp_path / 'gateway.db'}", port=port,
                                  crms=crms, routes=routes)
    proc = GatewayProcess(["run", "-c", str(config)], tmp_path / "gateway.log")
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base_url, proc)
    except BaseException:
        proc.stop()
        raise
    return config, base_url, proc


def simulate(config: Path, sender: str, text: str) -> None:
    """``gateway simulate``: the CLI signs a sample request the way Twilio would and posts it."""
    result = subprocess.run([sys.executable, "-m", "gateway", "simulate", "-c", str(config), "sms-main",
                             "--from", sender, "--text", text], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "-> 200" in result.stdout


def jsonl_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_sms_in_national_and_international_form_is_one_customer_and_stored_once(tmp_path: Path) -> None:
    config, base_url, proc = start_gateway(tmp_path, "{trial: {type: jsonl, path: out/crm.jsonl}}",
                                           "[{from: [sms-main], to: trial}]")
    try:
        simulate(config, NATIONAL, "my order has not arrived")
        params = twilio_params(message_sid(1), INTERNATIONAL, "order 1234, still nothing", TWILIO_SID)
        first = send_twilio(base_url, base_url, "sms-main", TWILIO_TOKEN, params)
        again = send_twilio(base_url, base_url, "sms-main", TWILIO_TOKEN, params)  # Twilio retrying the same SMS
        assert first.status_code == again.status_code == 200
        assert again.headers["Content-Type"].startswith("text/xml") and b"<Response" in again.content
        forged = send_twilio(base_url, base_url, "sms-main", "not-the-token", {**params, "MessageSid": message_sid(2)})
        assert forged.status_code in (401, 403)

        crm_file = tmp_path / "out" / "crm.jsonl"
        wait_for(lambda: len(jsonl_lines(crm_file)) >= 2, 20, f"two lines in {crm_file}")
        engine = create_engine(f"sqlite:///{tmp_path / 'gateway.db'}")
        with engine.connect() as conn:
            wait_for(lambda: conn.execute(select(func.count()).select_from(outbox).where(
                outbox.c.status != "done")).scalar_one() == 0 and conn.execute(select(func.count()).where(
                    inbox.c.status == "pending")).scalar_one() == 0, 20, "queues to drain")
            assert conn.execute(select(func.count()).select_from(inbox)).scalar_one() == 2
            assert conn.execute(select(func.count()).select_from(messages)).scalar_one() == 2
        engine.dispose()
        lines = jsonl_lines(crm_file)
    finally:
        assert proc.stop() == 0, proc.output()[-3000:]

    assert len(lines) == 2
    assert sorted(line["message"]["text"] for line in lines) == ["my order has not arrived",
                                                                  "order 1234, still nothing"]
    assert len({line["customer"]["id"] for line in lines}) == 1
    assert len({line["conversation"]["id"] for line in lines}) == 1
    assert {"kind": "phone", "value": INTERNATIONAL} in lines[-1]["customer"]["identifiers"]
    assert [line["message"]["provider_message_id"] for line in lines].count(message_sid(1)) == 1
    assert len({line["idempotency_key"] for line in lines}) == 2


def test_first_sms_opens_a_ticket_and_the_next_one_comments_on_it(tmp_path: Path,
                                                                  fake_zendesk: FakeZendesk) -> None:
    config, base_url, proc = start_gateway(tmp_path, zendesk_crm(fake_zendesk.url), "[{from: [sms-main], to: desk}]")
    try:
        simulate(config, NATIONAL, "hello, my parcel is late")
        wait_for(lambda: fake_zendesk.comment_count() == 1, 20, "the first comment in Zendesk")
        counts = fake_zendesk.write_counts()
        assert counts == {"user": 1, "ticket": 1}
        [user] = fake_zendesk.users()
        [ticket] = fake_zendesk.tickets()
        [first] = fake_zendesk.ticket_comments(ticket["id"])
        assert user["phone"] == INTERNATIONAL
        assert ticket["requester_id"] == user["id"]
        assert first["body"] == "hello, my parcel is late\n\nvia SMS (sms-main)"
        assert first["author_id"] == user["id"] and first["public"] is True
        assert first["metadata"][MARKER]

        response = send_twilio(base_url, base_url, "sms-main", TWILIO_TOKEN,
                               twilio_params(message_sid(7), INTERNATIONAL, "any news?", TWILIO_SID))
        assert response.status_code == 200
        wait_for(lambda: fake_zendesk.comment_count() == 2, 20, "the second comment in Zendesk")
    finally:
        assert proc.stop() == 0, proc.output()[-3000:]

    assert fake_zendesk.write_counts() == {"user": 1, "ticket": 1, "comment": 1}
    assert [t["id"] for t in fake_zendesk.tickets()] == [ticket["id"]]
    comments = fake_zendesk.ticket_comments(ticket["id"])
    assert [c["body"] for c in comments] == ["hello, my parcel is late\n\nvia SMS (sms-main)",
                                             "any news?\n\nvia SMS (sms-main)"]
    assert comments[1]["author_id"] == user["id"]
    assert comments[0]["metadata"][MARKER] != comments[1]["metadata"][MARKER]
    markers = fake_zendesk.ticket_markers(ticket["id"])
    assert len(markers) == len(set(markers)) == 2, "one message per comment here, each written once"
