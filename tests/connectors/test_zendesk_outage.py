"""A backlog that meets a Zendesk outage, and writes whose answer is lost: the delivery worker against the fake.

Time is the outbox's: instead of waiting out a retry, ``advance`` moves every pending row's ``available_at`` back
by the wait until the earliest one is due, as if the clock had jumped there (the rows' spread is kept).
Batch jobs finish at once and the job polling's sleep is a no-op.
"""

from __future__ import annotations

import textwrap
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import func, select, update

from bench.zendesk_backlog import ACCOUNT_SID, AUTH_TOKEN, CHANNEL, PUBLIC_URL, prefill, run_pipeline
from connectors.zendesk import ZendeskCrm
from gateway.config import load_config
from gateway.delivery import DeliveryWorker
from gateway.runtime import Runtime, build_runtime
from gateway.storage.db import utcnow
from gateway.storage.tables import delivery_log, outbox
from tests.fake_zendesk import FakeZendesk


@pytest.fixture
def fake() -> Iterator[FakeZendesk]:
    with FakeZendesk(job_delay_seconds=0.0) as zendesk:
        yield zendesk


def gateway(tmp_path: Path, fake: FakeZendesk, *, messages: int, customers: int) -> Runtime:
    """A runtime delivering to the fake with the shipped retry policy, its outbox filled through the pipeline."""
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(f"""
        storage: {{url: "sqlite:///{tmp_path / 'gateway.db'}"}}
        server: {{public_url: "{PUBLIC_URL}"}}
        workers: {{pipeline_threads: 0, batch_size: 100, coalesce_max: 20}}
        data_dir: {tmp_path}
        channels:
          {CHANNEL}: {{type: twilio, account_sid: "{ACCOUNT_SID}", auth_token: "{AUTH_TOKEN}"}}
        crms:
          desk: {{type: zendesk, subdomain: acme, base_url: "{fake.url}", email: agent@example.com,
                  api_token: test-zendesk-token, bulk_threshold: 10, directory_sync_seconds: 0,
                  reply_poll_seconds: 0}}
        routes:
          - {{from: [{CHANNEL}], to: desk}}
        """), encoding="utf-8")
    runtime = build_runtime(load_config(path), http=requests.Session())
    crm = runtime.crms["desk"]
    assert isinstance(crm, ZendeskCrm)
    crm.client.sleep = lambda _seconds: None
    prefill(runtime, messages, customers, run_id=7)
    run_pipeline(runtime)
    return runtime


def drain_due(worker: DeliveryWorker) -> int:
    """Deliver every row due now, one claim at a time, as a delivery thread does; the claims made."""
    claims = 0
    while batches := worker.claim():
        for groups in batches:
            worker.process(groups)
        claims += 1
    return claims


def pending(runtime: Runtime) -> int:
    with runtime.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(outbox).where(outbox.c.status == "pending")).scalar_one()


def advance(runtime: Runtime) -> None:
    """Jump the outbox's clock to the earliest ``available_at`` still ahead (rows behind a waiting row of their
    conversation are due already, and wait for it)."""
    with runtime.engine.begin() as conn:
        rows = conn.execute(select(outbox.c.id, outbox.c.available_at).where(outbox.c.status == "pending")).all()
        now = utcnow()
        ahead = [due for _, due in rows if due > now]
        if not ahead:
            return
        shift = min(ahead) - now
        for row_id, due in rows:
            conn.execute(update(outbox).where(outbox.c.id == row_id).values(available_at=due - shift))


def exactly_once(runtime: Runtime, fake: FakeZendesk) -> None:
    """Every stored message on exactly one comment; one ticket per conversation, one user per customer."""
    with runtime.engine.connect() as conn:
        rows = conn.execute(select(outbox.c.message_id, outbox.c.conversation_id, outbox.c.status)).all()
    assert {status for *_, status in rows} == {"done"}
    assert fake.comment_counts() == Counter({message_id: 1 for message_id, *_ in rows})
    tickets = Counter(ticket["external_id"] for ticket in fake.tickets())
    assert tickets == Counter({conversation: 1 for conversation in {c for _, c, _ in rows}})
    assert set(Counter(user["external_id"] for user in fake.users()).values()) == {1}


def retries(runtime: Runtime) -> list[Any]:
    with runtime.engine.connect() as conn:
        return conn.execute(select(delivery_log.c.error_code, delivery_log.c.uncertain).where(
            delivery_log.c.outcome == "retry")).all()


def test_a_backlog_that_met_503s_is_delivered_in_batches(tmp_path: Path, fake: FakeZendesk) -> None:
    """600 messages from 120 customers, two rounds of 503 first: at most 0.02 API calls per message in all."""
    runtime = gateway(tmp_path, fake, messages=600, customers=120)
    try:
        worker = DeliveryWorker(runtime, "worker-1")
        fake.outage(float("inf"))
        for _ in range(2):
            drain_due(worker)
            advance(runtime)
        fake.outage(float("-inf"))
        while pending(runtime):
            drain_due(worker)
            advance(runtime)

        exactly_once(runtime, fake)
        assert fake.unavailable > 0
        assert fake.request_count() / 600 <= 0.02, fake.endpoint_counts()
        # a 503 wrote nothing: no ticket looked up, no audit read, nothing sent one conversation at a time
        assert set(fake.endpoint_counts()) == {"POST /api/v2/users/create_or_update_many",
                                               "POST /api/v2/tickets/create_many",
                                               "GET /api/v2/job_statuses/show_many"}
        assert retries(runtime) and {tuple(r) for r in retries(runtime)} == {("503", False)}
        with runtime.engine.connect() as conn:
            assert conn.execute(select(func.max(outbox.c.certain_failures))).scalar_one() == 2
    finally:
        runtime.close()


@pytest.mark.parametrize("method, path, after", [("POST", "/tickets/create_many", 0),
                                                 ("GET", "/job_statuses/show_many", 1)])  # the users' job first
def test_a_batch_whose_answer_is_lost_is_written_once(tmp_path: Path, fake: FakeZendesk, method: str,
                                                      path: str, after: int) -> None:
    """Zendesk queues the job, then the connection drops before the answer (or before the job's status) arrives."""
    runtime = gateway(tmp_path, fake, messages=24, customers=12)
    try:
        worker = DeliveryWorker(runtime, "worker-1")
        fake.lose_next_answer(method, "/api/v2" + path, after=after)
        drain_due(worker)
        assert len(fake.lost) == 1 and pending(runtime) == 24
        assert {tuple(r) for r in retries(runtime)} == {("network", True)}  # recorded as uncertain
        before = fake.endpoint_counts()
        advance(runtime)
        assert drain_due(worker) == 1  # the rows one failure ended come back together
        assert pending(runtime) == 0

        exactly_once(runtime, fake)
        retry = fake.endpoint_counts() - before
        if path == "/tickets/create_many":
            # no job id came back: each conversation is looked up on its own, and nothing is created again
            assert retry["GET /api/v2/tickets"] == 12 and not retry["POST /api/v2/tickets/create_many"]
        else:
            # the job is known: one read of its status settles all twelve conversations
            assert retry == Counter({"GET /api/v2/job_statuses/show_many": 1})
    finally:
        runtime.close()


def test_a_comment_whose_answer_is_lost_is_written_once(tmp_path: Path, fake: FakeZendesk) -> None:
    """A single-path comment (below the batch threshold) lands, the connection drops, the retry reads the audits."""
    runtime = gateway(tmp_path, fake, messages=2, customers=1)
    try:
        worker = DeliveryWorker(runtime, "worker-1")
        with runtime.engine.begin() as conn:  # only the first message now: it opens the ticket
            conn.execute(update(outbox).where(outbox.c.id == 2).values(available_at=utcnow().replace(year=2999)))
        drain_due(worker)
        [ticket] = fake.tickets()
        with runtime.engine.begin() as conn:
            conn.execute(update(outbox).where(outbox.c.id == 2).values(available_at=utcnow()))
        fake.lose_next_answer("PUT", f"/api/v2/tickets/{ticket['id']}")
        drain_due(worker)
        assert {tuple(r) for r in retries(runtime)} == {("network", True)}
        advance(runtime)
        drain_due(worker)

        exactly_once(runtime, fake)
        assert fake.endpoint_counts()["GET /api/v2/tickets/{id}/audits"] == 1
    finally:
        runtime.close()
