"""Table definitions. Schema changes go through Alembic migrations in ``gateway/migrations``."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.expression import false, text

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

Id = BigInteger().with_variant(Integer(), "sqlite")


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite hands back naive ones otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC) if value is not None else None

    def bind_processor(self, dialect: Dialect) -> Callable[[datetime | None], str | datetime | None] | None:
        """On SQLite, the text SQLAlchemy's DATETIME writes ("2026-01-31 09:05:00.000000") made by ``isoformat``
        in one step: the same text (tests/test_storage.py compares them) at a third of the CPU, on every row."""
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)

        def process(value: datetime | None) -> str | None:
            if value is None:
                return None
            if value.tzinfo is None:
                raise ValueError("naive datetime given to a UTC column")
            return value.astimezone(UTC).isoformat(" ", "microseconds")[:-6]  # less its "+00:00"

        return process

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


Time = UtcDateTime()


def lease_columns() -> list[Column[object]]:
    """What every work queue row carries: tries so far, when it is next due, and who holds it until when."""
    return [Column("attempts", Integer, nullable=False, default=0), Column("available_at", Time, nullable=False),
            Column("lease_owner", String(64)), Column("lease_until", Time)]


PENDING_LITERAL = "'pending'"
PENDING_SQL = f"status = {PENDING_LITERAL}"


def pending_index(name: str, *columns: str) -> Index:
    """An index of a work queue's pending rows alone: its size follows the backlog, not the table's history.

    A query uses it only when it states ``status = 'pending'`` as a literal (see ``gateway.storage.queues``).
    """
    return Index(name, *columns, postgresql_where=text(PENDING_SQL), sqlite_where=text(PENDING_SQL))


# Raw provider requests, exactly as received; unique per connector instance and provider message id.
inbox = Table(
    "inbox", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("connector", String(64), nullable=False),
    Column("provider_id", String(255), nullable=False),
    Column("kind", String(32), nullable=False, default="message"),
    Column("content_type", String(255), nullable=False),
    Column("headers", JSON, nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("public_url", Text, nullable=False),
    Column("received_at", Time, nullable=False),
    # pending -> done | ignored | failed (dead letter) ; leases let a crashed worker's claim expire
    Column("status", String(16), nullable=False, default="pending"),
    *lease_columns(),
    Column("last_error", Text),
    Column("processed_at", Time),
    # true once a worker has normalised the row and written its order keys (none for a row without a sender)
    Column("keyed", Boolean, nullable=False, server_default=false()),
    Column("payload_removed_at", Time),  # retention emptied body and headers; the row keeps the provider id
    UniqueConstraint("connector", "provider_id", name="uq_inbox_connector_provider_id"),
    Index("ix_inbox_claim", "status", "available_at"),
    pending_index("ix_inbox_pending", "id"),  # the claim's: pending rows in id order
    Index("ix_inbox_unkeyed", "status", "keyed", "id"),
    Index("ix_inbox_retention", "payload_removed_at", "received_at"),
)

# The order keys of pending inbox rows (digests of their senders' identifiers): a row waits while an older pending
# row shares one of its keys. Removed when the row is settled.
inbox_keys = Table(
    "inbox_keys", metadata,
    Column("inbox_id", Id, primary_key=True),
    Column("key", String(64), primary_key=True),
    Index("ix_inbox_keys_key", "key", "inbox_id"),
)

customers = Table(
    "customers", metadata,
    Column("id", String(32), primary_key=True),
    Column("display_name", Text),
    Column("name_key", String(128), index=True),
    Column("merged_into", String(32), index=True),  # set while this customer is merged into another
    Column("created_at", Time, nullable=False),
    Column("updated_at", Time, nullable=False),
)

identities = Table(
    "identities", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("kind", String(16), nullable=False),
    Column("value", String(320), nullable=False),
    Column("customer_id", String(32), ForeignKey("customers.id"), nullable=False, index=True),
    Column("evidence", String(64), nullable=False),
    Column("source_message_id", String(32)),
    Column("created_at", Time, nullable=False),
    UniqueConstraint("kind", "value", name="uq_identities_kind_value"),
)

# Every merge, with its evidence; undone merges keep their row with undone_at set.
merges = Table(
    "merges", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("survivor_id", String(32), nullable=False, index=True),
    Column("absorbed_id", String(32), nullable=False, index=True),
    Column("evidence", String(32), nullable=False),  # asserted_by_channel | crm_record | admin
    Column("detail", JSON, nullable=False),  # what joined them, and the identity ids and links moved
    Column("message_id", String(32)),
    Column("actor", String(128)),
    Column("created_at", Time, nullable=False),
    Column("undone_at", Time),
    Column("undo_reason", Text),
)

# Likely duplicates for an admin to review; never applied by themselves.
merge_suggestions = Table(
    "merge_suggestions", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("customer_a", String(32), nullable=False),
    Column("customer_b", String(32), nullable=False),
    Column("score", Float, nullable=False),
    Column("reason", Text, nullable=False),
    Column("status", String(16), nullable=False, default="open"),  # open | merged | rejected
    Column("created_at", Time, nullable=False),
    UniqueConstraint("customer_a", "customer_b", name="uq_merge_suggestions_pair"),
)

conversations = Table(
    "conversations", metadata,
    Column("id", String(32), primary_key=True),
    Column("customer_id", String(32), ForeignKey("customers.id"), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("connector", String(64), nullable=False),
    Column("status", String(16), nullable=False, default="open"),
    Column("previous_id", String(32)),  # the conversation this one follows up
    Column("created_at", Time, nullable=False),
    Column("last_activity_at", Time, nullable=False),
    Column("language", String(16)),  # of its first customer message with a detected language (KPIs per language)
    Column("solved_at", Time),  # when a CRM first reported its ticket solved (KPIs: resolution time)
    # KPIs measured when they end (gateway.kpis), in the open seconds of the channel's kpis calendar, if any
    Column("first_reply_at", Time),
    Column("first_response_seconds", Float),
    Column("resolution_seconds", Float),
    Column("switches", Integer, nullable=False, default=0, server_default="0"),
    Index("ix_conversations_customer", "customer_id", "status", "last_activity_at"),
    Index("ix_conversations_last_activity_at", "last_activity_at"),
    Index("ix_conversations_created_at", "created_at"),
)

# Keys that thread a message onto a conversation: email Message-IDs, Slack thread_ts, provider conversation ids.
thread_keys = Table(
    "thread_keys", metadata,
    Column("key", String(512), primary_key=True),
    Column("conversation_id", String(32), ForeignKey("conversations.id"), nullable=False, index=True),
)

messages = Table(
    "messages", metadata,
    Column("id", String(32), primary_key=True),
    Column("inbox_id", Id, ForeignKey("inbox.id"), nullable=False, index=True),
    Column("connector", String(64), nullable=False),
    Column("provider_message_id", String(255), nullable=False),
    Column("customer_id", String(32), ForeignKey("customers.id"), nullable=False, index=True),
    # looked up by ix_messages_conversation_direction, whose first column it is
    Column("conversation_id", String(32), ForeignKey("conversations.id"), nullable=False),
    Column("thread_rule", String(32), nullable=False),
    Column("direction", String(8), nullable=False, default="inbound", server_default="inbound"),
    Column("data", JSON, nullable=False),
    Column("received_at", Time, nullable=False),
    Column("created_at", Time, nullable=False),
    Column("text_removed_at", Time),  # retention blanked the text; metadata stays
    Column("attachments_removed_at", Time),  # retention removed the attachment files
    UniqueConstraint("connector", "provider_message_id", name="uq_messages_connector_provider_message_id"),
    Index("ix_messages_conversation_direction", "conversation_id", "direction", "received_at"),
    Index("ix_messages_text_retention", "text_removed_at", "received_at"),
    Index("ix_messages_attachments_retention", "attachments_removed_at", "received_at"),
    Index("ix_messages_received_at", "received_at", "conversation_id", "direction", "connector"),
)

# One row per (message, crm): the mapped fields to write. Delivered in order per conversation.
outbox = Table(
    "outbox", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("crm", String(64), nullable=False),
    Column("message_id", String(32), ForeignKey("messages.id"), nullable=False),
    Column("conversation_id", String(32), nullable=False),
    Column("fields", JSON, nullable=False),
    Column("status", String(16), nullable=False, default="pending"),  # pending -> done | dead
    *lease_columns(),
    Column("last_error", Text),
    # failed attempts that surely wrote nothing: a retry asks the CRM first only when some attempt is not among them
    Column("certain_failures", Integer, nullable=False, default=0, server_default="0"),
    Column("created_at", Time, nullable=False),
    Column("delivered_at", Time),
    UniqueConstraint("crm", "message_id", name="uq_outbox_crm_message_id"),
    Index("ix_outbox_claim", "status", "crm", "available_at"),
    Index("ix_outbox_order", "crm", "conversation_id", "id"),
    # the claim walks pending rows in id order and looks up the lowest pending id of each one's conversation
    pending_index("ix_outbox_pending", "id"),
    pending_index("ix_outbox_pending_order", "crm", "conversation_id", "id"),
)

# Local id -> CRM record id (customer -> user, conversation -> ticket).
crm_links = Table(
    "crm_links", metadata,
    Column("crm", String(64), primary_key=True),
    Column("entity", String(32), primary_key=True),
    Column("local_id", String(64), primary_key=True),
    Column("remote_id", String(255), nullable=False),
    Column("data", JSON, nullable=False),
    Column("updated_at", Time, nullable=False),
)

# What a CRM already holds: its contacts' identifiers (synced from the CRM), so existing records are adopted
# instead of duplicated, and a record holding two identifiers counts as evidence that they are one person.
crm_directory = Table(
    "crm_directory", metadata,
    Column("crm", String(64), primary_key=True),
    Column("kind", String(16), primary_key=True),
    Column("value", String(320), primary_key=True),
    Column("remote_id", String(255), primary_key=True),
    Column("updated_at", Time, nullable=False),
    Index("ix_crm_directory_remote", "crm", "remote_id"),
    Index("ix_crm_directory_value", "kind", "value"),
)

dead_letters = Table(
    "dead_letters", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("stage", String(16), nullable=False),  # pipeline (inbox row) | delivery (outbox row)
    Column("source_id", Id, nullable=False),
    Column("target", String(64), nullable=False),  # connector or crm name
    Column("error_class", String(16), nullable=False),  # permanent | exhausted | quarantined
    Column("error_code", String(128)),
    Column("reason", Text, nullable=False),
    Column("field", String(128)),
    Column("attempts", Integer, nullable=False),
    Column("created_at", Time, nullable=False),
    Column("resolution", String(16)),  # replayed | discarded
    Column("resolved_at", Time),
    Index("ix_dead_letters_open", "resolution", "id"),
    Index("ix_dead_letters_created_at", "created_at"),
)

delivery_log = Table(
    "delivery_log", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("outbox_id", Id, nullable=False, index=True),
    Column("crm", String(64), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("outcome", String(16), nullable=False),  # delivered | retry | dead
    Column("operation", String(64)),
    Column("remote_id", String(255)),
    Column("error_code", String(128)),
    Column("uncertain", Boolean),  # of a failed attempt: whether it may have written all the same
    Column("detail", Text),
    Column("duration_ms", Float, nullable=False),
    Column("created_at", Time, nullable=False, index=True),
)

# Provider reports on messages the business sent (Twilio status callbacks, WhatsApp statuses).
provider_statuses = Table(
    "provider_statuses", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("connector", String(64), nullable=False),
    Column("provider_message_id", String(255), nullable=False),
    Column("status", String(32), nullable=False),
    Column("error_code", String(64)),
    Column("occurred_at", Time, nullable=False),
    Column("extras", JSON, nullable=False),
    Column("inbox_id", Id, nullable=False),
    UniqueConstraint("connector", "provider_message_id", "status", name="uq_provider_statuses_message_status"),
    Index("ix_provider_statuses_occurred_at", "occurred_at"),
)

# Shared request budgets (token buckets) for CRMs' per-minute limits.
rate_limits = Table(
    "rate_limits", metadata,
    Column("name", String(128), primary_key=True),
    Column("tokens", Float, nullable=False),
    Column("updated_at", Time, nullable=False),
    Column("blocked_until", Time),
)

cursors = Table(
    "cursors", metadata,
    Column("name", String(255), primary_key=True),
    Column("value", JSON, nullable=False),
    Column("updated_at", Time, nullable=False),
)

# The send queue: one row per outbound message (an agent's reply). An attempt is recorded (attempt_started_at) before
# the provider is called and cleared with its outcome, so an attempt whose outcome is unknown is reconciled with the
# provider before anything is sent again. Sent in order per conversation.
sends = Table(
    "sends", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("message_id", String(32), ForeignKey("messages.id"), nullable=False, unique=True),
    Column("channel", String(64), nullable=False),
    Column("conversation_id", String(32), nullable=False),
    Column("crm", String(64)),  # where the reply came from: notes for the agent go there
    Column("status", String(16), nullable=False, default="pending"),  # pending -> sent | dead | blocked
    *lease_columns(),
    Column("attempt_started_at", Time),
    Column("last_error", Text),
    Column("provider_message_id", String(255)),
    Column("created_at", Time, nullable=False),
    Column("sent_at", Time),
    Index("ix_sends_claim", "status", "available_at"),
    Index("ix_sends_order", "conversation_id", "id"),
    pending_index("ix_sends_pending", "id"),  # the claim's, as the outbox's
    pending_index("ix_sends_pending_order", "conversation_id", "id"),
    Index("ix_sends_provider", "channel", "provider_message_id"),
)

send_log = Table(
    "send_log", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("send_id", Id, nullable=False, index=True),
    Column("channel", String(64), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("outcome", String(16), nullable=False),  # sent | reconciled | retry | uncertain | dead | blocked
    Column("provider_message_id", String(255)),
    Column("error_code", String(128)),
    Column("detail", Text),
    Column("duration_ms", Float, nullable=False),
    Column("created_at", Time, nullable=False, index=True),
)

# Internal notes for the agent on the CRM record (a reply not delivered, a closed window); written once per key.
crm_notes = Table(
    "crm_notes", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("crm", String(64), nullable=False),
    Column("conversation_id", String(32), nullable=False),
    Column("key", String(255), nullable=False),
    Column("text", Text, nullable=False),
    Column("status", String(16), nullable=False, default="pending"),  # pending -> done | dead
    *lease_columns(),
    Column("last_error", Text),
    Column("created_at", Time, nullable=False),
    Column("done_at", Time),
    # a public comment showing what the gateway itself told the customer (an acknowledgement), not a private note
    Column("public", Boolean, nullable=False, default=False, server_default=false()),
    UniqueConstraint("crm", "key", name="uq_crm_notes_crm_key"),
    Index("ix_crm_notes_claim", "status", "available_at"),
)

# Customers who asked not to be messaged on a channel (STOP), until they opt back in (START).
opt_outs = Table(
    "opt_outs", metadata,
    Column("channel", String(64), primary_key=True),
    Column("address", String(320), primary_key=True),
    Column("keyword", String(32), nullable=False),
    Column("created_at", Time, nullable=False),
)

# Single-use webhook tokens (Mailgun's ``token``): a token is taken for one request until its signature's replay
# window has passed; the primary key makes the insert the check, so every web process agrees.
used_tokens = Table(
    "used_tokens", metadata,
    Column("scope", String(32), primary_key=True),
    Column("token", String(255), primary_key=True),
    Column("used_for", String(128), nullable=False),  # a digest of the request it came with: its retries pass
    Column("expires_at", Time, nullable=False),
    Index("ix_used_tokens_expires_at", "expires_at"),
)

# One row per identifier of an erased customer: a keyed hash of ``kind:value`` (never the value), when and at whose
# request. Proof the erasure happened, and how a later message from the same identifier is told apart: a new customer.
tombstones = Table(
    "tombstones", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("identifier_hash", String(64), nullable=False, index=True),
    Column("erased_at", Time, nullable=False),
    Column("requested_by", String(128), nullable=False),
    Column("summary", JSON, nullable=False),  # what was removed, by table, and what each CRM was asked
)

# One row per conversation an acknowledgement rule matched: whether the customer is answered automatically (and
# why not), waiting for the CRM's ticket, then the outbound message queued. The primary key makes it once per
# conversation; ``acknowledged_at`` (the customer's message time) is how "acknowledged in the last N hours" is told.
acknowledgements = Table(
    "acknowledgements", metadata,
    Column("conversation_id", String(32), primary_key=True),
    Column("customer_id", String(32), nullable=False),
    Column("message_id", String(32), nullable=False),  # the customer's message being acknowledged
    Column("channel", String(64), nullable=False),
    Column("crm", String(64), nullable=False),  # whose ticket the text names; the public comment goes there
    Column("rule", Integer, nullable=False),  # index in ``acknowledgements:``
    Column("status", String(16), nullable=False),  # waiting -> queued -> sent | skipped | failed
    Column("reason", Text),  # why skipped or failed
    Column("outbound_id", String(32)),  # the acknowledgement's own message (and send)
    Column("acknowledged_at", Time, nullable=False),
    Column("created_at", Time, nullable=False),
    Column("updated_at", Time, nullable=False),
    Index("ix_acknowledgements_customer", "customer_id", "status", "acknowledged_at"),
    Index("ix_acknowledgements_outbound", "outbound_id"),
    Index("ix_acknowledgements_acknowledged_at", "acknowledged_at"),
)

# Escalation clocks (gateway.escalation): one per rule and unanswered stretch of a conversation. ``open_key`` is set
# while the customer waits for an agent, so a conversation has at most one running clock per rule.
sla_clocks = Table(
    "sla_clocks", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("rule", String(64), nullable=False),
    Column("conversation_id", String(32), nullable=False),
    Column("channel", String(64), nullable=False),
    Column("open_key", String(128), unique=True),
    Column("status", String(16), nullable=False),  # waiting -> escalating -> escalated | answered | failed
    Column("started_at", Time, nullable=False),
    Column("due_at", Time, nullable=False),
    *lease_columns(),
    Column("crm_done_at", Time),
    Column("notify_started_at", Time),
    Column("escalated_at", Time),
    Column("answered_at", Time),
    Column("last_error", Text),
    Column("created_at", Time, nullable=False),
    Index("ix_sla_clocks_due", "status", "due_at"),
    Index("ix_sla_clocks_conversation", "conversation_id", "status"),
)

# Satisfaction surveys (gateway.surveys): one per CRM ticket, asked when it is solved; the answer is written back.
surveys = Table(
    "surveys", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("crm", String(64), nullable=False),
    Column("conversation_id", String(32), nullable=False),
    Column("customer_id", String(32), nullable=False),
    Column("channel", String(64), nullable=False),
    Column("rule", String(64), nullable=False),
    Column("message_id", String(32)),
    Column("status", String(16), nullable=False),  # asked -> answered -> written | failed
    Column("asked_at", Time, nullable=False),
    Column("answered_at", Time),
    Column("rating", Integer),
    Column("comment", Text),
    Column("answer_message_id", String(32)),
    *lease_columns(),
    Column("written_at", Time),
    Column("last_error", Text),
    UniqueConstraint("crm", "conversation_id", name="uq_surveys_crm_conversation"),
    Index("ix_surveys_customer", "customer_id", "channel", "status"),
    Index("ix_surveys_claim", "status", "available_at"),
    Index("ix_surveys_answered_at", "answered_at"),
)

# Console accounts: an argon2 hash, never the password. ``session_epoch`` grows when the password changes or the
# account is removed from use, which ends every session signed before.
admin_users = Table(
    "admin_users", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("password_hash", String(255), nullable=False),
    Column("role", String(16), nullable=False),  # admin | viewer
    Column("session_epoch", Integer, nullable=False, default=0),
    Column("disabled", Boolean, nullable=False, server_default=false()),
    Column("created_at", Time, nullable=False),
    Column("updated_at", Time, nullable=False),
    Column("last_login_at", Time),
)

# Failed console logins, counted per account and per client address over a window (shared by every web process).
login_failures = Table(
    "login_failures", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("account", String(64), nullable=False),
    Column("address", String(64), nullable=False),
    Column("at", Time, nullable=False),
    Index("ix_login_failures_account", "account", "at"),
    Index("ix_login_failures_address", "address", "at"),
)

# Console sessions, one row per login: the cookie holds a random token, this row its SHA-256. A logout deletes the
# row, so a copied cookie dies with it; a new password or a removed account deletes the account's rows.
console_sessions = Table(
    "console_sessions", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("user_id", Id, ForeignKey("admin_users.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("created_at", Time, nullable=False),
    Column("address", String(64)),
)

# Every console action that changes something, and every login: who, what, on what, from where.
admin_audit = Table(
    "admin_audit", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("at", Time, nullable=False),
    Column("actor", String(64), nullable=False),
    Column("action", String(32), nullable=False),
    Column("target", String(255)),
    Column("detail", JSON, nullable=False),
    Column("address", String(64)),
    Index("ix_admin_audit_at", "at"),
)

# The all-time KPI totals /metrics reports, kept by the triggers of migration 0019 on messages, acknowledgements and
# conversations (gateway.kpis.all_time_totals reads them). Unused key parts are '' or -1. PostgreSQL: one shard per
# connection (its backend pid) so writers never wait on a total; shard 0 holds what ended connections added.
kpi_totals = Table(
    "kpi_totals", metadata,
    Column("kind", String(16), nullable=False),  # message, ack, conversation
    Column("channel", String(16), nullable=False),
    Column("connector", String(64), nullable=False),
    Column("language", String(16), nullable=False),
    Column("direction", String(8), nullable=False),
    Column("first_bucket", Integer, nullable=False),  # index in gateway.kpi_metrics.BUCKETS, -1 unmeasured
    Column("resolution_bucket", Integer, nullable=False),
    Column("shard", Integer, nullable=False),
    Column("events", BigInteger, nullable=False),
    Column("switches", BigInteger, nullable=False),
    Column("first_sum", Float, nullable=False),
    Column("resolution_sum", Float, nullable=False),
    UniqueConstraint("kind", "channel", "connector", "language", "direction", "first_bucket", "resolution_bucket",
                     "shard", name="uq_kpi_totals_key"),
)

# SQLite: kpi_totals holds the messages up to this rowid; /metrics counts those above it and moves it (gateway.kpis)
kpi_counted = Table(
    "kpi_counted", metadata,
    Column("table_name", String(32), primary_key=True),
    Column("to_rowid", BigInteger, nullable=False),
)
