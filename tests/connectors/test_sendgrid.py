"""The SendGrid Inbound Parse channel: the shared conformance suite plus parsed/raw mode and charset specifics.

Fields are those SendGrid documents for Inbound Parse posts (headers, dkim, content-ids, to, from, cc, subject, text,
html, sender_ip, spam_report, spam_score, envelope, attachments, attachment-info, attachmentN, charsets, SPF; raw mode
sends ``email``). Inbound Parse signs nothing, so the parse URL carries the channel's secret ``?token=``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from connectors.sendgrid import TOKEN_PARAM, SendgridChannel, multipart_body
from gateway.errors import SignatureInvalid
from gateway.plugins import ChannelConnector
from gateway.webhooks import Headers, HookRequest
from tests.conformance.channel import ChannelConformance, Expected, split_records
from tests.conftest import PUBLIC_URL
from tests.mail.corpus import CASES_FOR_WEBHOOKS, PDF, sha

CHANNEL = "mail-sendgrid"
TOKEN = "test-sendgrid-url-token"
HOOK_URL = f"{PUBLIC_URL}/hooks/{CHANNEL}"
HEADERS = ("Received: from mx.example.org by mx.sendgrid.net\r\nFrom: Anna Kowalski <anna.kowalski@example.org>\r\n"
           "To: support@example.test\r\nSubject: =?utf-8?q?Z=C3=A9ro_colis?=\r\n"
           "Date: Mon, 3 Jun 2024 10:12:00 +0000\r\n"
           "Message-ID: <sg1@mail.example.org>\r\nIn-Reply-To: <agent-1@support.example.test>\r\n"
           "References: <m0@mail.example.org> <agent-1@support.example.test>\r\nMIME-Version: 1.0\r\n"
           "Content-Type: multipart/alternative; boundary=\"b1\"")


def parsed_fields(**extra: Any) -> dict[str, Any]:
    return {
        "headers": HEADERS, "dkim": "{@example.org : pass}", "to": "support@example.test",
        "from": "Anna Kowalski <anna.kowalski@example.org>", "subject": "Zéro colis",
        "text": "Où est mon colis ?\n\nOn Mon, 3 Jun 2024 at 09:00, Support <support@example.test> wrote:\n> Hi",
        "html": "<p>Où est mon colis ?</p>", "sender_ip": "203.0.113.5", "spam_score": "0.1",
        "envelope": json.dumps({"to": ["support@example.test"], "from": "anna.kowalski@example.org"}),
        "charsets": json.dumps({"to": "UTF-8", "html": "utf-8", "subject": "UTF-8", "from": "UTF-8",
                                "text": "utf-8"}),
        "SPF": "pass", **extra}


FIXTURES: dict[str, dict[str, Any]] = {
    "parsed_plain": parsed_fields(),
    "parsed_latin1_attachment": parsed_fields(
        text="Ci-joint la facture, merci.".encode("iso-8859-1"), html=None,
        charsets=json.dumps({"text": "iso-8859-1", "subject": "UTF-8"}), attachments="1",
        **{"attachment-info": json.dumps({"attachment1": {"filename": "facture.pdf", "name": "facture.pdf",
                                                          "type": "application/pdf"}}),
           "attachment1": ("facture.pdf", "application/pdf", PDF)}),
    "raw_mime_iso_2022_jp": {"email": CASES_FOR_WEBHOOKS["iso_2022_jp"].raw, "to": "support@example.test",
                             "from": "taro@example.jp", "envelope": json.dumps({"to": ["support@example.test"]})},
    "raw_mime_auto_reply": {"email": CASES_FOR_WEBHOOKS["auto_submitted"].raw},
}


def request_for(fields: dict[str, Any], token: str | None = TOKEN) -> HookRequest:
    clean = {k: v for k, v in fields.items() if v is not None}
    body, content_type = multipart_body(clean)
    query = f"{TOKEN_PARAM}={token}" if token is not None else ""
    return HookRequest("POST", f"/hooks/{CHANNEL}", query, Headers({"Content-Type": content_type}), body,
                       HOOK_URL + (f"?{query}" if query else ""))


class TestSendgridConformance(ChannelConformance):
    """The shared suite for ``sendgrid``: no timestamp (nothing to replay-check), no handshake (GET is 405)."""

    connector_class = SendgridChannel
    channel_name = CHANNEL
    required_secrets = ("url_token",)
    expected = {
        "parsed_plain": Expected("message", ({
            "subject": "Zéro colis", "text": "Où est mon colis ?", "html": "<p>Où est mon colis ?</p>",
            "sender.identifiers": [{"kind": "email", "value": "anna.kowalski@example.org"}],
            "thread.message_id": "sg1@mail.example.org", "thread.in_reply_to": "agent-1@support.example.test",
            "thread.references": ["m0@mail.example.org", "agent-1@support.example.test"],
            "sent_at": "2024-06-03T10:12:00Z", "extras.spam_score": "0.1", "extras.spf": "pass",
            "extras.envelope.to": ["support@example.test"]},), ("sg1@mail.example.org",)),
        "parsed_latin1_attachment": Expected("message", ({
            "text": "Ci-joint la facture, merci.", "attachments.0.filename": "facture.pdf",
            "attachments.0.content_type": "application/pdf", "attachments.0.sha256": sha(PDF),
            "attachments.0.size": len(PDF)},)),
        "raw_mime_iso_2022_jp": Expected("message", ({
            "subject": "注文について", "sender.display_name": "山田 太郎",
            "thread.message_id": "jp@mail.example.jp"},), ("jp@mail.example.jp",)),
        "raw_mime_auto_reply": Expected("message", ()),
    }

    def channel_settings(self) -> dict[str, Any]:
        return {"type": "sendgrid", "url_token": TOKEN}

    def signed_request(self, fixture: str, connector: ChannelConnector) -> HookRequest:
        return request_for(FIXTURES[fixture])

    def tamper(self, request: HookRequest) -> HookRequest:
        query = request.query_string.replace(TOKEN, TOKEN[:-1] + "X")
        return HookRequest(request.method, request.path, query, request.headers, request.body, HOOK_URL + "?" + query)

    def _refused_request(self, refusal: str, connector: ChannelConnector) -> HookRequest:
        if refusal == "missing_signature":  # the secret travels in the URL, not in a header
            return request_for(FIXTURES["parsed_plain"], token=None)
        return super()._refused_request(refusal, connector)

    def malformed_requests(self, connector: ChannelConnector) -> dict[str, HookRequest]:
        good = request_for(FIXTURES["parsed_plain"])
        query = good.query_string
        return {
            "json_body": HookRequest("POST", good.path, query, Headers({"Content-Type": "application/json"}),
                                     b'{"from": "x"}', good.public_url),
            "truncated_multipart": HookRequest("POST", good.path, query, good.headers, good.body[:200],
                                               good.public_url),
            "no_message_fields": request_for({"sender_ip": "203.0.113.5", "spam_score": "0"}),
            "no_boundary": HookRequest("POST", good.path, query, Headers({"Content-Type": "multipart/form-data"}),
                                       good.body, good.public_url),
        }


def test_previous_token_accepted_during_a_change() -> None:
    """While the token changes, the URL may carry the new or the previous token; any other is refused."""
    settings = {"type": "sendgrid", "url_token": "test-new-url-token-0001", "previous_url_token": TOKEN}
    connector = TestSendgridConformance().make_connector(settings)
    connector.verify(request_for(FIXTURES["parsed_plain"]))
    connector.verify(request_for(FIXTURES["parsed_plain"], token="test-new-url-token-0001"))
    for other in ("test-other-url-token-0002", TOKEN[:-1], TOKEN + "0"):
        with pytest.raises(SignatureInvalid):
            connector.verify(request_for(FIXTURES["parsed_plain"], token=other))


def test_short_token_is_a_config_error() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        SendgridChannel.Config.model_validate({"type": "sendgrid", "url_token": "short"})


def test_retry_of_the_same_mail_keeps_its_key() -> None:
    connector = TestSendgridConformance().make_connector()
    first = split_records(connector, request_for(FIXTURES["parsed_plain"]))
    again = split_records(connector, request_for(FIXTURES["parsed_plain"]))  # a new multipart boundary
    assert [r.provider_id for r in first] == [r.provider_id for r in again] == ["sg1@mail.example.org"]


def test_sample_request_verifies_and_normalises() -> None:
    connector = TestSendgridConformance().make_connector()
    request = connector.sample_request(sender="anna@example.org", text="Hello", recipient=None, public_url=HOOK_URL)
    connector.verify(request)
    [record] = split_records(connector, request)
    [message] = connector.normalize(record)
    assert message.text == "Hello" and message.sender.identifiers[0].value == "anna@example.org"
