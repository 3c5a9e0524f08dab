"""Connector plugin contract and registry.

Connector types are found through the ``gateway.connectors`` entry-point group; the built-in ones register the
same way (see ``pyproject.toml``). A connector class carries its type name, its role (channel or crm) and a typed
config model whose unknown keys are refused and whose secrets are ``SecretStr`` (masked whenever printed).
"""

from __future__ import annotations

import abc
import functools
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, TypeVar

import requests
from pydantic import BaseModel, ConfigDict, SecretStr

from gateway.attachments import AttachmentStore
from gateway.errors import INTERNAL, DeliveryError, OnlineCheckFailed, as_delivery_error, failure_reason
from gateway.model import ChannelType, Message, RawRef, StatusUpdate
from gateway.ratelimit import MemoryRateLimiter, RateLimiter
from gateway.webhooks import HookRequest, HookResponse, InboxItem, RawRecord

ENTRY_POINT_GROUP = "gateway.connectors"
log = logging.getLogger(__name__)


class ConnectorConfig(BaseModel):
    """Base of every connector's settings: unknown keys are an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str


@dataclass
class ConnectorContext:
    """What the gateway hands a connector: outbound HTTP goes through ``http`` so tests can mock it.

    Relative paths in a connector's settings are taken relative to ``base_dir``, the config file's folder.
    """

    http: requests.Session
    public_url: str = "http://127.0.0.1:8080"
    data_dir: Path = Path("var")
    base_dir: Path = Path(".")
    default_region: str = "US"
    attachments: AttachmentStore = field(default_factory=lambda: AttachmentStore(Path("var/attachments")))
    limiter: Callable[[str, float], RateLimiter] = lambda _name, per_minute: MemoryRateLimiter(per_minute)


class Connector(abc.ABC):
    type_name: ClassVar[str]
    role: ClassVar[Literal["channel", "crm"]]
    Config: ClassVar[type[ConnectorConfig]]
    summary: ClassVar[str] = ""

    def __init__(self, name: str, config: ConnectorConfig, context: ConnectorContext) -> None:
        self.name = name
        self.config = config
        self.context = context

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} {self.config!r}>"

    def check_online(self) -> str:
        """Test credentials and reachability; return a one-line description.

        On failure raise ``OnlineCheckFailed`` with a one-line reason naming no secret. Decorating an override with
        ``online_check`` turns whatever else it raises into that (the CLI does the same for every connector).
        """
        return "no online check for this connector type"


C = TypeVar("C", bound=Connector)


def online_failure(connector: Connector, exc: BaseException) -> OnlineCheckFailed:
    """``exc`` from ``connector``'s online check as ``OnlineCheckFailed``: one line, the connector's secrets masked."""
    reason = failure_reason(exc)
    for secret in sorted(secret_values(connector.config), key=len, reverse=True):
        reason = reason.replace(secret, "***")
    return OnlineCheckFailed(reason)


def online_check(method: Callable[[C], str]) -> Callable[[C], str]:
    """Decorator for ``check_online``: any failure leaves as ``OnlineCheckFailed`` (see ``online_failure``)."""

    @functools.wraps(method)
    def checked(connector: C) -> str:
        try:
            return method(connector)
        except Exception as exc:
            raise online_failure(connector, exc) from None

    return checked


class ChannelConnector(Connector):
    """An inbound channel: verifies webhooks, splits them into inbox items, and normalises stored items.

    ``verify`` and ``split`` run in the web process before the 2xx; ``normalize`` runs in a worker and must be
    pure: raw record in, messages out (none for bot echoes, our own replies and other non-messages).
    """

    role = "channel"
    channel_types: ClassVar[tuple[ChannelType, ...]] = ()
    max_body_bytes: ClassVar[int] = 1024 * 1024
    accepts_webhooks: ClassVar[bool] = True

    def handshake(self, request: HookRequest) -> HookResponse | None:
        """Answer a provider's subscription handshake (GET challenge, url_verification); None if not one."""
        return None

    @abc.abstractmethod
    def verify(self, request: HookRequest) -> None:
        """Raise ``SignatureInvalid`` unless the request is authentic and fresh. Runs before any parsing."""

    @abc.abstractmethod
    def split(self, request: HookRequest) -> list[InboxItem]:
        """The items to store, each with its provider id; raise ``MalformedRequest`` for bad bodies."""

    def acknowledge(self, request: HookRequest, items: list[InboxItem]) -> HookResponse:
        return HookResponse(200, b"")

    @abc.abstractmethod
    def normalize(self, record: RawRecord) -> list[Message]:
        """Turn one stored item into canonical messages."""

    def statuses(self, record: RawRecord) -> list[StatusUpdate]:
        """For items stored with kind "status": the provider's reports on messages the business sent."""
        return []

    def enrich(self, message: Message) -> Message:
        """Network work after ``normalize`` (fetch media into the attachment store, look up a profile).

        Runs in the pipeline worker outside any transaction; an exception retries the inbox row later.
        """
        return message

    def sample_request(self, *, sender: str, text: str, recipient: str | None, public_url: str) -> HookRequest:
        """A correctly signed request as the provider would send it (used by ``gateway simulate``)."""
        raise NotImplementedError(f"{self.type_name} cannot simulate requests")

    def message(self, record: RawRecord, **fields: Any) -> Message:
        """A message normalised from ``record``: see ``inbound_message``."""
        return inbound_message(record, connector_type=self.type_name, **fields)


def inbound_message(record: RawRecord, *, connector_type: str, **fields: Any) -> Message:
    """A canonical message from one stored inbox row, with what the row says filled in.

    ``connector`` and ``raw`` (the pointer back to the row) come from ``record``, and so does ``received_at`` unless
    given; ``channel``, ``provider_message_id``, ``sender``, ``sent_at`` and the rest are the ``fields``.
    """
    fields.setdefault("received_at", record.received_at)
    return Message(connector=record.connector, connector_type=connector_type,
                   raw=RawRef(inbox_id=record.inbox_id, connector=record.connector), **fields)


class InboxSink(Protocol):
    """Where a polling channel stores what it fetched; ``store`` returns after the commit."""

    def store(self, items: list[InboxItem], headers: dict[str, str] | None = None) -> int: ...


class CursorStore(Protocol):
    def get(self, name: str) -> dict[str, Any] | None: ...

    def put(self, name: str, value: dict[str, Any]) -> None: ...


class PollingChannel(ChannelConnector):
    """A channel the gateway fetches from (IMAP) instead of receiving webhooks.

    The worker calls ``poll`` every ``poll_seconds`` while holding a cross-process lock for this channel, so one
    poller runs per channel however many workers there are.
    """

    accepts_webhooks = False

    @property
    def poll_seconds(self) -> float:
        return float(getattr(self.config, "poll_seconds", 60))

    @abc.abstractmethod
    def poll(self, sink: InboxSink, cursors: CursorStore) -> int:
        """Fetch what is new since the cursor, store it, then advance the cursor; return how many were stored."""

    def verify(self, request: HookRequest) -> None:  # pragma: no cover - never reached: no webhooks
        raise NotImplementedError

    def split(self, request: HookRequest) -> list[InboxItem]:  # pragma: no cover
        raise NotImplementedError


@dataclass(frozen=True)
class CustomerView:
    id: str
    display_name: str | None
    identifiers: tuple[tuple[str, str], ...]

    def first(self, kind: str) -> str | None:
        return next((value for k, value in self.identifiers if k == kind), None)


@dataclass(frozen=True)
class ConversationView:
    id: str
    channel: str
    opened_by_message: bool
    previous_id: str | None = None


@dataclass(frozen=True)
class DeliveryItem:
    """One outbox row as a CRM connector sees it."""

    outbox_id: int
    attempt: int
    idempotency_key: str
    message: Message
    customer: CustomerView
    conversation: ConversationView
    fields: Mapping[str, Any]


@dataclass(frozen=True)
class DeliveryResult:
    operation: str
    remote_id: str | None = None
    detail: str = ""
    calls: int = 1


class LinkStore(Protocol):
    """Durable map of local ids to CRM record ids; each write commits at once."""

    def get(self, entity: str, local_id: str) -> tuple[str, dict[str, Any]] | None: ...

    def put(self, entity: str, local_id: str, remote_id: str, data: dict[str, Any] | None = None) -> None: ...


class CrmConnector(Connector):
    """A CRM or helpdesk that receives contacts, tickets and comments."""

    role = "crm"
    default_mapping: ClassVar[str | None] = None

    @abc.abstractmethod
    def deliver(self, item: DeliveryItem, links: LinkStore) -> DeliveryResult:
        """Write one message; raise ``RetryableError`` or ``PermanentError`` on failure.

        Must be idempotent: the same item may be delivered again after a crash (``item.attempt`` > 1).
        """

    def deliver_groups(self, groups: list[list[DeliveryItem]],
                       links: LinkStore) -> dict[int, DeliveryResult | DeliveryError]:
        """Write several conversations' pending messages; outcome per outbox id (missing: not attempted).

        Each group holds one conversation's messages in order; a failure stops the rest of its group. This default
        writes one message at a time; connectors override it to coalesce a group and batch many groups.
        """
        outcomes: dict[int, DeliveryResult | DeliveryError] = {}
        for group in groups:
            for item in group:
                try:
                    outcomes[item.outbox_id] = self.deliver(item, links)
                except Exception as exc:  # this conversation waits, the others go on
                    error = as_delivery_error(exc)
                    if error.code == INTERNAL:
                        log.exception("%s: unexpected error delivering outbox row %s", self.name, item.outbox_id)
                    outcomes[item.outbox_id] = error
                    break
        return outcomes


class DuplicateConnectorType(Exception):
    pass


class Registry:
    """Installed connector types by name."""

    def __init__(self, classes: Iterable[tuple[str, type[Connector]]] = ()) -> None:
        self._types: dict[str, type[Connector]] = {}
        for name, cls in classes:
            self.add(name, cls)

    def add(self, name: str, cls: type[Connector]) -> None:
        existing = self._types.get(name)
        if existing is not None and existing is not cls:
            raise DuplicateConnectorType(
                f"connector type {name!r} is registered twice: {existing.__module__} and {cls.__module__}")
        self._types[name] = cls

    def get(self, name: str) -> type[Connector] | None:
        return self._types.get(name)

    def names(self, role: str | None = None) -> list[str]:
        return sorted(n for n, c in self._types.items() if role is None or c.role == role)

    def items(self) -> list[tuple[str, type[Connector]]]:
        return sorted(self._types.items())

    @classmethod
    def from_entry_points(cls) -> Registry:
        registry = cls()
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            registry.add(ep.name, ep.load())
        return registry


def secret_fields(model: type[BaseModel]) -> list[str]:
    return [name for name, f in model.model_fields.items() if f.annotation in (SecretStr, SecretStr | None)]


def secret_values(config: BaseModel) -> list[str]:
    """The plain values of every secret in ``config``, those in lists and mappings (per-workspace tokens) too."""
    found: list[str] = []

    def collect(value: object) -> None:
        if isinstance(value, SecretStr):
            if value.get_secret_value():
                found.append(value.get_secret_value())
        elif isinstance(value, Mapping):
            for item in value.values():
                collect(item)
        elif isinstance(value, list | tuple):
            for item in value:
                collect(item)
        elif isinstance(value, BaseModel):
            for name in type(value).model_fields:
                collect(getattr(value, name))

    collect(config)
    return found
