"""Agent replies by SMTP for the email channels (``imap``, ``sendgrid``, ``mailgun``): settings and sending.

A channel gains the ability by listing ``SmtpReplies`` among its bases and an optional ``smtp`` setting
(``SmtpSettings``); without that block the channel still declares the ability but refuses each send with a reason
the agent reads. Submission follows RFC 6409 / RFC 8314: port 465 with implicit TLS (``ssl``) or 587 upgraded with
STARTTLS, certificate and host name always checked; ``none`` is only allowed to a loopback relay.

Errors: a 5xx answer (recipient, sender or content refused, login refused) is permanent and carries the server's
words; a 4xx answer, a dropped connection, a timeout or a TLS failure is retryable.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import smtplib
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from imapclient.exceptions import IMAPClientError
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from gateway.conversations import email_thread_key
from gateway.errors import DeliveryError, PermanentError, RetryableError
from gateway.identity.normalize import AS_WRITTEN, InvalidIdentifier, normalize_email
from gateway.mail.reply import business_address, compose, receiving_addresses, reply_message_id
from gateway.plugins import ConnectorContext, ReplySender, SendRequest, SendResult

DEFAULT_PORTS = {"ssl": 465, "starttls": 587, "none": 25}
_LOOPBACK_NAMES = {"localhost", "localhost.localdomain"}
NOT_CONFIGURED = ("this email channel has no smtp settings, so it cannot send replies: an admin adds an smtp: block "
                  "(host, security, username, password) to the channel")


def is_loopback_host(host: str) -> bool:
    """``localhost`` or a loopback IP address (127.0.0.0/8, ::1)."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class SmtpSettings(BaseModel):
    """The ``smtp`` block of an email channel: where its replies are submitted."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(min_length=1, description="SMTP submission server host name.")
    port: int | None = Field(None, ge=1, le=65535, description="Default 465 with ssl, 587 with starttls, 25 with none.")
    security: Literal["ssl", "starttls", "none"] = Field(
        "starttls", description="ssl (implicit TLS), starttls, or none (only allowed for a loopback host).")
    username: str | None = Field(None, min_length=1, description="Login name; unset: no login (a trusted relay).")
    password: SecretStr | None = Field(None, description="Password (or app password) for username.")
    from_address: str | None = Field(
        None, description="Address replies are sent from; default: the address the customer wrote to (the To/Cc "
                          "address matching own_addresses, else the one the mail was received for, else the only "
                          "recipient).")
    from_name: str | None = Field(
        None, max_length=200, description="Display name in the From header; default: none (the name the customer "
                                          "gave the address is their text, not ours).")
    message_id_domain: str | None = Field(
        None, description="Domain of the Message-IDs of replies; default: the domain of the From address.")
    timeout_seconds: float = Field(30.0, gt=0, le=600, description="Socket timeout of each SMTP command.")
    tls_ca_file: str | None = Field(
        None, min_length=1,
        description="PEM file of CA certificates to trust instead of the system trust store (relative to the config "
                    "file); the host name is always checked against the certificate.")

    @field_validator("from_address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return normalize_email(value, AS_WRITTEN)
        except InvalidIdentifier:
            raise ValueError(f"{value!r} is not an email address") from None

    @field_validator("message_id_domain")
    @classmethod
    def _domain(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?", value):
            raise ValueError(f"{value!r} is not a domain name")
        return value

    @model_validator(mode="after")
    def _check(self) -> SmtpSettings:
        if self.security == "none" and not is_loopback_host(self.host):
            raise ValueError("security: none sends mail and password in clear text: only allowed for a loopback "
                             "host (use ssl or starttls)")
        if self.security == "none" and self.tls_ca_file is not None:
            raise ValueError("tls_ca_file needs security: ssl or starttls")
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together")
        return self


class ImapSmtpSettings(SmtpSettings):
    """The ``smtp`` block of an ``imap`` channel: the same, plus the mailbox folder where sent mail is kept."""

    sent_folder: str | None = Field(
        None, min_length=1,
        description="Folder of the IMAP mailbox where the SMTP server keeps a copy of sent mail (Gmail does; check "
                    "yours): an interrupted send is looked up there before it is sent again.")


SMTP_FIELD_DESCRIPTION = "SMTP server for agent replies; unset: this channel cannot send replies."


def tls_context(ca_file: str | None, base_dir: Path) -> ssl.SSLContext:
    """Certificate and host name verification on: the system trust store, or ``ca_file`` instead of it."""
    if ca_file is None:
        return ssl.create_default_context()
    path = Path(ca_file)
    if not path.is_absolute():
        path = base_dir / path
    return ssl.create_default_context(cafile=str(path))


def connect(settings: SmtpSettings, base_dir: Path) -> smtplib.SMTP:
    """A connected, encrypted (unless ``none``) and logged-in session; the caller closes it."""
    port = settings.port or DEFAULT_PORTS[settings.security]
    helo = socket.gethostname() or "localhost"  # smtplib's default, getfqdn(), is a DNS lookup without a deadline
    context = tls_context(settings.tls_ca_file, base_dir) if settings.security != "none" else None
    session: smtplib.SMTP
    if settings.security == "ssl":
        session = smtplib.SMTP_SSL(settings.host, port, local_hostname=helo, timeout=settings.timeout_seconds,
                                   context=context)
    else:
        session = smtplib.SMTP(settings.host, port, local_hostname=helo, timeout=settings.timeout_seconds)
    try:
        session.ehlo()
        if settings.security == "starttls":
            session.starttls(context=context)  # raises when not offered: never falls back to clear text
            session.ehlo()
        if settings.username is not None and settings.password is not None:
            session.login(settings.username, settings.password.get_secret_value())
    except BaseException:
        session.close()
        raise
    return session


def _words(value: bytes | str) -> str:
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    return " ".join(text.split())[:300]


def _by_code(code: int, words: str, what: str) -> DeliveryError:
    if 400 <= code < 500:
        return RetryableError(f"the mail server answered {code} {words} ({what}); trying again later",
                              code=f"smtp_{code}")
    if 500 <= code < 600:
        return PermanentError(f"Not sent: the mail server refused {what}: {code} {words}", code=f"smtp_{code}")
    return RetryableError(f"unexpected answer {code} {words} ({what})", code=f"smtp_{code}")


def smtp_error(exc: BaseException, host: str) -> DeliveryError:
    """The delivery error an ``smtplib`` or socket failure means: 5xx permanent, everything else retryable."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        answers = list(exc.recipients.items())
        address, (code, words) = next(((a, r) for a, r in answers if r[0] >= 500), answers[0])
        return _by_code(code, _words(words), f"the customer's address {address}")
    if isinstance(exc, smtplib.SMTPSenderRefused):
        return _by_code(exc.smtp_code, _words(exc.smtp_error), f"the sender address {exc.sender}")
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        return _by_code(exc.smtp_code, _words(exc.smtp_error), "the login (check the channel's smtp username and "
                                                               "password)")
    if isinstance(exc, smtplib.SMTPDataError):
        return _by_code(exc.smtp_code, _words(exc.smtp_error), "the message")
    if isinstance(exc, smtplib.SMTPConnectError):
        return RetryableError(f"cannot connect to the mail server {host}: {exc.smtp_code} {_words(exc.smtp_error)}",
                              code="network")
    if isinstance(exc, smtplib.SMTPResponseException):
        return _by_code(exc.smtp_code, _words(exc.smtp_error), "the request")
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return PermanentError(f"Not sent: the mail server {host} does not support what the channel's smtp "
                              f"settings need ({exc}); an admin checks security and username.", code="smtp_config")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return RetryableError(f"the mail server {host}'s certificate is not trusted ({exc.verify_message}); "
                              "smtp.tls_ca_file names the CA to trust", code="tls")
    if isinstance(exc, smtplib.SMTPServerDisconnected | OSError):
        return RetryableError(f"mail server {host}: {type(exc).__name__}: {exc}", code="network")
    return RetryableError(f"mail server {host}: {type(exc).__name__}: {exc}", code="smtp")


class SmtpReplies(ReplySender):
    """Sends agent replies by SMTP; for a channel whose config has ``smtp: SmtpSettings | None`` and
    ``own_addresses`` (``EmailSettings``). List it first among the bases, so its ``check_online`` is used."""

    name: str
    config: Any
    context: ConnectorContext

    def smtp_settings(self) -> SmtpSettings | None:
        """The channel's ``smtp`` block, or None."""
        return getattr(self.config, "smtp", None)

    def send(self, request: SendRequest) -> SendResult:
        settings = self.smtp_settings()
        if settings is None:
            raise PermanentError(f"Not sent: {NOT_CONFIGURED}.", code="not_configured")
        from_address, domain = self._identity(request, settings)
        reply = compose(request, channel=self.name, from_address=from_address, from_name=settings.from_name,
                        message_id_domain=domain, store=self.context.attachments)
        try:
            session = connect(settings, self.context.base_dir)
        except (smtplib.SMTPException, OSError) as exc:
            raise smtp_error(exc, settings.host) from None
        try:
            session.send_message(reply.mail, from_addr=reply.sender, to_addrs=[reply.recipient])
        except smtplib.SMTPResponseException as exc:  # an answer: the session still works, so it ends politely
            _quit(session)
            raise smtp_error(exc, settings.host) from None
        except (smtplib.SMTPException, OSError) as exc:  # a broken session: QUIT would wait out another timeout
            session.close()
            raise smtp_error(exc, settings.host) from None
        _quit(session)
        return _result(reply.message_id)

    def _identity(self, request: SendRequest, settings: SmtpSettings) -> tuple[str, str]:
        """(From address, Message-ID domain): the same for every attempt of one send."""
        from_address = settings.from_address
        if from_address is None:
            known = receiving_addresses(request.reply_to, [settings.username] if settings.username else [])
            from_address = business_address(
                request.reply_to, own_addresses=getattr(self.config, "own_addresses", ()), known=known)
        return from_address, settings.message_id_domain or _ascii_domain(from_address)

    def reconcile(self, request: SendRequest) -> SendResult | None:
        """The earlier attempt if a copy of it is in the sent folder (``sent_copy``); otherwise None, and it is sent
        again.

        SMTP itself offers no way to ask whether an attempt cut off mid-way was accepted. Sending again is safe
        enough for email: the second attempt carries the same Message-ID as the first (it is derived from the
        send's token), so a receiver that already has the first copy (Gmail, for one) drops the second, and a client
        that shows both shows the same text, threaded together. Refusing to resend instead (``OutcomeUnknown``)
        would leave every reply interrupted by a dropped connection undelivered.
        """
        settings = self.smtp_settings()
        if settings is None:
            return None
        try:
            _, domain = self._identity(request, settings)
        except PermanentError:
            return None  # the address rule refuses this reply, so no earlier attempt reached the server
        message_id = reply_message_id(request.token, request.message.id, domain)
        return _result(message_id) if self.sent_copy(message_id) else None

    def sent_copy(self, message_id: str) -> bool:
        """Whether a copy of the mail with ``message_id`` is in a folder the channel can read (False: none known).

        Raise ``RetryableError`` when the folder cannot be read now.
        """
        return False

    def check_online(self) -> str:
        return self.check_smtp()

    def check_smtp(self) -> str:
        """Connect and log in to the SMTP server (``gateway check --online``); one line, or raise with the reason."""
        settings = self.smtp_settings()
        if settings is None:
            return "smtp: not configured (replies cannot be sent)"
        session = connect(settings, self.context.base_dir)
        try:
            code, _ = session.noop()
            return f"smtp: {settings.host} ({settings.security}) answers {code}"
        finally:
            _quit(session)


def imap_sent_copy(connect: Callable[[], Any], close: Callable[[Any], None], folder: str, message_id: str) -> bool:
    """Whether ``folder`` of an IMAP mailbox (``connect`` logs in, ``close`` logs out) holds the mail with
    ``message_id``; ``RetryableError`` when it cannot be read now."""
    try:
        client = connect()
    except (OSError, IMAPClientError) as exc:
        raise RetryableError(f"cannot look for the earlier attempt in {folder}: {type(exc).__name__}: {exc}",
                             code="network") from None
    try:
        client.select_folder(folder, readonly=True)
        return bool(client.search(["HEADER", "Message-ID", f"<{message_id}>"]))
    except (OSError, IMAPClientError) as exc:
        raise RetryableError(f"cannot look for the earlier attempt in {folder}: {type(exc).__name__}: {exc}",
                             code="network") from None
    finally:
        close(client)


def _result(message_id: str) -> SendResult:
    return SendResult(provider_message_id=message_id, thread_keys=(email_thread_key(message_id),))


def _ascii_domain(address: str) -> str:
    domain = address.rpartition("@")[2]
    with contextlib.suppress(UnicodeError):
        domain = domain.encode("idna").decode("ascii")
    return domain


def _quit(session: smtplib.SMTP) -> None:
    """QUIT after the mail was accepted (or refused): its failure changes nothing, so it is not an error."""
    try:
        session.quit()
    except (smtplib.SMTPException, OSError):
        session.close()
