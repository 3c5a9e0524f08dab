"""A CRM that appends the records it would write to a JSON-lines file: runs with nothing external."""

from __future__ import annotations

import fcntl
import json
import logging
import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr

from gateway.errors import INTERNAL, DeliveryError, RetryableError, as_delivery_error
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
from gateway.redact import describe_error
from gateway.signed_replies import SignedReplies

log = logging.getLogger(__name__)
# A retry looks this far back for its own line: far enough for any crash-to-retry gap of a trial or audit file.
RETRY_SCAN_BYTES = 32 * 1024 * 1024


class JsonlConfig(CrmConfig):
    """Settings of a ``jsonl`` CRM."""

    type: Literal["jsonl"] = "jsonl"
    path: str = Field("var/crm.jsonl", description="File the records are appended to (relative to the config file).")
    fsync: bool = Field(True, description="fsync after each write of records (one per delivery batch), so a record "
                                          "written is a record kept.")
    reply_secret: SecretStr | None = Field(
        None, description="Key for agent replies posted to /crm-hooks/NAME (X-Gateway-Signature); unset: none taken.")


class JsonlCrm(CrmConnector, SignedReplies, InternalNotes, PublicComments):
    """Appends one JSON object per delivered message: the message, its customer, conversation and mapped fields.

    A delivery batch is one write (one fsync) of its new records, then one commit of their links; a record written
    whose link was not stored (the process died in between) is found in the file when its row is retried.
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
        outcome = self.deliver_groups([[item]], links)[item.outbox_id]
        if isinstance(outcome, DeliveryError):
            raise outcome
        return outcome

    def deliver_groups(self, groups: list[list[DeliveryItem]],
                       links: LinkStore) -> dict[int, DeliveryResult | DeliveryError]:
        items = [item for group in groups for item in group]
        linked = links.get_many("message", [item.message.id for item in items])
        # written before, but the process died before the link was stored: only a retry can find its line
        unlinked_retries = {item.idempotency_key for item in items
                            if item.attempt > 1 and item.message.id not in linked}
        in_file = self._appended_before(unlinked_retries)
        outcomes: dict[int, DeliveryResult | DeliveryError] = {}
        lines: list[str] = []
        to_link: dict[str, str] = {}
        for group in groups:
            for item in group:
                key = item.idempotency_key
                if item.message.id in linked or key in in_file:
                    if key in in_file:
                        to_link[item.message.id] = key
                    outcomes[item.outbox_id] = DeliveryResult("already_written", key, calls=0)
                    continue
                try:
                    lines.append(_line(item))
                except Exception as exc:  # this conversation waits, the others go on
                    error = outcomes[item.outbox_id] = as_delivery_error(exc)
                    if error.code == INTERNAL:
                        log.exception("%s: unexpected error delivering outbox row %s", self.name, item.outbox_id)
                    break
                to_link[item.message.id] = key
                outcomes[item.outbox_id] = DeliveryResult("appended", key)
        try:
            self._append(lines)
            links.put_many("message", to_link)
        except Exception as exc:
            # some lines may be in the file without their links: every row of the call takes the error, so that
            # each one's next try counts as a retry and looks for its line before writing it again
            error = RetryableError(f"records written but not linked: {describe_error(exc)}", code=INTERNAL)
            log.warning("%s: %s", self.name, error)
            return {item.outbox_id: error if isinstance(outcomes.get(item.outbox_id), DeliveryResult)
                    else outcomes[item.outbox_id] for item in items if item.outbox_id in outcomes}
        return outcomes

    def _appended_before(self, keys: set[str]) -> set[str]:
        """Those of ``keys`` that a record in the file's last `RETRY_SCAN_BYTES` holds (read only on a retry)."""
        if not keys:
            return set()
        try:
            with open(self.path, "rb") as handle:
                size = handle.seek(0, os.SEEK_END)
                handle.seek(max(0, size - RETRY_SCAN_BYTES))
                tail = handle.read()
        except FileNotFoundError:
            return set()
        return {key for key in keys if f'"idempotency_key": {json.dumps(key)}'.encode() in tail}

    def _append(self, lines: list[str]) -> None:
        if not lines:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            handle.write("".join(lines))
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
        self._append([_json_line({"note": {"conversation_id": conversation_id, "text": text, "key": key,
                                            "internal": internal}})])
        links.put("note", key, key)

    @online_check
    def check_online(self) -> str:
        """Open the file for appending (tests that it can be written)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8"):
            pass
        return f"writable: {self.path}"


def _line(item: DeliveryItem) -> str:
    return _json_line({
        "idempotency_key": item.idempotency_key,
        "customer": {"id": item.customer.id, "display_name": item.customer.display_name,
                     "identifiers": [{"kind": k, "value": v} for k, v in item.customer.identifiers]},
        "conversation": {"id": item.conversation.id, "channel": item.conversation.channel},
        "fields": dict(item.fields),
        "message": item.message.model_dump(mode="json"),
    })


def _json_line(record: dict[str, object]) -> str:
    return json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n"
