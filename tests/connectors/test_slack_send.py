"""Agent replies on Slack: the outbound conformance suite plus Slack's threads, workspaces, errors and echoes.

Slack's answers are shaped as its method pages document them (https://docs.slack.dev/reference/methods/
chat.postMessage, conversations.history, conversations.replies): HTTP 200 with ``ok`` and ``error``, HTTP 429 with
``Retry-After`` when rate limited, messages carrying ``metadata`` when read with ``include_all_metadata``. Calls are
mocked with ``responses``; customers' messages are the inbound fixtures in ``tests/fixtures/slack`` normalised by the
connector itself.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
import responses
from responses import matchers
from sqlalchemy import select, update

from connectors._slack_outbound import LOOKUP_PAGES, reply_target
from connectors.slack import SlackChannel, signed_request
from gateway.config import load_config
from gateway.errors import OutcomeUnknown, PermanentError, RetryableError
from gateway.model import Attachment, Message
from gateway.plugins import ConnectorContext, SendRequest
from gateway.runtime import Runtime, build_runtime
from gateway.sending import SendWorker
from gateway.storage.tables import conversations, inbox, messages, send_log, sends
from gateway.web import create_app
from tests.conformance.channel import FIXTURES, drain_pipeline, send, split_records
from tests.conformance.sender import REPLY_TEXT, DeadlineSession, SenderConformance, send_request
from tests.conftest import PUBLIC_URL
from tests.fake_slack import FakeSlack

CHANNEL = "slack-support"
SECRET = "test-slack-signing-secret"
BOT_TOKEN = "xoxb-test-bot-token"
OTHER_TOKEN = "xoxb-test-acme-token"
TEAM = "T0GW1SUPPORT"
API = "https://slack.com/api/"
POST_URL = API + "chat.postMessage"
HISTORY_URL = API + "conversations.history"
REPLIES_URL = API + "conversations.replies"


def settings(**extra: Any) -> dict[str, Any]:
    return {"type": "slack", "signing_secret": SECRET, "bot_token": BOT_TOKEN,
            "workspace_tokens": {"T0ACMECORP1": OTHER_TOKEN}, **extra}


def slack(http: requests.Session | None = None, limiter: Any = None, **extra: Any) -> SlackChannel:
    context = ConnectorContext(http=http or DeadlineSession(), public_url=PUBLIC_URL)
    if limiter is not None:
        context.limiter = limiter
    return SlackChannel(CHANNEL, SlackChannel.Config.model_validate(settings(**extra)), context)


def payload(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / "slack" / f"{name}.json").read_text(encoding="utf-8"))


def inbound(data: dict[str, Any] | str, **extra: Any) -> Message:
    """A customer's message as the connector normalises the given event."""
    connector = slack(**extra)
    body = payload(data) if isinstance(data, str) else data
    [record] = split_records(connector, signed_request(SECRET, json.dumps(body).encode(), PUBLIC_URL))
    [message] = connector.normalize(record)
    return message


def posted(call: Any) -> dict[str, Any]:
    return json.loads(call.request.body)


def history(*messages: dict[str, Any], cursor: str = "") -> dict[str, Any]:
    """A conversations.history / .replies answer as documented: newest first, cursor in response_metadata."""
    return {"ok": True, "messages": list(messages), "has_more": bool(cursor), "pin_count": 0,
            "response_metadata": {"next_cursor": cursor}}


def bot_post(ts: str, token: str, text: str = REPLY_TEXT) -> dict[str, Any]:
    """Our own reply as conversations.history shows it with include_all_metadata=true."""
    return {"type": "message", "user": "U0GWBOT0001", "bot_id": "B0GWBOT0001", "app_id": "A0GWAPP0001", "text": text,
            "ts": ts, "team": TEAM, "metadata": {"event_type": "gateway_reply", "event_payload": {"token": token}}}


CUSTOMER_POST = {"type": "message", "user": "U0CUST00001", "text": "any news?", "ts": "1700000950.000950",
                 "team": TEAM}


class TestSlackSender(SenderConformance):
    """The shared outbound suite for ``slack``: a DM answered in the DM, throttling as HTTP 429, an interrupted
    attempt found in conversations.history by its metadata token."""

    secrets = (BOT_TOKEN, OTHER_TOKEN, SECRET)

    def connector(self, http: requests.Session) -> SlackChannel:
        return slack(http)

    def customer_message(self) -> Message:
        return inbound("message_im")

    def mock_accepted(self, rsps: responses.RequestsMock) -> str:
        rsps.post(POST_URL, json={"ok": True, "channel": "D0CUSTDM001", "ts": "1700000900.000900",
                                  "message": bot_post("1700000900.000900", "gw-send-7")})
        return "D0CUSTDM001:1700000900.000900"

    def mock_refused(self, rsps: responses.RequestsMock) -> None:
        rsps.post(POST_URL, json={"ok": False, "error": "channel_not_found"})

    def mock_throttled(self, rsps: responses.RequestsMock) -> None:
        rsps.post(POST_URL, status=429, headers={"Retry-After": "1"}, json={"ok": False, "error": "ratelimited"})

    def mock_earlier_attempt_found(self, rsps: responses.RequestsMock, request: SendRequest) -> str:
        rsps.get(HISTORY_URL, match=[matchers.query_param_matcher(
            {"channel": "D0CUSTDM001", "include_all_metadata": "true"}, strict_match=False)],
                 json=history(CUSTOMER_POST, bot_post("1700000920.000920", request.token),
                              bot_post("1700000910.000910", "gw-send-6")))
        return "D0CUSTDM001:1700000920.000920"

    def mock_earlier_attempt_absent(self, rsps: responses.RequestsMock, request: SendRequest) -> None:
        rsps.get(HISTORY_URL, json=history(CUSTOMER_POST, bot_post("1700000910.000910", "gw-send-6"),
                                           {**bot_post("1700000905.000905", ""), "metadata": None}))


# -- where a reply goes ------------------------------------------------------------------------------------------

def test_a_direct_message_is_answered_in_the_dm_as_the_bot_with_the_token_as_metadata() -> None:
    """A DM gets its answer in the DM (no thread), posted with the workspace's bot token, the agent's words
    escaped so they are never Slack markup, and the send token in the message metadata."""
    request = send_request(inbound("message_im"), text="Refund of <EUR 20> & VAT is on its way")
    with responses.RequestsMock() as rsps:
        rsps.post(POST_URL, match=[matchers.header_matcher({"Authorization": f"Bearer {BOT_TOKEN}"})],
                  json={"ok": True, "channel": "D0CUSTDM001", "ts": "1700000900.000900"})
        result = slack().send(request)
        body = posted(rsps.calls[0])
    assert body == {"channel": "D0CUSTDM001", "text": "Refund of &lt;EUR 20&gt; &amp; VAT is on its way",
                    "metadata": {"event_type": "gateway_reply", "event_payload": {"token": "gw-send-7"}}}
    assert result.provider_message_id == "D0CUSTDM001:1700000900.000900"


def test_a_shared_channel_thread_reply_is_answered_in_that_thread_by_our_installation() -> None:
    """A Slack Connect customer (their own workspace T0ACMECORP1) who wrote in a thread is answered in the thread's
    root, with the token of the workspace the event came to (ours), not a token of theirs."""
    request = send_request(inbound("thread_reply_shared"))
    with responses.RequestsMock() as rsps:
        rsps.post(POST_URL, match=[matchers.header_matcher({"Authorization": f"Bearer {BOT_TOKEN}"})],
                  json={"ok": True, "channel": "C0SHARED001", "ts": "1700000900.000900"})
        slack().send(request)
        body = posted(rsps.calls[0])
    assert (body["channel"], body["thread_ts"]) == ("C0SHARED001", "1700000000.000100")


def test_a_top_level_message_in_a_listed_channel_is_answered_in_a_thread_under_it() -> None:
    """In a channel other people read, the answer goes in a thread under the customer's own message."""
    request = send_request(inbound("internal_channel", channel_ids=["C0RANDOM001"]))
    with responses.RequestsMock() as rsps:
        rsps.post(POST_URL, json={"ok": True, "channel": "C0RANDOM001", "ts": "1700001001.000901"})
        slack(channel_ids=["C0RANDOM001"]).send(request)
        body = posted(rsps.calls[0])
    assert (body["channel"], body["thread_ts"]) == ("C0RANDOM001", "1700001000.000900")


@pytest.mark.parametrize(("mutate", "expected"), [
    (lambda e: e.update(thread_ts="1699999000.000001"), ("D0CUSTDM001", "1699999000.000001")),
    (lambda e: None, ("D0CUSTDM001", None)),
])
def test_a_dm_thread_is_kept_and_a_plain_dm_gets_none(mutate: Callable[[dict[str, Any]], None],
                                                      expected: tuple[str, str | None]) -> None:
    """In a DM the reply joins the customer's thread only when they wrote in one."""
    data = payload("message_im")
    mutate(data["event"])
    target = reply_target(inbound(data))
    assert (target.channel, target.thread_ts) == expected


def test_a_reaction_in_a_dm_is_answered_in_the_dm() -> None:
    """A reaction (the customer's latest event) carries no channel_type: the D prefix says it is a DM."""
    target = reply_target(inbound("reaction_added"))
    assert (target.team_id, target.channel, target.thread_ts) == (TEAM, "D0CUSTDM001", None)


def test_a_second_workspace_is_answered_with_its_own_token() -> None:
    """The app installed in a second workspace answers its customers with that installation's token."""
    data = payload("message_im")
    data["team_id"] = data["event"]["team"] = "T0ACMECORP1"
    request = send_request(inbound(data))
    with responses.RequestsMock() as rsps:
        rsps.post(POST_URL, match=[matchers.header_matcher({"Authorization": f"Bearer {OTHER_TOKEN}"})],
                  json={"ok": True, "channel": "D0CUSTDM001", "ts": "1700000900.000900"})
        slack().send(request)


def test_attachments_go_as_links_and_a_file_without_one_is_refused_before_any_call() -> None:
    """Slack gets the agent's files as links after the text; a file kept only in the gateway's store cannot be
    carried, and the agent is told so before anything reaches the customer."""
    answering = inbound("message_im")
    linked = Attachment(filename="invoice.pdf", content_type="application/pdf",
                        location="https://files.example.com/invoice.pdf?sig=a&exp=1")
    with responses.RequestsMock() as rsps:
        rsps.post(POST_URL, json={"ok": True, "channel": "D0CUSTDM001", "ts": "1700000900.000900"})
        slack().send(send_request(answering, attachments=(linked,)))
        text = posted(rsps.calls[0])["text"]
    assert text == f"{REPLY_TEXT}\ninvoice.pdf: https://files.example.com/invoice.pdf?sig=a&amp;exp=1"
    stored = linked.model_copy(update={"location": "store:ab/cd/invoice.pdf"})
    with responses.RequestsMock(), pytest.raises(PermanentError, match=r"invoice\.pdf") as caught:
        slack().send(send_request(answering, attachments=(stored,)))
    assert caught.value.code == "attachment_not_linkable"


def test_the_send_budget_is_one_bucket_per_conversation_at_about_one_a_second() -> None:
    connector = slack()
    dm = connector.send_limit(send_request(inbound("message_im")))
    shared = connector.send_limit(send_request(inbound("thread_reply_shared")))
    assert dm == (f"send:{CHANNEL}:{TEAM}:D0CUSTDM001", 60.0)
    assert shared == (f"send:{CHANNEL}:{TEAM}:C0SHARED001", 60.0)


# -- errors ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("error", "words"), [
    ("channel_not_found", "cannot find the customer's conversation D0CUSTDM001"),
    ("not_in_channel", "add the app to the channel"),
    ("is_archived", "archived"),
    ("msg_too_long", "too long"),
    ("invalid_auth", "bot_token"),
    ("account_inactive", "reinstall"),
    ("some_new_error", "no reason given"),
])
def test_refusals_are_permanent_in_words_an_agent_understands(error: str, words: str) -> None:
    """Slack's ``ok: false`` refusals dead-letter the reply with a reason and Slack's code, never the token."""
    with responses.RequestsMock() as rsps:
        rsps.post(POST_URL, json={"ok": False, "error": error})
        with pytest.raises(PermanentError) as caught:
            slack().send(send_request(inbound("message_im")))
    assert words in str(caught.value) and caught.value.code == error
    assert f"(Slack error {error})" in str(caught.value)
    assert BOT_TOKEN not in str(caught.value)


def test_rate_limiting_is_retryable_after_slacks_wait_and_pauses_the_conversations_budget() -> None:
    """HTTP 429 with Retry-After: retry no sooner, and every process's bucket for this conversation pauses."""
    blocked: list[tuple[str, float]] = []

    class Recorder:
        def __init__(self, name: str) -> None:
            self.name = name

        def acquire(self, cost: int = 1) -> None:
            pass

        def block(self, seconds: float) -> None:
            blocked.append((self.name, seconds))

    with responses.RequestsMock() as rsps:
        rsps.post(POST_URL, status=429, headers={"Retry-After": "30"}, json={"ok": False, "error": "ratelimited"})
        with pytest.raises(RetryableError) as caught:
            slack(limiter=lambda name, _rate: Recorder(name)).send(send_request(inbound("message_im")))
    assert caught.value.retry_after == 30 and caught.value.code == "ratelimited"
    assert blocked == [(f"send:{CHANNEL}:{TEAM}:D0CUSTDM001", 30.0)]


@pytest.mark.parametrize("answer", [
    {"status": 503, "body": "upstream unavailable"},
    {"json": {"ok": False, "error": "internal_error"}},
    {"json": {"ok": False, "error": "fatal_error"}},
    {"status": 200, "body": "<html>maintenance</html>"},
])
def test_slack_trouble_is_retryable(answer: dict[str, Any]) -> None:
    with responses.RequestsMock() as rsps:
        rsps.post(POST_URL, **answer)
        with pytest.raises(RetryableError):
            slack().send(send_request(inbound("message_im")))


# -- reconcile ---------------------------------------------------------------------------------------------------

def test_reconcile_reads_the_thread_around_the_attempt_and_follows_the_cursor() -> None:
    """A threaded reply is looked for with conversations.replies on the thread's root, from a minute before the
    attempt, with metadata; a second page is read when the first has more."""
    started = datetime(2026, 11, 29, 12, 0, 0, tzinfo=UTC)
    request = send_request(inbound("thread_reply_shared"), started=started)
    window = {"channel": "C0SHARED001", "ts": "1700000000.000100", "include_all_metadata": "true",
              "oldest": f"{(started - timedelta(minutes=1)).timestamp():.6f}",
              "latest": f"{(started + timedelta(minutes=5)).timestamp():.6f}", "inclusive": "true", "limit": "15"}
    with responses.RequestsMock() as rsps:
        rsps.get(REPLIES_URL, match=[matchers.query_param_matcher(window)],
                 json=history(bot_post("1764417601.000001", "gw-send-6"), cursor="bmV4dF90czoxNzY0"))
        rsps.get(REPLIES_URL, match=[matchers.query_param_matcher({**window, "cursor": "bmV4dF90czoxNzY0"})],
                 json=history(bot_post("1764417602.000002", "gw-send-7")))
        found = slack().reconcile(request)
    assert found is not None and found.provider_message_id == "C0SHARED001:1764417602.000002"


def test_reconcile_gives_up_honestly_when_the_window_holds_too_many_messages() -> None:
    """The lookup is bounded: a window that never ends is an outcome Slack cannot settle, not a resend."""
    request = send_request(inbound("message_im"), started=datetime.now(UTC) - timedelta(seconds=30))
    with responses.RequestsMock() as rsps:
        rsps.get(HISTORY_URL, json=history(CUSTOMER_POST, cursor="bmV4dA=="))
        with pytest.raises(OutcomeUnknown):
            slack().reconcile(request)
        assert len(rsps.calls) == LOOKUP_PAGES


def test_reconcile_without_history_access_is_an_unknown_outcome_and_throttling_waits() -> None:
    """A missing history scope means Slack cannot be asked: the reply is not resent blindly. A 429 waits."""
    request = send_request(inbound("message_im"), started=datetime.now(UTC) - timedelta(seconds=30))
    with responses.RequestsMock() as rsps:
        rsps.get(HISTORY_URL, json={"ok": False, "error": "missing_scope", "needed": "im:history",
                                    "provided": "chat:write"})
        with pytest.raises(OutcomeUnknown, match="Slack says it needs im:history"):
            slack().reconcile(request)
    with responses.RequestsMock() as rsps:
        rsps.get(HISTORY_URL, status=429, headers={"Retry-After": "60"}, json={"ok": False, "error": "ratelimited"})
        with pytest.raises(RetryableError) as caught:
            slack().reconcile(request)
    assert caught.value.retry_after == 60


def test_reconcile_without_an_attempt_finds_nothing_without_asking() -> None:
    with responses.RequestsMock():
        assert slack().reconcile(send_request(inbound("message_im"))) is None


# -- our own posts never come back -------------------------------------------------------------------------------

def test_the_echo_of_our_own_reply_is_not_a_customer_message() -> None:
    """Slack delivers our chat.postMessage back as a message event (bot_id, our bot user, our metadata), and again
    as message_changed when it unfurls a link: each normalises to nothing."""
    connector = slack()
    unfurled = payload("own_reply_echo")  # Slack edits our post when it adds a link preview: message_changed
    unfurled["event"] = {"type": "message", "subtype": "message_changed", "hidden": True, "channel": "C0SHARED001",
                         "ts": "1700000905.000905", "event_ts": "1700000905.000905", "channel_type": "channel",
                         "message": {**unfurled["event"], "text": REPLY_TEXT + " https://example.com",
                                     "attachments": [{"from_url": "https://example.com", "id": 1}]},
                         "previous_message": {**unfurled["event"], "text": REPLY_TEXT}}
    for data in (payload("own_reply_echo"), {**payload("own_reply_echo"), "authorizations": []}, unfurled):
        [record] = split_records(connector, signed_request(SECRET, json.dumps(data).encode(), PUBLIC_URL))
        assert connector.normalize(record) == []


# -- the whole way: a customer's message, an agent's reply, Slack, and the echo ---------------------------------

FAKE = FakeSlack()
FAKE.state.tokens.update({TEAM: BOT_TOKEN})
FAKE.state.add_user("T0ACMECORP1", "U0EXT000042", "Kofi Mensah", email="kofi@acme.example")


@pytest.fixture(scope="module", autouse=True)
def _fake_slack() -> Iterator[FakeSlack]:
    yield FAKE
    FAKE.close()


@pytest.fixture
def two_way(write_config: Callable[..., Path]) -> Iterator[Runtime]:
    channel = json.dumps(settings(api_base_url=FAKE.base_url))
    rt = build_runtime(load_config(write_config(f"""
storage: {{url: "{{storage_url}}"}}
server: {{listen: "127.0.0.1:0", public_url: "{PUBLIC_URL}"}}
workers: {{idle_poll_seconds: 0.05, retry: {{initial_seconds: 0.01, max_seconds: 0.05, jitter_seconds: 0}}}}
channels:
  {CHANNEL}: {channel}
crms:
  trial: {{type: jsonl, path: out/crm.jsonl, reply_secret: test-reply-secret-0123456789}}
routes:
  - {{from: [{CHANNEL}], to: trial}}
""")), http=requests.Session())
    yield rt
    rt.close()


def _agent_replies(rt: Runtime, text: str) -> None:
    client = create_app(rt).test_client()
    assert send(client, signed_request(SECRET, json.dumps(payload("thread_reply_shared")).encode(), PUBLIC_URL),
                CHANNEL).status_code == 200
    drain_pipeline(rt)
    with rt.engine.connect() as conn:
        conversation = conn.execute(select(conversations.c.id)).scalar_one()
    hook = rt.crms["trial"].sample_reply_hook(  # type: ignore[attr-defined]
        conversation_id=conversation, text=text, public_url=f"{PUBLIC_URL}/crm-hooks/trial")
    answer = client.open("/crm-hooks/trial", method="POST", headers=list(hook.headers.items()), data=hook.body)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    drain_pipeline(rt)


def test_an_agent_reply_reaches_the_customers_thread_once_and_its_echo_is_ignored(two_way: Runtime) -> None:
    """Customer writes in a shared channel's thread -> agent replies in the CRM -> the send worker posts into that
    thread with the token as metadata -> the send is recorded -> Slack's echo of our post is stored but ignored."""
    _agent_replies(two_way, "Fixed in 4.2, please update")
    worker = SendWorker(two_way, "test-send")
    [row] = worker.claim()
    with responses.RequestsMock() as rsps:
        rsps.post(FAKE.base_url + "chat.postMessage", match=[matchers.json_params_matcher({
            "channel": "C0SHARED001", "thread_ts": "1700000000.000100", "text": "Fixed in 4.2, please update",
            "metadata": {"event_type": "gateway_reply", "event_payload": {"token": f"gw-send-{row.id}"}}})],
                  json={"ok": True, "channel": "C0SHARED001", "ts": "1700000900.000900"})
        worker.process(row)
    with two_way.engine.connect() as conn:
        sent = conn.execute(select(sends.c.status, sends.c.provider_message_id)).one()
    assert tuple(sent) == ("sent", "C0SHARED001:1700000900.000900")

    echo = payload("own_reply_echo")
    echo["event"]["metadata"]["event_payload"]["token"] = f"gw-send-{row.id}"
    client = create_app(two_way).test_client()
    assert send(client, signed_request(SECRET, json.dumps(echo).encode(), PUBLIC_URL), CHANNEL).status_code == 200
    drain_pipeline(two_way)
    with two_way.engine.connect() as conn:
        statuses = dict(conn.execute(select(inbox.c.provider_id, inbox.c.status)
                                     .where(inbox.c.connector == CHANNEL)).all())
        inbound_count = conn.execute(select(messages.c.id).where(messages.c.direction == "inbound")).all()
    assert statuses["Ev0ECHO00009"] == "ignored" and len(inbound_count) == 1


def test_an_interrupted_send_is_found_in_the_thread_and_not_posted_again(two_way: Runtime) -> None:
    """A crash after the call (attempt_started_at still set): the worker asks Slack first, finds the reply by its
    metadata token, records it, and never calls chat.postMessage again."""
    _agent_replies(two_way, "Fixed in 4.2, please update")
    started = datetime.now(UTC) - timedelta(minutes=2)
    with two_way.engine.begin() as conn:
        conn.execute(update(sends).values(attempt_started_at=started))
    worker = SendWorker(two_way, "test-send")
    [row] = worker.claim()
    with responses.RequestsMock() as rsps:
        rsps.get(FAKE.base_url + "conversations.replies", json=history(
            bot_post("1700000901.000901", f"gw-send-{row.id}"), CUSTOMER_POST))
        worker.process(row)
        assert [call.request.url.split("?")[0] for call in rsps.calls] == [FAKE.base_url + "conversations.replies"]
    with two_way.engine.connect() as conn:
        sent = conn.execute(select(sends.c.status, sends.c.provider_message_id)).one()
        outcomes = conn.execute(select(send_log.c.outcome)).scalars().all()
    assert tuple(sent) == ("sent", "C0SHARED001:1700000901.000901")
    assert outcomes == ["reconciled"]
