"""The Slack channel: the shared conformance suite plus Slack's retries, subtypes, threads, profiles and files.

Fixtures in ``tests/fixtures/slack`` are Events API envelopes shaped as Slack documents them
(https://docs.slack.dev/reference/events/message/ and its subtype pages); requests are signed with slack_sdk's own
``SignatureVerifier.generate_signature``. ``users.info`` is answered by the local fake in ``tests/fake_slack.py``;
file downloads from files.slack.com are mocked with ``responses``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import responses
from sqlalchemy import select

from connectors.slack import SIGNATURE_HEADER, TIMESTAMP_HEADER, SlackChannel, signed_request
from gateway.attachments import SCHEME, MediaRefused
from gateway.config import load_config
from gateway.errors import OnlineCheckFailed, SignatureInvalid
from gateway.plugins import ChannelConnector, ConnectorContext
from gateway.runtime import Runtime, build_runtime
from gateway.storage.tables import conversations, customers, identities, inbox, messages
from gateway.web import create_app
from gateway.webhooks import Headers, HookRequest
from tests.conformance.channel import (
    FIXTURES,
    ChannelConformance,
    Expected,
    config_text,
    count,
    drain_pipeline,
    send,
    split_records,
)
from tests.conftest import PUBLIC_URL
from tests.fake_slack import FakeSlack

CHANNEL = "slack-support"
HOOK_URL = f"{PUBLIC_URL}/hooks/{CHANNEL}"
SECRET = "test-slack-signing-secret"
BOT_TOKEN = "xoxb-test-bot-token"
OTHER_TOKEN = "xoxb-test-acme-token"
TEAM = "T0GW1SUPPORT"
FILE_URL = "https://files.slack.com/files-pri/T0GW1SUPPORT-F0SCREEN001/download/error.png"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 60  # 68 bytes, as the fixture's "size" says

FAKE = FakeSlack()
FAKE.state.tokens.update({TEAM: BOT_TOKEN, "T0ACMECORP1": OTHER_TOKEN})
FAKE.state.add_user(TEAM, "U0CUST00001", "Dana Reyes", display_name="dana", email="Dana.Reyes@Example.COM")
FAKE.state.add_user("T0ACMECORP1", "U0EXT000042", "Kofi Mensah", email="kofi@acme.example")


@pytest.fixture(scope="module", autouse=True)
def _fake_slack() -> Iterator[FakeSlack]:
    yield FAKE
    FAKE.close()


@pytest.fixture(autouse=True)
def _files() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.get(FILE_URL, body=PNG, content_type="image/png",
                 match=[responses.matchers.header_matcher({"Authorization": f"Bearer {BOT_TOKEN}"})])
        yield mock


def settings(**extra: Any) -> dict[str, Any]:
    return {"type": "slack", "signing_secret": SECRET, "bot_token": BOT_TOKEN, "api_base_url": FAKE.base_url,
            "workspace_tokens": {"T0ACMECORP1": OTHER_TOKEN}, **extra}


def payload(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / "slack" / f"{name}.json").read_text(encoding="utf-8"))


def request_for(data: dict[str, Any] | bytes, *, secret: str = SECRET, timestamp: int | None = None,
                headers: dict[str, str] | None = None) -> HookRequest:
    body = data if isinstance(data, bytes) else json.dumps(data).encode()
    return signed_request(secret, body, HOOK_URL, timestamp=timestamp, headers=headers)


def raw_signed(body: bytes) -> HookRequest:
    """A request signed over raw bytes that are not UTF-8 (slack_sdk's own helper only signs text)."""
    stamp = str(int(time.time()))
    digest = hmac.new(SECRET.encode(), b"v0:" + stamp.encode() + b":" + body, hashlib.sha256).hexdigest()
    headers = Headers({"Content-Type": "application/json", TIMESTAMP_HEADER: stamp, SIGNATURE_HEADER: f"v0={digest}"})
    return HookRequest("POST", "", "", headers, body, HOOK_URL)


def slack(**extra: Any) -> SlackChannel:
    config = SlackChannel.Config.model_validate(settings(**extra))
    return SlackChannel(CHANNEL, config, ConnectorContext(http=requests.Session(), public_url=PUBLIC_URL))


def slack_id(user: str, team: str = TEAM) -> dict[str, str]:
    return {"kind": "slack", "value": f"{team}:{user}"}


class TestSlackConformance(ChannelConformance):
    """The shared suite for ``slack``: signatures carry a timestamp (5-minute window), url_verification is the
    handshake, and every event is stored under its event_id."""

    connector_class = SlackChannel
    channel_name = CHANNEL
    required_secrets = ("signing_secret", "bot_token")
    has_timestamp = True
    has_handshake = True
    expected = {
        "message_im": Expected("message", ({
            "channel": "slack", "kind": "message", "provider_message_id": "D0CUSTDM001:1700000000.000100",
            "sender.identifiers.0": slack_id("U0CUST00001"),
            "text": "Hi, my invoice INV-2041 shows the wrong amount & VAT",
            "thread.provider_thread_id": "D0CUSTDM001:1700000000.000100", "sent_at": "2023-11-14T22:13:20.000100Z",
            "extras.team_id": TEAM, "extras.channel_type": "im", "extras.event_id": "Ev0MSGIM0001",
        },), ("Ev0MSGIM0001",)),
        "thread_reply_shared": Expected("message", ({
            "provider_message_id": "C0SHARED001:1700000300.000200",
            "sender.identifiers.0": slack_id("U0EXT000042", "T0ACMECORP1"),
            "thread.provider_thread_id": "C0SHARED001:1700000000.000100",
            "extras.thread_ts": "1700000000.000100", "extras.is_ext_shared_channel": True,
        },)),
        "file_share": Expected("message", ({
            "provider_message_id": "D0CUSTDM001:1700000400.000300", "text": "Screenshot of the error",
            "attachments.0.filename": "error.png", "attachments.0.content_type": "image/png",
            "attachments.0.size": 68, "extras.subtype": "file_share",
        },)),
        "message_changed": Expected("message", ({
            "kind": "edit", "provider_message_id": "D0CUSTDM001:1700000000.000100:edit:1700000500.000400",
            "target_provider_message_id": "D0CUSTDM001:1700000000.000100",
            "text": "Hi, my invoice INV-2042 shows the wrong amount", "sender.identifiers.0": slack_id("U0CUST00001"),
            "thread.provider_thread_id": "D0CUSTDM001:1700000000.000100",
        },)),
        "message_deleted": Expected("message", ({
            "kind": "delete", "target_provider_message_id": "D0CUSTDM001:1700000400.000300", "text": "",
            "attachments": [],
        },)),
        "reaction_added": Expected("message", ({
            "kind": "reaction", "target_provider_message_id": "D0CUSTDM001:1700000800.000700", "text": ":thumbsup:",
            "provider_message_id": "D0CUSTDM001:1700000800.000700:reaction:U0CUST00001:thumbsup:1700001100.001000",
        },)),
        "reaction_removed": Expected("message", ({
            "kind": "reaction", "target_provider_message_id": "D0CUSTDM001:1700000800.000700", "text": ":thumbsup:",
            "extras.action": "unreact",
            "provider_message_id": "D0CUSTDM001:1700000800.000700:reaction:U0CUST00001:thumbsup:1700001200.001100",
        },)),
        "bot_message": Expected("message"),
        "own_bot_post": Expected("message"),
        "channel_join": Expected("message"),
        "internal_channel": Expected("message"),
    }

    def channel_settings(self) -> dict[str, Any]:
        return settings()

    def signed_request(self, fixture: str, connector: ChannelConnector) -> HookRequest:
        return request_for(payload(fixture))

    def tamper(self, request: HookRequest) -> HookRequest:
        body = request.body.replace(b'"text": "', b'"text": "Refund to account 0000. ', 1)
        assert body != request.body
        return HookRequest(request.method, request.path, request.query_string, request.headers, body,
                           request.public_url)

    def stale_request(self, fixture: str, connector: ChannelConnector) -> HookRequest:
        return request_for(payload(fixture), timestamp=int(time.time()) - 301)

    def handshake_request(self, connector: ChannelConnector) -> tuple[HookRequest, int, bytes]:
        data = payload("url_verification")
        return request_for(data), 200, data["challenge"].encode()

    def malformed_requests(self, connector: ChannelConnector) -> dict[str, HookRequest]:
        full = json.dumps(payload("message_im")).encode()
        no_id = {k: v for k, v in payload("message_im").items() if k != "event_id"}
        return {
            "not_json": request_for(b"token=XXYYZZ&team_id=T0GW1SUPPORT"),
            "truncated": request_for(full[: len(full) // 2]),
            "json_array": request_for(b"[]"),
            "not_utf8": raw_signed(full.replace(b"Hi,", b"\xff\xfe,")),
            "no_event_id": request_for(no_id),
            "event_not_object": request_for({**payload("message_im"), "event": "message"}),
            "type_not_string": request_for({**payload("message_im"), "type": 7}),
        }


@pytest.fixture
def slack_runtime(write_config: Callable[..., Path]) -> Iterator[Runtime]:
    rt = build_runtime(load_config(write_config(config_text(CHANNEL, settings(bot_user_ids=["U0GWBOT0009"])))),
                       http=requests.Session())
    yield rt
    rt.close()


def test_conversation_flow_with_edits_files_and_profiles(slack_runtime: Runtime) -> None:
    """A DM, its edit, a file and its deletion: one customer (Slack id + profile email), one conversation,
    the file's bytes in the attachment store, edits and deletions pointing at the messages they change."""
    client = create_app(slack_runtime).test_client()
    for name in ("message_im", "message_changed", "file_share", "message_deleted", "bot_message", "own_bot_post"):
        response = send(client, request_for(payload(name)), CHANNEL)
        assert response.status_code == 200, response.get_data(as_text=True)
    assert drain_pipeline(slack_runtime) == 6
    with slack_runtime.engine.connect() as conn:
        stored = [row.data for row in conn.execute(select(messages.c.data).order_by(messages.c.received_at,
                                                                                    messages.c.provider_message_id))]
        ids = sorted((row.kind, row.value) for row in conn.execute(select(identities.c.kind, identities.c.value)))
        names = list(conn.execute(select(customers.c.display_name)).scalars())
        convs = conn.execute(select(conversations.c.id)).all()
    assert [m["kind"] for m in stored] == ["message", "edit", "message", "delete"]
    assert ids == [("email", "dana.reyes@example.com"), ("slack", f"{TEAM}:U0CUST00001")]
    assert names == ["dana"]
    assert len(convs) == 1
    edit = next(m for m in stored if m["kind"] == "edit")
    assert edit["target_provider_message_id"] == stored[0]["provider_message_id"]
    [attachment] = next(m for m in stored if m["attachments"])["attachments"]
    assert attachment["location"].startswith(SCHEME) and attachment["size"] == len(PNG)
    assert slack_runtime.channels[CHANNEL].context.attachments.read(attachment["location"]) == PNG


def test_file_answered_with_the_sign_in_page_says_what_is_missing(_files: responses.RequestsMock) -> None:
    """A token without files:read is sent on to the workspace's sign-in page: followed without the token, reported."""
    sign_in = "https://gw1support.slack.com/?redir=%2Ffiles-pri%2FT0GW1SUPPORT-F0SCREEN001%2Fdownload%2Ferror.png"
    _files.replace(responses.GET, FILE_URL, status=302, headers={"Location": sign_in})
    _files.get(sign_in, body=b"<html>Sign in</html>", content_type="text/html; charset=utf-8")
    connector = slack()
    [record] = split_records(connector, request_for(payload("file_share")))
    with pytest.raises(MediaRefused, match="with a login page: check files:read"):
        connector.enrich(connector.normalize(record)[0])
    assert "Authorization" not in _files.calls[-1].request.headers


def test_retries_are_stored_once_and_acknowledged_without_network(slack_runtime: Runtime) -> None:
    """Slack's retries (X-Slack-Retry-Num, same event_id) are answered 200 and kept once; ingress calls no API."""
    client = create_app(slack_runtime).test_client()
    before = len(FAKE.state.calls)
    data = payload("message_im")
    first = send(client, request_for(data), CHANNEL)
    for attempt in (1, 2, 3):
        retry = request_for(data, headers={"X-Slack-Retry-Num": str(attempt), "X-Slack-Retry-Reason": "http_timeout"})
        assert send(client, retry, CHANNEL).status_code == first.status_code == 200
    assert len(FAKE.state.calls) == before
    assert count(slack_runtime, inbox, CHANNEL) == 1
    drain_pipeline(slack_runtime)
    assert count(slack_runtime, messages, CHANNEL) == 1


def test_profile_lookups_are_cached_per_user_with_each_workspace_token() -> None:
    """users.info is called once per user while the cache holds, with the token of the workspace the event came
    from: a Slack Connect user through our installation, a user of a second installation with its own token."""
    second = payload("message_im")
    second["team_id"] = second["event"]["team"] = "T0ACMECORP1"
    second["event"]["user"] = "U0EXT000042"
    connector = slack()
    before_calls = len(FAKE.state.calls)
    for data in (payload("message_im"), payload("message_changed"), payload("thread_reply_shared"),
                 payload("thread_reply_shared"), second, second):
        [record] = split_records(connector, request_for(data))
        [message] = connector.normalize(record)
        connector.enrich(message)
    lookups = [c for c in FAKE.state.calls[before_calls:] if c.method == "users.info"]
    assert [(c.params["user"], c.token) for c in lookups] == [
        ("U0CUST00001", BOT_TOKEN), ("U0EXT000042", BOT_TOKEN), ("U0EXT000042", OTHER_TOKEN)]


def test_external_user_gets_their_own_team_scope_and_email() -> None:
    """A Slack Connect user is scoped by their own workspace, and their profile email joins the identifiers."""
    connector = slack()
    [record] = split_records(connector, request_for(payload("thread_reply_shared")))
    [message] = connector.enrich(connector.normalize(record)[0]),
    assert [(i.kind.value, i.value) for i in message.sender.identifiers] == [
        ("slack", "T0ACMECORP1:U0EXT000042"), ("email", "kofi@acme.example")]
    assert message.sender.display_name == "Kofi Mensah"


def test_unknown_user_keeps_the_slack_identifier_only() -> None:
    """users.info answering user_not_found leaves the message as normalised (no retry loop)."""
    data = payload("message_im")
    data["event"]["user"] = "U0GONE00001"
    connector = slack()
    [record] = split_records(connector, request_for(data))
    [message] = connector.normalize(record)
    assert connector.enrich(message) == message


@pytest.mark.parametrize(("extra", "fixture", "produces"), [
    ({}, "internal_channel", False),
    ({"channel_ids": ["C0RANDOM001"]}, "internal_channel", True),
    ({"direct_messages": False}, "message_im", False),
    ({"shared_channels": False}, "thread_reply_shared", False),
    ({"bot_user_ids": ["U0CUST00001"]}, "message_im", False),
])
def test_customer_channels_are_configurable(extra: dict[str, Any], fixture: str, produces: bool) -> None:
    """DMs, shared channels and listed channels each count only as configured; listed bot users never do."""
    connector = slack(**extra)
    [record] = split_records(connector, request_for(payload(fixture)))
    assert bool(connector.normalize(record)) is produces


def test_unfurl_without_text_change_is_not_an_edit() -> None:
    """Slack sends message_changed when it adds a link preview: the text is the same, so no edit is recorded."""
    data = payload("message_changed")
    data["event"]["message"]["text"] = data["event"]["previous_message"]["text"]
    connector = slack()
    [record] = split_records(connector, request_for(data))
    assert connector.normalize(record) == []


def test_workspace_not_listed_is_refused() -> None:
    """With team_ids set, an event from another workspace signed with our secret is still not ours."""
    with pytest.raises(SignatureInvalid, match="team_ids"):
        slack(team_ids=["T0OTHER0001"]).split(request_for(payload("message_im")))


def test_signing_secret_rotation() -> None:
    """Either the current or the previous signing secret verifies; any other does not."""
    rotating = slack(signing_secret="test-new-secret", previous_signing_secret="test-old-secret")
    rotating.verify(request_for(payload("message_im"), secret="test-old-secret"))
    rotating.verify(request_for(payload("message_im"), secret="test-new-secret"))
    with pytest.raises(SignatureInvalid):
        rotating.verify(request_for(payload("message_im"), secret="test-other-secret"))


def test_future_timestamp_and_garbage_timestamp_are_refused() -> None:
    """The replay window applies both ways; a timestamp that is not a number is refused, not a 500."""
    connector = slack()
    with pytest.raises(SignatureInvalid, match="window"):
        connector.verify(request_for(payload("message_im"), timestamp=int(time.time()) + 400))
    good = request_for(payload("message_im"))
    headers = Headers({**dict(good.headers.items()), TIMESTAMP_HEADER: "soon"})
    with pytest.raises(SignatureInvalid, match="number"):
        connector.verify(HookRequest("POST", "", "", headers, good.body, HOOK_URL))
    assert SIGNATURE_HEADER in headers


def test_url_verification_needs_a_valid_signature(slack_runtime: Runtime) -> None:
    """The challenge is only echoed for a correctly signed request."""
    client = create_app(slack_runtime).test_client()
    request = request_for(payload("url_verification"), secret="test-other-secret")
    assert send(client, request, CHANNEL).status_code == 401


def test_notices_other_than_events_are_acknowledged_and_not_stored(slack_runtime: Runtime) -> None:
    """app_rate_limited is a notice about us, not an event: 200, nothing stored."""
    client = create_app(slack_runtime).test_client()
    notice = {"token": "XXYYZZ", "type": "app_rate_limited", "team_id": TEAM,
              "minute_rate_limited": 1518467820, "api_app_id": "A0GWAPP0001"}
    assert send(client, request_for(notice), CHANNEL).status_code == 200
    assert count(slack_runtime, inbox, CHANNEL) == 0


def test_simulate_sample_request_verifies_and_normalises() -> None:
    """``gateway simulate`` sends a request the connector accepts as Slack's own."""
    connector = slack()
    request = connector.sample_request(sender=f"{TEAM}:U0CUST00001", text="hello", recipient=None,
                                       public_url=HOOK_URL)
    connector.verify(request)
    [record] = split_records(connector, request)
    [message] = connector.normalize(record)
    assert message.text == "hello"


def test_check_online_names_the_refusal_and_lets_no_slack_error_escape() -> None:
    assert slack().check_online() == "bot support in workspace GW Support"
    with pytest.raises(OnlineCheckFailed, match=r"^Slack refused the bot_token: invalid_auth$"):
        slack(bot_token="xoxb-test-revoked-token").check_online()


def test_organisation_level_events_are_acknowledged_and_not_stored(slack_runtime: Runtime,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """Enterprise Grid sends org-level events with ``team_id`` null (``team_access_granted``) or without it (an
    org-wide install: only ``authorizations[].enterprise_id``): they were answered 400, so Slack retried them and
    counted failures against the subscription."""
    client = create_app(slack_runtime).test_client()
    granted = {"token": "XXYYZZ", "team_id": None, "enterprise_id": "E0GRIDORG01", "api_app_id": "A0GWAPP0001",
               "event": {"type": "team_access_granted", "team_ids": ["T0GRIDWS001", "T0GRIDWS002"],
                         "event_ts": "1700000900.000100"},
               "type": "event_callback", "event_id": "Ev0ORGLEVEL1", "event_time": 1700000900}
    org_wide = {"token": "XXYYZZ", "api_app_id": "A0GWAPP0001", "type": "event_callback",
                "event": {"type": "user_change", "user": {"id": "W0GRIDUSER1"}, "event_ts": "1700000901.000100"},
                "event_id": "Ev0ORGLEVEL2", "event_time": 1700000901,
                "authorizations": [{"enterprise_id": "E0GRIDORG01", "team_id": None, "user_id": "W0GWBOT0001",
                                    "is_bot": True, "is_enterprise_install": True}]}
    with caplog.at_level(logging.INFO, logger="connectors.slack"):
        for event in (granted, org_wide):
            response = send(client, request_for(event), CHANNEL)
            assert response.status_code == 200, response.get_data(as_text=True)
    assert count(slack_runtime, inbox, CHANNEL) == 0
    assert "organisation-level team_access_granted event Ev0ORGLEVEL1 (enterprise E0GRIDORG01)" in caplog.text


def test_a_message_named_by_context_team_id_only_is_kept(slack_runtime: Runtime) -> None:
    """An org-wide app's message event may carry its workspace in ``context_team_id`` alone: it is the customer's."""
    client = create_app(slack_runtime).test_client()
    data = payload("message_im")
    del data["team_id"]
    data["context_team_id"], data["context_enterprise_id"] = TEAM, "E0GRIDORG01"
    assert send(client, request_for(data), CHANNEL).status_code == 200
    assert drain_pipeline(slack_runtime) == 1
    with slack_runtime.engine.connect() as conn:
        [stored] = [row.data for row in conn.execute(select(messages.c.data))]
    assert stored["sender"]["identifiers"][0] == slack_id("U0CUST00001") and stored["extras"]["team_id"] == TEAM


def test_message_changed_without_message_ts_does_not_raise(slack_runtime: Runtime) -> None:
    """``message_changed`` whose ``message`` has no ``ts`` raised KeyError in the worker (quarantined row): the
    edited message is the previous message's ``ts``; with neither, the edit is ignored with its reason."""
    client = create_app(slack_runtime).test_client()
    with_previous = payload("message_changed")
    del with_previous["event"]["message"]["ts"]
    neither = payload("message_changed")
    neither["event_id"] = "Ev0EDIT00099"
    del neither["event"]["message"]["ts"], neither["event"]["previous_message"]["ts"]
    for data in (with_previous, neither):
        assert send(client, request_for(data), CHANNEL).status_code == 200
    assert drain_pipeline(slack_runtime) == 2
    with slack_runtime.engine.connect() as conn:
        [edit] = [row.data for row in conn.execute(select(messages.c.data))]
        statuses = sorted(conn.execute(select(inbox.c.status)).scalars())
    assert edit["kind"] == "edit" and edit["target_provider_message_id"] == "D0CUSTDM001:1700000000.000100"
    assert statuses == ["done", "ignored"]
