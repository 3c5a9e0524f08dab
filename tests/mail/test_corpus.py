"""The MIME normaliser over the project's own corpus: charsets, structure, replies, auto-replies, broken mail."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.attachments import AttachmentStore
from gateway.mail.mime import UnparseableMail, parse_mail, provider_id
from gateway.mail.normalize import EmailSettings, email_to_messages
from gateway.model import Message
from gateway.records import RawRecord
from gateway.storage.db import utcnow
from gateway.webhooks import Headers
from tests.conformance.channel import assert_fields
from tests.mail.corpus import PDF, CorpusMail, by_name, corpus, sha, text_mail

CASES = by_name()


def normalize(raw: bytes, store: AttachmentStore, **settings: Any) -> list[Message]:
    record = RawRecord(inbox_id=1, connector="mail", provider_id=provider_id(raw, "INBOX"), kind="message", body=raw,
                       content_type="message/rfc822", headers=Headers(), public_url="", received_at=utcnow())
    return email_to_messages(raw, record, connector_type="imap", settings=EmailSettings(type="imap", **settings),
                             attachments=store, received_at=record.received_at)


@pytest.fixture
def store(tmp_path: Path) -> AttachmentStore:
    return AttachmentStore(tmp_path / "attachments")


@pytest.mark.parametrize("name", sorted(n for n, c in CASES.items() if not c.ignored and not c.broken))
def test_customer_mail_normalises_to_expected_fields(name: str, store: AttachmentStore) -> None:
    case: CorpusMail = CASES[name]
    messages = normalize(case.raw, store)
    assert len(messages) == 1
    message = messages[0]
    assert message.channel == "email"
    assert "\ufffd" not in message.full_text and "\ufffd" not in (message.subject or "")
    assert_fields(message.model_dump(mode="json"), case.expected)


@pytest.mark.parametrize("name", sorted(n for n, c in CASES.items() if c.ignored))
def test_auto_replies_bounces_and_own_mail_give_no_message(name: str, store: AttachmentStore) -> None:
    assert normalize(CASES[name].raw, store) == []


@pytest.mark.parametrize("name", sorted(n for n, c in CASES.items() if c.ignored and c.ignored != "own_mail"))
def test_auto_replies_kept_and_marked_when_configured(name: str, store: AttachmentStore) -> None:
    [message] = normalize(CASES[name].raw, store, ignore_auto_replies=False)
    assert message.extras["auto_reply"] == CASES[name].ignored


@pytest.mark.parametrize("name", sorted(n for n, c in CASES.items() if c.broken))
def test_broken_mail_raises_with_reason(name: str, store: AttachmentStore) -> None:
    with pytest.raises(UnparseableMail) as caught:
        normalize(CASES[name].raw, store)
    assert CASES[name].broken in str(caught.value)


def test_attachment_bytes_stored_not_inlined(store: AttachmentStore) -> None:
    [message] = normalize(CASES["attachments_rfc2231_rfc2047_inline"].raw, store)
    pdf = message.attachments[1]
    assert store.read(pdf.location) == PDF
    assert PDF.hex() not in message.model_dump_json()
    assert len(message.model_dump_json()) < 4000


def test_attachment_over_limit_is_listed_as_skipped(store: AttachmentStore) -> None:
    [message] = normalize(CASES["attachments_rfc2231_rfc2047_inline"].raw, store, max_attachment_bytes=1000)
    assert [a.filename for a in message.attachments] == ["logo.png", "Rechnungsübersicht.csv"]
    [skipped] = message.extras["attachments_skipped"]
    assert skipped["filename"] == "Überweisung €.pdf" and skipped["size"] == len(PDF)
    assert not store.path_for(sha(PDF)).exists()


def test_own_addresses_setting_ignores_our_sending_address(store: AttachmentStore) -> None:
    raw = text_mail("Reply from the helpdesk", sender="Helpdesk <helpdesk@example.test>", message_id="hd@x")
    assert len(normalize(raw, store)) == 1
    assert normalize(raw, store, own_addresses=["*@example.test"]) == []


def test_provider_id_is_message_id_plus_mailbox_or_hash() -> None:
    assert provider_id(CASES["plain_ascii"].raw, "INBOX") == "INBOX:m1@mail.example.org"
    raw = CASES["no_message_id"].raw
    assert provider_id(raw, "INBOX") == f"INBOX:sha256:{sha(raw)}"
    assert provider_id(CASES["broken_garbage"].raw).startswith("sha256:")


def test_every_case_parses_without_raising_in_the_low_level_parser() -> None:
    for case in corpus():
        if case.broken:
            continue
        parsed = parse_mail(case.raw)
        assert parsed.sender[1]
