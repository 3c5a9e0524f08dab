"""The whole loop on the real pipeline: a customer's email, the agent's reply sent by SMTP, the customer's answer.

The send worker stores the thread key of the Message-ID our reply carried; the customer's answer names it in
In-Reply-To and so joins the same conversation by its thread key, even when nothing else would thread it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from sqlalchemy import select

from connectors.sendgrid import multipart_body
from gateway.config import GatewayConfig, load_config
from gateway.conversations import email_thread_key
from gateway.mail.mime import provider_id
from gateway.records import InboxItem
from gateway.replies import crm_inbox_name
from gateway.runtime import Runtime, build_runtime
from gateway.sending import SendWorker
from gateway.storage.tables import messages, sends, thread_keys
from gateway.worker import drain_once
from tests.conformance.channel import drain_pipeline
from tests.conftest import PUBLIC_URL
from tests.mail.corpus import CUSTOMER, text_mail
from tests.smtp_server import SmtpServer

CHANNEL = "mail-sendgrid"


@pytest.fixture
def config(write_config: Callable[..., Path], smtp_server: SmtpServer) -> GatewayConfig:
    channel = {"type": "sendgrid", "url_token": "test-url-token-123456", "smtp": smtp_server.settings()}
    return load_config(write_config(f"""
storage: {{url: "{{storage_url}}"}}
server: {{public_url: "{PUBLIC_URL}"}}
workers: {{retry: {{initial_seconds: 0.01, max_seconds: 0.05, jitter_seconds: 0}}}}
channels:
  {CHANNEL}: {json.dumps(channel)}
crms:
  trial: {{type: jsonl, path: out/crm.jsonl, reply_secret: "test-reply-secret"}}
routes:
  - {{from: [{CHANNEL}], to: trial}}
"""))


@pytest.fixture
def runtime(config: GatewayConfig) -> Iterator[Runtime]:
    rt = build_runtime(config, http=requests.Session())
    yield rt
    rt.close()


def receive(runtime: Runtime, raw: bytes) -> dict[str, str]:
    body, content_type = multipart_body({"email": raw})
    runtime.queues.store_inbox(CHANNEL, [InboxItem(provider_id(raw), body, content_type)], {}, "")
    drain_pipeline(runtime)
    with runtime.engine.connect() as conn:
        row = conn.execute(select(messages.c.conversation_id, messages.c.thread_rule)
                           .where(messages.c.provider_message_id == provider_id(raw))).one()
    return row._asdict()


def test_the_customer_answer_to_our_reply_joins_the_conversation(runtime: Runtime, smtp_server: SmtpServer) -> None:
    first = receive(runtime, text_mail("My kettle is broken.", subject="Broken kettle",
                                       message_id="k1@mail.example.org"))
    conversation = first["conversation_id"]

    reply = {"conversation_id": conversation, "reply_id": "r-1", "text": "Sorry to hear that! Is the light on?",
             "author": "Ann Agent", "author_id": "42"}
    runtime.queues.store_inbox(crm_inbox_name("trial"), [InboxItem(
        "reply:r-1", json.dumps(reply).encode(), "application/json", "agent_reply")], {}, "")
    drain_pipeline(runtime)
    assert drain_once(SendWorker(runtime, "test-send")) == 1

    [sent] = smtp_server.received
    our_id = sent.mail["Message-ID"].strip("<>")
    assert sent.rcpt_tos == (CUSTOMER,) and sent.mail["In-Reply-To"] == "<k1@mail.example.org>"
    assert sent.mail["Subject"] == "Re: Broken kettle"
    with runtime.engine.connect() as conn:
        row = conn.execute(select(sends.c.status, sends.c.provider_message_id)).one()
        key_owner = conn.execute(select(thread_keys.c.conversation_id)
                                 .where(thread_keys.c.key == email_thread_key(our_id))).scalar_one()
    assert (row.status, row.provider_message_id) == ("sent", our_id)
    assert key_owner == conversation

    # the customer answers from a client that names only the parent (our reply), with a new subject line
    answer = receive(runtime, text_mail("Yes, the light is on but it stays cold.", subject="kettle",
                                        message_id="k3@mail.example.org", in_reply_to=our_id, references=(our_id,)))
    assert answer == {"conversation_id": conversation, "thread_rule": "thread_key"}
