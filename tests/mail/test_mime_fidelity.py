"""MIME cases where the customer's words or identity were lost: each written from the way real mail arrives."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.attachments import AttachmentStore
from gateway.mail.charsets import decode_text
from gateway.mail.mime import parse_mail, provider_id
from gateway.mail.normalize import EmailSettings, email_to_messages
from gateway.model import Message
from gateway.records import RawRecord
from gateway.storage.db import utcnow
from gateway.webhooks import Headers
from tests.mail.corpus import alternative, leaf, mail, mixed


def normalize(raw: bytes, store: AttachmentStore) -> Message:
    record = RawRecord(inbox_id=1, connector="mail", provider_id=provider_id(raw, "INBOX"), kind="message", body=raw,
                       content_type="message/rfc822", headers=Headers(), public_url="", received_at=utcnow())
    [message] = email_to_messages(raw, record, connector_type="imap", settings=EmailSettings(type="imap"),
                                  attachments=store, received_at=record.received_at)
    return message


@pytest.fixture
def store(tmp_path: Path) -> AttachmentStore:
    return AttachmentStore(tmp_path / "attachments")


def head(**fields: str) -> bytes:
    base = {"From": "Anna <anna@example.org>", "To": "support@example.test", "Subject": "Order",
            "Message-ID": "<m@example.org>", "MIME-Version": "1.0"}
    base.update(fields)
    return "".join(f"{k}: {v}\r\n" for k, v in base.items()).encode()


def emails(message: Message, attribute: str = "sender") -> Any:
    value = getattr(message, attribute)
    parties = value if isinstance(value, tuple) else (value,)
    return [(p.display_name, p.identifiers[0].value) for p in parties]


def test_empty_plain_part_beside_the_html_message_takes_the_html(store: AttachmentStore) -> None:
    raw = mail(alternative(b"\r\n  \r\n", b"<div>My parcel is <b>damaged</b>, photos attached.</div>"))
    message = normalize(raw, store)
    assert message.text == "My parcel is damaged, photos attached."
    assert message.extras["text_from_html"] is True


def test_broken_boundary_recovers_the_text(store: AttachmentStore) -> None:
    raw = head(**{"Content-Type": 'multipart/alternative; boundary="declared"'}) + (
        b"\r\n--actual\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nThe invoice total is wrong: 120 \xe2\x82\xac"
        b" instead of 100 \xe2\x82\xac.\r\n--actual\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>x</p>\r\n"
        b"--actual--\r\n")
    message = normalize(raw, store)
    assert message.text == "The invoice total is wrong: 120 € instead of 100 €."
    assert "StartBoundaryNotFoundDefect" in " ".join(message.extras["mime_defects"])
    assert any("recovered" in note for note in message.extras["mime_notes"])


def test_broken_boundary_without_any_boundary_reads_the_body_as_text(store: AttachmentStore) -> None:
    raw = head(**{"Content-Type": 'multipart/mixed; boundary="declared"'}) + b"\r\nPlease call me back.\r\n"
    assert normalize(raw, store).text == "Please call me back."


@pytest.mark.parametrize("header", ["From", "Cc", "Reply-To"])
def test_display_name_that_looks_like_an_address_is_not_the_address(header: str, store: AttachmentStore) -> None:
    value = "alice@example.com <bob@example.com>"
    fields = {header: value} if header != "Reply-To" else {"Reply-To": value}
    raw = head(**fields) + b"Content-Type: text/plain\r\n\r\nHello\r\n"
    message = normalize(raw, store)
    if header == "From":
        assert emails(message) == [(None, "bob@example.com")]
    elif header == "Cc":
        assert emails(message, "recipients") == [(None, "support@example.test"), (None, "bob@example.com")]
    else:
        assert message.extras["reply_to"] == ["bob@example.com"]


def test_display_name_equal_to_its_address_and_quoted_names_are_kept(store: AttachmentStore) -> None:
    raw = head(From='"anna@example.org" <anna@example.org>', Cc='"Müller, Jan" <jan@example.de>, carol@example.org')
    message = normalize(raw + b"Content-Type: text/plain\r\n\r\nHi\r\n", store)
    assert emails(message) == [("anna@example.org", "anna@example.org")]
    assert emails(message, "recipients")[1:] == [("Müller, Jan", "jan@example.de"), (None, "carol@example.org")]


def test_raw_utf8_disposition_filename_does_not_crash(store: AttachmentStore) -> None:
    raw = head(**{"Content-Type": 'multipart/mixed; boundary="b1"'}) + (
        "\r\n--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nSee the transfer slip.\r\n"
        "--b1\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=\"Überweisung.pdf\"\r\n"
        "Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--b1--\r\n").encode()
    message = normalize(raw, store)
    assert message.text == "See the transfer slip."
    assert [(a.filename, a.content_type, a.inline) for a in message.attachments] == [
        ("Überweisung.pdf", "application/pdf", False)]


def test_inline_text_attachment_with_a_filename_is_not_folded_into_the_body(store: AttachmentStore) -> None:
    log = leaf(b"2024-06-03 ERROR disk full\n", charset="utf-8", cte="7bit", disposition="inline",
               filename="server.log")
    raw = mail(mixed(leaf(b"The log is attached.", charset="utf-8", cte="7bit"), log))
    message = normalize(raw, store)
    assert message.text == "The log is attached."
    assert "disk full" not in message.full_text
    assert [(a.filename, a.content_type) for a in message.attachments] == [("server.log", "text/plain")]


def test_single_part_text_with_a_filename_is_still_the_body(store: AttachmentStore) -> None:
    raw = head(**{"Content-Type": "text/plain; charset=utf-8",
                  "Content-Disposition": 'inline; filename="message.txt"'}) + b"\r\nWhere is my refund?\r\n"
    assert normalize(raw, store).text == "Where is my refund?"


def test_mime_defects_are_recorded(store: AttachmentStore) -> None:
    raw = head(**{"Content-Type": 'multipart/mixed; boundary="b1"'}) + (
        b"\r\n--b1\r\nContent-Type: text/plain\r\n\r\nPart one, the closing boundary never comes.\r\n")
    message = normalize(raw, store)
    assert message.text == "Part one, the closing boundary never comes."
    assert "multipart/mixed: CloseBoundaryNotFoundDefect" in message.extras["mime_defects"]


def test_html_without_charset_uses_its_meta_charset() -> None:
    html = '<html><head><meta charset="iso-8859-15"></head><body>Prix : 50 € merci</body></html>'
    text, codec, _ = decode_text(html.encode("iso-8859-15"), None, html=True)
    assert codec == "iso8859-15" and "50 €" in text


@pytest.mark.parametrize("text", [
    "<p>Bonjour, le colis n'est pas arrivé. Merci d'avance — Hélène</p>",
    "<div>Grüße aus Köln, die Größe passt nicht.</div>",
    "<p>¿Dónde está mi pedido? Señora Núñez</p>",
])
def test_html_without_any_charset_prefers_windows_1252_for_western_text(text: str) -> None:
    decoded, codec, _ = decode_text(text.encode("cp1252"), None, html=True)
    assert (decoded, codec) == (text, "cp1252")


@pytest.mark.parametrize(("text", "codec"), [
    ("Zażółć gęślą jaźń, proszę o zwrot pieniędzy za zamówienie.", "cp1250"),
    ("Здравствуйте, мой заказ до сих пор не пришёл.", "cp1251"),
])
def test_central_european_and_cyrillic_detection_is_left_alone(text: str, codec: str) -> None:
    assert decode_text(text.encode(codec), None)[0] == text


def test_parsed_mail_reports_defects_and_keeps_going() -> None:
    raw = head(**{"Content-Type": 'multipart/mixed; boundary="declared"'}) + b"\r\n--other\r\n\r\nHi\r\n--other--\r\n"
    parsed = parse_mail(raw)
    assert parsed.text == "Hi" and parsed.defects
