"""Connector plugin contract and registry.

Connector types are found through the ``gateway.connectors`` entry-point group; the built-in ones register the
same way (see ``pyproject.toml``). A connector class carries its type name, its role (channel or crm) and a typed
config model whose unknown keys are refused and whose secrets are ``SecretStr`` (masked whenever printed).
"""

from __future__ import annotations

import abc
import functools
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, TypeVar

import requests
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from gateway.attachments import AttachmentStore
from gateway.crmfields import FieldCatalog
from gateway.errors import INTERNAL, DeliveryError, OnlineCheckFailed, as_delivery_error, failure_reason
from gateway.model import Attachment, ChannelType, Message, RawRef, StatusUpdate
from gateway.ratelimit import MemoryRateLimiter, RateLimiter
from gateway.records import InboxItem, RawRecord
from gateway.replay import MemoryUsedTokens, UsedTokens
from gateway.webhooks import HookRequest, HookResponse

ENTRY_POINT_GROUP = "gateway.connectors"
log = logging.getLogger(__name__)


class ConnectorConfig(BaseModel):
    """Base of every connector's settings: unknown keys are an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str


class CrmConfig(ConnectorConfig):
    """Base of every CRM's settings: the mapping file that turns messages into its fields."""

    mapping: str | None = Field(
        None, description="Mapping file (relative to the config file); default: the connector's shipped mapping.")


class PollingConfig(ConnectorConfig):
    """Base of a polled channel's settings."""

    poll_seconds: float = Field(60.0, ge=1, description="How often to look for new items.")


@dataclass
class ConnectorContext:
    """What the gateway hands a connector: outbound HTTP goes through ``http`` so tests can mock it.

    ``limiter`` gives request budgets and ``used_tokens`` remembers single-use webhook tokens: per process here,
    shared through the database when the gateway builds the context.

    Relative paths in a connector's settings are taken relative to ``base_dir``, the config file's folder.
    """

    http: requests.Session
    public_url: str = "http://127.0.0.1:8080"
    data_dir: Path = Path("var")
    base_dir: Path = Path(".")
    default_region: str = "US"
    attachments: AttachmentStore = field(default_factory=lambda: AttachmentStore(Path("var/attachments")))
    limiter: Callable[[str, float], RateLimiter] = lambda _name, per_minute: MemoryRateLimiter(per_minute)
    used_tokens: UsedTokens = field(default_factory=MemoryUsedTokens)


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
    """A channel's normaliser: turns stored inbox items into canonical messages.

    How items reach the inbox is a second role: a ``WebhookChannel`` receives them, a ``PollingChannel`` fetches
    them. ``normalize`` runs in a worker and must be pure: raw record in, messages out (none for bot echoes, our own
    replies and other non-messages).
    """

    role = "channel"
    channel_types: ClassVar[tuple[ChannelType, ...]] = ()

    @abc.abstractmethod
    def normalize(self, record: RawRecord) -> list[Message]:
        """Turn one stored item into canonical messages."""

    def statuses(self, record: RawRecord) -> list[StatusUpdate]:
        """For items stored with kind "status": the provider's reports on messages the business sent."""
        return []

    enriches_only_media = False
    """True when ``enrich`` only downloads media: a message without media then skips the enricher's threads."""

    def enrich(self, message: Message) -> Message:
        """Network work after ``normalize`` (fetch media into the attachment store, look up a profile).

        Runs in the pipeline worker outside any transaction; an exception retries the inbox row later.
        """
        return message

    def message(self, record: RawRecord, **fields: Any) -> Message:
        """A message normalised from ``record``: see ``inbound_message``."""
        return inbound_message(record, connector_type=self.type_name, **fields)


class WebhookChannel(ChannelConnector):
    """A channel whose provider calls the gateway: ``verify`` and ``split`` run in the web process before the 2xx."""

    max_body_bytes: ClassVar[int] = 1024 * 1024

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

    def sample_request(self, *, sender: str, text: str, recipient: str | None, public_url: str) -> HookRequest:
        """A correctly signed request as the provider would send it (used by ``gateway simulate``)."""
        raise NotImplementedError(f"{self.type_name} cannot simulate requests")


def inbound_message(record: RawRecord, *, connector_type: str, **fields: Any) -> Message:
    """A canonical message from one stored inbox row, with what the row says filled in.

    ``connector`` and ``raw`` (the pointer back to the row) come from ``record``, and so does ``received_at`` unless
    given; ``channel``, ``provider_message_id``, ``sender``, ``sent_at`` and the rest are the ``fields``.
    """
    fields.setdefault("received_at", record.received_at)
    return Message(connector=record.connector, connector_type=connector_type,
                   raw=RawRef(inbox_id=record.inbox_id, connector=record.connector), **fields)


CRM_HOOK_MAX_BYTES = 256 * 1024  # a CRM's reply event (POST /crm-hooks/NAME)


def largest_body(channel_classes: Iterable[type]) -> int:
    """The largest body any endpoint takes: the server reads no more of one request, readiness wants twice it free."""
    webhook_limits = (cls.max_body_bytes for cls in channel_classes if issubclass(cls, WebhookChannel))
    return max([CRM_HOOK_MAX_BYTES, *webhook_limits])


class InboxSink(Protocol):
    """Where a polling channel stores what it fetched; ``store`` returns after the commit."""

    def store(self, items: list[InboxItem], headers: dict[str, str] | None = None) -> int: ...


class CursorStore(Protocol):
    def get(self, name: str) -> dict[str, Any] | None: ...

    def put(self, name: str, value: dict[str, Any]) -> None: ...


class PollingChannel(ChannelConnector):
    """A channel the gateway fetches from (IMAP) instead of receiving webhooks.

    The worker calls ``poll`` every ``config.poll_seconds`` while holding a cross-process lock for this channel, so
    one poller runs per channel however many workers there are.
    """

    config: PollingConfig

    @property
    def poll_seconds(self) -> float:
        return self.config.poll_seconds

    @abc.abstractmethod
    def poll(self, sink: InboxSink, cursors: CursorStore) -> int:
        """Fetch what is new since the cursor, store it, then advance the cursor; return how many were stored."""


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
    certain_failures: int = 0
    """Earlier attempts known to have written nothing (a 429, a 503, a refusal): see ``uncertain``."""

    @property
    def uncertain(self) -> bool:
        """Whether an earlier attempt may have written this message, so the CRM must be asked before writing again.

        Every earlier attempt counts unless its failure was recorded as certain: one that crashed or timed out
        recorded nothing, or recorded an uncertain outcome.
        """
        return self.attempt - 1 > self.certain_failures


@dataclass(frozen=True)
class DeliveryResult:
    operation: str
    remote_id: str | None = None
    detail: str = ""
    calls: int = 1


class LinkStore(Protocol):
    """Durable map of local ids to CRM record ids; each write commits at once.

    ``get_many`` and ``put_many`` do the same for a batch (one read, one commit): what a connector that writes a
    batch at once uses. ``find_records`` answers from the CRM's synced directory: the records that already hold an
    identifier (none when the CRM has no directory sync). ``find_local`` is the reverse map: the local id linked to a
    CRM record.
    """

    def get(self, entity: str, local_id: str) -> tuple[str, dict[str, Any]] | None: ...

    def put(self, entity: str, local_id: str, remote_id: str, data: dict[str, Any] | None = None) -> None: ...

    def get_many(self, entity: str, local_ids: Sequence[str]) -> dict[str, tuple[str, dict[str, Any]]]:
        """The links of those local ids that have one."""
        ...

    def put_many(self, entity: str, links: Mapping[str, str]) -> None:
        """Link each local id to its CRM id (with no data), all in one commit."""
        ...

    def find_records(self, kind: str, value: str) -> list[str]: ...

    def find_local(self, entity: str, remote_id: str) -> str | None: ...


class CrmConnector(Connector):
    """A CRM or helpdesk that receives contacts, tickets and comments."""

    role = "crm"
    default_mapping: ClassVar[str | None] = None

    @classmethod
    def mapping_fields(cls, config: ConnectorConfig | None) -> FieldCatalog | None:
        """The field names this connector reads from a mapping; None when it writes every field as it is.

        ``config`` is None where no config is at hand (``gateway mapping test``): the defaults then apply.
        """
        return None

    def describe_fields(self) -> FieldCatalog | None:
        """The field names as the CRM itself describes them (``gateway check --online``); None: ``mapping_fields``."""
        return None

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


# -- optional abilities: declared by subclassing, found by the core with isinstance ----------------------------------

class DirectorySync(abc.ABC):
    """A CRM whose existing contacts are synced into the gateway, so they are adopted instead of duplicated."""

    @property
    @abc.abstractmethod
    def directory_sync_seconds(self) -> float:
        """How often the sync runs; 0 turns it off."""

    @abc.abstractmethod
    def sync_directory(self, directory: Any, cursors: CursorStore) -> int:
        """Bring ``directory`` (a ``gateway.directory.CrmDirectory``) up to date; return how many records changed."""


class ContactMerge(abc.ABC):
    """A CRM that can merge two of its contacts (used when an admin merges customers and asks for it)."""

    @abc.abstractmethod
    def merge_contacts(self, survivor_remote_id: str, absorbed_remote_id: str) -> None:
        """Merge the absorbed record into the survivor, in the CRM. Cannot be undone there."""


class ContactErasure(abc.ABC):
    """A CRM that can delete a person's contact record for good (``gateway customers forget --crm``)."""

    @abc.abstractmethod
    def erase_contact(self, remote_id: str) -> str:
        """Delete the record (a record already gone counts as deleted); one line saying what was done.

        Raise ``DeliveryError`` when it could not be done: the gateway then erases nothing, so it can be tried again.
        """


@dataclass(frozen=True)
class AgentReply:
    """A public reply an agent wrote in the CRM, to be carried to the customer's channel."""

    reply_id: str  # the CRM's own id for it (a Zendesk comment id): the same reply is sent once, by any path
    conversation_id: str
    text: str
    created_at: datetime
    author: str | None = None
    author_id: str | None = None
    attachments: tuple[Attachment, ...] = ()


class AgentReplies(abc.ABC):
    """A CRM whose agents' public replies go back to the customer.

    Events reach the gateway by a signed webhook (``verify_reply_hook`` and ``split_reply_hook`` run in the web
    process before the 2xx, like a channel's ``verify``/``split``) or by polling (``ReplyPolling``); both are stored
    in the inbox under ``crm:NAME``. A worker then calls ``agent_replies`` (network allowed, no transaction): only
    public replies by agents, never the gateway's own writes.
    """

    @abc.abstractmethod
    def verify_reply_hook(self, request: HookRequest) -> None:
        """Raise ``SignatureInvalid`` unless the CRM's webhook request is authentic and fresh."""

    @abc.abstractmethod
    def split_reply_hook(self, request: HookRequest) -> list[InboxItem]:
        """The events to store, each keyed by the CRM's delivery or event id; ``MalformedRequest`` for bad bodies."""

    @abc.abstractmethod
    def agent_replies(self, record: RawRecord, links: LinkStore) -> list[AgentReply]:
        """The agent replies one stored event carries (read from the CRM's API where the event only points)."""

    def sample_reply_hook(self, *, conversation_id: str, text: str, public_url: str) -> HookRequest:
        """A correctly signed reply event as the CRM would send it (``gateway simulate --agent-reply``)."""
        raise NotImplementedError(f"{self.type_name} cannot simulate agent replies")  # type: ignore[attr-defined]


class ReplySetup(abc.ABC):
    """A CRM that can be told, by ``gateway crm setup``, to call the gateway when an agent replies."""

    @abc.abstractmethod
    def setup_replies(self, hook_url: str, *, dry_run: bool) -> list[str]:
        """Create what is missing (idempotently: a second run creates nothing); one line per thing, saying
        "created", "exists" or, with ``dry_run``, "would create"."""


class ReplyPolling(abc.ABC):
    """A CRM polled for agent replies: the only path (Salesforce) or a safety net behind its webhook (Zendesk)."""

    @property
    @abc.abstractmethod
    def reply_poll_seconds(self) -> float:
        """How often to poll; 0 turns polling off."""

    @abc.abstractmethod
    def poll_replies(self, sink: InboxSink, cursors: CursorStore) -> int:
        """Store the reply events since the cursor in ``sink``, then advance the cursor; return how many."""


class InternalNotes(abc.ABC):
    """A CRM that takes internal notes: what the agent must know (a reply not delivered, a closed window)."""

    @abc.abstractmethod
    def post_note(self, conversation_id: str, text: str, links: LinkStore, key: str) -> None:
        """Write a note no customer sees on the conversation's record; ``key`` is unique per note (idempotency).

        Raise ``PermanentError`` when the conversation has no record in this CRM (yet).
        """


class PublicComments(abc.ABC):
    """A CRM that shows, as a public comment on the ticket, what the gateway itself told the customer (an automatic
    acknowledgement), so the agent reads the conversation as the customer saw it."""

    @abc.abstractmethod
    def post_public_comment(self, conversation_id: str, text: str, links: LinkStore, key: str) -> None:
        """Write a public comment, by the gateway's own user, on the conversation's record; once per ``key``.

        Raise ``PermanentError`` when the conversation has no record in this CRM (yet).
        """


@dataclass(frozen=True)
class SendRequest:
    """One outbound message as a channel connector sees it.

    ``reply_to`` is the customer's latest message on this channel in the conversation: the address they wrote to
    (the business's number, page, mailbox) is the one to answer from, and its thread is the one to answer in.
    ``token`` is unique per outbound message and stable across attempts: put it where the provider keeps it (a
    Message-ID, Slack metadata, WhatsApp ``biz_opaque_callback_data``) so ``reconcile`` can find an uncertain attempt.
    """

    send_id: int
    attempt: int
    token: str
    message: Message
    reply_to: Message
    customer: CustomerView
    last_inbound_at: datetime
    attempt_started_at: datetime | None = None  # of the earlier attempt whose outcome is unknown


@dataclass(frozen=True)
class SendResult:
    """What the provider answered.

    ``thread_keys`` thread the customer's answer back to this conversation: for an email, the key of the Message-ID
    we gave it (``gateway.conversations.email_thread_key``).
    """

    provider_message_id: str
    status: str = "sent"
    detail: str = ""
    thread_keys: tuple[str, ...] = ()


class ReplySender(abc.ABC):
    """A channel that can carry a reply back to the customer.

    Providers have no idempotency key, so the core records each attempt before ``send`` and, when an attempt's
    outcome is unknown (a timeout, a crash before the commit), calls ``reconcile`` before any new attempt.

    ``send`` raises ``PermanentError`` when the message cannot go (closed window and no template, opted out, invalid
    recipient) with a reason an agent understands; ``RetryableError`` for 429, 5xx and network trouble.
    """

    @abc.abstractmethod
    def send(self, request: SendRequest) -> SendResult:
        """Send one message from the address the customer wrote to."""

    @abc.abstractmethod
    def reconcile(self, request: SendRequest) -> SendResult | None:
        """Look for an earlier attempt at the provider: its result if it went out, None if it surely did not.

        Raise ``RetryableError`` when the provider cannot tell yet: the core then waits rather than resend. Raise
        ``OutcomeUnknown`` when this provider offers no way to find out: the reply is not sent again, and the
        agent is told it may or may not have arrived.
        """

    def send_limit(self, request: SendRequest) -> tuple[str, float]:
        """The shared budget this send draws from: (bucket name, messages per minute)."""
        return (f"send:{self.name}", 60.0)  # type: ignore[attr-defined]


PRIORITIES = ("low", "normal", "high", "urgent")  # in rising order; each CRM maps them to its own values


@dataclass(frozen=True)
class TicketStatus:
    """A CRM ticket reached a status the gateway acts on (``solved`` or ``closed``: a satisfaction survey)."""

    conversation_id: str
    status: str
    occurred_at: datetime


class TicketStatuses(abc.ABC):
    """A CRM that reports its tickets being solved, through the same stored events as its agent replies."""

    @abc.abstractmethod
    def ticket_statuses(self, record: RawRecord, links: LinkStore) -> list[TicketStatus]:
        """The status changes one stored event carries (none for a reply event)."""


@dataclass(frozen=True)
class Escalation:
    """What an escalation rule asks of the ticket: ``priority`` only ever rises; ``key`` is unique per escalation."""

    key: str
    note: str
    priority: str | None = None
    tags: tuple[str, ...] = ()
    group: str | None = None


class TicketEscalation(abc.ABC):
    """A CRM whose ticket for a conversation can be escalated (priority raised, tags or group added)."""

    @abc.abstractmethod
    def escalate(self, conversation_id: str, escalation: Escalation, links: LinkStore) -> str:
        """Apply it (a repeat changes nothing more); one line saying what was done. ``PermanentError`` when the
        conversation has no ticket in this CRM."""


@dataclass(frozen=True)
class Rating:
    """A customer's answer to a satisfaction survey and where the CRM keeps it (``field``: a Zendesk custom
    field id or a Salesforce Case field; ``tags``: Zendesk ``csat_N``)."""

    key: str
    rating: int
    comment: str = ""
    field: str | None = None
    comment_field: str | None = None
    tags: bool = True


class SatisfactionRatings(abc.ABC):
    """A CRM that takes the customer's 1-5 rating of a solved ticket."""

    @abc.abstractmethod
    def record_rating(self, conversation_id: str, rating: Rating, links: LinkStore) -> None:
        """Write the rating (and comment) on the conversation's record; a repeat writes the same values."""


ABILITIES: tuple[tuple[str, type], ...] = (
    ("webhook", WebhookChannel), ("polling", PollingChannel), ("send_replies", ReplySender),
    ("directory_sync", DirectorySync), ("contact_merge", ContactMerge), ("agent_replies", AgentReplies),
    ("reply_polling", ReplyPolling), ("reply_setup", ReplySetup), ("internal_notes", InternalNotes),
    ("contact_erasure", ContactErasure), ("public_comments", PublicComments),
    ("contact_erasure", ContactErasure), ("ticket_statuses", TicketStatuses),
    ("ticket_escalation", TicketEscalation), ("satisfaction_ratings", SatisfactionRatings),
)


def abilities(cls: type) -> list[str]:
    """The optional abilities a connector class declares, by name (as ``gateway connectors`` lists them)."""
    return [name for name, ability in ABILITIES if issubclass(cls, ability)]


class DuplicateConnectorType(Exception):
    pass


class ConnectorNameMismatch(Exception):
    """An entry point's name differs from the connector's ``type_name``."""


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
            cls = ep.load()
            if getattr(cls, "type_name", None) != ep.name:
                raise ConnectorNameMismatch(
                    f"entry point {ep.name!r} ({ep.value}) loads a connector whose type_name is "
                    f"{getattr(cls, 'type_name', None)!r}: the two must be equal")
            registry.add(cls.type_name, cls)
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
