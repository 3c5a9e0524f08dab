"""A real Dovecot IMAP server for the tests: own config in a temporary folder, loopback ports, password auth.

``Dovecot.start(tls=True)`` adds TLS with a throwaway CA and server certificate generated into that folder: an
implicit-TLS listener (``imaps_port``) next to the plain one, which then offers STARTTLS. ``oauth2_url`` adds
XOAUTH2, checked by Dovecot's ``oauth2`` passdb against a token introspection endpoint (``TokenServer``).

Dovecot comes from Debian's ``dovecot-imapd`` package (``scripts/test-services.sh`` installs it). It refuses to run
login processes as root, so when the tests run as root its login and internal processes use the ``dovenull`` and
``dovecot`` users the package creates, and the mail itself is owned by ``dovecot`` (``first_valid_uid`` is set low
enough to allow it). A missing Dovecot fails the tests: it is never a reason to skip them.
"""

from __future__ import annotations

import ipaddress
import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from imapclient import IMAPClient

USER = "support@example.test"
PASSWORD = "test-imap-password"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_ca(folder: Path, name: str) -> tuple[Path, ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A throwaway CA: its certificate as PEM in ``folder`` (the key stays in memory)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    path = folder / f"{name}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path, key, cert


def write_server_certificate(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate it signed for ``localhost`` / ``127.0.0.1``: (CA file, cert file, key file)."""
    ca_file, ca_key, ca_cert = write_ca(folder, "test-ca")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_file, key_file = folder / "server.pem", folder / "server.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.touch(mode=0o600)
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return ca_file, cert_file, key_file


@dataclass
class TokenServer:
    """An OAuth2 token introspection endpoint (RFC 7662, POST ``token=...``) on loopback, for Dovecot's passdb.

    ``tokens`` maps each valid access token to the user name it belongs to; any other token is inactive.
    """

    tokens: dict[str, str]
    asked: list[str] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/introspect"

    def start(self) -> TokenServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                token = parse_qs(body).get("token", [""])[0]
                owner.asked.append(token)
                user = owner.tokens.get(token)
                reply = json.dumps({"active": True, "username": user} if user else {"active": False}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: object) -> None:  # quiet test output
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def dovecot_binary() -> str:
    for candidate in (shutil.which("dovecot"), "/usr/sbin/dovecot"):
        if candidate and Path(candidate).exists():
            return candidate
    raise FileNotFoundError("dovecot is not installed: run scripts/test-services.sh (apt-get install dovecot-imapd)")


@dataclass
class Dovecot:
    """One running Dovecot; ``stop()`` ends it and removes its folder."""

    root: Path
    port: int
    process: subprocess.Popen[bytes]
    user: str = USER
    password: str = PASSWORD
    imaps_port: int | None = None
    ca_file: Path | None = None

    @classmethod
    def start(cls, timeout: float = 20.0, tls: bool = False, oauth2_url: str | None = None) -> Dovecot:
        """Start Dovecot; ``tls`` adds the certificate and the imaps listener, ``oauth2_url`` adds XOAUTH2."""
        binary = dovecot_binary()
        root = Path(tempfile.mkdtemp(prefix="gw-dovecot-"))
        root.chmod(0o755)  # the login and mail processes run as other users and must reach their folders
        port = free_port()
        imaps_port = free_port() if tls else None
        ca_file = None
        ssl_settings = "ssl = no"
        if tls:
            ca_file, cert_file, key_file = write_server_certificate(root)
            ssl_settings = f"ssl = yes\nssl_cert = <{cert_file}\nssl_key = <{key_file}"
        mechanisms = "plain login" + (" xoauth2" if oauth2_url else "")
        oauth2_passdb = ""
        if oauth2_url:
            (root / "oauth2.conf").write_text(
                f"introspection_url = {oauth2_url}\nintrospection_mode = post\nusername_attribute = username\n"
                "active_attribute = active\nactive_value = true\n", encoding="utf-8")
            oauth2_passdb = f"""passdb {{
  driver = oauth2
  mechanisms = xoauth2
  args = {root}/oauth2.conf
}}"""
        if os.geteuid() == 0:
            mail_user = pwd.getpwnam("dovecot")
            login_user, internal_user = "dovenull", "dovecot"
        else:
            mail_user = pwd.getpwuid(os.geteuid())
            login_user = internal_user = mail_user.pw_name
        mail = root / "mail"
        mail.mkdir()
        os.chown(mail, mail_user.pw_uid, mail_user.pw_gid)
        (root / "passwd").write_text(f"{USER}:{{PLAIN}}{PASSWORD}::::::\n", encoding="utf-8")
        config = root / "dovecot.conf"
        config.write_text(f"""
base_dir = {root}/run
state_dir = {root}/state
instance_name = gw-test-{port}
protocols = imap
listen = 127.0.0.1
{ssl_settings}
disable_plaintext_auth = no
auth_mechanisms = {mechanisms}
auth_failure_delay = 0
log_path = {root}/dovecot.log
default_login_user = {login_user}
default_internal_user = {internal_user}
first_valid_uid = {min(mail_user.pw_uid, 100)}
first_valid_gid = {min(mail_user.pw_gid, 100)}
mail_location = maildir:{mail}/%n
mail_uid = {mail_user.pw_uid}
mail_gid = {mail_user.pw_gid}
namespace inbox {{
  inbox = yes
  separator = /
  mailbox Archive {{
    auto = create
  }}
}}
passdb {{
  driver = passwd-file
  mechanisms = plain login
  args = scheme=PLAIN username_format=%u {root}/passwd
}}
{oauth2_passdb}
userdb {{
  driver = static
  args = uid={mail_user.pw_uid} gid={mail_user.pw_gid} home={mail}/%n
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {imaps_port or 0}
    ssl = yes
  }}
}}
service stats {{
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
""", encoding="utf-8")
        process = subprocess.Popen([binary, "-F", "-c", str(config)], stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT)
        server = cls(root, port, process, imaps_port=imaps_port, ca_file=ca_file)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                output = process.stdout.read().decode(errors="replace") if process.stdout else ""
                server.stop()
                raise RuntimeError(f"dovecot exited with {process.returncode}: {output}{server.log()}")
            try:
                with IMAPClient("127.0.0.1", port=port, ssl=False, timeout=2) as client:
                    client.login(USER, PASSWORD)
                    return server
            except OSError:
                time.sleep(0.05)  # polling the port until the server answers, bounded by the deadline
        server.stop()
        raise RuntimeError(f"dovecot did not answer on 127.0.0.1:{port} within {timeout}s: {server.log()}")

    def log(self) -> str:
        path = self.root / "dovecot.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def client(self) -> IMAPClient:
        client = IMAPClient("127.0.0.1", port=self.port, ssl=False, timeout=30)
        client.login(self.user, self.password)
        return client

    def append(self, messages: list[bytes], folder: str = "INBOX") -> None:
        """APPEND messages over IMAP, as a mail server delivering them would leave them."""
        with self.client() as client:
            for raw in messages:
                client.append(folder, raw)

    def settings(self, security: str = "none", **extra: object) -> dict[str, object]:
        """The ``imap`` channel settings that reach this server (with TLS: its port, trusting its CA)."""
        values: dict[str, object] = {"type": "imap", "host": "127.0.0.1", "port": self.port, "security": security,
                                     "username": self.user, "password": self.password, "poll_seconds": 1}
        if security != "none":
            assert self.ca_file is not None, "start Dovecot with tls=True"
            values["tls_ca_file"] = str(self.ca_file)
            if security == "ssl":
                values["port"] = self.imaps_port
        return {**values, **extra}

    def logins(self) -> list[str]:
        """The successful IMAP login lines of the log (they say ``TLS`` for an encrypted connection)."""
        return [line for line in self.log_lines() if "imap-login: Info: Login: " in line]

    def log_lines(self) -> list[str]:
        path = self.root / "dovecot.log"
        return path.read_text(errors="replace").splitlines() if path.exists() else []

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout:
            self.process.stdout.close()
        shutil.rmtree(self.root, ignore_errors=True)


def _running(**options: object) -> Iterator[Dovecot]:
    try:
        server = Dovecot.start(**options)  # type: ignore[arg-type]
    except FileNotFoundError as exc:
        pytest.fail(str(exc))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    """A fresh Dovecot with an empty mailbox, stopped at the end of the test."""
    yield from _running()


@pytest.fixture
def dovecot_tls() -> Iterator[Dovecot]:
    """A fresh Dovecot with TLS: ``imaps_port`` (implicit TLS), ``port`` (STARTTLS), its CA in ``ca_file``."""
    yield from _running(tls=True)


OAUTH2_TOKEN = "test-oauth2-access-token"


@pytest.fixture
def token_server() -> Iterator[TokenServer]:
    """An introspection endpoint that knows one valid token, ``OAUTH2_TOKEN``, for ``USER``."""
    server = TokenServer({OAUTH2_TOKEN: USER}).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def dovecot_oauth2(token_server: TokenServer) -> Iterator[Dovecot]:
    """A fresh Dovecot with TLS that also accepts XOAUTH2, validating tokens with ``token_server``."""
    yield from _running(tls=True, oauth2_url=token_server.url)
