"""A CRM that appends the records it would write to a JSON-lines file: runs with nothing external."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr

from gateway.plugins import (
    CrmConfig,
    CrmConnector,
    DeliveryItem,
    DeliveryResult,
    InternalNotes,
    LinkStore,
    PublicComments,
    online_check,
)
from gateway.signed_replies import SignedReplies

# A retry looks this far back for its own line: far enough for any crash-to-retry gap of a trial or audit file.
RETRY_SCAN_BYTES = 32 * 1024 * 1024


class JsonlConfig(CrmConfig):
    """Settings of a ``jsonl`` CRM."""

    type: Literal["jsonl"] = "jsonl"
    path: str = Field("var/crm.jsonl", description="File the records are appended to (relative to the config file).")
    fsync: bool = Field(True, description="fsync after each record, so a record written is a record kept.")
    reply_secret: SecretStr | None = Field(
        None, description="Key for agent replies posted to /crm-hooks/NAME (X-Gateway-Signature); unset: none taken.")


class JsonlCrm(CrmConnector, SignedReplies, InternalNotes, PublicComments):
    """Appends one JSON object per delivered message: the message, its customer, conversation and mapped fields.

    Replays are harmless: a message already written (same idempotency key) is not written again. With a
    ``reply_secret`` it takes agent replies on the gateway's signed reply endpoint (a trial of two-way
    conversations with nothing external), and notes for the agent are appended as ``{"note": ...}`` records.
    """

    type_name = "jsonl"
    Config = JsonlConfig
    summary = "Append records to a JSON-lines file (for trials, audits and piping into other tools)"
    default_mapping = "jsonl.yaml"
    config: JsonlConfig

    @property
    def path(self) -> Path:
        path = Path(self.config.path)
        return path if path.is_absolute() else self.context.base_dir / path

    def deliver(self, item: DeliveryItem, links: LinkStore) -> DeliveryResult:
        if links.get("message", item.message.id) is not None:
            return DeliveryResult("already_written", item.idempotency_key, calls=0)
        if item.attempt > 1 and self._appended_before(item.idempotency_key):
            # the line was written but the process died before the link was stored
            links.put("message", item.message.id, item.idempotency_key)
            return DeliveryResult("already_written", item.idempotency_key, calls=0)
        record = {
            "idempotency_key": item.idempotency_key,
            "customer": {"id": item.customer.id, "display_name": item.customer.display_name,
                         "identifiers": [{"kind": k, "value": v} for k, v in item.customer.identifiers]},
            "conversation": {"id": item.conversation.id, "channel": item.conversation.channel},
            "fields": dict(item.fields),
            "message": item.message.model_dump(mode="json"),
        }
        self._append(record)
        links.put("message", item.message.id, item.idempotency_key)
        return DeliveryResult("appended", item.idempotency_key)

    def _appended_before(self, key: str) -> bool:
        """Whether the file's last `RETRY_SCAN_BYTES` hold a record with this key (read only on a retry)."""
        needle = f'"idempotency_key": {json.dumps(key)}'.encode()
        try:
            with open(self.path, "rb") as handle:
                size = handle.seek(0, os.SEEK_END)
                handle.seek(max(0, size - RETRY_SCAN_BYTES))
                return needle in handle.read()
        except FileNotFoundError:
            return False

    def _append(self, record: dict[str, object]) -> None:
        line = json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            handle.write(line)
            handle.flush()
            if self.config.fsync:
                os.fsync(handle.fileno())

    # -- two-way -----------------------------------------------------------------------------------------------
    def post_note(self, conversation_id: str, text: str, links: LinkStore, key: str) -> None:
        self._note(conversation_id, text, links, key, internal=True)

    def post_public_comment(self, conversation_id: str, text: str, links: LinkStore, key: str) -> None:
        self._note(conversation_id, text, links, key, internal=False)

    def _note(self, conversation_id: str, text: str, links: LinkStore, key: str, *, internal: bool) -> None:
        if links.get("note", key) is not None:
            return
        self._append({"note": {"conversation_id": conversation_id, "text": text, "key": key, "internal": internal}})
        links.put("note", key, key)

    @online_check
    def check_online(self) -> str:
        """Open the file for appending (tests that it can be written)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8"):
            pass
        return f"writable: {self.path}"
