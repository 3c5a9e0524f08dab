"""The connector author's side of the plugin contract: messages from inbox rows, CRM errors, online checks."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest
import requests
from pydantic import SecretStr

from gateway.errors import OnlineCheckFailed, RetryableError
from gateway.model import ChannelType, Identifier, IdentifierKind, Message, Party, RawRef
from gateway.plugins import (
    ConnectorConfig,
    ConnectorContext,
    CrmConnector,
    DeliveryItem,
    DeliveryResult,
    LinkStore,
    WebhookChannel,
    inbound_message,
    online_check,
    online_failure,
    secret_values,
)
from gateway.records import InboxItem, RawRecord
from gateway.webhooks import HookRequest
from tests.conformance.crm import MemoryLinkStore, delivery_item

RECEIVED = datetime(2026, 11, 30, 9, 15, tzinfo=UTC)
SENT = datetime(2026, 11, 30, 9, 14, tzinfo=UTC)
SENDER = Party(identifiers=(Identifier(kind=IdentifierKind.PHONE, value="+14155550100"),))
RECORD = RawRecord(inbox_id=42, connector="sms-main", provider_id="SM1", kind="message", body=b"", content_type="",
                   headers={}, public_url="https://gw.example/hooks/sms-main", received_at=RECEIVED)


class EchoChannel(WebhookChannel):
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


# -- one error policy for CRM writes --------------------------------------------------------------------------------
class FailingCrm(CrmConnector):
    """Raises, for each outbox id, the exception it was given."""

    type_name = "failing"
    Config = ConnectorConfig

    def __init__(self, failures: dict[int, Exception]) -> None:
        super().__init__("desk", ConnectorConfig(type="failing"), ConnectorContext(http=requests.Session()))
        self.failures = failures

    def deliver(self, item: DeliveryItem, links: LinkStore) -> DeliveryResult:
        if item.outbox_id in self.failures:
            raise self.failures[item.outbox_id]
        return DeliveryResult("written", str(item.outbox_id))


def test_default_deliver_groups_classifies_with_the_one_policy(caplog: pytest.LogCaptureFixture) -> None:
    throttled = requests.Response()
    throttled.status_code, throttled.headers["Retry-After"] = 429, "30"
    crm = FailingCrm({1: requests.ReadTimeout("read timed out"),
                      2: requests.HTTPError("429", response=throttled),
                      3: KeyError("ticket")})
    groups = [[delivery_item(outbox_id=1), delivery_item(outbox_id=11)], [delivery_item(outbox_id=2)],
              [delivery_item(outbox_id=3)], [delivery_item(outbox_id=4)]]
    with caplog.at_level(logging.ERROR):
        outcomes = crm.deliver_groups(groups, MemoryLinkStore())
    network, throttle, bug = (outcomes[n] for n in (1, 2, 3))
    assert isinstance(network, RetryableError) and network.code == "network"
    assert isinstance(throttle, RetryableError) and (throttle.code, throttle.retry_after) == ("429", 30.0)
    assert isinstance(bug, RetryableError) and bug.code == "internal"
    assert 11 not in outcomes  # behind a failed message of its conversation
    assert isinstance(outcomes[4], DeliveryResult)
    assert [record.message for record in caplog.records] == ["desk: unexpected error delivering outbox row 3"]


# -- online checks ----------------------------------------------------------------------------------------------
class CheckedConfig(ConnectorConfig):
    """Settings with secrets, one of them per workspace."""

    api_token: SecretStr
    workspace_tokens: dict[str, SecretStr] = {}


class CheckedCrm(FailingCrm):
    """Fails its online check with ``error``, a message that quotes its secrets."""

    Config = CheckedConfig

    def __init__(self, error: Exception) -> None:
        super().__init__({})
        self.config = CheckedConfig(type="failing", api_token=SecretStr("test-api-token"),
                                    workspace_tokens={"T1": SecretStr("test-ws-token")})
        self.error = error

    @online_check
    def check_online(self) -> str:
        raise self.error


@pytest.mark.parametrize(("error", "reason"), [
    (OnlineCheckFailed("credentials refused"), "credentials refused"),
    (RuntimeError("login as test-api-token failed,\nworkspace test-ws-token"),
     "RuntimeError: login as *** failed, workspace ***"),
    (requests.ConnectTimeout("timed out", request=requests.Request("GET", "https://crm.example/?k=1").prepare()),
     "ConnectTimeout talking to crm.example"),
])
def test_online_checks_fail_one_way_with_one_secret_free_line(error: Exception, reason: str) -> None:
    crm = CheckedCrm(error)
    with pytest.raises(OnlineCheckFailed) as caught:
        crm.check_online()
    assert caught.value.reason == reason
    assert online_failure(crm, error).reason == reason  # what the CLI prints for a connector without the decorator


def test_secret_values_are_found_in_nested_settings() -> None:
    assert sorted(secret_values(CheckedCrm(RuntimeError()).config)) == ["test-api-token", "test-ws-token"]
