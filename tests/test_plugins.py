"""The channel author's side of the plugin contract: building a message from a stored inbox row."""

from __future__ import annotations

from datetime import UTC, datetime

import requests

from gateway.model import ChannelType, Identifier, IdentifierKind, Message, Party, RawRef
from gateway.plugins import ChannelConnector, ConnectorConfig, ConnectorContext, inbound_message
from gateway.webhooks import HookRequest, InboxItem, RawRecord

RECEIVED = datetime(2026, 11, 30, 9, 15, tzinfo=UTC)
SENT = datetime(2026, 11, 30, 9, 14, tzinfo=UTC)
SENDER = Party(identifiers=(Identifier(kind=IdentifierKind.PHONE, value="+14155550100"),))
RECORD = RawRecord(inbox_id=42, connector="sms-main", provider_id="SM1", kind="message", body=b"", content_type="",
                   headers={}, public_url="https://gw.example/hooks/sms-main", received_at=RECEIVED)


class EchoChannel(ChannelConnector):
    """The least a channel needs, for the test."""

    type_name = "echo"
    Config = ConnectorConfig

    def verify(self, request: HookRequest) -> None:
        pass

    def split(self, request: HookRequest) -> list[InboxItem]:
        return []

    def normalize(self, record: RawRecord) -> list[Message]:
        return [self.message(record, channel=ChannelType.SMS, provider_message_id=record.provider_id, sender=SENDER,
                             sent_at=SENT, text="hello")]


def test_message_is_filled_from_the_record_and_the_connector() -> None:
    channel = EchoChannel("sms-main", ConnectorConfig(type="echo"), ConnectorContext(http=requests.Session()))
    [message] = channel.normalize(RECORD)
    assert (message.connector, message.connector_type, message.provider_message_id) == ("sms-main", "echo", "SM1")
    assert message.raw == RawRef(inbox_id=42, connector="sms-main")
    assert (message.received_at, message.sent_at, message.text) == (RECEIVED, SENT, "hello")


def test_received_at_may_be_given() -> None:
    later = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
    message = inbound_message(RECORD, connector_type="imap", channel=ChannelType.EMAIL, provider_message_id="m1",
                              sender=SENDER, sent_at=SENT, received_at=later)
    assert (message.received_at, message.connector_type, message.raw.inbox_id) == (later, "imap", 42)
