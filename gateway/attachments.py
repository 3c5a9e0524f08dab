"""Attachment bytes: stored content-addressed in a local folder, never inlined into database rows."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from urllib.parse import urlparse

import requests

from gateway.model import Attachment, Message

SCHEME = "store:sha256/"


class AttachmentTooLarge(ValueError):
    pass


class AttachmentStore:
    """Keeps each distinct content once, under ``root/ab/cd/<sha256>``."""

    def __init__(self, root: Path, max_bytes: int = 25 * 1024 * 1024) -> None:
        self.root = root
        self.max_bytes = max_bytes

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
                   max_bytes: int, **kwargs: object) -> Message:
        """``message`` with each attachment not stored yet downloaded (``download``: allowed hosts, size limit,
        ``kwargs`` such as ``auth`` passed on) and stored here."""
        if all(a.location.startswith(SCHEME) for a in message.attachments):
            return message
        stored = []
        for attachment in message.attachments:
            if not attachment.location.startswith(SCHEME):
                data, content_type = download(session, attachment.location, allowed_hosts=allowed_hosts,
                                              max_bytes=max_bytes, **kwargs)
                attachment = self.put(data, attachment.filename, attachment.content_type or content_type)
            stored.append(attachment)
        return message.model_copy(update={"attachments": tuple(stored)})

    def read(self, location: str) -> bytes:
        if not location.startswith(SCHEME):
            raise ValueError(f"not a stored attachment: {location!r}")
        return self.path_for(location[len(SCHEME):]).read_bytes()


def download(session: requests.Session, url: str, *, allowed_hosts: tuple[str, ...], max_bytes: int,
             timeout: float = 20.0, **kwargs: object) -> tuple[bytes, str]:
    """Fetch a provider's media URL, refusing other hosts and bodies over ``max_bytes``; returns (bytes, type).

    ``allowed_hosts`` entries match a host exactly or as a parent domain (``twilio.com`` allows api.twilio.com).
    """
    host = (urlparse(url).hostname or "").lower()
    if urlparse(url).scheme != "https" or not any(host == h or host.endswith("." + h) for h in allowed_hosts):
        raise ValueError(f"refusing to fetch media from {host or url!r}: not one of {', '.join(allowed_hosts)}")
    with session.get(url, stream=True, timeout=timeout, **kwargs) as response:  # type: ignore[arg-type]
        response.raise_for_status()
        declared = response.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > max_bytes:
            raise AttachmentTooLarge(f"media is {declared} bytes, over the {max_bytes}-byte limit")
        chunks, total = [], 0
        for chunk in response.iter_content(64 * 1024):
            total += len(chunk)
            if total > max_bytes:
                raise AttachmentTooLarge(f"media is over the {max_bytes}-byte limit")
            chunks.append(chunk)
        content_type = response.headers.get("Content-Type", "application/octet-stream").split(";")[0].strip()
        return b"".join(chunks), content_type
