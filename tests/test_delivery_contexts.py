"""A delivery batch's contexts, read at once, are the contexts read one message at a time; the jsonl CRM writes a
batch in one write and keeps its guarantees when the process dies between the write and the links."""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from gateway.context import stored_message_context
from gateway.delivery_contexts import StoredContexts
from gateway.identity.merges import merge_customers
from gateway.pipeline import PipelineWorker
from gateway.runtime import Runtime
from gateway.storage.tables import conversations, messages
from gateway.worker import drain_once
from tests.conformance.crm import MemoryLinkStore, conversation
from tests.connectors.test_jsonl import jsonl, records
from tests.test_pipeline import sms, store


def _stored_messages(rt: Runtime) -> list[Any]:
    with rt.engine.connect() as conn:
        return list(conn.execute(select(messages.c.id, messages.c.customer_id, messages.c.conversation_id)
                                 .order_by(messages.c.inbox_id)))


def test_a_batch_reads_what_each_message_reads_alone(runtime: Runtime) -> None:
    store(runtime, sms("SM" + "1" * 32, "+15550001111", "hello"), sms("SM" + "2" * 32, "+15550001111", "again"),
          sms("SM" + "3" * 32, "+15550002222", "other"), sms("SM" + "4" * 32, "+15550003333", "third"))
    while drain_once(PipelineWorker(runtime, "p")):
        pass
    first, _, other, third = _stored_messages(runtime)
    with runtime.engine.begin() as conn:  # one customer merged into another, one conversation following another
        merge_customers(conn, first.customer_id, other.customer_id, evidence="admin", detail={})
        conn.execute(update(conversations).where(conversations.c.id == third.conversation_id).values(
            previous_id=first.conversation_id))
    ids = [row.id for row in _stored_messages(runtime)]
    with runtime.engine.connect() as conn:
        stored = StoredContexts(conn, [*ids, ids[0], "missing"])
        for message_id in ids:
            assert stored.context(message_id) == stored_message_context(conn, message_id)
    assert stored.context(ids[2]).customer["id"] == first.customer_id
    assert stored.context(ids[3]).conversation["previous_id"] == first.conversation_id
    assert stored.data(ids[0])["text"] == "hello" and stored.data("missing") is None
    with pytest.raises(LookupError):
        stored.context("missing")


def test_a_batch_is_one_write_and_one_fsync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    crm = jsonl(tmp_path)
    groups = [conversation("trial", ["one", "two", "three"]),
              conversation("trial", ["four", "five"], first_outbox_id=11, other=True)]
    links = MemoryLinkStore()
    outcomes = crm.deliver_groups(groups, links)
    assert [outcomes[item.outbox_id].operation for group in groups for item in group] == ["appended"] * 5
    assert [record["message"]["text"] for record in records(tmp_path)] == ["one", "two", "three", "four", "five"]
    assert len(synced) == 1 and len(links.puts) == 5


class _DiesBeforeLinking(MemoryLinkStore):
    def put_many(self, entity: str, links: Any) -> None:
        raise SystemExit("killed between the append and the links")


def test_a_batch_retried_after_dying_before_its_links_writes_nothing_twice(tmp_path: Path) -> None:
    crm = jsonl(tmp_path)
    group = conversation("trial", ["one", "two"])
    with contextlib.suppress(SystemExit):
        crm.deliver_groups([group], _DiesBeforeLinking())
    links = MemoryLinkStore()
    later = conversation("trial", ["three"], first_outbox_id=11, other=True)
    outcomes = crm.deliver_groups([[replace(item, attempt=2) for item in group], later], links)

    assert [outcomes[item.outbox_id].operation for item in [*group, *later]] == \
        ["already_written", "already_written", "appended"]
    assert [record["message"]["text"] for record in records(tmp_path)] == ["one", "two", "three"]
    assert {local for _, local in links.links} == {item.message.id for item in [*group, *later]}


class _LinksRefused(MemoryLinkStore):
    def put_many(self, entity: str, links: Any) -> None:
        raise RuntimeError("database is locked")


def test_links_that_cannot_be_stored_fail_every_row_written_so_each_retry_looks_for_its_line(tmp_path: Path) -> None:
    crm = jsonl(tmp_path)
    group = conversation("trial", ["one", "two"])
    outcomes = crm.deliver_groups([group], _LinksRefused())
    # every row takes the error (not just the group's head): none is given back untried to be written again
    assert all(outcomes[item.outbox_id].retryable and outcomes[item.outbox_id].uncertain for item in group)

    retried = crm.deliver_groups([[replace(item, attempt=2) for item in group]], MemoryLinkStore())
    assert [retried[item.outbox_id].operation for item in group] == ["already_written", "already_written"]
    assert [record["message"]["text"] for record in records(tmp_path)] == ["one", "two"]


def test_a_record_that_cannot_be_written_stops_its_conversation_only(tmp_path: Path) -> None:
    crm = jsonl(tmp_path)
    broken, behind = conversation("trial", ["broken", "behind"])
    other = conversation("trial", ["fine"], first_outbox_id=11, other=True)
    broken = replace(broken, fields={"not json": object()})
    outcomes = crm.deliver_groups([[broken, behind], other], MemoryLinkStore())

    assert outcomes[broken.outbox_id].code == "internal" and behind.outbox_id not in outcomes
    assert outcomes[other[0].outbox_id].operation == "appended"
    assert [json.loads(line)["message"]["text"] for line in
            (tmp_path / "out" / "crm.jsonl").read_text(encoding="utf-8").splitlines()] == ["fine"]
