"""What the inbox stores and hands back: provider items in, stored rows out. No web framework in here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

REQUEST_KIND = "request"  # a whole authenticated request the ingress could not split: the pipeline splits it again


@dataclass(frozen=True)
class InboxItem:
    """One unit the ingress stores: a provider message id and the raw bytes to normalise later.

    Most providers send one message per request, and ``body`` is then the request body itself. Providers that
    batch (Meta) yield one item per message so each is stored, and deduplicated, by its own id.
    """

    provider_id: str
    body: bytes
    content_type: str
    kind: str = "message"


@dataclass(frozen=True)
class RawRecord:
    """A stored inbox row handed to a connector's ``normalize``."""

    inbox_id: int
    connector: str
    provider_id: str
    kind: str
    body: bytes
    content_type: str
    headers: Mapping[str, str]
    public_url: str
    received_at: datetime
