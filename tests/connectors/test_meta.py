"""The Meta channel (Messenger, Instagram, WhatsApp Cloud API): the shared suite plus batches, statuses and media.

Fixtures in ``tests/fixtures/meta`` follow Meta's documented webhook payloads (Messenger Platform ``messages`` /
``message_echoes`` / ``message_reactions``, Instagram messaging, WhatsApp Cloud API ``messages`` with ``contacts``,
``messages`` and ``statuses``). Requests are signed ``X-Hub-Signature-256: sha256=hex(HMAC-SHA256(app secret, raw
body))``; Graph API and CDN media downloads are mocked with ``responses``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import pytest
import requests
import responses
from sqlalchemy import select

from connectors.meta import SIGNATURE_HEADER, MetaChannel, signed_request
from gateway.attachments import SCHEME, MediaRefused
from gateway.errors import SignatureInvalid
from gateway.plugins import ChannelConnector, ConnectorContext
from gateway.runtime import Runtime
from gateway.storage.tables import customers, identities, inbox, messages, provider_statuses
from gateway.web import create_app
from gateway.webhooks import Headers, HookRequest
from tests.conformance.channel import FIXTURES, ChannelConformance, Expected, count, drain_pipeline, send, split_records
from tests.conftest import PUBLIC_URL

CHANNEL = "meta-main"
HOOK_URL = f"{PUBLIC_URL}/hooks/{CHANNEL}"
APP_SECRET = "test-meta-app-secret"
VERIFY_TOKEN = "test-meta-verify-token"
ACCESS_TOKEN = "test-meta-access-token"
GRAPH = "https://graph.facebook.com/v21.0"
WA_MEDIA_URL = "https://lookaside.fbsbx.com/whatsapp_business/attachments/?mid=1003383421387256&ext=1700000500"
PDF_MEDIA_URL = "https://lookaside.fbsbx.com/whatsapp_business/attachments/?mid=2440019936182732&ext=1700001002"
MESSENGER_IMAGE = ("https://scontent.xx.fbcdn.net/v/t1.15752-9/398765432_1029384756_n.jpg"
                   "?_nc_cat=105&ccb=1-7&oh=00_AfA&oe=65A1B2C3")
JPEG = b"\xff\xd8\xff\xe0" + b"jpeg-bytes" * 10
PDF = b"%PDF-1.4 receipt"
PAGE, PSID = "104857600112233", "6543210987654321"
WAMID_TEXT = "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA="
WA_PERSON = [{"kind": "phone", "value": "+16505551234"}, {"kind": "whatsapp", "value": "+16505551234"}]


@pytest.fixture(autouse=True)
def media() -> Iterator[responses.RequestsMock]:
    """Graph media lookups answer only with the access token; the CDN serves the bytes."""
    bearer = responses.matchers.header_matcher({"Authorization": f"Bearer {ACCESS_TOKEN}"})
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        for media_id, url, mime in (("1003383421387256", WA_MEDIA_URL, "image/jpeg"),
                                    ("2440019936182732", PDF_MEDIA_URL, "application/pdf")):
            mock.get(f"{GRAPH}/{media_id}", match=[bearer], json={
                "messaging_product": "whatsapp", "url": url, "mime_type": mime,
                "sha256": "8d8a2f0c", "file_size": 303833, "id": media_id})
        mock.get(WA_MEDIA_URL, body=JPEG, content_type="image/jpeg", match=[bearer])
        mock.get(PDF_MEDIA_URL, body=PDF, content_type="application/pdf", match=[bearer])
        mock.get(MESSENGER_IMAGE, body=JPEG, content_type="image/jpeg")
        yield mock


def settings(**extra: Any) -> dict[str, Any]:
    return {"type": "meta", "app_secret": APP_SECRET, "verify_token": VERIFY_TOKEN, "access_token": ACCESS_TOKEN,
            **extra}


def payload(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / "meta" / f"{name}.json").read_text(encoding="utf-8"))


def raw(name: str) -> bytes:
    return (FIXTURES / "meta" / f"{name}.json").read_bytes()


def meta(**extra: Any) -> MetaChannel:
    config = MetaChannel.Config.model_validate(settings(**extra))
    return MetaChannel(CHANNEL, config, ConnectorContext(http=requests.Session(), public_url=PUBLIC_URL))


def post(body: bytes | dict[str, Any], secret: str = APP_SECRET) -> HookRequest:
    return signed_request(secret, body if isinstance(body, bytes) else json.dumps(body).encode(), HOOK_URL)


class TestMetaConformance(ChannelConformance):
    """The shared suite for ``meta``. Meta's signature has no timestamp (retries are deduplicated by message id);
    the handshake is the GET ``hub.challenge``."""

    connector_class = MetaChannel
    channel_name = CHANNEL
    required_secrets = ("app_secret", "verify_token", "access_token")
    has_timestamp = False
    has_handshake = True
    expected = {
        "messenger_text": Expected("message", ({
            "channel": "messenger", "provider_message_id": payload("messenger_text")["entry"][0]["messaging"][0][
                "message"]["mid"],
            "sender.identifiers": [{"kind": "messenger", "value": f"{PAGE}:{PSID}"}],
            "text": "Where is my order #A-1043?", "extras.quick_reply_payload": "ORDER_STATUS",
            "sent_at": "2023-11-14T22:13:20.123000Z",
        },)),
        "messenger_image": Expected("message", ({
            "channel": "messenger", "text": "", "attachments.0.content_type": "image/jpeg",
            "attachments.0.filename": "image0",
        },)),
        "messenger_echo": Expected("message"),
        "instagram_text": Expected("message", ({
            "channel": "instagram", "text": "Is the blue jacket back in stock?",
            "sender.identifiers": [{"kind": "instagram", "value": "17841400008460056:1238811229876543"}],
        },)),
        "whatsapp_text": Expected("message", ({
            "channel": "whatsapp", "provider_message_id": WAMID_TEXT, "sender.identifiers": WA_PERSON,
            "sender.display_name": "Sheena Nelson", "recipients.0.identifiers": [
                {"kind": "phone", "value": "+15550783881"}],
            "text": "Does it come in another colour?", "sent_at": "2023-11-14T22:20:00Z",
            "extras.phone_number_id": "106540352242922", "extras.wa_id": "16505551234",
        },), (WAMID_TEXT,)),
        "whatsapp_image": Expected("message", ({
            "text": "The label on the box", "attachments.0.content_type": "image/jpeg",
            "attachments.0.filename": "image.jpg", "extras.type": "image",
        },)),
        "whatsapp_location": Expected("message", ({
            "text": "Philz Coffee 1 Hacker Way, Menlo Park, CA 94025", "extras.location.latitude": 37.483872693672,
        },)),
        "whatsapp_button_reply": Expected("message", ({
            "text": "Talk to an agent", "extras.interactive.button_reply.id": "talk-to-agent",
            "thread.in_reply_to": "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBI5QTNDQTVCM0Q0Q0Q2RTY3RTcA",
        },)),
        "whatsapp_reaction": Expected("message", ({
            "kind": "reaction", "target_provider_message_id": WAMID_TEXT, "text": "\U0001F44D",
        },)),
        "whatsapp_status_delivered": Expected("status", (), (
            "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBI5QTNDQTVCM0Q0Q0Q2RTY3RTcA:status:delivered",)),
    }

    def channel_settings(self) -> dict[str, Any]:
        return settings()

    def signed_request(self, fixture: str, connector: ChannelConnector) -> HookRequest:
        return post(raw(fixture))

    def tamper(self, request: HookRequest) -> HookRequest:
        body = request.body.replace(b'"timestamp": ', b'"timestamp":  ', 1)
        assert body != request.body
        return HookRequest(request.method, request.path, request.query_string, request.headers, body,
                           request.public_url)

    def handshake_request(self, connector: ChannelConnector) -> tuple[HookRequest, int, bytes]:
        query = urlencode({"hub.mode": "subscribe", "hub.challenge": "1158201444", "hub.verify_token": VERIFY_TOKEN})
        return HookRequest("GET", "", query, Headers({}), b"", f"{HOOK_URL}?{query}"), 200, b"1158201444"

    def malformed_requests(self, connector: ChannelConnector) -> dict[str, HookRequest]:
        text = raw("whatsapp_text")
        no_id = payload("whatsapp_text")
        del no_id["entry"][0]["changes"][0]["value"]["messages"][0]["id"]
        no_mid = payload("messenger_text")
        del no_mid["entry"][0]["messaging"][0]["message"]["mid"]
        return {
            "not_json": post(b"object=page"),
            "truncated": post(text[: len(text) // 2]),
            "json_array": post(b"[]"),
            "unknown_object": post({"object": "user", "entry": []}),
            "entry_not_list": post({"object": "page", "entry": {"id": PAGE}}),
            "messages_not_list": post({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [
                {"field": "messages", "value": {"messages": "hi"}}]}]}),
            "whatsapp_message_without_id": post(no_id),
            "messenger_message_without_mid": post(no_mid),
        }


def test_whatsapp_batch_is_split_per_message_and_status(runtime_meta: Runtime) -> None:
    """One POST with three messages from two people and two statuses: five inbox rows, three messages, two
    customers, two statuses recorded (the failure with its error code); a re-delivery stores nothing new."""
    client = create_app(runtime_meta).test_client()
    assert send(client, post(raw("whatsapp_batch")), CHANNEL).status_code == 200
    assert send(client, post(raw("whatsapp_batch")), CHANNEL).status_code == 200
    assert count(runtime_meta, inbox, CHANNEL) == 5
    assert drain_pipeline(runtime_meta) == 5
    with runtime_meta.engine.connect() as conn:
        texts = sorted(row.data["text"] for row in conn.execute(select(messages.c.data)))
        names = sorted(conn.execute(select(customers.c.display_name)).scalars())
        phones = sorted(conn.execute(select(identities.c.value).where(identities.c.kind == "whatsapp")).scalars())
        statuses = sorted(conn.execute(select(provider_statuses.c.provider_message_id, provider_statuses.c.status,
                                              provider_statuses.c.error_code)).all())
        pdf = conn.execute(select(messages.c.data).where(
            messages.c.provider_message_id == "wamid.BATCH0003")).scalar_one()
    assert texts == ["", "First question", "എന്റെ ഓർഡർ എവിടെ? 📦"]
    assert names == ["Ravi Menon", "Sheena Nelson"]
    assert phones == ["+16505551234", "+919847012345"]
    assert statuses == [("wamid.OUT0001", "read", None), ("wamid.OUT0002", "failed", "131047")]
    [attachment] = pdf["attachments"]
    assert attachment["filename"] == "receipt.pdf" and attachment["location"].startswith(SCHEME)
    assert runtime_meta.channels[CHANNEL].context.attachments.read(attachment["location"]) == PDF


def test_whatsapp_batch_stores_each_message_with_its_own_contact_only() -> None:
    """Each message's row carried every contact and all the metadata of the POST: n messages and n contacts (or a
    padded metadata object) in one signed body were stored n times over, and each sender's name was looked up by a
    loop over every contact."""
    people = 200
    contacts = [{"profile": {"name": f"Person {n} " + "x" * 2000}, "wa_id": f"1650555{n:04d}"} for n in range(people)]
    batch = {"object": "whatsapp_business_account", "entry": [{"id": "102290129340398", "changes": [{
        "field": "messages", "value": {
            "messaging_product": "whatsapp", "metadata": {"display_phone_number": "15550783881",
                                                          "padding": "p" * 200_000},
            "contacts": contacts,
            "messages": [{"from": f"1650555{n:04d}", "id": f"wamid.MANY{n:04d}", "timestamp": "1700001000",
                          "type": "text", "text": {"body": f"message {n}"}} for n in range(people)],
            "statuses": [{"id": "wamid.OUT0001", "status": "read", "timestamp": "1700001000",
                          "recipient_id": "16505550000"}]}}]}]}
    request = post(batch)
    connector = meta()
    records = split_records(connector, request)
    assert len(records) == people + 1
    assert sum(len(record.body) for record in records) < 3 * len(request.body)
    messages_out = [message for record in records for message in connector.normalize(record)]
    assert [message.sender.display_name for message in messages_out] == [c["profile"]["name"] for c in contacts]


def test_messenger_batch_entries_and_reactions(runtime_meta: Runtime) -> None:
    """Two entries, two messages from two people, a delivery receipt (a status) and a reaction to our reply."""
    connector = runtime_meta.channels[CHANNEL]
    records = split_records(connector, post(raw("messenger_batch")))
    assert [(r.kind, r.provider_id.split(":")[0]) for r in records] == [
        ("message", "m_BATCH_A"), ("status", "delivery"), ("message", "m_BATCH_B"),
        ("message", "m_EchoOurReply0001AbCdEfGhIjKlMnOpQrStUvWxYz")]
    produced = [m for r in records for m in connector.normalize(r)]
    assert [(m.kind.value, m.text) for m in produced] == [("message", "one"), ("message", "two"),
                                                          ("reaction", "\u2764\ufe0f")]
    assert produced[2].target_provider_message_id == "m_EchoOurReply0001AbCdEfGhIjKlMnOpQrStUvWxYz"
    [delivered] = connector.statuses(records[1])
    assert (delivered.provider_message_id, delivered.status) == (
        "m_EchoOurReply0001AbCdEfGhIjKlMnOpQrStUvWxYz", "delivered")
    assert delivered.extras == {"recipient_id": "6543210987654321", "watermark": 1700002000400}


def test_read_receipts_are_recorded_as_statuses_once(runtime_meta: Runtime) -> None:
    """Messenger's read watermark and Instagram's read mid become status rows (no message, no customer); a
    re-delivered receipt is stored once."""
    client = create_app(runtime_meta).test_client()
    for fixture in ("messenger_read", "instagram_seen", "messenger_read"):
        assert send(client, post(raw(fixture)), CHANNEL).status_code == 200
    assert count(runtime_meta, inbox, CHANNEL) == 2
    assert drain_pipeline(runtime_meta) == 2
    with runtime_meta.engine.connect() as conn:
        rows = conn.execute(select(provider_statuses.c.provider_message_id, provider_statuses.c.status,
                                   provider_statuses.c.occurred_at, provider_statuses.c.extras)
                            .order_by(provider_statuses.c.occurred_at)).all()
        assert conn.execute(select(messages.c.id)).first() is None
        assert conn.execute(select(customers.c.id)).first() is None
    messenger, instagram = rows
    assert messenger.provider_message_id == "6543210987654321:up-to:1700002999000"
    assert messenger.status == "read" and messenger.extras["watermark"] == 1700002999000
    assert messenger.occurred_at.timestamp() == 1700003000.0
    assert instagram.provider_message_id == payload("instagram_seen")["entry"][0]["messaging"][0]["read"]["mid"]
    assert instagram.status == "read" and instagram.extras == {"recipient_id": "5432109876543210"}


def test_receipt_without_watermark_is_400(runtime_meta: Runtime) -> None:
    data = payload("messenger_read")
    data["entry"][0]["messaging"][0]["read"] = {}
    response = send(create_app(runtime_meta).test_client(), post(data), CHANNEL)
    assert response.status_code == 400 and b"watermark" in response.get_data()


def test_media_downloaded_with_token_into_attachment_store(media: responses.RequestsMock) -> None:
    """WhatsApp media: media id -> URL -> bytes, both with the access token; Messenger CDN URLs fetched as given."""
    connector = meta()
    for fixture in ("whatsapp_image", "messenger_image"):
        [record] = split_records(connector, post(raw(fixture)))
        [message] = connector.normalize(record)
        [attachment] = connector.enrich(message).attachments
        assert attachment.location.startswith(SCHEME) and attachment.size == len(JPEG)
        assert attachment.sha256 == hashlib.sha256(JPEG).hexdigest()
    assert [call.request.url.split("?")[0] for call in media.calls] == [
        f"{GRAPH}/1003383421387256", WA_MEDIA_URL.split("?")[0], MESSENGER_IMAGE.split("?")[0]]


def test_media_from_other_hosts_is_refused() -> None:
    """A media URL outside Meta's CDN hosts is never fetched (the pipeline retries, then dead-letters the row)."""
    data = payload("messenger_image")
    data["entry"][0]["messaging"][0]["message"]["attachments"][0]["payload"]["url"] = "https://169.254.169.254/x.jpg"
    connector = meta()
    [record] = split_records(connector, post(data))
    [message] = connector.normalize(record)
    with pytest.raises(ValueError, match="refusing"):
        connector.enrich(message)


def test_whatsapp_media_url_from_the_graph_api_follows_the_same_rules(media: responses.RequestsMock) -> None:
    """The URL the Graph API resolves a media id to is held to the media hosts, redirects included."""
    media.replace(responses.GET, WA_MEDIA_URL, status=302, headers={"Location": "https://169.254.169.254/x.jpg"})
    connector = meta()
    [record] = split_records(connector, post(raw("whatsapp_image")))
    refused = r"refusing to follow a redirect from lookaside\.fbsbx\.com to '169\.254\.169\.254'"
    with pytest.raises(MediaRefused, match=refused):
        connector.enrich(connector.normalize(record)[0])
    assert [call.request.url.split("?")[0] for call in media.calls] == [
        f"{GRAPH}/1003383421387256", WA_MEDIA_URL.split("?")[0]]


def test_verify_token_mismatch_is_403(runtime_meta: Runtime) -> None:
    """A subscription attempt with the wrong verify token is refused and the challenge not echoed."""
    client = create_app(runtime_meta).test_client()
    response = client.get(f"/hooks/{CHANNEL}", query_string={
        "hub.mode": "subscribe", "hub.challenge": "1158201444", "hub.verify_token": "test-wrong"})
    assert response.status_code == 403 and b"1158201444" not in response.get_data()


def test_app_secret_rotation_and_signature_over_raw_bytes() -> None:
    """Either app secret verifies; a signature over re-serialised JSON (Meta signs its escaped form) does not."""
    rotating = meta(app_secret="test-new-secret", previous_app_secret="test-old-secret")
    rotating.verify(post(raw("whatsapp_text"), secret="test-old-secret"))
    rotating.verify(post(raw("whatsapp_text"), secret="test-new-secret"))
    with pytest.raises(SignatureInvalid):
        rotating.verify(post(raw("whatsapp_text"), secret="test-other"))
    escaped = json.dumps(payload("whatsapp_batch")).encode()  # \\u escapes, as Meta sends
    unescaped = json.dumps(payload("whatsapp_batch"), ensure_ascii=False).encode()
    signature = "sha256=" + hmac.new(APP_SECRET.encode(), escaped, hashlib.sha256).hexdigest()
    meta().verify(HookRequest("POST", "", "", Headers({SIGNATURE_HEADER: signature}), escaped, HOOK_URL))
    with pytest.raises(SignatureInvalid):
        meta().verify(HookRequest("POST", "", "", Headers({SIGNATURE_HEADER: signature}), unescaped, HOOK_URL))


def test_other_webhook_fields_are_acknowledged_without_storing(runtime_meta: Runtime) -> None:
    """Changes other than messages (template status, account updates) are answered 200 and not stored."""
    client = create_app(runtime_meta).test_client()
    body = {"object": "whatsapp_business_account", "entry": [{"id": "102290129340398", "changes": [{
        "field": "message_template_status_update", "value": {"event": "APPROVED", "message_template_id": 1}}]}]}
    assert send(client, post(body), CHANNEL).status_code == 200
    assert count(runtime_meta, inbox, CHANNEL) == 0


def test_simulated_whatsapp_request_round_trips() -> None:
    connector = meta()
    request = connector.sample_request(sender="+14155550100", text="hi", recipient=None, public_url=HOOK_URL)
    connector.verify(request)
    [record] = split_records(connector, request)
    [message] = connector.normalize(record)
    assert message.sender.identifiers[0].value == "+14155550100" and message.text == "hi"


@pytest.fixture
def runtime_meta(write_config: Any) -> Iterator[Runtime]:
    from gateway.config import load_config
    from gateway.runtime import build_runtime
    from tests.conformance.channel import config_text

    rt = build_runtime(load_config(write_config(config_text(CHANNEL, settings()))), http=requests.Session())
    yield rt
    rt.close()
