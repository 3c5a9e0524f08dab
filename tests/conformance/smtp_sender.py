"""The outbound conformance suite for email channels that send replies by SMTP (``gateway.mail.smtp.SmtpReplies``).

``tests.conformance.sender.SenderConformance`` mocks HTTP providers with ``responses``; SMTP is not HTTP, so this
suite checks the same promises against a real SMTP server on loopback (aiosmtpd, ``tests.smtp_server``): the
provider id (our Message-ID) comes back with the thread key that brings the customer's answer home, a refusal is
permanent and says why in the server's words, a temporary refusal, an outage and a hung server are retryable, every
connection has a deadline, an interrupted attempt is resent with the same Message-ID, and no secret leaks.

A subclass names the connector class, its settings without ``smtp``, and how its provider hands over a raw email.
"""

from __future__ import annotations

import abc
import dataclasses
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import pytest

from gateway.attachments import AttachmentStore
from gateway.conversations import email_thread_key
from gateway.errors import PermanentError, RetryableError
from gateway.mail.smtp import SmtpReplies
from gateway.model import IdentifierKind, Message
from gateway.plugins import ConnectorContext, CustomerView, ReplySender, SendRequest
from gateway.records import RawRecord
from tests.conformance.sender import DeadlineSession, agent_reply
from tests.mail.corpus import CUSTOMER, text_mail
from tests.smtp_server import PASSWORD, SmtpServer

CHANNEL = "mail-support"
BUSINESS = "support@example.test"
CUSTOMER_MAIL = text_mail("My kettle stopped working.", message_id="kettle-1@mail.example.org",
                          references=("older@mail.example.org",), subject="Broken kettle",
                          to=f"Support <{BUSINESS}>")


class SmtpSenderConformance(abc.ABC):
    """Subclass per email channel; set the class attributes, implement ``inbound_record``, keep the cases."""

    connector_class: ClassVar[type[Any]]
    settings: ClassVar[dict[str, Any]]

    @abc.abstractmethod
    def inbound_record(self, raw: bytes) -> RawRecord:
        """The inbox record the channel stores for the raw email ``raw`` (as its provider delivers it)."""

    # -- helpers ----------------------------------------------------------------------------------------------
    def connector(self, tmp_path: Path, smtp: dict[str, Any] | None) -> SmtpReplies:
        values = {**self.settings, **({"smtp": smtp} if smtp is not None else {})}
        config = self.connector_class.Config.model_validate(values)
        context = ConnectorContext(http=DeadlineSession(), base_dir=tmp_path,
                                   attachments=AttachmentStore(tmp_path / "attachments"))
        connector = self.connector_class(CHANNEL, config, context)
        assert isinstance(connector, SmtpReplies)
        return connector

    def customer_message(self, connector: SmtpReplies, raw: bytes = CUSTOMER_MAIL) -> Message:
        messages = connector.normalize(self.inbound_record(raw))  # type: ignore[attr-defined]
        assert len(messages) == 1
        return messages[0]

    def request(self, connector: SmtpReplies, *, attempt: int = 1, **changes: Any) -> SendRequest:
        answering = self.customer_message(connector)
        return SendRequest(
            send_id=7, attempt=attempt, token="gw-send-7", message=agent_reply(answering, **changes),
            reply_to=answering, customer=CustomerView("c" * 32, None, (("email", CUSTOMER),)),
            last_inbound_at=datetime.now(UTC) - timedelta(minutes=5),
            attempt_started_at=datetime.now(UTC) - timedelta(seconds=30) if attempt > 1 else None)

    # -- cases ------------------------------------------------------------------------------------------------
    def test_declares_the_send_ability_with_or_without_smtp(self, tmp_path: Path) -> None:
        assert isinstance(self.connector(tmp_path, None), ReplySender)

    def test_the_customer_message_names_the_business_address(self, tmp_path: Path) -> None:
        message = self.customer_message(self.connector(tmp_path, None))
        addresses = [i.value for p in message.recipients for i in p.identifiers if i.kind is IdentifierKind.EMAIL]
        assert BUSINESS in addresses

    def test_a_send_returns_our_message_id_and_its_thread_key(self, tmp_path: Path, smtp_server: SmtpServer) -> None:
        connector = self.connector(tmp_path, smtp_server.settings())
        result = connector.send(self.request(connector))
        assert result.provider_message_id.startswith("gw-send-7.")
        assert result.provider_message_id.endswith("@example.test")  # the domain of the address written to
        assert result.thread_keys == (email_thread_key(result.provider_message_id),)
        [received] = smtp_server.received
        assert received.rcpt_tos == (CUSTOMER,) and received.mail_from == BUSINESS
        assert received.mail["Message-ID"] == f"<{result.provider_message_id}>"
        assert received.mail["In-Reply-To"] == "<kettle-1@mail.example.org>"
        assert received.login == "replies@example.test"

    def test_a_refused_recipient_is_permanent_and_says_why(self, tmp_path: Path, smtp_server: SmtpServer) -> None:
        smtp_server.handler.refuse[CUSTOMER] = "550 5.1.1 <anna.kowalski@example.org>: Recipient address rejected"
        connector = self.connector(tmp_path, smtp_server.settings())
        with pytest.raises(PermanentError) as caught:
            connector.send(self.request(connector))
        assert "Recipient address rejected" in str(caught.value) and caught.value.code == "smtp_550"
        assert PASSWORD not in str(caught.value)
        assert smtp_server.received == []

    def test_a_temporary_refusal_is_retryable(self, tmp_path: Path, smtp_server: SmtpServer) -> None:
        smtp_server.handler.refuse[CUSTOMER] = "451 4.7.1 Greylisted, please try again in 300 seconds"
        connector = self.connector(tmp_path, smtp_server.settings())
        with pytest.raises(RetryableError, match="Greylisted"):
            connector.send(self.request(connector))

    def test_an_outage_is_retryable_never_permanent(self, tmp_path: Path, closed_port: int) -> None:
        connector = self.connector(tmp_path, {"host": "127.0.0.1", "port": closed_port, "security": "none"})
        with pytest.raises(RetryableError) as caught:
            connector.send(self.request(connector))
        assert caught.value.code == "network"

    def test_a_hung_server_meets_the_deadline(self, tmp_path: Path, silent_port: int) -> None:
        connector = self.connector(tmp_path, {"host": "127.0.0.1", "port": silent_port, "security": "none",
                                              "timeout_seconds": 0.2})
        started = time.monotonic()
        with pytest.raises(RetryableError, match=r"[Tt]imed? ?out"):
            connector.send(self.request(connector))
        assert time.monotonic() - started < 5, "the socket timeout bounds the wait for the greeting"

    def test_an_interrupted_attempt_is_sent_again_with_the_same_message_id(self, tmp_path: Path,
                                                                           smtp_server: SmtpServer) -> None:
        connector = self.connector(tmp_path, smtp_server.settings())
        request = self.request(connector)
        first = connector.send(request)
        retry = dataclasses.replace(request, attempt=2, attempt_started_at=datetime.now(UTC))
        assert connector.reconcile(retry) is None  # SMTP has no lookup: sent again, receivers dedupe by Message-ID
        second = connector.send(retry)
        assert second.provider_message_id == first.provider_message_id
        assert [r.mail["Message-ID"] for r in smtp_server.received] == [f"<{first.provider_message_id}>"] * 2

    def test_without_smtp_settings_a_send_is_refused_in_words(self, tmp_path: Path) -> None:
        connector = self.connector(tmp_path, None)
        with pytest.raises(PermanentError, match="this email channel has no smtp settings") as caught:
            connector.send(self.request(connector))
        assert caught.value.code == "not_configured"
        assert connector.reconcile(self.request(connector, attempt=2)) is None

    def test_a_refused_login_is_permanent_and_keeps_the_password_out(self, tmp_path: Path,
                                                                     smtp_server: SmtpServer) -> None:
        wrong = "wrong-smtp-password-123"
        connector = self.connector(tmp_path, smtp_server.settings(password=wrong))
        with pytest.raises(PermanentError) as caught:
            connector.send(self.request(connector))
        assert caught.value.code == "smtp_535" and "login" in str(caught.value)
        assert wrong not in str(caught.value) and wrong not in repr(connector)
