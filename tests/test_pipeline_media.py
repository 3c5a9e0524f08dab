"""A slow media host delays only the messages that wait for its media, never other customers' messages.

The media host is real (loopback, plain http allowed for it in the config) and sends its file one byte at a time,
so the download is in progress for as long as the test wants; nothing here sleeps to synchronise.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import requests
from sqlalchemy import select

from gateway.config import load_config
from gateway.pipeline import PipelineWorker
from gateway.records import InboxItem
from gateway.runtime import Runtime, build_runtime
from gateway.storage.tables import inbox, messages, outbox
from gateway.worker import run_loop
from tests.conftest import PUBLIC_URL, TWILIO_SID
from tests.helpers import wait_for
from tests.media_server import MediaServer

CONFIG = f"""
storage: {{url: "{{storage_url}}"}}
server: {{public_url: "{PUBLIC_URL}"}}
workers: {{idle_poll_seconds: 0.05, enrich_wait_seconds: 0.5, enrich_threads: 1,
          retry: {{initial_seconds: 0.05, max_seconds: 0.2, jitter_seconds: 0}}}}
media: {{allow_networks: ["127.0.0.1/32"], allow_http: true, deadline_seconds: 120}}
channels:
  sms-main: {{type: twilio, account_sid: "{TWILIO_SID}", auth_token: "test-token", media_hosts: ["127.0.0.1"]}}
crms:
  trial: {{type: jsonl, path: out/crm.jsonl}}
routes:
  - {{from: [sms-main], to: trial}}
"""
ALICE, BOB, CAROL = "+14155550101", "+14155550102", "+14155550103"


def twilio(sid: str, sender: str, body: str, media_url: str | None = None) -> InboxItem:
    form = {"MessageSid": sid, "SmsSid": sid, "AccountSid": TWILIO_SID, "From": sender, "To": "+15005550006",
            "Body": body, "NumMedia": "1" if media_url else "0", "NumSegments": "1", "SmsStatus": "received"}
    if media_url:
        form.update(MediaUrl0=media_url, MediaContentType0="image/jpeg")
    return InboxItem(sid, urlencode(form).encode(), "application/x-www-form-urlencoded")


@pytest.fixture
def media_host(tmp_path: Path) -> Iterator[MediaServer]:
    server = MediaServer(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def rt(write_config: Callable[..., Path]) -> Iterator[Runtime]:
    runtime = build_runtime(load_config(write_config(CONFIG)), http=requests.Session())
    yield runtime
    runtime.close()


@pytest.fixture
def pipeline(rt: Runtime) -> Iterator[Callable[[], None]]:
    """Starts one pipeline thread, as ``gateway work`` runs it; stopped at the end of the test."""
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def start() -> None:
        thread = threading.Thread(target=run_loop, args=(PipelineWorker(rt, "test-p"), stop, 0.05), daemon=True)
        thread.start()
        threads.append(thread)

    yield start
    stop.set()
    for thread in threads:
        thread.join(timeout=60)


def stored_texts(rt: Runtime) -> list[tuple[str, str]]:
    """(sender, text) of each message that reached the outbox, in outbox order."""
    with rt.engine.connect() as conn:
        rows = conn.execute(select(messages.c.data).join(outbox, outbox.c.message_id == messages.c.id)
                            .order_by(outbox.c.id))
        return [(row.data["sender"]["identifiers"][0]["value"], row.data["text"]) for row in rows]


def test_a_plain_sms_does_not_wait_for_another_customers_slow_media(
        rt: Runtime, media_host: MediaServer, pipeline: Callable[[], None]) -> None:
    """Two downloads fill the media pool (one thread here); the SMS is enriched on the other pool and stored."""
    slow = media_host.url("/dribble?bytes=100000&every=0.05", host="127.0.0.1")  # about 80 minutes at this pace
    rt.queues.store_inbox("sms-main", [twilio("MM" + "1" * 32, ALICE, "photo", slow),
                                       twilio("MM" + "6" * 32, CAROL, "another photo", slow),
                                       twilio("SM" + "2" * 32, BOB, "where is my order?")], {}, PUBLIC_URL)
    pipeline()  # one thread, one claim: all three rows in the same batch
    wait_for(lambda: (BOB, "where is my order?") in stored_texts(rt), 60, "Bob's SMS in the outbox")
    assert media_host.dribbling.is_set() and not media_host.stop_event.is_set()  # Alice's media still arriving
    assert [sender for sender, _ in stored_texts(rt)] == [BOB]
    with rt.engine.connect() as conn:
        alice = conn.execute(select(inbox.c.status, inbox.c.attempts).where(inbox.c.provider_id == "MM" + "1" * 32)
                             ).one()
    assert alice.status == "pending" and alice.attempts <= 1  # waiting for its media is not a failed attempt


def test_a_customer_s_later_messages_wait_behind_their_own_media(
        rt: Runtime, media_host: MediaServer, pipeline: Callable[[], None]) -> None:
    slow = media_host.url("/dribble?bytes=40&every=0.05", host="127.0.0.1")  # about 2 s: several claims
    rt.queues.store_inbox("sms-main", [twilio("MM" + "3" * 32, ALICE, "photo", slow),
                                       twilio("SM" + "4" * 32, ALICE, "did you get the photo?"),
                                       twilio("SM" + "5" * 32, BOB, "hello")], {}, PUBLIC_URL)
    pipeline()
    wait_for(lambda: len(stored_texts(rt)) == 3, 60, "all three messages in the outbox")
    assert stored_texts(rt) == [(BOB, "hello"), (ALICE, "photo"), (ALICE, "did you get the photo?")]
    assert media_host.requests.count(slow.split(str(media_host.port), 1)[1]) == 1  # one download, picked up again
    with rt.engine.connect() as conn:
        [data] = conn.execute(select(messages.c.data).where(messages.c.provider_message_id == "MM" + "3" * 32)
                              ).scalars()
    attachment: dict[str, Any] = data["attachments"][0]
    assert attachment["location"].startswith("store:sha256/") and attachment["size"] == 40
