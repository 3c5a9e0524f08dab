"""Threading's reads: thread keys are looked up in one statement however many a mail names, and the order of
priority stays (the In-Reply-To first, then the References from the latest ancestor back, then the mail's own
Message-ID); continuity and the conversation a new one follows are read in one statement."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import Engine, select

from gateway.config import ConversationsConfig
from gateway.conversations import assign_conversation, close_conversation, email_thread_key
from gateway.identity import resolve_customer
from gateway.model import ChannelType, Identifier, IdentifierKind, Message, Party, ThreadRef
from gateway.plugins import inbound_message
from gateway.records import RawRecord
from gateway.storage.db import utcnow
from gateway.storage.tables import thread_keys
from tests.test_identity_round_trips import counted

SETTINGS = ConversationsConfig()
SENDER = Party(identifiers=(Identifier(kind=IdentifierKind.EMAIL, value="asha@example.com"),), display_name="Asha")


@pytest.fixture
def engine(migrated_engine: Engine) -> Engine:
    return migrated_engine


def mail(message_id: str, in_reply_to: str | None = None, references: tuple[str, ...] = (),
         days_later: int = 0, connector: str = "mail") -> Message:
    at = utcnow() + timedelta(days=days_later)
    record = RawRecord(inbox_id=1, connector=connector, provider_id=message_id, kind="message", body=b"",
                       content_type="message/rfc822", headers={}, public_url="", received_at=at)
    return inbound_message(record, connector_type="imap", channel=ChannelType.EMAIL, provider_message_id=message_id,
                           thread=ThreadRef(message_id=message_id, in_reply_to=in_reply_to, references=references),
                           sender=SENDER, text="Any news?", sent_at=at)


def started(engine: Engine, *message_ids: str) -> tuple[str, list[str]]:
    """A customer and one conversation per Message-ID, each known by that ID alone; days apart, so that continuity
    (72 hours) never joins them."""
    with engine.begin() as conn:
        customer_id = resolve_customer(conn, SENDER, message_id="m0").customer_id
        ids = [assign_conversation(conn, mail(message_id, days_later=-10 * (len(message_ids) - n)), customer_id,
                                   SETTINGS).conversation_id for n, message_id in enumerate(message_ids)]
    assert len(set(ids)) == len(ids)
    return customer_id, ids


def test_the_in_reply_to_wins_over_the_references_and_the_latest_reference_over_older_ones(engine: Engine) -> None:
    customer_id, (older, newer, answered) = started(engine, "older@x", "newer@x", "answered@x")
    with engine.begin() as conn:
        reply = assign_conversation(conn, mail("r1@x", in_reply_to="answered@x", references=("older@x", "newer@x")),
                                    customer_id, SETTINGS)
        by_references = assign_conversation(conn, mail("r2@x", in_reply_to="unknown@x",
                                                       references=("older@x", "newer@x", "unknown@x")),
                                            customer_id, SETTINGS)
    assert (reply.rule, reply.conversation_id) == ("thread_key", answered)
    assert (by_references.rule, by_references.conversation_id) == ("thread_key", newer)
    assert older not in (reply.conversation_id, by_references.conversation_id)


def test_keys_already_taken_keep_their_conversation_and_the_others_join_the_reply(engine: Engine) -> None:
    customer_id, (first, second) = started(engine, "first@x", "second@x")
    with engine.begin() as conn:
        reply = assign_conversation(conn, mail("r1@x", in_reply_to="second@x", references=("first@x", "gone@x")),
                                    customer_id, SETTINGS)
        owners = dict(conn.execute(select(thread_keys.c.key, thread_keys.c.conversation_id)).all())
    assert reply.conversation_id == second
    assert owners[email_thread_key("first@x")] == first
    assert owners[email_thread_key("second@x")] == second
    assert owners[email_thread_key("gone@x")] == owners[email_thread_key("r1@x")] == second


def test_one_select_finds_the_thread_however_many_references_a_mail_names(engine: Engine) -> None:
    customer_id, (conversation,) = started(engine, "root@x")
    references = (*(f"ancestor{n}@x" for n in range(30)), "root@x")
    with engine.begin() as conn, counted(conn) as sent:
        reply = assign_conversation(conn, mail("deep@x", in_reply_to="root@x", references=references),
                                    customer_id, SETTINGS)
    assert (reply.rule, reply.conversation_id) == ("thread_key", conversation)
    lookups = [statement for statement in sent if "FROM thread_keys" in statement]
    assert len(lookups) == 1, sent
    with engine.begin() as conn, counted(conn) as sent:
        unknown = assign_conversation(conn, mail("lone@x", references=tuple(f"lost{n}@x" for n in range(30)),
                                                 days_later=30), customer_id, SETTINGS)
    assert unknown.rule == "new"
    assert len([statement for statement in sent if "FROM thread_keys" in statement]) == 1, sent


@pytest.mark.parametrize("continuity", ["same_ticket", "per_channel"])
def test_continuity_or_else_the_latest_conversation_in_one_read(engine: Engine, continuity: str) -> None:
    settings = ConversationsConfig(continuity=continuity)
    customer_id, (closed, other_channel) = started(engine, "closed@x", "other@x")
    with engine.begin() as conn:
        close_conversation(conn, closed)
        open_here = assign_conversation(conn, mail("here@x", days_later=-5), customer_id, settings)
        assert (open_here.rule, open_here.previous_id) == ("new", other_channel)
    with engine.begin() as conn:
        touched = assign_conversation(conn, mail("touch@x", days_later=-1, connector="mail-2"), customer_id, settings)
        with counted(conn) as sent:
            followed = assign_conversation(conn, mail("next@x"), customer_id, settings)
    if continuity == "same_ticket":  # the latest open conversation in the window, whichever channel it came in on
        assert (followed.rule, followed.conversation_id) == ("continuity", touched.conversation_id)
    else:  # only this connector's, here the one opened 5 days ago: outside the window, so a new one follows the latest
        assert (followed.rule, followed.opened, followed.previous_id) == ("new", True, touched.conversation_id)
    assert len([statement for statement in sent if "FROM conversations" in statement]) == 1, sent
