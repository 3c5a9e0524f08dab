"""Agent replies by SMTP on the three email channels: the SMTP conformance suite against a real server on loopback.

Each channel hands the suite the customer's email the way its provider delivers it: IMAP as the fetched bytes,
SendGrid Inbound Parse in "Send Raw" mode (the ``email`` field, with ``envelope``), Mailgun ``forward()`` to a URL
ending in ``mime`` (``body-mime``, with ``recipient``).
"""

from __future__ import annotations

import json
from typing import Any

from connectors.imap import ImapChannel
from connectors.mailgun import MailgunChannel
from connectors.sendgrid import SendgridChannel, multipart_body
from gateway.mail.mime import provider_id
from gateway.records import RawRecord
from gateway.storage.db import utcnow
from tests.conformance.smtp_sender import BUSINESS, CHANNEL, SmtpSenderConformance
from tests.mail.corpus import CUSTOMER


def record(body: bytes, content_type: str, key: str) -> RawRecord:
    return RawRecord(inbox_id=1, connector=CHANNEL, provider_id=key, kind="message", body=body,
                     content_type=content_type, headers={}, public_url="", received_at=utcnow())


class TestImapReplies(SmtpSenderConformance):
    connector_class = ImapChannel
    settings: dict[str, Any] = {"type": "imap", "host": "imap.example.test", "username": BUSINESS,
                                "password": "test-imap-password"}

    def inbound_record(self, raw: bytes) -> RawRecord:
        return record(raw, 'message/rfc822; uid=7; uidvalidity=1; folder="INBOX"', provider_id(raw, "INBOX"))


class TestSendgridReplies(SmtpSenderConformance):
    connector_class = SendgridChannel
    settings: dict[str, Any] = {"type": "sendgrid", "url_token": "test-url-token-123456"}

    def inbound_record(self, raw: bytes) -> RawRecord:
        body, content_type = multipart_body({"email": raw, "envelope": json.dumps({"to": [BUSINESS],
                                                                                    "from": CUSTOMER})})
        return record(body, content_type, provider_id(raw))


class TestMailgunReplies(SmtpSenderConformance):
    connector_class = MailgunChannel
    settings: dict[str, Any] = {"type": "mailgun", "signing_key": "test-mailgun-signing-key"}

    def inbound_record(self, raw: bytes) -> RawRecord:
        body, content_type = multipart_body({"recipient": BUSINESS, "sender": CUSTOMER, "body-mime": raw})
        return record(body, content_type, provider_id(raw))
