"""Email over IMAP: one mailbox folder per channel, polled with a UIDVALIDITY + last-UID cursor.

Order of work per batch, so that a crash anywhere repeats work and never loses it: fetch (``BODY.PEEK[]``, which
leaves ``\\Seen`` alone) -> store the raw bytes in the inbox (commits) -> only then flag or move on the server ->
advance the cursor. A restart fetches again from the cursor; the inbox key (Message-ID + folder, or a hash of the
bytes) makes the repeat a no-op. A changed UIDVALIDITY means the server renumbered the folder: it is scanned again
from the start (or from ``since``), and the same dedupe keeps it safe. Nothing is ever deleted.
"""

from __future__ import annotations

import contextlib
import logging
import random
import ssl
import time
from datetime import UTC, date, datetime
from email.utils import format_datetime, parsedate_to_datetime
from pathlib import Path
from typing import Any, Literal

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError
from pydantic import Field, SecretStr, model_validator

from gateway.mail.mime import provider_id
from gateway.mail.normalize import EmailSettings, email_to_messages
from gateway.mail.smtp import SMTP_FIELD_DESCRIPTION, ImapSmtpSettings, SmtpReplies, imap_sent_copy, is_loopback_host
from gateway.model import ChannelType, Message
from gateway.plugins import CursorStore, InboxSink, PollingChannel, PollingConfig, online_check
from gateway.records import InboxItem, RawRecord

log = logging.getLogger(__name__)
CONTENT_TYPE = "message/rfc822"


class ImapConfig(EmailSettings, PollingConfig):
    """Settings of an ``imap`` channel: one folder of one mailbox (add a channel per mailbox)."""

    type: Literal["imap"] = "imap"
    host: str = Field(min_length=1, description="IMAP server host name.")
    port: int | None = Field(None, ge=1, le=65535, description="Default 993 with ssl, 143 otherwise.")
    security: Literal["ssl", "starttls", "none"] = Field(
        "ssl", description="ssl (implicit TLS), starttls, or none (only allowed for a loopback host).")
    username: str = Field(min_length=1)
    password: SecretStr | None = Field(None, description="Password (or app password); or give oauth2_token.")
    oauth2_token: SecretStr | None = Field(None, description="OAuth2 access token for XOAUTH2 instead of a password.")
    tls_ca_file: str | None = Field(
        None, min_length=1,
        description="PEM file of CA certificates to trust instead of the system trust store (relative to the config "
                    "file), e.g. for a private CA; the host name is always checked against the certificate.")
    folder: str = Field("INBOX", min_length=1, description="Folder to import from.")
    after_import: str = Field(
        "keep", pattern=r"^(keep|seen|move:.+)$",
        description="What to do on the server once a message is stored: keep, seen (flag \\Seen) or move:FOLDER.")
    since: date | None = Field(None, description="Backfill start: older messages are never imported.")
    idle: bool = Field(False, description="Wait with IMAP IDLE between polls where the server supports it.")
    batch_size: int = Field(100, ge=1, le=1000, description="Messages fetched and stored per transaction.")
    timeout_seconds: float = Field(30.0, gt=0, description="Socket timeout for the IMAP connection.")
    max_backoff_seconds: float = Field(900.0, ge=1, description="Longest wait after repeated connection failures.")
    smtp: ImapSmtpSettings | None = Field(None, description=SMTP_FIELD_DESCRIPTION)

    @model_validator(mode="after")
    def _check(self) -> ImapConfig:
        if self.password is None and self.oauth2_token is None:
            raise ValueError("password or oauth2_token is required")
        if self.security == "none" and not is_loopback_host(self.host):
            raise ValueError("security: none sends the password in clear text: only allowed for a loopback host")
        if self.security == "none" and self.tls_ca_file is not None:
            raise ValueError("tls_ca_file needs security: ssl or starttls")
        return self


class ImapChannel(SmtpReplies, PollingChannel):
    """Email imported from an IMAP folder."""

    type_name = "imap"
    Config = ImapConfig
    summary = ("IMAP mailbox polling (imapclient): UIDVALIDITY + UID cursor, nothing flagged or moved before the "
               "inbox commit, backoff, optional IDLE")
    channel_types = (ChannelType.EMAIL,)
    config: ImapConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._failures = 0
        self._next_attempt = 0.0

    @property
    def cursor_name(self) -> str:
        return f"imap:{self.name}"

    # -- connection ----------------------------------------------------------------------------------------------
    def connect(self) -> IMAPClient:
        """A logged-in client (the caller logs out)."""
        cfg = self.config
        context = self.tls_context()
        port = cfg.port or (993 if cfg.security == "ssl" else 143)
        client = IMAPClient(cfg.host, port=port, ssl=cfg.security == "ssl", ssl_context=context,
                            timeout=cfg.timeout_seconds)
        try:
            if cfg.security == "starttls":
                client.starttls(context)
            if cfg.oauth2_token is not None:
                client.oauth2_login(cfg.username, cfg.oauth2_token.get_secret_value())
            else:
                assert cfg.password is not None
                client.login(cfg.username, cfg.password.get_secret_value())
        except BaseException:
            _close(client)
            raise
        return client

    def tls_context(self) -> ssl.SSLContext:
        """Certificate and host name verification on: the system trust store, or ``tls_ca_file`` instead of it."""
        ca_file = self.config.tls_ca_file
        if ca_file is None:
            return ssl.create_default_context()
        path = Path(ca_file)
        if not path.is_absolute():
            path = self.context.base_dir / path
        return ssl.create_default_context(cafile=str(path))

    @online_check
    def check_online(self) -> str:
        """Log in and open the folder read-only (tests the server, TLS, the credentials and the folder)."""
        client = self.connect()
        try:
            info = client.select_folder(self.config.folder, readonly=True)
            folder = f"{self.config.folder}: {info.get(b'EXISTS', 0)} messages, UIDVALIDITY {info.get(b'UIDVALIDITY')}"
        finally:
            _close(client)
        return f"{folder}; {self.check_smtp()}"

    def sent_copy(self, message_id: str) -> bool:
        """Whether the SMTP server's copy of a reply is in ``smtp.sent_folder`` (False when none is set)."""
        if self.config.smtp is None or self.config.smtp.sent_folder is None:
            return False
        return imap_sent_copy(self.connect, _close, self.config.smtp.sent_folder, message_id)

    # -- polling -------------------------------------------------------------------------------------------------
    def poll(self, sink: InboxSink, cursors: CursorStore) -> int:
        """Import everything after the cursor; connection failures back off exponentially (with jitter)."""
        if time.monotonic() < self._next_attempt:
            return 0
        try:
            client = self.connect()
        except (TimeoutError, OSError, IMAPClientError) as exc:
            self._backoff(exc)
            return 0
        try:
            stored = self._catch_up(client, sink, cursors)
            if self.config.idle and b"IDLE" in client.capabilities():
                stored += self._idle(client, sink, cursors)
            self._failures = 0
            self._next_attempt = 0.0
            return stored
        except (TimeoutError, OSError, IMAPClientError) as exc:
            self._backoff(exc)
            return 0
        finally:
            _close(client)

    def _backoff(self, exc: BaseException) -> None:
        self._failures += 1
        delay = min(self.config.max_backoff_seconds, self.config.poll_seconds * 2 ** min(self._failures - 1, 16))
        delay *= random.uniform(0.8, 1.2)
        self._next_attempt = time.monotonic() + delay
        hint = ""
        if isinstance(exc, ssl.SSLCertVerificationError):
            hint = " (the server's certificate is not trusted: tls_ca_file names the CA to trust)"
        log.warning("imap %s: %s: %s%s; retrying in %.0fs (failure %d)", self.name, type(exc).__name__, exc, hint,
                    delay, self._failures)

    def _catch_up(self, client: IMAPClient, sink: InboxSink, cursors: CursorStore) -> int:
        cfg = self.config
        readonly = cfg.after_import == "keep"
        info = client.select_folder(cfg.folder, readonly=readonly)
        uidvalidity = int(info[b"UIDVALIDITY"])
        cursor = cursors.get(self.cursor_name) or {}
        last_uid = int(cursor.get("last_uid", 0))
        if cursor and cursor.get("uidvalidity") != uidvalidity:
            log.warning("imap %s: UIDVALIDITY of %s changed (%s -> %s): scanning the folder again", self.name,
                        cfg.folder, cursor.get("uidvalidity"), uidvalidity)
            last_uid = 0
        criteria: list[Any] = ["UID", f"{last_uid + 1}:*"] if last_uid else ["ALL"]
        if cfg.since is not None:
            criteria += ["SINCE", cfg.since]
        uids = sorted(uid for uid in client.search(criteria) if uid > last_uid)
        stored = 0
        for start in range(0, len(uids), cfg.batch_size):
            chunk = uids[start:start + cfg.batch_size]
            fetched = client.fetch(chunk, ["BODY.PEEK[]", "INTERNALDATE"])
            items: list[InboxItem] = []
            done: list[int] = []
            for uid in chunk:
                data = fetched.get(uid)
                if data is None or b"BODY[]" not in data:
                    break  # the server did not return it (expunged meanwhile?): the cursor stops before it
                raw = bytes(data[b"BODY[]"])
                items.append(InboxItem(provider_id(raw, cfg.folder), raw,
                                       _content_type(data.get(b"INTERNALDATE"), uid, uidvalidity, cfg.folder)))
                done.append(uid)
            if items:
                stored += sink.store(items)  # returns after the commit: only now may the server side change
                self._after_import(client, done)
                cursors.put(self.cursor_name, {"uidvalidity": uidvalidity, "last_uid": done[-1],
                                               "folder": cfg.folder})
            if len(done) < len(chunk):
                # not returned (expunged meanwhile, or a server fault): a later search finds it again if it exists
                log.warning("imap %s: UID %s was not returned; the next poll looks again", self.name, chunk[len(done)])
                return stored
        if cursor.get("uidvalidity") != uidvalidity and not uids:
            cursors.put(self.cursor_name, {"uidvalidity": uidvalidity, "last_uid": last_uid, "folder": cfg.folder})
        return stored

    def _after_import(self, client: IMAPClient, uids: list[int]) -> None:
        action = self.config.after_import
        if action == "seen":
            client.add_flags(uids, [b"\\Seen"], silent=True)
        elif action.startswith("move:"):
            target = action.split(":", 1)[1]
            if b"MOVE" in client.capabilities():
                client.move(uids, target)
            else:  # RFC 6851 MOVE missing: copy, then mark deleted and expunge only those UIDs
                client.copy(uids, target)
                client.delete_messages(uids, silent=True)
                client.uid_expunge(uids)

    def _idle(self, client: IMAPClient, sink: InboxSink, cursors: CursorStore) -> int:
        """Wait for new mail with IDLE until the next scheduled poll is near, importing as it arrives."""
        stored = 0
        deadline = time.monotonic() + self.config.poll_seconds * 0.9
        while (left := deadline - time.monotonic()) > 1:
            client.idle()
            try:
                responses = client.idle_check(timeout=min(left, 300))
            finally:
                client.idle_done()
            if any(len(r) > 1 and r[1] == b"EXISTS" for r in responses):
                stored += self._catch_up(client, sink, cursors)
        return stored

    # -- normalisation -------------------------------------------------------------------------------------------
    def normalize(self, record: RawRecord) -> list[Message]:
        params = _params(record.content_type)
        received_at = record.received_at
        if params.get("internaldate"):
            with contextlib.suppress(TypeError, ValueError):
                received_at = parsedate_to_datetime(params["internaldate"])
        extras = {"mailbox": self.config.username, "folder": params.get("folder", self.config.folder)}
        if params.get("uid"):
            extras["uid"] = int(params["uid"])
        return email_to_messages(record.body, record, connector_type=self.type_name, settings=self.config,
                                 attachments=self.context.attachments, received_at=received_at, extras=extras)


def _content_type(internaldate: datetime | None, uid: int, uidvalidity: int, folder: str) -> str:
    """The raw bytes stay exactly as fetched; what IMAP says about them travels as content-type parameters."""
    value = f"{CONTENT_TYPE}; uid={uid}; uidvalidity={uidvalidity}"
    if internaldate is not None:
        when = internaldate if internaldate.tzinfo else internaldate.astimezone()  # imapclient: local time
        value += f'; internaldate="{format_datetime(when.astimezone(UTC))}"'
    folder_param = folder.replace('"', "")
    return (value + f'; folder="{folder_param}"')[:255]


def _params(content_type: str) -> dict[str, str]:
    out = {}
    for piece in content_type.split(";")[1:]:
        key, _, value = piece.strip().partition("=")
        out[key.lower()] = value.strip('"')
    return out


def _close(client: IMAPClient) -> None:
    try:
        client.logout()
    except Exception:  # the connection is already gone: nothing to tidy
        with contextlib.suppress(Exception):
            client.shutdown()
