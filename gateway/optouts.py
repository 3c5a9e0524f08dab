"""Opt-outs: a customer who texts STOP is not messaged on that channel again until they text START.

Carriers and Twilio enforce this for SMS too (error 21610); keeping it here means the agent hears why at once and no
attempt is made. Keywords are those US carriers and Twilio's Advanced Opt-Out recognise, matched on the whole
message (trimmed, any case), as they are.
"""

from __future__ import annotations

from sqlalchemy import Connection, delete, select

from gateway.model import ChannelType, Direction, IdentifierKind, Message
from gateway.storage.db import utcnow
from gateway.storage.queues import insert_for
from gateway.storage.tables import opt_outs

STOP_WORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"})
START_WORDS = frozenset({"START", "UNSTOP", "YES"})
KEYWORD_CHANNELS = frozenset({ChannelType.SMS, ChannelType.MMS, ChannelType.WHATSAPP})


def phone_of(message: Message) -> str | None:
    return next((i.value for i in message.sender.identifiers if i.kind is IdentifierKind.PHONE), None)


def record_keyword(conn: Connection, message: Message) -> str | None:
    """Record STOP or START sent by the customer; return the keyword when it was one."""
    if message.direction is not Direction.INBOUND or message.channel not in KEYWORD_CHANNELS:
        return None
    keyword = message.text.strip().strip(".!").upper()
    address = phone_of(message)
    if address is None or (keyword not in STOP_WORDS and keyword not in START_WORDS):
        return None
    if keyword in STOP_WORDS:
        add_opt_out(conn, message.connector, address, keyword)
    else:
        conn.execute(delete(opt_outs).where(opt_outs.c.channel == message.connector, opt_outs.c.address == address))
    return keyword


def add_opt_out(conn: Connection, channel: str, address: str, keyword: str) -> None:
    conn.execute(insert_for(conn.engine, opt_outs).values(
        channel=channel, address=address, keyword=keyword[:32], created_at=utcnow()
    ).on_conflict_do_nothing(index_elements=["channel", "address"]))


def opted_out(conn: Connection, channel: str, address: str | None) -> str | None:
    """The keyword the customer opted out with on this channel, or None."""
    if address is None:
        return None
    return conn.execute(select(opt_outs.c.keyword).where(
        opt_outs.c.channel == channel, opt_outs.c.address == address)).scalar()
