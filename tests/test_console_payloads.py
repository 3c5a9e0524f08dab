"""Raw payloads as the console shows them and an export writes them: credentials and card numbers masked, ids kept."""

from __future__ import annotations

import json
from urllib.parse import urlencode

from flask import Flask

from gateway.console.payloads import MASK, body_shown, headers_shown
from gateway.records import InboxItem
from gateway.runtime import Runtime
from gateway.storage.tables import inbox
from gateway.web import create_app
from tests.conftest import PUBLIC_URL
from tests.console_helpers import ADMIN, add_accounts, log_in

CARD, MASKED = "4242 4242 4242 4242", "**** **** **** 4242"
X_ID = "1790000000000000005"  # a 19-digit id that happens to pass the Luhn check, as X's message ids may
SLACK = {"token": "test-verification-token", "team_id": "T0PRIVACY01", "type": "event_callback",
         "event": {"type": "message", "text": f"my card is {CARD}", "client_msg_id": "4000056655665556"},
         "event_id": "Ev0PRIVACY"}


def mailgun_multipart() -> tuple[bytes, str]:
    """A Mailgun route's POST as multipart/form-data: signature fields, the stripped text and one file."""
    boundary = "test-boundary-7MA4YWxkTrZu0gW"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
             for name, value in (("token", "test-mailgun-token"), ("signature", "test-mailgun-signature"),
                                 ("timestamp", "1700000000"), ("stripped-text", f"card {CARD}"))]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="attachment-1"; filename="scan.pdf"\r\n'
                 f"Content-Type: application/pdf\r\n\r\n%PDF-1.4\r\n".encode())
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_json_masks_credentials_and_card_numbers_and_keeps_ids() -> None:
    shown = json.loads(body_shown(json.dumps({**SLACK, "id_str": X_ID}).encode(), "application/json"))
    assert shown["token"] == MASK
    assert shown["event"]["text"] == f"my card is {MASKED}"
    assert shown["id_str"] == X_ID and shown["event"]["client_msg_id"] == "4000056655665556"


def test_forms_and_text_mask_card_numbers() -> None:
    form = urlencode({"MessageSid": "SM" + "1" * 32, "Body": f"card {CARD}", "SmsSid": X_ID,
                      "token": "test-form-token"}).encode()
    shown = body_shown(form, "application/x-www-form-urlencoded")
    assert f"Body = card {MASKED}" in shown and f"SmsSid = {X_ID}" in shown and f"token = {MASK}" in shown
    assert body_shown(f"Subject: hi\n\ncard {CARD}\n".encode(), "message/rfc822").endswith(f"card {MASKED}\n")
    assert headers_shown({"X-Mailgun-Signature": "x", "Content-Type": "text/plain"}) == {
        "X-Mailgun-Signature": MASK, "Content-Type": "text/plain"}


def test_multipart_is_hidden_in_the_console_and_listed_masked_in_an_export() -> None:
    body, content_type = mailgun_multipart()
    assert body_shown(body, content_type).startswith(f"[{len(body)} bytes of multipart/form-data")
    exported = body_shown(body, content_type, limit=None)
    assert f"token = {MASK}" in exported and f"signature = {MASK}" in exported
    assert f"stripped-text = card {MASKED}" in exported and "timestamp = 1700000000" in exported
    assert "attachment-1 = [file 'scan.pdf', application/pdf, 8 bytes]" in exported
    assert "test-mailgun" not in exported and CARD not in exported


def test_the_dead_letter_page_masks_a_card_number_in_the_stored_request(runtime: Runtime) -> None:
    add_accounts(runtime)
    url = f"{PUBLIC_URL}/hooks/sms-main"
    runtime.queues.store_inbox("sms-main", [InboxItem("Ev0PRIVACY", json.dumps(SLACK).encode(), "application/json")],
                               {"X-Slack-Signature": "v0=abc"}, url)
    with runtime.engine.begin() as conn:
        row = conn.execute(inbox.select().where(inbox.c.provider_id == "Ev0PRIVACY")).one()
        letter = runtime.queues.dead_letter(conn, stage="pipeline", source_id=row.id, target="sms-main",
                                            error_class="permanent", reason="could not read the event", attempts=1)
    app: Flask = create_app(runtime)
    client = app.test_client()
    log_in(client, ADMIN)
    page = client.get(f"/admin/dead-letters/{letter}").get_data(as_text=True)
    assert "my card is" in page and MASKED in page
    assert CARD not in page and "test-verification-token" not in page
