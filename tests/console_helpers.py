"""What the console tests share: accounts, logging in through the form, and a database with a story in it (two
customers who look alike, a delivered message, a dead letter)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlencode

from flask.testing import FlaskClient
from sqlalchemy import select

from gateway.console.accounts import add_user
from gateway.delivery import DeliveryWorker
from gateway.identity.merges import suggest
from gateway.pipeline import PipelineWorker
from gateway.records import InboxItem
from gateway.runtime import Runtime
from gateway.storage.tables import conversations, dead_letters, inbox, messages
from gateway.worker import drain_once
from tests.conftest import PUBLIC_URL, TWILIO_SID

ADMIN, VIEWER = "ann", "vic"
PASSWORD = "correct horse battery staple"
PHONE, OTHER_PHONE = "+14017122661", "+14017122662"
TEXT = "Where is my parcel? Order 4417"
SLACK_TOKEN = "fake-legacy-verification-token"


@dataclass(frozen=True)
class Story:
    conversation_id: str
    message_id: str
    customer_a: str
    customer_b: str
    suggestion_id: int
    dead_letter_id: int
    dead_inbox_id: int


def add_accounts(runtime: Runtime) -> None:
    with runtime.engine.begin() as conn:
        add_user(conn, ADMIN, "admin", PASSWORD)
        add_user(conn, VIEWER, "viewer", PASSWORD)


def csrf_token(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, "no CSRF token in the page"
    return found.group(1)


def log_in(client: FlaskClient, name: str, password: str = PASSWORD) -> int:
    token = csrf_token(client.get("/admin/login").get_data(as_text=True))
    return client.post("/admin/login", data={"name": name, "password": password, "csrf_token": token}).status_code


def sms(sid: str, sender: str, body: str) -> InboxItem:
    form = {"MessageSid": sid, "SmsSid": sid, "AccountSid": TWILIO_SID, "From": sender, "To": "+15005550006",
            "Body": body, "NumMedia": "0", "NumSegments": "1", "SmsStatus": "received"}
    return InboxItem(sid, urlencode(form).encode(), "application/x-www-form-urlencoded")


def drain(rt: Runtime) -> None:
    pipeline, delivery = PipelineWorker(rt, "test-p"), DeliveryWorker(rt, "test-d")
    while drain_once(pipeline) + drain_once(delivery):
        pass


def tell_story(rt: Runtime) -> Story:
    """Two customers' messages delivered to the trial CRM, a suggestion that they are one person, and a Slack-like
    request that failed in the pipeline (a dead letter whose body holds a token)."""
    url = f"{PUBLIC_URL}/hooks/sms-main"
    rt.queues.store_inbox("sms-main", [sms("SM" + "a" * 32, PHONE, TEXT)], {}, url)
    rt.queues.store_inbox("sms-main", [sms("SM" + "b" * 32, OTHER_PHONE, "Same parcel, other phone")], {}, url)
    drain(rt)
    rt.queues.store_inbox("sms-main", [InboxItem(
        "Ev0DEAD", f'{{"token": "{SLACK_TOKEN}", "type": "event_callback", "event": {{"text": "hi"}}}}'.encode(),
        "application/json")], {"X-Slack-Signature": "v0=abc", "Content-Type": "application/json"}, url)
    with rt.engine.begin() as conn:
        message = conn.execute(select(messages).where(messages.c.provider_message_id == "SM" + "a" * 32)).one()
        other = conn.execute(select(messages).where(messages.c.provider_message_id == "SM" + "b" * 32)).one()
        conversation = conn.execute(select(conversations).where(
            conversations.c.id == message.conversation_id)).one()
        suggestion = suggest(conn, message.customer_id, other.customer_id, 91.0, "same name, same order number")
        dead_inbox = conn.execute(select(inbox.c.id).where(inbox.c.provider_id == "Ev0DEAD")).scalar_one()
        letter = rt.queues.dead_letter(conn, stage="pipeline", source_id=dead_inbox, target="sms-main",
                                       error_class="permanent", reason="could not read the event", attempts=1)
    assert letter is not None
    with rt.engine.connect() as conn:
        first = conn.execute(select(dead_letters.c.id).where(dead_letters.c.id == letter)).scalar_one()
    a, b = sorted((message.customer_id, other.customer_id))
    return Story(conversation.id, message.id, a, b, suggestion, first, dead_inbox)
