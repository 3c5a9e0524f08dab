"""Automatic acknowledgements, through the real pipeline, delivery, send and note workers: an SMS opens a ticket in
the fake Zendesk, the customer gets one text from the fake Twilio naming the ticket, and the ticket shows it as a
public comment. The clock is the message's own time (set on its inbox row) and the acknowledger's clock."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner
from sqlalchemy import select, update

from gateway.acks import Acknowledgements
from gateway.attachments import AttachmentStore
from gateway.cli import main
from gateway.config import load_config
from gateway.delivery import DeliveryWorker
from gateway.erasure import erase, export, holdings
from gateway.mail.normalize import EmailSettings, email_to_messages
from gateway.mail.reply import compose
from gateway.model import ChannelType, Direction, Identifier, IdentifierKind, Message, Party, RawRef, ThreadRef
from gateway.notes import NoteWorker
from gateway.pipeline import PipelineWorker
from gateway.plugins import CustomerView, SendRequest
from gateway.records import RawRecord
from gateway.runtime import Runtime, build_runtime
from gateway.sending import SendWorker
from gateway.storage.tables import acknowledgements, conversations, inbox, sends
from gateway.worker import drain_once
from gateway.yamlsource import ConfigError
from tests.conftest import PUBLIC_URL, ROOT, TWILIO_SID, TWILIO_TOKEN
from tests.fake_twilio import FakeTwilio
from tests.fake_zendesk import FakeZendesk
from tests.helpers import zendesk_crm
from tests.test_pipeline import sms

CUSTOMER = "+14155550100"
BUSINESS = "+15005550006"
# Monday 12 January 2026, 11:00 in Kochi (05:30 UTC): open; Saturday 10 January, 11:00: closed.
OPEN_TIME = datetime(2026, 1, 12, 5, 30, tzinfo=UTC)
CLOSED_TIME = datetime(2026, 1, 10, 5, 30, tzinfo=UTC)
MALAYALAM = "എന്റെ ഓർഡർ ഇതുവരെ എത്തിയില്ല, ദയവായി സഹായിക്കുക"


def config_text(twilio_url: str, zendesk_url: str, rules: str) -> str:
    return f"""
storage: {{url: "{{storage_url}}"}}
server: {{public_url: "{PUBLIC_URL}"}}
workers: {{retry: {{initial_seconds: 0.01, max_seconds: 0.05, jitter_seconds: 0}}}}
business_hours:
  kochi: {{timezone: Asia/Kolkata, hours: {{mon-fri: ["09:00-18:00"]}}}}
channels:
  sms-main: {{type: twilio, account_sid: "{TWILIO_SID}", auth_token: "{TWILIO_TOKEN}", api_base_url: "{twilio_url}",
             send_per_minute: 6000, reconcile_settle_seconds: 0}}
crms: {zendesk_crm(zendesk_url)}
routes:
  - {{from: [sms-main], to: desk}}
acknowledgements: {rules}
"""


FULL_RULES = """
  - channels: [sms-main]
    business_hours: kochi
    response_minutes: 120
    text:
      default: "Thanks, we got your message (ticket {{ ticket.id }}). We answer by {{ expected_response }}."
      ml: "നന്ദി, നിങ്ങളുടെ സന്ദേശം ലഭിച്ചു (ടിക്കറ്റ് {{ ticket.id }})."
    closed_text:
      default: "Thanks (ticket {{ ticket.id }}). We are closed now; our hours: {{ business_hours }}."
"""


@dataclass
class Gateway:
    rt: Runtime
    twilio: FakeTwilio
    zendesk: FakeZendesk
    now: datetime = OPEN_TIME

    def clock(self) -> datetime:
        return self.now

    def receive(self, sid: str, text: str, at: datetime, sender: str = CUSTOMER) -> None:
        """A customer's SMS stored as Twilio would post it, written at ``at``."""
        self.rt.queues.store_inbox("sms-main", [sms(sid, sender, text)], {}, f"{PUBLIC_URL}/hooks/sms-main")
        with self.rt.engine.begin() as conn:
            conn.execute(update(inbox).where(inbox.c.provider_id == sid).values(received_at=at))

    def run(self) -> None:
        """Every stage until nothing is due, the acknowledger's clock a few seconds after the message."""
        pipeline, delivery = PipelineWorker(self.rt, "t-p"), DeliveryWorker(self.rt, "t-d")
        delivery.acks.clock = self.clock
        sender, notes = SendWorker(self.rt, "t-s"), NoteWorker(self.rt, "t-n")
        while drain_once(pipeline) + drain_once(delivery) + drain_once(sender) + drain_once(notes):
            pass

    def texts(self) -> list[str]:
        return [m["body"] for m in self.twilio.messages(to=CUSTOMER)]

    def ack_rows(self) -> list[Any]:
        with self.rt.engine.connect() as conn:
            return list(conn.execute(select(acknowledgements).order_by(acknowledgements.c.created_at)))

    def only_ticket(self) -> int:
        [ticket] = self.zendesk.tickets()
        return int(ticket["id"])


@pytest.fixture
def gateway_for(write_config: Callable[..., Path]) -> Iterator[Callable[[str], Gateway]]:
    started: list[Gateway] = []

    def make(rules: str = FULL_RULES) -> Gateway:
        twilio, zendesk = FakeTwilio(TWILIO_SID, TWILIO_TOKEN).start(), FakeZendesk().start()
        rt = build_runtime(load_config(write_config(config_text(twilio.url, zendesk.url, rules))),
                           http=requests.Session())
        started.append(Gateway(rt, twilio, zendesk))
        return started[-1]

    yield make
    for gateway in started:
        gateway.rt.close()
        gateway.twilio.stop()
        gateway.zendesk.stop()


def test_first_message_is_acknowledged_once_with_its_ticket_and_the_ticket_shows_it(gateway_for: Any) -> None:
    gw = gateway_for()
    gw.now = OPEN_TIME + timedelta(seconds=3)
    gw.receive("SM" + "1" * 32, "Where is my order? It has not arrived yet.", OPEN_TIME)
    gw.receive("SM" + "2" * 32, "Any news on it please?", OPEN_TIME + timedelta(seconds=1))
    gw.run()
    gw.run()  # nothing left to do: no second text
    ticket = gw.only_ticket()
    assert gw.texts() == [f"Thanks, we got your message (ticket {ticket}). We answer by 2026-01-12 13:00 IST."]
    assert [m["from"] for m in gw.twilio.messages(to=CUSTOMER)] == [BUSINESS]
    public = [c for c in gw.zendesk.ticket_comments(ticket) if c["author_id"] == 1]
    assert [(c["public"], c["body"]) for c in public] == [(True, (
        f"Sent automatically to the customer on sms-main (acknowledgement):\n\n{gw.texts()[0]}"))]
    [row] = gw.ack_rows()
    assert (row.status, row.reason) == ("sent", None)
    with gw.rt.engine.connect() as conn:
        assert conn.execute(select(sends.c.status)).scalars().all() == ["sent"]


def test_language_and_closed_hours_choose_the_text(gateway_for: Any) -> None:
    gw = gateway_for()
    gw.now = CLOSED_TIME + timedelta(seconds=2)
    gw.receive("SM" + "1" * 32, "Where is my order? It has not arrived yet.", CLOSED_TIME)
    gw.run()
    first = gw.only_ticket()
    assert gw.texts() == [f"Thanks (ticket {first}). We are closed now; our hours: Mon-Fri 09:00-18:00 "
                          "(Asia/Kolkata)."]
    gw.now = OPEN_TIME + timedelta(seconds=2)
    gw.receive("SM" + "3" * 32, MALAYALAM, OPEN_TIME, sender="+14155550199")
    gw.run()
    second = max(int(t["id"]) for t in gw.zendesk.tickets())
    assert gw.twilio.messages(to="+14155550199")[0]["body"] == f"നന്ദി, നിങ്ങളുടെ സന്ദേശം ലഭിച്ചു (ടിക്കറ്റ് {second})."


def test_a_customer_acknowledged_recently_is_not_acknowledged_again(gateway_for: Any) -> None:
    gw = gateway_for()
    gw.now = OPEN_TIME + timedelta(seconds=2)
    gw.receive("SM" + "1" * 32, "Where is my order? It has not arrived yet.", OPEN_TIME)
    gw.run()
    with gw.rt.engine.begin() as conn:  # the agent solved it: the next message opens a new conversation
        conn.execute(update(acknowledgements).values(status="sent"))
        conn.execute(update(conversations).values(status="closed"))
    later = OPEN_TIME + timedelta(hours=5)
    gw.now = later + timedelta(seconds=2)
    gw.receive("SM" + "2" * 32, "And another question about billing", later)
    gw.run()
    assert len(gw.zendesk.tickets()) == 2 and len(gw.texts()) == 1
    assert [(r.status, r.reason) for r in gw.ack_rows()] == [
        ("sent", None), ("skipped", "acknowledged within the last 24 hours")]


def test_minimal_rule_a_late_ticket_and_an_opted_out_customer(gateway_for: Any) -> None:
    gw = gateway_for('[{channels: [sms-main], text: {default: "Thanks, we got your message (ticket '
                     '{{ ticket.id }}).", ml: "നന്ദി ({{ ticket.id }})", te: "ధన్యవాదాలు ({{ ticket.id }})"}}]')
    gw.now = OPEN_TIME + timedelta(minutes=45)  # the CRM was down: the ticket came 45 minutes after the message
    gw.receive("SM" + "1" * 32, "Where is my order? It has not arrived yet.", OPEN_TIME)
    gw.receive("SM" + "4" * 32, "STOP", OPEN_TIME, sender="+14155550177")
    gw.receive("SM" + "5" * 32, "Hello again, still waiting", OPEN_TIME + timedelta(seconds=1),
               sender="+14155550177")
    gw.run()
    assert gw.texts() == [] and gw.twilio.messages(to="+14155550177") == []
    reasons = sorted(r.reason for r in gw.ack_rows())
    assert reasons == ["opted out (STOP)",
                       "the ticket was written 45 minutes after the message (over max_delay_minutes, 30)"]


def _email(raw: bytes) -> Message:
    record = RawRecord(inbox_id=1, connector="mail", provider_id="m1", kind="message", body=raw,
                       content_type="message/rfc822", headers={}, public_url="", received_at=OPEN_TIME)
    settings = EmailSettings(type="imap", ignore_auto_replies=False, ignore_mailing_lists=False)
    [message] = email_to_messages(raw, record, connector_type="imap", settings=settings,
                                  attachments=AttachmentStore(Path("/nonexistent")), received_at=OPEN_TIME)
    return message


@pytest.mark.parametrize(("headers", "sender", "reason"), [
    ("Auto-Submitted: auto-replied\n", "asha@example.com", "automated mail (auto_submitted:auto-replied)"),
    ("X-Autoreply: yes\n", "asha@example.com", "automated mail (x_autoreply)"),
    ("Precedence: bulk\n", "asha@example.com", "automated mail (precedence:bulk)"),
    ("List-Id: <news.example.com>\n", "asha@example.com", "automated mail (mailing_list)"),
    ("List-Unsubscribe: <mailto:u@example.com>\n", "asha@example.com", "automated mail (mailing_list)"),
    ("Return-Path: <>\n", "asha@example.com", "automated mail (null_sender)"),
    ("", "MAILER-DAEMON@mx.example.com", "automated mail (bounce)"),
    ("Content-Type: multipart/report; report-type=delivery-status; boundary=b\n", "asha@example.com",
     "automated mail (bounce:delivery-status)"),
    ("", "no-reply@shop.example.com", "role or no-reply address"),
    ("", "DoNotReply@bank.example.com", "role or no-reply address"),
    ("", "support@vendor.example.com", "role or no-reply address"),
    ("", "asha@example.com", None),
])
def test_machines_and_role_addresses_are_never_acknowledged(write_config: Callable[..., Path], headers: str,
                                                             sender: str, reason: str | None) -> None:
    body = "--b\nContent-Type: text/plain\n\nDelivery failed\n--b--\n" if "multipart" in headers \
        else "Where is my order?\n"
    if "Content-Type" not in headers:
        headers += "Content-Type: text/plain\n"
    raw = (f"From: {sender}\nTo: help@acme.example\nSubject: Order\nMessage-ID: <m1@example.com>\n{headers}\n"
           f"{body}").encode()
    acks = Acknowledgements(load_config(write_config()), {})
    assert acks.refusal(_email(raw)) == reason


def test_email_acknowledgement_is_auto_submitted_and_threads_under_the_customers_mail() -> None:
    customer = Party(identifiers=(Identifier(kind=IdentifierKind.EMAIL, value="asha@example.com"),))
    desk = Party(identifiers=(Identifier(kind=IdentifierKind.EMAIL, value="help@acme.example"),))
    received = Message(channel=ChannelType.EMAIL, connector="mail", connector_type="imap", provider_message_id="m1",
                       thread=ThreadRef(message_id="m1@example.com", references=("m0@example.com",)),
                       sender=customer, recipients=(desk,), subject="Order", text="Where is it?",
                       sent_at=OPEN_TIME, received_at=OPEN_TIME, raw=RawRef(inbox_id=1, connector="mail"))
    ack = received.model_copy(update={
        "id": "a" * 32, "direction": Direction.OUTBOUND, "provider_message_id": "ack:c1", "recipients": (customer,),
        "sender": Party(identifiers=(Identifier(kind=IdentifierKind.AGENT, value="desk:automatic"),)),
        "text": "Thanks, ticket 42.", "extras": {"automatic": "acknowledgement"}})
    request = SendRequest(send_id=7, attempt=1, token="gw-send-7", message=ack, reply_to=received,
                          customer=CustomerView("c", None, ()), last_inbound_at=OPEN_TIME)
    def mail_for(send: SendRequest) -> Any:
        return compose(send, channel="mail", from_address="help@acme.example", from_name=None,
                       message_id_domain="acme.example", store=AttachmentStore(Path("/nonexistent"))).mail

    mail = mail_for(request)
    assert mail["Auto-Submitted"] == "auto-replied"
    assert mail["In-Reply-To"] == "<m1@example.com>"
    assert mail["References"] == "<m0@example.com> <m1@example.com>"
    agent_reply = mail_for(replace(request, message=ack.model_copy(update={"extras": {}})))
    assert agent_reply["Auto-Submitted"] is None


def test_check_reports_each_mistake_with_its_line(write_config: Callable[..., Path]) -> None:
    path = write_config("""
        storage: {url: "{storage_url}"}
        business_hours:
          kochi: {timezone: Asia/Kolkata, hours: {mon-fri: ["09:00-18:00"]}}
        channels:
          sms-main: {type: twilio, account_sid: "ACFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF", auth_token: "test-token"}
          sms-other: {type: twilio, account_sid: "ACEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEE", auth_token: "test-token"}
        crms:
          trial: {type: jsonl}
        routes:
          - {from: [sms-main], to: trial}
        acknowledgements:
          - channels: [sms-main, ghost]
            business_hours: office
            text: {default: "Ticket {{ tikcet.id }}"}
          - channels: [sms-other]
            text: {ml: "only Malayalam"}
          - text: "Thanks"
            closed_text: "Closed"
        """)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    shown = str(caught.value)
    assert "'tikcet' is undefined" in shown
    assert "needs a `default` text" in shown
    assert "closed_text needs business_hours" in shown
    assert "acknowledgements[0].channels[1]: no channel named 'ghost'" in shown
    assert "no business_hours calendar named 'office' (known: kochi)" in shown


def example_with_acknowledgements(tmp_path: Path) -> Path:
    """config.example.yaml with its commented acknowledgements block switched on, as the comment tells an admin."""
    text = (ROOT / "config.example.yaml").read_text(encoding="utf-8")
    start = text.index("# acknowledgements:")
    end = text.index("\n\n", start)
    block = "\n".join(line[2:] for line in text[start:end].split("\n"))
    example = tmp_path / "config.yaml"
    example.write_text(text[:start] + block + text[end:], encoding="utf-8")
    return example


def test_simulate_dry_run_shows_the_acknowledgement(tmp_path: Path) -> None:
    example = example_with_acknowledgements(tmp_path)
    runner = CliRunner()
    shown = runner.invoke(main, ["simulate", "-c", str(example), "sms-main", "--from", CUSTOMER, "--dry-run",
                                 "--text", MALAYALAM, "--at", "2026-01-12T11:00:00+05:30"])
    assert shown.exit_code == 0, shown.output
    assert "language ml" in shown.output and "ടിക്കറ്റ് 12345" in shown.output
    closed = runner.invoke(main, ["simulate", "-c", str(example), "sms-main", "--from", CUSTOMER, "--dry-run",
                                  "--text", "Where is my order? It has not arrived yet.",
                                  "--at", "2026-01-11T11:00:00+05:30"])
    assert closed.exit_code == 0, closed.output
    assert "business closed" in closed.output and "Mon-Fri" in closed.output


def test_forgetting_the_customer_removes_their_acknowledgements(gateway_for: Any) -> None:
    gw = gateway_for()
    gw.now = OPEN_TIME + timedelta(seconds=2)
    gw.receive("SM" + "1" * 32, "Where is my order? It has not arrived yet.", OPEN_TIME)
    gw.run()
    with gw.rt.engine.begin() as conn:
        customer_id = conn.execute(select(acknowledgements.c.customer_id)).scalar_one()
        found = holdings(conn, customer_id)
        exported = export(conn, found, AttachmentStore(gw.rt.data_dir / "attachments"))
        assert [row["status"] for row in exported["acknowledgements"]] == ["sent"]
        erase(conn, found, key=b"k" * 32, requested_by="test")
    assert gw.ack_rows() == []


def test_a_rule_for_a_route_answers_only_what_that_route_takes(gateway_for: Any, write_config: Any) -> None:
    rules = '[{routes: [kerala], text: {default: "Thanks ({{ ticket.id }})", ml: "നന്ദി ({{ ticket.id }})"}}]'
    gw = gateway_for()  # its fakes; the runtime is built again below with named routes
    text = config_text(gw.twilio.url, gw.zendesk.url, rules).replace(
        "  - {from: [sms-main], to: desk}",
        "  - {name: kerala, from: [sms-main], to: desk, when: {language: [ml]}}\n"
        "  - {name: general, from: [sms-main], to: desk, otherwise: true}")
    gw.rt.close()
    gw.rt = build_runtime(load_config(write_config(text)), http=requests.Session())
    gw.now = OPEN_TIME + timedelta(seconds=2)
    gw.receive("SM" + "1" * 32, "Where is my order? It has not arrived yet.", OPEN_TIME)
    gw.receive("SM" + "2" * 32, MALAYALAM, OPEN_TIME, sender="+14155550199")
    gw.run()
    ticket = max(int(t["id"]) for t in gw.zendesk.tickets())
    assert gw.texts() == [] and len(gw.zendesk.tickets()) == 2
    assert [m["body"] for m in gw.twilio.messages(to="+14155550199")] == [f"നന്ദി ({ticket})"]


def test_a_rule_naming_an_unknown_route_is_a_config_error(write_config: Any) -> None:
    text = config_text("http://127.0.0.1:9", "http://127.0.0.1:9", '[{routes: [kerla], text: "Thanks"}]')
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(text))
    assert "acknowledgements[0].routes[0]: no route named 'kerla' (known: none named)" in str(caught.value)
