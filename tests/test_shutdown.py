"""Stopping workers: SIGTERM drains in-flight work and gives back the rest; kill -9 loses nothing either, because
the restarted worker takes the killed one's rows over at once (without waiting for their leases) and the idempotent
CRM writes turn the repeat into a no-op. Both end with every message in the (slow, fake) Zendesk exactly once, each
customer's in the order they were sent; with both stages in one worker process, and with a process per stage (the
delivery process killed while the pipeline process goes on)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from sqlalchemy import Row, Table, select

from gateway.config import load_config
from gateway.runtime import Runtime, build_runtime
from gateway.storage.tables import conversations, customers, dead_letters, delivery_log, inbox, messages, outbox
from tests.fake_zendesk import FakeZendesk, marker_ids
from tests.helpers import (
    TWILIO_SID,
    GatewayProcess,
    free_port,
    message_sid,
    twilio_inbox_item,
    twilio_params,
    wait_for,
    write_gateway_config,
    zendesk_crm,
)

CUSTOMERS = 5
MESSAGES = 20
DELAY = 0.1  # seconds the fake Zendesk takes per request


class Workers:
    """The worker processes of one layout: ``gateway work`` alone, or one ``gateway work --stage`` per stage."""

    def __init__(self, procs: dict[str, GatewayProcess]) -> None:
        self.procs = procs

    @property
    def delivery(self) -> GatewayProcess:
        return self.procs.get("delivery") or self.procs["all"]

    def signal(self, sig: int) -> None:
        for proc in self.procs.values():
            proc.signal(sig)

    def wait(self, timeout: float) -> list[int]:
        return [proc.wait(timeout) for proc in self.procs.values()]

    def stop(self) -> list[int | None]:
        return [proc.stop() for proc in self.procs.values()]

    def output(self) -> str:
        return "\n".join(proc.output() for proc in self.procs.values())


@dataclass
class Setup:
    tmp_path: Path
    config: Path
    rt: Runtime
    fake: FakeZendesk
    layout: str

    def process(self, name: str, stage: str) -> GatewayProcess:
        args = ["work", "-c", str(self.config), *(["--stage", stage] if stage != "all" else [])]
        return GatewayProcess(args, self.tmp_path / f"{name}-{stage}.log")

    def workers(self, name: str) -> Workers:
        stages = ["all"] if self.layout == "one" else ["pipeline", "delivery"]
        return Workers({stage: self.process(name, stage) for stage in stages})

    def rows(self, table: Table) -> list[Row]:
        with self.rt.engine.connect() as conn:
            return list(conn.execute(select(table)))

    def leased(self) -> list[Row]:
        return [r for t in (inbox, outbox) for r in self.rows(t) if r.lease_owner is not None]


@pytest.fixture(params=["one", "per_stage"])
def setup(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Setup]:
    with FakeZendesk(delay_seconds=DELAY) as fake:
        config = write_gateway_config(
            tmp_path, storage_url=f"sqlite:///{tmp_path / 'gateway.db'}", port=free_port(),
            crms=zendesk_crm(fake.url), routes="[{from: [sms-main], to: desk}]",
            # two messages per write: each conversation's four messages take two rounds (a ticket, then a
            # comment), so there is a mid-way to stop at, and the held write carries a comma-joined marker; leases
            # longer than the restarted worker is given: it must not wait for the killed one's to end
            workers=", batch_size: 5, coalesce_max: 2, delivery_threads: 2, lease_seconds: 60")
        rt = build_runtime(load_config(config), http=requests.Session())
        items = [twilio_inbox_item(twilio_params(message_sid(n), f"+1415555{2000 + n % CUSTOMERS}", f"message {n}",
                                                 TWILIO_SID)) for n in range(MESSAGES)]
        rt.queues.store_inbox("sms-main", items, {"Content-Type": "application/x-www-form-urlencoded"},
                              "http://127.0.0.1/hooks/sms-main")
        yield Setup(tmp_path, config, rt, fake, request.param)
        rt.close()


def assert_everything_delivered_once(s: Setup) -> None:
    stored = s.rows(messages)
    assert len(stored) == MESSAGES
    assert {r.status for r in s.rows(outbox)} == {"done"}
    assert s.rows(dead_letters) == []
    assert s.leased() == []
    per_message = s.fake.comment_counts()
    assert set(per_message) == {r.id for r in stored}
    assert [mid for mid, n in per_message.items() if n != 1] == [], "a message was written twice"
    assert sorted(t["external_id"] for t in s.fake.tickets()) == sorted(r.id for r in s.rows(conversations))
    assert sorted(u["external_id"] for u in s.fake.users()) == sorted(r.id for r in s.rows(customers))
    assert len(s.fake.tickets()) == CUSTOMERS
    # and in order: each ticket holds its conversation's messages as the outbox queued them
    order: dict[str, list[str]] = {}
    for row in sorted(s.rows(outbox), key=lambda r: r.id):
        order.setdefault(row.conversation_id, []).append(row.message_id)
    for ticket in s.fake.tickets():
        assert s.fake.ticket_markers(ticket["id"]) == order[ticket["external_id"]]
    # and in the order each customer sent them ("message n", n rising)
    sent = {r.id: int(r.data["text"].split()[-1]) for r in stored}
    for ticket in s.fake.tickets():
        numbers = [sent[mid] for mid in s.fake.ticket_markers(ticket["id"])]
        assert numbers == sorted(numbers), f"ticket {ticket['id']} out of order: {numbers}"


def deliver_the_rest(s: Setup, workers: Workers, timeout: float) -> str:
    try:
        wait_for(lambda: {r.status for r in s.rows(outbox)} == {"done"} and len(s.rows(outbox)) == MESSAGES,
                 timeout, "the restarted worker to deliver the rest", interval=0.1)
    finally:
        codes = workers.stop()
    assert set(codes) == {0}, workers.output()[-3000:]
    return workers.output()


def test_sigterm_finishes_in_flight_work_gives_back_the_rest_and_exits_0(setup: Setup) -> None:
    workers = setup.workers("first")
    try:
        wait_for(lambda: setup.fake.message_count() >= 4, 30, "some messages in Zendesk before the SIGTERM")
        workers.signal(signal.SIGTERM)
        codes = workers.wait(20)
    finally:
        workers.stop()
    assert set(codes) == {0}, workers.output()[-3000:]
    assert "Traceback" not in workers.output()

    written = setup.fake.comment_counts()
    assert 0 < len(written) < MESSAGES, "the SIGTERM was meant to land mid-way"
    assert setup.leased() == [], "claims must be given back on shutdown"
    # drained, not cut off: what the CRM has is exactly what the outbox marks done, and nothing twice
    done = {r.message_id for r in setup.rows(outbox) if r.status == "done"}
    assert set(written) == done
    assert set(written.values()) == {1}
    assert {r.attempts for r in setup.rows(outbox) if r.status == "pending"} <= {0}, "a give-back is no attempt"

    deliver_the_rest(setup, setup.workers("second"), 30)
    assert_everything_delivered_once(setup)


def test_kill_9_mid_batch_then_restart_delivers_everything_exactly_once(setup: Setup) -> None:
    workers = setup.workers("first")
    killed = workers.delivery  # the process writing to the CRM; a pipeline process of its own goes on
    try:
        wait_for(lambda: setup.fake.message_count() >= 4, 30, "some messages in Zendesk before the kill")
        setup.fake.hold_next_comment()  # that comment lands, and the worker never hears back
        wait_for(setup.fake.held.is_set, 30, "a comment written whose answer is held back")
        held = setup.fake.held_write
        assert held is not None
        killed.signal(signal.SIGKILL)
        assert killed.wait(10) == -signal.SIGKILL
    finally:
        killed.stop()
    assert setup.fake.message_count() < MESSAGES, "the kill was meant to land mid-way"
    leased = [r for r in setup.rows(outbox) if r.lease_owner is not None]
    assert leased and {r.lease_owner.split(":")[1] for r in leased} == {str(killed.pid)}, \
        "the killed worker should have left claims behind"

    # the killed worker's claims are taken over at once, long before their 60 s leases end, and repeated; the
    # pipeline process (when it has one of its own) kept running all the while
    restarted = Workers({**{stage: proc for stage, proc in workers.procs.items() if proc is not killed},
                         "delivery": setup.process("second", "delivery" if setup.layout != "one" else "all")})
    output = deliver_the_rest(setup, restarted, 30)
    assert "held by worker(s) that are gone" in output
    assert_everything_delivered_once(setup)
    repeated = [r for r in setup.rows(outbox) if r.attempts > 1]
    assert repeated, "rows claimed by the killed worker are tried again"
    # the comment written before the kill (one or several coalesced messages, its marker lists them all) was
    # recognised by its marker on the retry, not written again
    held_messages = marker_ids(held.body["ticket"]["metadata"])
    held_rows = [r for r in setup.rows(outbox) if r.message_id in held_messages]
    assert held_messages and len(held_rows) == len(held_messages)
    for held_row in held_rows:
        operations = [r.operation for r in setup.rows(delivery_log) if r.outbox_id == held_row.id]
        assert operations == ["already_written"]
    for ticket in setup.fake.tickets():
        markers = setup.fake.ticket_markers(ticket["id"])
        assert len(markers) == len(set(markers))
