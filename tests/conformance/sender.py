"""The outbound conformance suite every channel that sends replies (``ReplySender``) subclasses.

A subclass says how to build its connector, the customer's message a reply answers, and how its provider answers
(with ``responses``); the cases here check what the send worker relies on: the provider id comes back, a refusal is
permanent and says why in words an agent understands, throttling and outages are retryable, an interrupted attempt
is found again by ``reconcile`` (or surely absent), every call carries a deadline, and no secret leaks into an error.
"""

from __future__ import annotations

import abc
import re
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import pytest
import requests
import responses

from gateway.errors import DeliveryError, PermanentError, RetryableError
from gateway.model import Direction, Identifier, IdentifierKind, Message, Party, RawRef
from gateway.plugins import CustomerView, ReplySender, SendRequest, SendResult, secret_fields

REPLY_TEXT = "Your order ships today. Tracking: 1Z999."
ANY_URL = re.compile(r".*")


class DeadlineSession(requests.Session):
    """A session that refuses any request made without a timeout: every network call needs a total deadline."""

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        assert kwargs.get("timeout"), f"{method} {url} was called without a timeout"
        return super().request(method, url, *args, **kwargs)


def agent_reply(answering: Message, text: str = REPLY_TEXT, **changes: Any) -> Message:
    """The outbound canonical message the core builds for an agent's reply to ``answering``."""
    fields: dict[str, Any] = {
        "channel": answering.channel, "connector": answering.connector, "connector_type": answering.connector_type,
        "direction": Direction.OUTBOUND, "provider_message_id": "zendesk-main:comment-9001",
        "sender": Party(identifiers=(Identifier(kind=IdentifierKind.AGENT, value="zendesk-main:42"),),
                        display_name="Ann Agent"),
        "recipients": (answering.sender,), "text": text, "full_text": text,
        "sent_at": datetime.now(UTC), "received_at": datetime.now(UTC),
        "raw": RawRef(inbox_id=99, connector="crm:zendesk-main"),
    }
    fields.update(changes)
    return Message(**fields)


def send_request(answering: Message, *, age: timedelta = timedelta(0), started: datetime | None = None,
                 customer_name: str | None = None, **changes: Any) -> SendRequest:
    """The send worker's request to answer ``answering`` (its last message ``age`` ago); ``started``: the time an
    earlier attempt began, which makes this the second attempt."""
    return SendRequest(send_id=7, attempt=2 if started else 1, token="gw-send-7",
                       message=agent_reply(answering, **changes), reply_to=answering,
                       customer=CustomerView("c" * 32, customer_name, ()), last_inbound_at=datetime.now(UTC) - age,
                       attempt_started_at=started)


class SenderConformance(abc.ABC):
    """Subclass per sending channel; implement the hooks, keep the cases."""

    secrets: ClassVar[tuple[str, ...]] = ()  # values that must never appear in an error or a result

    # -- hooks ------------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def connector(self, http: requests.Session) -> ReplySender:
        """The connector under test, using ``http`` for every call."""

    @abc.abstractmethod
    def customer_message(self) -> Message:
        """An inbound message, as the connector normalises it, that the reply answers."""

    @abc.abstractmethod
    def mock_accepted(self, rsps: responses.RequestsMock) -> str:
        """Register the provider's answer to a successful send; return the provider id it carries."""

    @abc.abstractmethod
    def mock_refused(self, rsps: responses.RequestsMock) -> None:
        """Register a permanent refusal of the send (an invalid recipient, say)."""

    @abc.abstractmethod
    def mock_throttled(self, rsps: responses.RequestsMock) -> None:
        """Register a 429 (or the provider's rate-limit error) for the send."""

    @abc.abstractmethod
    def mock_earlier_attempt_found(self, rsps: responses.RequestsMock, request: SendRequest) -> str:
        """Register the provider's record of an earlier attempt of ``request``; return its provider id."""

    @abc.abstractmethod
    def mock_earlier_attempt_absent(self, rsps: responses.RequestsMock, request: SendRequest) -> None:
        """Register the provider's answer showing no earlier attempt."""

    def request(self, *, attempt: int = 1, started: datetime | None = None, **changes: Any) -> SendRequest:
        answering = self.customer_message()
        return SendRequest(
            send_id=7, attempt=attempt, token="gw-send-7", message=agent_reply(answering, **changes),
            reply_to=answering, customer=CustomerView("c" * 32, answering.sender.display_name,
                                                      tuple((i.kind.value, i.value)
                                                            for i in answering.sender.identifiers)),
            last_inbound_at=datetime.now(UTC) - timedelta(minutes=5), attempt_started_at=started)

    def assert_no_secret(self, text: str) -> None:
        for secret in self.secrets:
            assert secret not in text, "a secret leaked into an error or a result"

    # -- cases ------------------------------------------------------------------------------------------------
    def test_declares_the_send_ability(self) -> None:
        assert isinstance(self.connector(DeadlineSession()), ReplySender)

    def test_a_send_returns_the_provider_id(self) -> None:
        with responses.RequestsMock() as rsps:
            expected = self.mock_accepted(rsps)
            result = self.connector(DeadlineSession()).send(self.request())
        assert isinstance(result, SendResult)
        assert result.provider_message_id == expected
        self.assert_no_secret(repr(result))

    def test_a_refusal_is_permanent_and_says_why(self) -> None:
        with responses.RequestsMock() as rsps:
            self.mock_refused(rsps)
            with pytest.raises(PermanentError) as caught:
                self.connector(DeadlineSession()).send(self.request())
        assert len(str(caught.value)) > 10, "the agent is told why in words"
        self.assert_no_secret(str(caught.value))

    def test_throttling_is_retryable(self) -> None:
        with responses.RequestsMock() as rsps:
            self.mock_throttled(rsps)
            with pytest.raises(RetryableError):
                self.connector(DeadlineSession()).send(self.request())

    def test_an_outage_is_retryable_never_permanent(self) -> None:
        with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
            for method in (responses.GET, responses.POST, responses.PUT):
                rsps.add(method, ANY_URL, body=requests.ConnectionError("connection reset"))
            with pytest.raises(Exception) as caught:
                self.connector(DeadlineSession()).send(self.request())
        assert not isinstance(caught.value, PermanentError), "an outage must never dead-letter a reply at once"
        if isinstance(caught.value, DeliveryError):
            self.assert_no_secret(str(caught.value))

    def test_an_interrupted_attempt_that_went_out_is_found(self) -> None:
        request = self.request(attempt=2, started=datetime.now(UTC) - timedelta(seconds=30))
        with responses.RequestsMock() as rsps:
            expected = self.mock_earlier_attempt_found(rsps, request)
            found = self.connector(DeadlineSession()).reconcile(request)
        assert found is not None and found.provider_message_id == expected

    def test_an_interrupted_attempt_that_did_not_go_out_is_absent(self) -> None:
        request = self.request(attempt=2, started=datetime.now(UTC) - timedelta(seconds=30))
        with responses.RequestsMock() as rsps:
            self.mock_earlier_attempt_absent(rsps, request)
            assert self.connector(DeadlineSession()).reconcile(request) is None

    def test_secret_settings_are_typed_as_secrets(self) -> None:
        connector = self.connector(DeadlineSession())
        config_type = type(connector.config)  # type: ignore[attr-defined]
        for name in secret_fields(config_type):
            value = getattr(connector.config, name)  # type: ignore[attr-defined]
            if value is not None:
                assert value.get_secret_value() not in repr(connector)

