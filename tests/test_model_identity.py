"""The canonical model's guarantees and identifier normalisation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from gateway.identity import InvalidIdentifier, normalize_email, normalize_phone
from gateway.identity.normalize import AS_WRITTEN
from gateway.model import ChannelType, Identifier, IdentifierKind, Message, Party, RawRef


def message(**overrides: object) -> Message:
    fields: dict[str, object] = dict(
        channel=ChannelType.SMS, connector="sms-main", connector_type="twilio", provider_message_id="SM1",
        sender=Party(identifiers=(Identifier(kind=IdentifierKind.PHONE, value="+14155550100"),)),
        sent_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), received_at=datetime(2026, 1, 2, 3, 4, 6, tzinfo=UTC),
        raw=RawRef(inbox_id=1, connector="sms-main"))
    fields.update(overrides)
    return Message(**fields)  # type: ignore[arg-type]


def test_message_is_frozen_and_round_trips_through_json() -> None:
    msg = message(text="hello ✓")
    with pytest.raises(ValidationError):
        msg.text = "changed"  # type: ignore[misc]
    assert Message.model_validate_json(msg.model_dump_json()) == msg


def test_times_must_be_aware_and_are_stored_in_utc() -> None:
    with pytest.raises(ValidationError):
        message(sent_at=datetime(2026, 1, 2, 3, 4, 5))
    ist = timezone(timedelta(hours=5, minutes=30))
    msg = message(sent_at=datetime(2026, 1, 2, 8, 34, 5, tzinfo=ist))
    assert msg.sent_at == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert msg.sent_at.utcoffset() == timedelta(0)


@pytest.mark.parametrize("kind,value", [("phone", "4155550100"), ("whatsapp", "+0123"), ("email", "nobody")])
def test_identifiers_are_checked(kind: str, value: str) -> None:
    with pytest.raises(ValidationError):
        Identifier(kind=IdentifierKind(kind), value=value)


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(ValidationError):
        message(colour="red")


@pytest.mark.parametrize("raw,region,expected", [
    ("+1 415 555 0100", "US", "+14155550100"),
    ("(415) 555-0100", "US", "+14155550100"),
    ("whatsapp:+919847000001", "US", "+919847000001"),
    ("098470 00001", "IN", "+919847000001"),
    ("020 7946 0018", "GB", "+442079460018"),
    ("0151 23456789", "DE", "+4915123456789"),
    ("(11) 91234-5678", "BR", "+5511912345678"),
])
def test_phone_numbers_normalise_to_e164(raw: str, region: str, expected: str) -> None:
    assert normalize_phone(raw, region) == expected


@pytest.mark.parametrize("raw", ["VERIFY", "12", "", "+1"])
def test_non_numbers_are_refused(raw: str) -> None:
    with pytest.raises(InvalidIdentifier):
        normalize_phone(raw, "US")


def test_email_is_case_folded_whole_by_default_and_kept_as_written_for_channels() -> None:
    assert normalize_email(" Asha.Rao@Example.COM ") == "asha.rao@example.com"
    assert normalize_email(" Asha.Rao@Example.COM ", AS_WRITTEN) == "Asha.Rao@example.com"
    with pytest.raises(InvalidIdentifier):
        normalize_email("no-at-sign")


def test_nul_characters_never_reach_storage() -> None:
    msg = message(text="a\x00b", sender=Party(identifiers=(Identifier(kind=IdentifierKind.PHONE,
                                                                      value="+14155550100"),), display_name="Bob\x00"))
    assert msg.text == "ab" and msg.sender.display_name == "Bob"
    nested = message(extras={"list": ["fine", {"deep": "c\x00d"}], "count": 3})
    assert nested.extras == {"list": ["fine", {"deep": "cd"}], "count": 3}
