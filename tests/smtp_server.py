"""A real SMTP server for the tests (aiosmtpd on loopback): it keeps what it accepts and answers as it is told.

``SmtpServer.start()`` listens in clear text (login allowed without TLS: loopback only); ``tls="starttls"`` offers
STARTTLS and ``tls="ssl"`` speaks implicit TLS, both with a throwaway CA and a server certificate for 127.0.0.1 made
by ``tests.dovecot.write_server_certificate``. ``refuse`` maps a recipient to the answer its RCPT gets, and
``data_answer`` replaces the 250 after DATA, so refusals and temporary failures come from a real SMTP dialogue.
"""

from __future__ import annotations

import email
import socket
import ssl
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from tests.dovecot import write_server_certificate
from tests.helpers import free_port

USER = "replies@example.test"
PASSWORD = "test-smtp-password"


@dataclass(frozen=True)
class Received:
    """One accepted mail: the envelope, the bytes, and how the client reached the server."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    tls: bool
    login: str | None

    @property
    def mail(self) -> EmailMessage:
        parsed = email.message_from_bytes(self.data, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass
class Handler:
    """aiosmtpd handler: keeps accepted mail; ``refuse`` and ``data_answer`` script refusals."""

    received: list[Received] = field(default_factory=list)
    refuse: dict[str, str] = field(default_factory=dict)
    data_answer: str | None = None

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.data_answer is not None:
            return self.data_answer
        login = session.auth_data.decode() if session.authenticated and isinstance(session.auth_data, bytes) else None
        content = envelope.content if isinstance(envelope.content, bytes) else str(envelope.content).encode()
        self.received.append(Received(str(envelope.mail_from), tuple(envelope.rcpt_tos), content,
                                      server.transport.get_extra_info("ssl_object") is not None, login))
        return "250 2.0.0 Ok: queued"


def _authenticate(server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any) -> AuthResult:
    ok = isinstance(data, LoginPassword) and data.login == USER.encode() and data.password == PASSWORD.encode()
    return AuthResult(success=ok, handled=False, auth_data=data.login if ok else None)


@dataclass
class SmtpServer:
    """One running aiosmtpd; ``stop()`` ends it and removes its certificate folder."""

    controller: Controller
    handler: Handler
    port: int
    root: Path
    ca_file: Path | None = None

    @classmethod
    def start(cls, tls: str | None = None, *, auth: bool = True) -> SmtpServer:
        root = Path(tempfile.mkdtemp(prefix="gw-smtp-"))
        handler = Handler()
        port = free_port()
        options: dict[str, Any] = {"authenticator": _authenticate, "auth_require_tls": False} if auth else {}
        ca_file = None
        if tls is not None:
            ca_file, cert_file, key_file = write_server_certificate(root)
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(cert_file, key_file)
            options["ssl_context" if tls == "ssl" else "tls_context"] = context
        controller = Controller(handler, hostname="127.0.0.1", port=port, server_hostname="smtp.example.test",
                                **options)
        controller.start()
        return cls(controller, handler, port, root, ca_file)

    @property
    def received(self) -> list[Received]:
        return self.handler.received

    def settings(self, security: str = "none", **extra: object) -> dict[str, object]:
        """The ``smtp`` block that reaches this server (with TLS: trusting its CA) and logs in."""
        values: dict[str, object] = {"host": "127.0.0.1", "port": self.port, "security": security,
                                     "username": USER, "password": PASSWORD, "timeout_seconds": 5}
        if security != "none":
            assert self.ca_file is not None, "start the server with tls"
            values["tls_ca_file"] = str(self.ca_file)
        return {**values, **extra}

    def stop(self) -> None:
        self.controller.stop()
        for path in self.root.iterdir():
            path.unlink()
        self.root.rmdir()


def _running(tls: str | None = None) -> Iterator[SmtpServer]:
    server = SmtpServer.start(tls)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    """A clear-text SMTP server on loopback that accepts the test login."""
    yield from _running()


@pytest.fixture
def smtp_starttls() -> Iterator[SmtpServer]:
    """An SMTP server offering STARTTLS with a certificate from a throwaway CA (``ca_file``)."""
    yield from _running("starttls")


@pytest.fixture
def smtp_ssl() -> Iterator[SmtpServer]:
    """An SMTP server speaking implicit TLS (as on port 465)."""
    yield from _running("ssl")


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts connections (the kernel's backlog) but never says anything: a hung server."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield int(sock.getsockname()[1])


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on: a server that is down."""
    return free_port()
