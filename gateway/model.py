"""The canonical message: the one shape every channel is normalised into.

Other systems may rely on this contract; its JSON Schema is published in ``docs/schema/message.schema.json``
(``gateway schema`` writes it, and a test fails when the file is stale).
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.redact import mask_identifier

SCHEMA_VERSION = 1
_E164 = re.compile(r"^\+[1-9]\d{6,14}$")


class ChannelType(StrEnum):
    """The kind of channel a message travelled through."""

    EMAIL = "email"
    SMS = "sms"
    MMS = "mms"
    WHATSAPP = "whatsapp"
    SLACK = "slack"
    MESSENGER = "messenger"
    INSTAGRAM = "instagram"
    X = "x"


class IdentifierKind(StrEnum):
    """The kinds of identifier a party can be known by."""

    EMAIL = "email"
    PHONE = "phone"
    SLACK = "slack"
    WHATSAPP = "whatsapp"
    MESSENGER = "messenger"
    INSTAGRAM = "instagram"
    X = "x"
    AGENT = "agent"  # an agent in a CRM, scoped by the CRM's name: ``zendesk-main:12345``


class Direction(StrEnum):
    INBOUND = "inbound"
    OUTBOUND = "outbound"


class MessageKind(StrEnum):
    """What a canonical message records: a new message, or a change the channel reports to an earlier one."""

    MESSAGE = "message"
    EDIT = "edit"
    DELETE = "delete"
    REACTION = "reaction"


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {key: _without_nul(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_without_nul(item) for item in value)
    return value


def _has_nul(value: Any) -> bool:
    """Whether ``_without_nul`` would change anything: the usual input is then not copied."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        value = value.values()
    elif not isinstance(value, list | tuple):
        return False
    for item in value:  # a loop, not any() over a generator: this runs for every model built
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict | list | tuple) and _has_nul(item):
            return True
    return False


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _strip_nul(cls, data: Any) -> Any:
        # a NUL decoded from a provider's bytes (an RFC 2047 header, say) cannot be stored in PostgreSQL text
        return _without_nul(data) if isinstance(data, dict) and _has_nul(data) else data


class Identifier(_Frozen):
    """One normalised identifier: an email address, an E.164 phone number, a scoped platform id, ...

    ``value`` is already normalised (see ``gateway.identity``): two identifiers are the same person-handle exactly
    when kind and value are equal. Scoped ids carry their scope in the value (Slack ``T123:U456``, Messenger
    ``PAGE:PSID``).
    """

    kind: IdentifierKind
    value: str = Field(min_length=1, max_length=320)

    @model_validator(mode="after")
    def _check_shape(self) -> Identifier:
        if self.kind in (IdentifierKind.PHONE, IdentifierKind.WHATSAPP) and not _E164.match(self.value):
            raise ValueError(f"{self.kind} identifier must be E.164 (+ and 7-15 digits), "
                             f"got {mask_identifier(self.value)!r}")
        if self.kind is IdentifierKind.EMAIL and "@" not in self.value:
            raise ValueError("email identifier must contain '@'")
        return self

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.value}"


class Party(_Frozen):
    """A sender or recipient: its identifiers and the name the channel reported."""

    identifiers: tuple[Identifier, ...] = Field(min_length=1)
    display_name: str | None = None


class ThreadRef(_Frozen):
    """What the channel says about the thread a message belongs to."""

    message_id: str | None = None
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()
    provider_thread_id: str | None = None


class Attachment(_Frozen):
    """An attachment's metadata; the bytes live at ``location`` (a storage reference or provider URL)."""

    filename: str
    content_type: str
    size: int | None = Field(default=None, ge=0)
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    location: str
    inline: bool = False


class RawRef(_Frozen):
    """Pointer to the raw inbox row the message was normalised from."""

    inbox_id: int
    connector: str


def new_id() -> str:
    """A fresh gateway id."""
    return uuid.uuid4().hex


class Message(_Frozen):
    """A canonical message: one customer (or agent) utterance on one channel."""

    schema_version: Literal[1] = SCHEMA_VERSION
    id: str = Field(default_factory=new_id, description="Gateway id, unique across all channels.")
    channel: ChannelType
    connector: str = Field(description="Name of the connector instance (the key under `channels:`).")
    connector_type: str
    direction: Direction = Direction.INBOUND
    kind: MessageKind = MessageKind.MESSAGE
    provider_message_id: str = Field(min_length=1)
    target_provider_message_id: str | None = Field(
        None, description="For edits, deletions and reactions: the provider id of the message they change.")
    thread: ThreadRef = ThreadRef()
    sender: Party
    recipients: tuple[Party, ...] = ()
    subject: str | None = None
    text: str = Field(default="", description="Visible text: quotes and signatures stripped.")
    full_text: str = Field(default="", description="The whole text as received.")
    html: str | None = None
    attachments: tuple[Attachment, ...] = ()
    sent_at: AwareDatetime
    received_at: AwareDatetime
    language: str | None = Field(default=None, description="BCP 47 code, or 'und' when not detectable.")
    extras: dict[str, Any] = Field(default_factory=dict, description="Channel-specific fields, JSON only.")
    raw: RawRef

    @field_validator("sent_at", "received_at")
    @classmethod
    def _to_utc(cls, value: datetime) -> datetime:
        return value.astimezone(UTC)

    @field_validator("extras")
    @classmethod
    def _json_only(cls, value: dict[str, Any]) -> dict[str, Any]:
        json.dumps(value)
        return value


class StatusUpdate(_Frozen):
    """A provider's report on a message the business sent (queued, sent, delivered, read, failed, ...)."""

    connector: str
    provider_message_id: str = Field(min_length=1)
    status: str = Field(min_length=1)
    occurred_at: AwareDatetime
    error_code: str | None = None
    extras: dict[str, Any] = Field(default_factory=dict)


def message_json_schema() -> dict[str, Any]:
    """The JSON Schema of the canonical message, as published in docs/schema."""
    schema = Message.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://channel-gateway.dev/schema/message.schema.json"
    return schema


def render_json_schema() -> str:
    return json.dumps(message_json_schema(), indent=2, sort_keys=True) + "\n"
