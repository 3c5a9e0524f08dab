"""Media a channel could not fetch never costs the customer's text: after a few tries the message reaches the CRM
with the provider's media links and a note saying what went wrong, on every channel that carries media.

The media host is real: TLS on loopback, reached under the providers' own host names through a test resolver, and
it fails the way real hosts do: it never answers (cut by a short ``media.deadline_seconds``), answers 404 or 500,
or redirects to a host the channel does not allow. Retries are scheduled an hour apart and the test makes them due,
so the machine's speed decides nothing.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import requests
from sqlalchemy import func, select, update

from gateway.config import load_config
from gateway.delivery import DeliveryWorker
from gateway.pipeline import ENRICH_ATTEMPTS, PipelineWorker
from gateway.runtime import Runtime, build_runtime
from gateway.storage.db import utcnow
from gateway.storage.tables import inbox, outbox
from gateway.webhooks import Headers, HookRequest
from gateway.worker import drain_once
from tests.conftest import PUBLIC_URL, ROOT, TWILIO_SID
from tests.fake_slack import FakeSlack
from tests.media_server import MediaServer

NAMES = ("media.test", "cdn.media.test", "files.slack.com", "elsewhere.test")
TEAM, SLACK_USER = "T0GW1SUPPORT", "U0CUST00001"
X_ACCOUNT = "3001969357"
WHATSAPP_MEDIA_ID = "1003383421387256"
FAILURES = {  # how the media host fails, and what the note then says
    "timeout": ("/silent", "took longer than its 0.5 s deadline"),  # the only case with a short deadline
    "404": ("/status/404", "answered HTTP 404"),
    "500": ("/status/500", "answered HTTP 500"),
    "redirect elsewhere": ("/redirect?to=https://elsewhere.test:{port}/file/photo.jpg", "elsewhere.test"),
}

CONFIG = """
storage: {{url: "{{storage_url}}"}}
server: {{public_url: "{public_url}"}}
workers: {{enrich_wait_seconds: 60, retry: {{max_attempts: {max_attempts}, initial_seconds: 3600, max_seconds: 3600,
          jitter_seconds: 0}}}}
media: {{allow_networks: ["127.0.0.1/32"], deadline_seconds: {deadline}}}
channels:
  sms-main: {{type: twilio, account_sid: "{sid}", auth_token: test-token, media_hosts: [media.test],
             media_redirect_hosts: [cdn.media.test]}}
  meta-main: {{type: meta, app_secret: test-app-secret, verify_token: test-verify-token,
              access_token: test-access-token, graph_api_base_url: "{media}/graph", media_hosts: [media.test]}}
  slack-main: {{type: slack, signing_secret: test-signing-secret, bot_token: xoxb-test-token,
               api_base_url: "{slack}"}}
  x-main: {{type: x, consumer_secret: test-consumer-secret, user_id: "{x_account}", consumer_key: test-key,
           access_token: test-access-token, access_token_secret: test-access-secret, media_hosts: [media.test]}}
crms:
  trial: {{type: jsonl, path: out/crm.jsonl}}
routes:
  - {{from: [sms-main, meta-main, slack-main, x-main], to: trial}}
"""


@pytest.fixture
def resolver(monkeypatch: pytest.MonkeyPatch) -> None:
    """The media hosts' names (Slack's own file host among them) answered with 127.0.0.1."""
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        return real("127.0.0.1" if host in NAMES else host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.fixture
def media_host(tmp_path: Path, resolver: None) -> Iterator[MediaServer]:
    server = MediaServer(tmp_path, tls=True, names=NAMES).start()
    yield server
    server.stop()


@pytest.fixture
def slack_api() -> Iterator[FakeSlack]:
    fake = FakeSlack()
    fake.state.tokens[TEAM] = "xoxb-test-token"
    fake.state.add_user(TEAM, SLACK_USER, "Dana Reyes")
    yield fake
    fake.close()


@pytest.fixture
def make_runtime(write_config: Callable[..., Path], media_host: MediaServer,
                 slack_api: FakeSlack) -> Iterator[Callable[..., Runtime]]:
    runtimes: list[Runtime] = []

    def make(max_attempts: int, deadline: float = 30.0) -> Runtime:
        """A runtime whose media downloads end after ``deadline`` seconds (long enough for a busy machine)."""
        path = write_config(CONFIG.format(public_url=PUBLIC_URL, max_attempts=max_attempts, sid=TWILIO_SID,
                                          deadline=deadline,
                                          media=media_host.url("", host="media.test"), slack=slack_api.base_url,
                                          x_account=X_ACCOUNT))
        session = requests.Session()
        session.verify = str(media_host.ca_file)
        session.trust_env = False  # else REQUESTS_CA_BUNDLE, when set, wins over session.verify
        runtime = build_runtime(load_config(path), http=session)
        runtimes.append(runtime)
        return runtime

    yield make
    for runtime in runtimes:
        runtime.close()


def fixture(kind: str, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((ROOT / "tests" / "fixtures" / kind / f"{name}.json").read_text())
    return data


def store(rt: Runtime, channel: str, body: bytes, content_type: str) -> None:
    """Split as the ingress splits a verified request, and store the items."""
    url = f"{PUBLIC_URL}/hooks/{channel}"
    request = HookRequest("POST", f"/hooks/{channel}", "", Headers({"Content-Type": content_type}), body, url)
    rt.queues.store_inbox(channel, rt.channels[channel].split(request), {}, url)


def store_messages_with_media(rt: Runtime, media_url: str) -> None:
    """One message with media from each channel that carries media, every media link answered as ``media_url``."""
    for sid, sender in (("MM" + "1" * 32, "+14155550101"), ("MM" + "2" * 32, "whatsapp:+14155550102")):
        form = {"MessageSid": sid, "SmsSid": sid, "AccountSid": TWILIO_SID, "From": sender, "To": "+15005550006",
                "Body": f"photo from {sid[:4]}", "NumMedia": "1", "NumSegments": "1", "SmsStatus": "received",
                "MediaUrl0": media_url, "MediaContentType0": "image/jpeg"}
        store(rt, "sms-main", urlencode(form).encode(), "application/x-www-form-urlencoded")
    messenger = fixture("meta", "messenger_image")
    messenger["entry"][0]["messaging"][0]["message"]["attachments"][0]["payload"]["url"] = media_url
    store(rt, "meta-main", json.dumps(messenger).encode(), "application/json")
    store(rt, "meta-main", json.dumps(fixture("meta", "whatsapp_image")).encode(), "application/json")
    slack = fixture("slack", "file_share")
    slack["event"]["files"][0]["url_private_download"] = media_url.replace("media.test", "files.slack.com")
    store(rt, "slack-main", json.dumps(slack).encode(), "application/json")
    dm = fixture("x", "dm_media")
    dm["direct_message_events"][0]["message_create"]["message_data"]["attachment"]["media"]["media_url_https"] = \
        media_url
    store(rt, "x-main", json.dumps(dm).encode(), "application/json")


def drain(rt: Runtime) -> None:
    pipeline, delivery = PipelineWorker(rt, "test-p"), DeliveryWorker(rt, "test-d")
    while drain_once(pipeline) + drain_once(delivery):
        pass


def make_due(rt: Runtime) -> None:
    with rt.engine.begin() as conn:
        conn.execute(update(inbox).values(available_at=utcnow() - timedelta(seconds=1)))


def outbox_count(rt: Runtime) -> int:
    with rt.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(outbox)).scalar_one())


def delivered(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "out" / "crm.jsonl"
    return [json.loads(line)["message"] for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.parametrize("failure", list(FAILURES))
def test_every_channel_delivers_the_text_with_the_provider_link_and_a_note(
        failure: str, make_runtime: Callable[..., Runtime], media_host: MediaServer, tmp_path: Path) -> None:
    """``retry.max_attempts`` below the media tries: the last try still delivers instead of dead-lettering."""
    path, said = FAILURES[failure]
    media_url = media_host.url(path.format(port=media_host.port), host="media.test")
    media_host.graph[WHATSAPP_MEDIA_ID] = media_url
    rt = make_runtime(3, 0.5 if failure == "timeout" else 30.0)
    store_messages_with_media(rt, media_url)
    for attempt in (1, 2):
        drain(rt)
        assert outbox_count(rt) == 0, f"attempt {attempt} waits for the media"
        make_due(rt)
    drain(rt)
    assert rt.queues.list_dead_letters() == []
    messages = delivered(tmp_path)
    assert sorted(m["connector"] for m in messages) == ["meta-main", "meta-main", "slack-main", "sms-main",
                                                        "sms-main", "x-main"]
    assert {m["channel"] for m in messages} == {"mms", "whatsapp", "messenger", "slack", "x"}
    for message in messages:
        [attachment] = message["attachments"]
        assert attachment["location"].startswith("https://"), message["connector"]  # the provider's link
        note = message["extras"]["media_note"]
        assert "could not be downloaded after 3 tries" in note and said in note, (message["connector"], note)
        assert "/status/" not in note and "/silent" not in note  # no media URL (they can be signed) in the note
    whatsapp_cloud = next(m for m in messages if m["provider_message_id"].startswith("wamid."))
    assert whatsapp_cloud["attachments"][0]["location"] == media_host.url(f"/graph/{WHATSAPP_MEDIA_ID}",
                                                                          host="media.test")
    assert "The label on the box" in whatsapp_cloud["text"]


def test_with_the_default_retry_budget_media_get_their_own_tries(
        make_runtime: Callable[..., Runtime], media_host: MediaServer, tmp_path: Path) -> None:
    media_url = media_host.url("/status/404", host="media.test")
    media_host.graph[WHATSAPP_MEDIA_ID] = media_url
    rt = make_runtime(10)
    store_messages_with_media(rt, media_url)
    for attempt in range(1, ENRICH_ATTEMPTS):
        drain(rt)
        assert outbox_count(rt) == 0, f"attempt {attempt} waits for the media"
        make_due(rt)
    drain(rt)
    assert rt.queues.list_dead_letters() == []
    messages = delivered(tmp_path)
    assert len(messages) == 6
    assert all(f"after {ENRICH_ATTEMPTS} tries" in m["extras"]["media_note"] for m in messages)


def test_media_that_arrive_on_a_later_try_are_stored_without_a_note(
        make_runtime: Callable[..., Runtime], media_host: MediaServer, tmp_path: Path) -> None:
    media_url = media_host.url("/file/later.jpg", host="media.test")
    media_host.graph[WHATSAPP_MEDIA_ID] = media_url
    rt = make_runtime(3)
    store_messages_with_media(rt, media_url)
    drain(rt)  # 404 at first: the file is not there yet
    assert outbox_count(rt) == 0
    media_host.files["later.jpg"] = b"\xff\xd8\xff\xe0 a photo"
    make_due(rt)
    drain(rt)
    messages = delivered(tmp_path)
    assert len(messages) == 6
    for message in messages:
        assert message["attachments"][0]["location"].startswith("store:sha256/"), message["connector"]
        assert "media_note" not in message["extras"] and "enrich_error" not in message["extras"]
