"""Email threading: References/In-Reply-To first, then the subject token, only for the ticket's own customer."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from connectors.sendgrid import multipart_body
from gateway.config import GatewayConfig, load_config
from gateway.conversations import close_conversation
from gateway.mail.mime import provider_id
from gateway.records import InboxItem
from gateway.runtime import Runtime
from gateway.storage.db import utcnow
from gateway.storage.tables import crm_links, messages
from tests.conformance.channel import config_text, drain_pipeline
from tests.mail.corpus import text_mail

CHANNEL = "mail-sendgrid"


@pytest.fixture
def config(write_config: Callable[..., Path]) -> GatewayConfig:
    return load_config(write_config(config_text(CHANNEL, {"type": "sendgrid", "url_token": "test-url-token-123456"})))


def deliver(runtime: Runtime, raw: bytes) -> dict[str, Any]:
    body, content_type = multipart_body({"email": raw})
    runtime.queues.store_inbox(CHANNEL, [InboxItem(provider_id(raw), body, content_type)], {}, "")
    drain_pipeline(runtime)
    with runtime.engine.connect() as conn:
        row = conn.execute(select(messages.c.conversation_id, messages.c.thread_rule, messages.c.customer_id)
                           .order_by(messages.c.created_at.desc(), messages.c.id).limit(1)).one()
    return row._asdict()


def test_thread_keys_then_subject_token_then_new(runtime: Runtime) -> None:
    first = deliver(runtime, text_mail("My kettle is broken.", message_id="t1@example.org"))
    assert first["thread_rule"] == "new"
    with runtime.engine.begin() as conn:
        conn.execute(crm_links.insert().values(crm="trial", entity="conversation", local_id=first["conversation_id"],
                                               remote_id="1234", data={}, updated_at=utcnow()))
        close_conversation(conn, first["conversation_id"])  # so continuity cannot be what threads the next ones

    # any ancestor in References finds the conversation, even with an unknown In-Reply-To
    reply = deliver(runtime, text_mail("Any news?", message_id="t2@example.org", in_reply_to="unknown@crm.example",
                                       references=("t1@example.org", "unknown@crm.example")))
    assert (reply["thread_rule"], reply["conversation_id"]) == ("thread_key", first["conversation_id"])

    # no thread headers (a new mail from the customer's phone), the ticket number in the subject
    token = deliver(runtime, text_mail("Still broken", message_id="t3@example.org",
                                       subject="Re: [#1234] Broken kettle"))
    assert (token["thread_rule"], token["conversation_id"]) == ("subject_token", first["conversation_id"])

    # an agent forwarding the ticket is not its customer: the token does not thread it there
    forward = deliver(runtime, text_mail("FYI", sender="Agent Smith <agent@example.net>", message_id="t4@example.org",
                                         subject="Fwd: [#1234] Broken kettle"))
    assert forward["conversation_id"] != first["conversation_id"]
    assert forward["thread_rule"] == "new"

    # a token naming no known ticket falls through
    unknown = deliver(runtime, text_mail("Other", message_id="t5@example.org", subject="[#9999] Other question"))
    assert unknown["thread_rule"] in ("new", "continuity") and unknown["conversation_id"] != first["conversation_id"]


def test_subject_token_setting_is_validated(write_config: Callable[..., Path]) -> None:
    from gateway.yamlsource import ConfigError

    text = config_text(CHANNEL, {"type": "sendgrid", "url_token": "test-url-token-123456"})
    with pytest.raises(ConfigError, match="one capturing group"):
        load_config(write_config(text + "conversations: {subject_token: '\\\\[#\\\\d+\\\\]'}\n"))


def test_reply_processed_before_its_parent_still_shares_its_conversation(runtime: Runtime) -> None:
    reply = deliver(runtime, text_mail("Following up", message_id="o2@example.org", in_reply_to="o1@example.org",
                                       references=("o1@example.org",)))
    with runtime.engine.begin() as conn:  # so continuity cannot be what joins them
        close_conversation(conn, reply["conversation_id"])
    parent = deliver(runtime, text_mail("The first mail", message_id="o1@example.org"))
    assert parent["conversation_id"] == reply["conversation_id"]
    assert parent["thread_rule"] == "thread_key"
