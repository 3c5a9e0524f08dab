"""A real Dovecot IMAP server for the tests: own config in a temporary folder, loopback port, plain auth, no TLS.

Dovecot comes from Debian's ``dovecot-imapd`` package (``scripts/test-services.sh`` installs it). It refuses to run
login processes as root, so when the tests run as root its login and internal processes use the ``dovenull`` and
``dovecot`` users the package creates, and the mail itself is owned by ``dovecot`` (``first_valid_uid`` is set low
enough to allow it). A missing Dovecot fails the tests: it is never a reason to skip them.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from imapclient import IMAPClient

USER = "support@example.test"
PASSWORD = "test-imap-password"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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

    @classmethod
    def start(cls, timeout: float = 20.0) -> Dovecot:
        binary = dovecot_binary()
        root = Path(tempfile.mkdtemp(prefix="gw-dovecot-"))
        root.chmod(0o755)  # the login and mail processes run as other users and must reach their folders
        port = free_port()
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
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
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
  args = scheme=PLAIN username_format=%u {root}/passwd
}}
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
    port = 0
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
        server = cls(root, port, process)
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

    def settings(self, **extra: object) -> dict[str, object]:
        """The ``imap`` channel settings that reach this server."""
        return {"type": "imap", "host": "127.0.0.1", "port": self.port, "security": "none",
                "username": self.user, "password": self.password, "poll_seconds": 1, **extra}

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


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    """A fresh Dovecot with an empty mailbox, stopped at the end of the test."""
    try:
        server = Dovecot.start()
    except FileNotFoundError as exc:
        pytest.fail(str(exc))
    try:
        yield server
    finally:
        server.stop()
