"""Replies through real worker processes on PostgreSQL, killed with SIGKILL while Twilio holds a reply it accepted.

The fake Twilio creates the message and then holds its answer (``hang``): the worker has sent a text and does not
know it. The worker is killed right then, a new one starts, finds the attempt recorded, asks Twilio's message list
and records the text as sent. Every customer gets each reply exactly once: never two texts, never none.
"""

from __future__ import annotations

import json
import os
import signal
from collections import Counter
from pathlib import Path

import requests
from pydantic import SecretStr
from sqlalchemy import func, select

from gateway import signed_replies
from gateway.config import load_config
from gateway.runtime import build_runtime
from gateway.storage.tables import conversations, crm_notes, dead_letters, messages, send_log, sends
from tests.fake_twilio import FakeTwilio
from tests.helpers import (
    TWILIO_SID,
    TWILIO_TOKEN,
    GatewayProcess,
    message_sid,
    twilio_inbox_item,
    twilio_params,
    wait_for,
)

CUSTOMERS = 24
KILLS = 3
BUSINESS = "+15005550006"
REPLY_SECRET = "test-reply-secret"


def config_text(storage_url: str, twilio_url: str) -> str:
    return f"""\
storage: {{url: "{storage_url}"}}
server: {{listen: "127.0.0.1:0", public_url: "http://127.0.0.1:9"}}
workers: {{idle_poll_seconds: 0.05, lease_seconds: 5, send_threads: 2,
           retry: {{initial_seconds: 0.05, max_seconds: 0.5, jitter_seconds: 0}}}}
logging: {{level: WARNING}}
channels:
  sms-main: {{type: twilio, account_sid: "{TWILIO_SID}", auth_token: "{TWILIO_TOKEN}", api_base_url: "{twilio_url}",
             send_per_minute: 6000, reconcile_settle_seconds: 0}}
crms:
  trial: {{type: jsonl, path: out/crm.jsonl, reply_secret: "{REPLY_SECRET}"}}
routes:
  - {{from: [sms-main], to: trial}}
"""


def customer(n: int) -> str:
    return f"+1415555{n:04d}"


def test_a_worker_killed_after_twilio_took_a_reply_never_texts_twice_or_never(postgres_url: str,
                                                                             tmp_path: Path) -> None:
    with FakeTwilio(TWILIO_SID, TWILIO_TOKEN) as fake:
        path = tmp_path / "config.yaml"
        path.write_text(config_text(postgres_url, fake.url), encoding="utf-8")
        rt = build_runtime(load_config(path), http=requests.Session())  # migrates before any worker starts
        rt.queues.store_inbox("sms-main", [
            twilio_inbox_item(twilio_params(message_sid(n), customer(n), f"question {n}", TWILIO_SID, to=BUSINESS))
            for n in range(CUSTOMERS)], {}, "http://127.0.0.1:9/hooks/sms-main")
        workers: list[GatewayProcess] = []

        def start_worker() -> GatewayProcess:
            proc = GatewayProcess(["work", "-c", str(path)], tmp_path / f"work{len(workers)}.log")
            workers.append(proc)
            return proc

        def count(table: object, *where: object) -> int:
            with rt.engine.connect() as conn:
                return conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one()

        try:
            worker = start_worker()
            wait_for(lambda: count(conversations) == CUSTOMERS, 60, "every customer's conversation")
            with rt.engine.connect() as conn:
                by_customer = {row.data["sender"]["identifiers"][0]["value"]: row.conversation_id
                               for row in conn.execute(select(messages.c.data, messages.c.conversation_id))}
            for kill in range(KILLS):
                fake.set_mode("hang", times=1)
                if kill == 0:  # every reply is posted once; the later kills catch replies still queued
                    for phone, conversation in sorted(by_customer.items()):
                        request = signed_replies.sample(SecretStr(REPLY_SECRET), conversation_id=conversation,
                                                        text=f"answer for {phone}", public_url="http://x/")
                        rt.queues.store_inbox("crm:trial", signed_replies.split(request), {}, "")
                wait_for(fake.held.is_set, 60, f"Twilio holding a reply it accepted (kill {kill + 1})")
                os.killpg(worker.pid, signal.SIGKILL)  # after the provider took it, before the outcome committed
                worker.wait(10)
                fake.release.set()
                worker = start_worker()
            wait_for(lambda: count(sends, sends.c.status == "sent") == CUSTOMERS, 120, "every reply sent",
                     interval=0.2)
            assert worker.alive(), worker.output()[-3000:]
        finally:
            fake.release.set()
            for proc in workers:
                proc.stop()

        counts = fake.sent_counts()
        assert sorted(counts) == sorted(by_customer), "every customer got a reply"
        assert set(counts.values()) == {1}, f"a customer was texted twice: {Counter(counts.values())}"
        for message in fake.messages():
            assert message["body"] == f"answer for {message['to']}" and message["from"] == BUSINESS
        with rt.engine.connect() as conn:
            reconciled = conn.execute(select(func.count()).select_from(send_log).where(
                send_log.c.outcome == "reconciled")).scalar_one()
            sent_ids = {row.provider_message_id for row in conn.execute(select(sends.c.provider_message_id))}
            assert conn.execute(select(func.count()).select_from(dead_letters)).scalar_one() == 0
            assert conn.execute(select(func.count()).select_from(crm_notes)).scalar_one() == 0
        # each kill interrupts the held attempt, and may interrupt the other send thread's too: all are reconciled
        assert KILLS <= reconciled <= 2 * KILLS, "each killed attempt was looked up at Twilio, not sent again"
        assert sent_ids == {message["sid"] for message in fake.messages()}
        rt.close()
        assert json.loads(json.dumps(fake.requests))["POST create"] == CUSTOMERS
