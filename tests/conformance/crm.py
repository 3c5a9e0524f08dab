"""Conformance suite every CRM connector's tests subclass.

A subclass is named ``Test...`` and provides:

- ``build(http, tmp_path)``: the connector under test, its outbound HTTP going through ``http``;
- ``mock_success(mocked)``: the mocked HTTP answers (``responses``) of a healthy CRM;
- ``count_writes(mocked, tmp_path)``: how many distinct records the CRM now holds as written;
- ``secrets``: every secret value in the connector's config.

``HttpCrmConformance`` adds the error-classification tests for CRMs reached over HTTP; its subclasses also provide
``mock_failure(mocked, ...)`` (the first write answers with the given failure) and ``error_body(status)``.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import pytest
import requests
import responses

from gateway.errors import DeliveryError, PermanentError, RetryableError
from gateway.model import ChannelType, Identifier, IdentifierKind, Message, Party, RawRef, ThreadRef
from gateway.plugins import (
    ConversationView,
    CrmConnector,
    CustomerView,
    DeliveryItem,
    secret_fields,
)

CUSTOMER_PHONE = "+14017122661"
BUSINESS_PHONE = "+15558675310"
CUSTOMER_ID = "5f0c6a3e9b1d4c2a8e7f6d5c4b3a2918"
CONVERSATION_ID = "c0ffee00c0ffee00c0ffee00c0ffee00"


class MemoryLinkStore:
    """In-memory ``LinkStore``: local id -> (CRM id, data), with every write recorded."""

    def __init__(self) -> None:
        self.links: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}
        self.puts: list[tuple[str, str, str]] = []

    def get(self, entity: str, local_id: str) -> tuple[str, dict[str, Any]] | None:
        found = self.links.get((entity, local_id))
        return (found[0], dict(found[1])) if found else None

    def put(self, entity: str, local_id: str, remote_id: str, data: dict[str, Any] | None = None) -> None:
        self.links[(entity, local_id)] = (remote_id, dict(data or {}))
        self.puts.append((entity, local_id, remote_id))

    def find_records(self, kind: str, value: str) -> list[str]:
        return []

    def find_local(self, entity: str, remote_id: str) -> str | None:
        return next((local for (kind, local), (remote, _) in self.links.items()
                     if kind == entity and remote == remote_id), None)


def twilio_sms(text: str = "My order #1234 never arrived", *, sid: str = "SM" + "1" * 32,
               inbox_id: int = 1) -> Message:
    """A canonical message as the Twilio connector makes it from an inbound SMS."""
    received = datetime(2025, 3, 9, 14, 30, tzinfo=UTC)
    return Message(
        channel=ChannelType.SMS, connector="sms-main", connector_type="twilio", provider_message_id=sid,
        thread=ThreadRef(provider_thread_id=f"{BUSINESS_PHONE}|{CUSTOMER_PHONE}"),
        sender=Party(identifiers=(Identifier(kind=IdentifierKind.PHONE, value=CUSTOMER_PHONE),)),
        recipients=(Party(identifiers=(Identifier(kind=IdentifierKind.PHONE, value=BUSINESS_PHONE),)),),
        text=text, full_text=text, sent_at=received, received_at=received,
        extras={"To": BUSINESS_PHONE, "AccountSid": "AC" + "F" * 31 + "1", "NumSegments": "1"},
        raw=RawRef(inbox_id=inbox_id, connector="sms-main"))


def delivery_item(message: Message | None = None, *, crm: str = "crm", attempt: int = 1, outbox_id: int = 1,
                  opened: bool = True, fields: dict[str, Any] | None = None) -> DeliveryItem:
    """An outbox row for ``message`` (a Twilio SMS by default), built as the delivery worker builds it."""
    message = message or twilio_sms()
    return DeliveryItem(
        outbox_id=outbox_id, attempt=attempt, idempotency_key=f"gw-{crm}-{message.id}", message=message,
        customer=CustomerView(CUSTOMER_ID, None, (("phone", CUSTOMER_PHONE),)),
        conversation=ConversationView(CONVERSATION_ID, message.channel.value, opened),
        fields=fields if fields is not None else {
            "subject": f"SMS from {CUSTOMER_PHONE}", "comment": message.text, "public": True,
            "priority": "normal", "tags": ["channel-gateway", "sms"]})


def secret_forms(secret: str) -> list[str]:
    """The forms a leaked secret could take: as is, and base64-encoded (as in an Authorization header)."""
    return [secret, base64.b64encode(secret.encode()).decode()]


class CrmConformance:
    """Tests every CRM connector passes: idempotent replay and secret masking."""

    secrets: ClassVar[tuple[str, ...]] = ()

    # -- what a subclass provides ------------------------------------------------------------------------------
    def build(self, http: requests.Session, tmp_path: Path) -> CrmConnector:
        """The connector under test; its outbound HTTP goes through ``http``, its files under ``tmp_path``."""
        raise NotImplementedError

    def mock_success(self, mocked: responses.RequestsMock) -> None:
        """Register the answers of a healthy CRM (stateful where replays need to find earlier writes)."""
        raise NotImplementedError

    def count_writes(self, mocked: responses.RequestsMock, tmp_path: Path) -> int:
        """How many distinct records the CRM now holds as written."""
        raise NotImplementedError

    # -- fixtures ----------------------------------------------------------------------------------------------
    @pytest.fixture
    def mocked(self) -> Iterator[responses.RequestsMock]:
        """Every HTTP request is answered by ``responses``; an unregistered one raises ConnectionError."""
        with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
            yield mock

    @pytest.fixture
    def connector(self, mocked: responses.RequestsMock, tmp_path: Path) -> CrmConnector:
        return self.build(requests.Session(), tmp_path)

    # -- idempotent replay -------------------------------------------------------------------------------------
    def test_replay_after_crash_writes_nothing_twice(
            self, connector: CrmConnector, mocked: responses.RequestsMock, tmp_path: Path) -> None:
        self.mock_success(mocked)
        links = MemoryLinkStore()
        item = delivery_item(crm=connector.name)
        connector.deliver(item, links)
        written = self.count_writes(mocked, tmp_path)
        assert written == 1

        connector.deliver(replace(item, attempt=2), links)
        assert self.count_writes(mocked, tmp_path) == written

    def test_next_message_is_written_and_its_replay_is_not(
            self, connector: CrmConnector, mocked: responses.RequestsMock, tmp_path: Path) -> None:
        self.mock_success(mocked)
        links = MemoryLinkStore()
        connector.deliver(delivery_item(crm=connector.name), links)
        second = delivery_item(twilio_sms("Any news?", sid="SM" + "2" * 32, inbox_id=2), crm=connector.name,
                               outbox_id=2, opened=False)
        connector.deliver(second, links)
        assert self.count_writes(mocked, tmp_path) == 2

        connector.deliver(replace(second, attempt=2), links)
        connector.deliver(replace(second, attempt=3), links)
        assert self.count_writes(mocked, tmp_path) == 2

    # -- secret masking ----------------------------------------------------------------------------------------
    def test_every_secret_field_is_covered(self, connector: CrmConnector) -> None:
        values = [getattr(connector.config, name) for name in secret_fields(type(connector.config))]
        assert sorted(v.get_secret_value() for v in values if v is not None) == sorted(self.secrets)

    def test_repr_and_str_never_show_secrets(self, connector: CrmConnector) -> None:
        shown = " ".join([repr(connector), str(connector), repr(connector.config), str(connector.config),
                          str(connector.config.model_dump()), connector.config.model_dump_json()])
        for secret in self.secrets:
            for form in secret_forms(secret):
                assert form not in shown


class HttpCrmConformance(CrmConformance):
    """The suite for CRMs reached over HTTP: failures are classified, Retry-After honoured, secrets kept out."""

    def mock_failure(self, mocked: responses.RequestsMock, *, status: int = 500, body: str | Exception = "",
                     headers: dict[str, str] | None = None) -> None:
        """Register a CRM whose first write answers ``status``/``body`` (or raises ``body``)."""
        raise NotImplementedError

    def error_body(self, status: int) -> tuple[str, str]:
        """The CRM's error body for a 4xx ``status``, and the code a PermanentError must carry for it."""
        raise NotImplementedError

    def _fail(self, connector: CrmConnector) -> DeliveryError:
        with pytest.raises(DeliveryError) as caught:
            connector.deliver(delivery_item(crm=connector.name), MemoryLinkStore())
        return caught.value

    def test_429_is_retryable_with_retry_after(
            self, connector: CrmConnector, mocked: responses.RequestsMock) -> None:
        self.mock_failure(mocked, status=429, body="Rate limit exceeded, please wait",
                          headers={"Retry-After": "93", "Content-Type": "text/plain"})
        error = self._fail(connector)
        assert isinstance(error, RetryableError)
        assert error.retry_after == 93.0

    @pytest.mark.parametrize("status", [500, 503])
    def test_server_errors_are_retryable(
            self, connector: CrmConnector, mocked: responses.RequestsMock, status: int) -> None:
        self.mock_failure(mocked, status=status, body="<html>Service Unavailable</html>",
                          headers={"Content-Type": "text/html"})
        error = self._fail(connector)
        assert isinstance(error, RetryableError)
        assert error.retry_after is None

    @pytest.mark.parametrize("exc", [requests.ReadTimeout("read timed out"),
                                     requests.ConnectTimeout("connect timed out"),
                                     requests.ConnectionError("connection reset by peer")])
    def test_timeouts_and_network_errors_are_retryable(
            self, connector: CrmConnector, mocked: responses.RequestsMock, exc: Exception) -> None:
        self.mock_failure(mocked, body=exc)
        assert isinstance(self._fail(connector), RetryableError)

    @pytest.mark.parametrize("status", [400, 422])
    def test_client_errors_are_permanent_with_the_crm_code(
            self, connector: CrmConnector, mocked: responses.RequestsMock, status: int) -> None:
        body, code = self.error_body(status)
        self.mock_failure(mocked, status=status, body=body, headers={"Content-Type": "application/json"})
        error = self._fail(connector)
        assert isinstance(error, PermanentError)
        assert not error.retryable
        assert error.code == code

    @pytest.mark.parametrize("status", [400, 422, 429, 500])
    def test_errors_and_logs_never_show_secrets(
            self, connector: CrmConnector, mocked: responses.RequestsMock, status: int,
            caplog: pytest.LogCaptureFixture) -> None:
        body = self.error_body(status)[0] if status < 429 else "error"
        self.mock_failure(mocked, status=status, body=body, headers={"Retry-After": "1"})
        with caplog.at_level(logging.DEBUG):
            error = self._fail(connector)
        shown = " ".join([str(error), repr(error), repr(error.args), str(error.code), caplog.text])
        for secret in self.secrets:
            for form in secret_forms(secret):
                assert form not in shown
