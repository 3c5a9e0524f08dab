"""Attachment bytes: stored content-addressed in a local folder, never inlined into database rows."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeAlias
from urllib.parse import urljoin, urlparse

import requests
from requests.auth import AuthBase

from gateway.model import Attachment, Message
from gateway.safehttp import Download, MediaPolicy, MediaRefused, MediaTimeout, media_transport

__all__ = ["AttachmentStore", "AttachmentTooLarge", "MediaHook", "MediaPolicy", "MediaRefused", "MediaRequest",
           "MediaTimeout", "download", "failure_reason"]

SCHEME = "store:sha256/"
GENERIC_TYPE = "application/octet-stream"
MAX_REDIRECTS = 5
Auth: TypeAlias = AuthBase | tuple[str, str] | None


class AttachmentTooLarge(ValueError):
    """The bytes are over the size limit."""


@dataclass(frozen=True)
class MediaRequest:
    """How to fetch one attachment: the URL of its bytes and the credentials for that URL's host.

    ``check`` sees the answer's content type before the body is read and raises when it is not the file.
    """

    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    auth: Auth = None
    check: Callable[[str], None] | None = None


MediaHook: TypeAlias = Callable[[Attachment], MediaRequest]
"""A connector's part of a media download: the request for one attachment (see ``AttachmentStore.fetch_into``)."""


class AttachmentStore:
    """Keeps each distinct content once, under ``root/ab/cd/<sha256>``; ``policy`` rules its downloads."""

    def __init__(self, root: Path, max_bytes: int = 25 * 1024 * 1024, policy: MediaPolicy | None = None) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.policy = policy or MediaPolicy()

    def path_for(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def put(self, data: bytes, filename: str, content_type: str, *, inline: bool = False) -> Attachment:
        if len(data) > self.max_bytes:
            raise AttachmentTooLarge(f"{filename}: {len(data)} bytes is over the {self.max_bytes}-byte limit")
        digest = hashlib.sha256(data).hexdigest()
        path = self.path_for(digest)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(handle.name, path)
        return Attachment(filename=filename, content_type=content_type, size=len(data), sha256=digest,
                          location=SCHEME + digest, inline=inline)

    def fetch_into(self, session: requests.Session, message: Message, *, allowed_hosts: tuple[str, ...],
                   max_bytes: int, prepare: MediaHook | None = None, redirect_hosts: tuple[str, ...] = ()) -> Message:
        """``message`` with each attachment not stored yet downloaded and stored here.

        ``prepare`` is the connector's part: for an attachment, the URL its bytes are at and the credentials to send
        (it may ask the provider first, as Meta's Graph API wants); without it the attachment's location is fetched
        as it is. Every download then follows the same rules (``download``): allowed hosts, addresses and redirects,
        a deadline, a size limit.
        A provider's generic ``application/octet-stream`` gives way to the type the download answered with.
        """
        if all(a.location.startswith(SCHEME) for a in message.attachments):
            return message
        stored = []
        for attachment in message.attachments:
            if not attachment.location.startswith(SCHEME):
                media = prepare(attachment) if prepare is not None else MediaRequest(attachment.location)
                data, answered_type = download(session, media.url, allowed_hosts=allowed_hosts, max_bytes=max_bytes,
                                               redirect_hosts=redirect_hosts, headers=media.headers, auth=media.auth,
                                               check=media.check, policy=self.policy)
                content_type = attachment.content_type
                if content_type in ("", GENERIC_TYPE):
                    content_type = answered_type
                attachment = self.put(data, attachment.filename, content_type)
            stored.append(attachment)
        return message.model_copy(update={"attachments": tuple(stored)})

    def read(self, location: str) -> bytes:
        if not location.startswith(SCHEME):
            raise ValueError(f"not a stored attachment: {location!r}")
        return self.path_for(location[len(SCHEME):]).read_bytes()


def download(session: requests.Session, url: str, *, allowed_hosts: tuple[str, ...], max_bytes: int,
             redirect_hosts: tuple[str, ...] = (), headers: Mapping[str, str] | None = None, auth: Auth = None,
             check: Callable[[str], None] | None = None, policy: MediaPolicy | None = None) -> tuple[bytes, str]:
    """Fetch a provider's media URL; returns (bytes, content type).

    The rules every media download follows:

    - ``url`` is https on one of ``allowed_hosts``; an entry matches a host exactly or as a parent domain
      (``twilio.com`` allows api.twilio.com);
    - each redirect leads over https to one of ``allowed_hosts`` or ``redirect_hosts`` (a provider's CDN), at most
      MAX_REDIRECTS of them; ``headers`` and ``auth`` (the credentials) are sent to ``url``'s host only and dropped
      once a redirect leaves it;
    - every host, the first and each redirect's, resolves only to public addresses, and the connection is made to
      the address checked (``gateway.safehttp``); ``policy`` may allow other networks, and plain http to them;
    - the whole download, redirects included, ends within ``policy.deadline_seconds`` (``MediaTimeout``);
    - a body over ``max_bytes``, declared or received, is refused (``AttachmentTooLarge``);
    - ``check``, if given, sees the answer's content type before the body is read and raises if it is not the file
      (a login page).
    """
    policy = policy or MediaPolicy()
    origin = _host(url)
    hosts, what = allowed_hosts, "fetch media from"
    with media_transport(session, policy) as transport:
        for _ in range(MAX_REDIRECTS + 1):
            host = _host(url)
            if not policy.allows_scheme(urlparse(url).scheme) or not any(
                    host == h or host.endswith("." + h) for h in hosts):
                schemes = "http(s)" if policy.allow_http else "https"
                raise MediaRefused(f"refusing to {what} {host or url!r}: not {schemes} on one of {', '.join(hosts)}")
            if host != origin:
                headers, auth = None, None
            with transport.get(url, headers, auth) as response:
                if response.is_redirect:
                    url = urljoin(url, response.headers["Location"])
                    hosts, what = allowed_hosts + redirect_hosts, f"follow a redirect from {host} to"
                    continue
                response.raise_for_status()
                content_type = response.headers.get("Content-Type", GENERIC_TYPE).split(";")[0].strip()
                if check is not None:
                    check(content_type)
                with transport.deadline(host):
                    return _read(response, max_bytes, transport.download, host), content_type
    raise MediaRefused(f"refusing to follow more than {MAX_REDIRECTS} redirects for media from {origin}")


def _host(url: str) -> str:
    return (urlparse(url).hostname or "").lower()


def _read(response: requests.Response, max_bytes: int, download: Download, host: str) -> bytes:
    declared = response.headers.get("Content-Length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise AttachmentTooLarge(f"media is {declared} bytes, over the {max_bytes}-byte limit")
    chunks, total = [], 0
    for chunk in response.iter_content(64 * 1024):
        if download.remaining() <= 0:
            raise download.timed_out(host)
        total += len(chunk)
        if total > max_bytes:
            raise AttachmentTooLarge(f"media is over the {max_bytes}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def failure_reason(exc: BaseException) -> str:
    """Why a media download failed, in words for an agent and never with a URL (a media URL can carry a signature).

    The gateway's own refusals name hosts only; a library's error message quotes the URL, so only its kind is told.
    """
    if isinstance(exc, MediaRefused | AttachmentTooLarge):
        return str(exc)
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        host = _host(exc.response.url) or "the media host"
        return f"{host} answered HTTP {exc.response.status_code} {exc.response.reason or ''}".rstrip()
    if isinstance(exc, requests.Timeout):
        return "the media host did not answer in time"
    if isinstance(exc, requests.ConnectionError):
        return "the media host could not be reached"
    return f"the download failed ({type(exc).__name__})"
