"""Top-level headers indexed once answer exactly as the message's own look-ups do."""

from __future__ import annotations

import email
from email import policy

from gateway.mail.mime import TopHeaders


def test_top_headers_answer_as_the_message_does() -> None:
    raw = (b"From: a@example.org\r\nReceived: one\r\nreceived: two\r\nSubject: caf\xc3\xa9\r\n"
           b"X-Empty:\r\nRECEIVED: three\r\n\r\nbody\r\n")
    mime = email.message_from_bytes(raw, policy=policy.compat32)
    headers = TopHeaders(mime)
    for name in ("From", "received", "Received", "SUBJECT", "x-empty", "Missing"):
        assert headers.get(name) == mime.get(name)
        assert type(headers.get(name)) is type(mime.get(name))
        assert headers.get_all(name) == (mime.get_all(name) or [])
    assert headers.get_all("Received") == ["one", "two", "three"]
