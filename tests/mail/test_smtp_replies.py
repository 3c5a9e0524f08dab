"""The reply email itself: headers that thread it, the address it comes from, attachments, TLS and settings.

Sent through the ``sendgrid`` channel (the code is shared by all three email channels) to a real SMTP server on
loopback; the ``imap`` channel's look into its sent folder runs against a real Dovecot.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from connectors.imap import ImapChannel
from connectors.sendgrid import SendgridChannel, multipart_body
from gateway.attachments import AttachmentStore
from gateway.config import load_config
from gateway.errors import PermanentError, RetryableError
from gateway.mail.autoreply import LOOP_HEADER
from gateway.mail.mime import parse_mail, provider_id
from gateway.mail.reply import reply_subject
from gateway.model import Attachment
from gateway.plugins import ConnectorContext, CustomerView, SendRequest
from gateway.records import RawRecord
from gateway.storage.db import utcnow
from gateway.yamlsource import ConfigError
from tests.conformance.channel import config_text
from tests.conformance.sender import DeadlineSession, agent_reply
from tests.dovecot import Dovecot
from tests.mail.corpus import CUSTOMER, PNG, text_mail
from tests.smtp_server import SmtpServer

CHANNEL = "mail-sendgrid"
SETTINGS = {"type": "sendgrid", "url_token": "test-url-token-123456"}


def channel(tmp_path: Path, smtp: dict[str, Any] | None, **settings: Any) -> SendgridChannel:
    config = SendgridChannel.Config.model_validate({**SETTINGS, **settings, **({"smtp": smtp} if smtp else {})})
    return SendgridChannel(CHANNEL, config, ConnectorContext(http=DeadlineSession(), base_dir=tmp_path,
                                                              attachments=AttachmentStore(tmp_path / "files")))


def request(connector: SendgridChannel, raw: bytes, envelope_to: list[str] | None = None,
            **changes: Any) -> SendRequest:
    fields: dict[str, Any] = {"email": raw}
    if envelope_to is not None:
        fields["envelope"] = json.dumps({"to": envelope_to, "from": CUSTOMER})
    body, content_type = multipart_body(fields)
    [answering] = connector.normalize(RawRecord(1, CHANNEL, provider_id(raw), "message", body, content_type, {}, "",
                                                utcnow()))
    return SendRequest(send_id=12, attempt=1, token="gw-send-12", message=agent_reply(answering, **changes),
                       reply_to=answering, customer=CustomerView("c" * 32, None, (("email", CUSTOMER),)),
                       last_inbound_at=datetime.now(UTC) - timedelta(minutes=1))


QUESTION = text_mail("Where is my order?", subject="Order 1234 late", message_id="q2@mail.example.org",
                     in_reply_to="q1@mail.example.org", references=("q0@mail.example.org", "q1@mail.example.org"),
                     to="Example Support <support@example.test>")


def test_the_reply_threads_under_the_customer_mail_with_our_message_id(tmp_path: Path,
                                                                       smtp_server: SmtpServer) -> None:
    connector = channel(tmp_path, smtp_server.settings())
    stored = connector.context.attachments.put(PNG, "label.png", "image/png")
    linked = Attachment(filename="invoice.pdf", content_type="application/pdf",
                        location="https://files.example.com/invoice-1234.pdf")
    sent = request(connector, QUESTION, attachments=(stored, linked))
    result = connector.send(sent)

    [received] = smtp_server.received
    mail = received.mail
    assert (received.mail_from, received.rcpt_tos, received.tls) == ("support@example.test", (CUSTOMER,), False)
    assert mail["From"] == "support@example.test"  # not "Example Support": the name the customer gave us is theirs
    assert mail["To"] == f"Anna Kowalski <{CUSTOMER}>"
    assert mail["Subject"] == "Re: Order 1234 late"
    assert mail["In-Reply-To"] == "<q2@mail.example.org>"
    assert mail["References"] == "<q0@mail.example.org> <q1@mail.example.org> <q2@mail.example.org>"
    assert mail["Message-ID"] == f"<gw-send-12.{sent.message.id}@example.test>" == f"<{result.provider_message_id}>"
    assert mail[LOOP_HEADER] == CHANNEL and mail["Date"] is not None
    body = mail.get_body(("plain",))
    assert body is not None
    text = body.get_content()
    assert text.startswith("Your order ships today. Tracking: 1Z999.")
    assert "invoice.pdf: https://files.example.com/invoice-1234.pdf" in text
    [attached] = list(mail.iter_attachments())
    assert (attached.get_filename(), attached.get_content_type(), attached.get_content()) == (
        "label.png", "image/png", PNG)

    # our own mail, should it come back in through the channel, is not a customer message
    assert connector.normalize(RawRecord(2, CHANNEL, "x", "message", *multipart_body({"email": received.data}),
                                         {}, "", utcnow())) == []


def test_the_message_id_is_stable_per_send_and_differs_between_sends(tmp_path: Path,
                                                                     smtp_server: SmtpServer) -> None:
    connector = channel(tmp_path, smtp_server.settings())
    first = request(connector, QUESTION)
    again = connector.send(dataclasses.replace(first, attempt=2)).provider_message_id
    assert again == connector.send(first).provider_message_id
    other = dataclasses.replace(first, token="gw-send-13")
    assert connector.send(other).provider_message_id != again
    new_database = dataclasses.replace(first, message=agent_reply(first.reply_to))  # send ids restart, ids do not
    assert connector.send(new_database).provider_message_id != again


@pytest.mark.parametrize(("subject", "expected"), [
    ("Order late", "Re: Order late"), ("Re: Order late", "Re: Order late"), ("RE:Order late", "RE:Order late"),
    ("  re : Order late", "re : Order late"), ("Order\r\n late", "Re: Order late"), ("Fwd: Order", "Re: Fwd: Order"),
    ("", "Re: (no subject)"), (None, "Re: (no subject)"),
])
def test_reply_subject_never_doubles_re(subject: str | None, expected: str) -> None:
    assert reply_subject(subject) == expected


def test_non_ascii_subject_and_text_travel_encoded(tmp_path: Path, smtp_server: SmtpServer) -> None:
    connector = channel(tmp_path, smtp_server.settings())
    raw = text_mail("Zamówienie?", subject="Zamówienie nr 12 — opóźnione", message_id="pl@mail.example.org")
    connector.send(request(connector, raw, text="Dzień dobry, paczka wyszła dziś. 📦"))
    mail = smtp_server.received[0].mail
    assert mail["Subject"] == "Re: Zamówienie nr 12 — opóźnione"
    assert smtp_server.received[0].data.isascii()
    assert parse_mail(smtp_server.received[0].data).text.strip() == "Dzień dobry, paczka wyszła dziś. 📦"


# -- the address replies come from ------------------------------------------------------------------------------
def test_from_is_the_own_address_among_several_recipients(tmp_path: Path, smtp_server: SmtpServer) -> None:
    connector = channel(tmp_path, smtp_server.settings(), own_addresses=["*@example.test"])
    raw = text_mail("Hi", to="Friend <friend@example.net>, Help <help@example.test>")
    connector.send(request(connector, raw))
    assert smtp_server.received[0].mail_from == "help@example.test"
    assert smtp_server.received[0].mail["Message-ID"].endswith("@example.test>")


def test_from_is_the_envelope_recipient_when_the_provider_names_it(tmp_path: Path, smtp_server: SmtpServer) -> None:
    connector = channel(tmp_path, smtp_server.settings())
    raw = text_mail("Hi", to="Friend <friend@example.net>, Help <help@example.test>")
    connector.send(request(connector, raw, envelope_to=["help@example.test"]))
    assert smtp_server.received[0].mail_from == "help@example.test"


def test_an_ambiguous_address_is_refused_rather_than_guessed(tmp_path: Path, smtp_server: SmtpServer) -> None:
    connector = channel(tmp_path, smtp_server.settings())
    raw = text_mail("Hi", to="Friend <friend@example.net>, Help <help@example.test>")
    with pytest.raises(PermanentError, match=r"smtp\.from_address") as caught:
        connector.send(request(connector, raw, envelope_to=["parse@inbound.example.test"]))
    assert caught.value.code == "from_address"
    assert smtp_server.received == []


def test_configured_from_address_and_message_id_domain_win(tmp_path: Path, smtp_server: SmtpServer) -> None:
    connector = channel(tmp_path, smtp_server.settings(from_address="Care@Example.COM", from_name="Example Care",
                                                       message_id_domain="mail.example.com"))
    connector.send(request(connector, QUESTION))
    mail = smtp_server.received[0].mail
    assert smtp_server.received[0].mail_from == "Care@example.com"
    assert mail["From"] == "Example Care <Care@example.com>"
    assert mail["Message-ID"].endswith("@mail.example.com>")


# -- transport and errors ---------------------------------------------------------------------------------------
def test_starttls_with_a_private_ca(tmp_path: Path, smtp_starttls: SmtpServer) -> None:
    connector = channel(tmp_path, smtp_starttls.settings("starttls"))
    connector.send(request(connector, QUESTION))
    [received] = smtp_starttls.received
    assert received.tls and received.login == "replies@example.test"
    assert connector.check_online().startswith("smtp: 127.0.0.1 (starttls) answers 250")


def test_implicit_tls_with_a_private_ca(tmp_path: Path, smtp_ssl: SmtpServer) -> None:
    connector = channel(tmp_path, smtp_ssl.settings("ssl"))
    connector.send(request(connector, QUESTION))
    assert smtp_ssl.received[0].tls


def test_an_untrusted_certificate_is_retryable_and_names_the_setting(tmp_path: Path,
                                                                     smtp_starttls: SmtpServer) -> None:
    settings = smtp_starttls.settings("starttls")
    del settings["tls_ca_file"]
    connector = channel(tmp_path, settings)
    with pytest.raises(RetryableError, match="tls_ca_file") as caught:
        connector.send(request(connector, QUESTION))
    assert caught.value.code == "tls"
    assert smtp_starttls.received == []


def test_starttls_required_but_not_offered_is_never_sent_in_clear(tmp_path: Path, smtp_server: SmtpServer) -> None:
    connector = channel(tmp_path, {**smtp_server.settings(), "security": "starttls"})
    with pytest.raises(PermanentError, match="does not support") as caught:
        connector.send(request(connector, QUESTION))
    assert caught.value.code == "smtp_config"
    assert smtp_server.received == []


@pytest.mark.parametrize(("answer", "error", "code"), [
    ("552 5.3.4 Message size exceeds fixed limit", PermanentError, "smtp_552"),
    ("554 5.7.1 Message rejected as spam", PermanentError, "smtp_554"),
    ("452 4.3.1 Insufficient system storage", RetryableError, "smtp_452"),
])
def test_answers_to_the_message_are_classified_by_code(tmp_path: Path, smtp_server: SmtpServer, answer: str,
                                                       error: type[Exception], code: str) -> None:
    smtp_server.handler.data_answer = answer
    connector = channel(tmp_path, smtp_server.settings())
    with pytest.raises(error) as caught:
        connector.send(request(connector, QUESTION))
    assert caught.value.code == code  # type: ignore[attr-defined]
    assert answer[4:] in str(caught.value)  # the server's own words reach the agent's note


def test_attachments_that_cannot_go_are_refused_before_any_connection(tmp_path: Path) -> None:
    connector = channel(tmp_path, {"host": "127.0.0.1", "port": 9, "security": "none"})
    gone = Attachment(filename="gone.pdf", content_type="application/pdf", location="store:sha256/" + "0" * 64)
    with pytest.raises(PermanentError, match="no longer stored"):
        connector.send(request(connector, QUESTION, attachments=(gone,)))
    odd = Attachment(filename="x.bin", content_type="application/octet-stream", location="s3://bucket/x.bin")
    with pytest.raises(PermanentError, match="neither stored nor a web link"):
        connector.send(request(connector, QUESTION, attachments=(odd,)))


# -- settings ---------------------------------------------------------------------------------------------------
def smtp_config(write_config: Callable[..., Path], smtp: dict[str, Any]) -> None:
    load_config(write_config(config_text(CHANNEL, {**SETTINGS, "smtp": smtp})))


def test_clear_text_is_refused_for_a_remote_host(write_config: Callable[..., Path]) -> None:
    with pytest.raises(ConfigError, match=r"channels\.mail-sendgrid\.smtp.*only allowed for a loopback host"):
        smtp_config(write_config, {"host": "smtp.example.com", "security": "none"})
    smtp_config(write_config, {"host": "127.0.0.1", "security": "none"})  # a local relay is fine


@pytest.mark.parametrize(("smtp", "message"), [
    ({"host": "smtp.example.com", "hostname": "x"}, "hostname"),
    ({"host": "smtp.example.com", "username": "support@example.com"}, "username and password go together"),
    ({"host": "smtp.example.com", "from_address": "not an address"}, "not an email address"),
    ({"host": "smtp.example.com", "message_id_domain": "bad domain"}, "not a domain name"),
    ({"host": "smtp.example.com", "security": "tls"}, "security"),
    ({"host": "smtp.example.com", "sent_folder": "Sent"}, "sent_folder"),  # only the imap channel reads a folder
])
def test_bad_smtp_settings_are_config_errors(write_config: Callable[..., Path], smtp: dict[str, Any],
                                             message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        smtp_config(write_config, smtp)


def test_the_password_is_a_secret(tmp_path: Path) -> None:
    connector = channel(tmp_path, {"host": "smtp.example.com", "username": "u@example.com",
                                   "password": "test-secret-smtp-pass"})
    assert "test-secret-smtp-pass" not in repr(connector)


# -- the imap channel looks in its sent folder ------------------------------------------------------------------
def test_imap_finds_an_interrupted_attempt_in_its_sent_folder(tmp_path: Path, dovecot: Dovecot,
                                                               smtp_server: SmtpServer) -> None:
    settings = dovecot.settings(smtp=smtp_server.settings(sent_folder="Sent"))
    config = ImapChannel.Config.model_validate(settings)
    connector = ImapChannel("mail-imap", config, ConnectorContext(http=DeadlineSession(), base_dir=tmp_path,
                                                                   attachments=AttachmentStore(tmp_path / "f")))
    [answering] = connector.normalize(RawRecord(1, "mail-imap", "k", "message", QUESTION, "message/rfc822", {}, "",
                                                utcnow()))
    sent = SendRequest(send_id=3, attempt=2, token="gw-send-3", message=agent_reply(answering), reply_to=answering,
                       customer=CustomerView("c" * 32, None, (("email", CUSTOMER),)),
                       last_inbound_at=utcnow(), attempt_started_at=utcnow())
    with dovecot.client() as client:
        client.create_folder("Sent")
    assert connector.reconcile(sent) is None  # not in the folder: surely absent there, sent again

    result = connector.send(sent)
    dovecot.append([smtp_server.received[0].data], folder="Sent")  # the copy a server such as Gmail keeps
    found = connector.reconcile(sent)
    assert found is not None and found.provider_message_id == result.provider_message_id
    assert found.thread_keys == result.thread_keys
    other = dataclasses.replace(sent, token="gw-send-4")
    assert connector.reconcile(other) is None


def test_imap_sent_folder_unreadable_is_retryable(tmp_path: Path, dovecot: Dovecot) -> None:
    settings = dovecot.settings(smtp={"host": "127.0.0.1", "security": "none", "sent_folder": "No Such Folder"})
    connector = ImapChannel("mail-imap", ImapChannel.Config.model_validate(settings),
                            ConnectorContext(http=DeadlineSession(), base_dir=tmp_path))
    [answering] = connector.normalize(RawRecord(1, "mail-imap", "k", "message", QUESTION, "message/rfc822", {}, "",
                                                utcnow()))
    sent = SendRequest(send_id=3, attempt=2, token="gw-send-3", message=agent_reply(answering), reply_to=answering,
                       customer=CustomerView("c" * 32, None, ()), last_inbound_at=utcnow(),
                       attempt_started_at=utcnow())
    with pytest.raises(RetryableError, match="No Such Folder"):
        connector.reconcile(sent)
