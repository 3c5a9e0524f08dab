"""The Twilio channel: the shared conformance suite plus Twilio's own signature and number quirks.

Fixtures in ``tests/fixtures/twilio`` are the form fields Twilio documents for inbound messages and status
callbacks (https://www.twilio.com/docs/messaging/guides/webhook-request); requests are signed with twilio's own
``RequestValidator.compute_signature`` over the URL Twilio is told to call.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import random
import threading
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import parse_qsl, urlencode

import pytest
import requests
import responses
from sqlalchemy import select
from twilio.request_validator import RequestValidator
from werkzeug.datastructures import MultiDict

from connectors.twilio import SIGNATURE_HEADER, TwilioChannel, _parse
from gateway.attachments import SCHEME, AttachmentTooLarge, MediaRefused
from gateway.errors import SignatureInvalid
from gateway.plugins import ChannelConnector, ConnectorContext
from gateway.records import InboxItem
from gateway.runtime import Runtime
from gateway.storage.tables import dead_letters, inbox, messages, provider_statuses
from gateway.web import create_app
from gateway.webhooks import Headers, HookRequest
from tests.conformance.channel import (
    FIXTURES,
    ChannelConformance,
    Expected,
    count,
    drain_pipeline,
    send,
    split_records,
)
from tests.conftest import PUBLIC_URL, TWILIO_SID, TWILIO_TOKEN

CHANNEL = "sms-main"
HOOK_URL = f"{PUBLIC_URL}/hooks/{CHANNEL}"
FORM = "application/x-www-form-urlencoded"
Pairs = list[tuple[str, str]]


def load_fixture(name: str) -> Pairs:
    """A documented payload's form fields, in the order Twilio sends them."""
    data = json.loads((FIXTURES / "twilio" / f"{name}.json").read_text(encoding="utf-8"))
    return list(data.items())


def form_request(pairs: Iterable[tuple[str, str]], *, token: str = TWILIO_TOKEN, signed_url: str = HOOK_URL,
                 url: str = HOOK_URL, signed_pairs: Iterable[tuple[str, str]] | None = None,
                 content_type: str = FORM, body: bytes | None = None) -> HookRequest:
    """A POST as Twilio sends it: the form body, and ``X-Twilio-Signature`` over ``signed_url`` + the fields.

    ``signed_pairs`` signs other fields than those sent (to model a body changed in transit); ``body`` sends raw
    bytes instead of the encoded form.
    """
    pairs = list(pairs)
    signature = RequestValidator(token).compute_signature(
        signed_url, MultiDict(pairs if signed_pairs is None else list(signed_pairs)))
    headers = Headers({"Content-Type": content_type, SIGNATURE_HEADER: signature})
    query = url.partition("?")[2]
    return HookRequest("POST", f"/hooks/{CHANNEL}", query, headers,
                       urlencode(pairs).encode() if body is None else body, url)


def replace(pairs: Pairs, **changes: str) -> Pairs:
    """The pairs with some values changed (keys not present are appended)."""
    out = [(key, changes.get(key, value)) for key, value in pairs]
    return out + [(key, value) for key, value in changes.items() if key not in dict(pairs)]


def twilio(**settings: Any) -> TwilioChannel:
    """A Twilio connector for ``TWILIO_SID`` with the given extra settings."""
    config = TwilioChannel.Config.model_validate(
        {"type": "twilio", "account_sid": TWILIO_SID, "auth_token": TWILIO_TOKEN, **settings})
    return TwilioChannel(CHANNEL, config, ConnectorContext(http=requests.Session(), public_url=PUBLIC_URL))


SMS_SID = "SM1ba0cfa14e9a5a2e5c3d5e1b4b1f6a01"
MMS_SID = "MM4f6c1b7e0d2a4e3b9c8d7e6f5a4b3c21"
MEDIA_BASE = f"https://api.twilio.com/2010-04-01/Accounts/{TWILIO_SID}/Messages/{MMS_SID}/Media"
UNICODE_BODY = dict(load_fixture("unicode_sms"))["Body"]
MEDIA_URLS = [f"{MEDIA_BASE}/ME0a1b2c3d4e5f60718293a4b5c6d7e8f9", f"{MEDIA_BASE}/ME1b2c3d4e5f60718293a4b5c6d7e8f9a0"]
CDN = "https://s3-external-1.amazonaws.com/media.twiliocdn.com/ACFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF1"
JPEG = b"\xff\xd8\xff\xe0" + b"photo" * 20
PDF = b"%PDF-1.4 invoice"
BASIC = "Basic " + base64.b64encode(f"{TWILIO_SID}:{TWILIO_TOKEN}".encode()).decode()


@pytest.fixture(autouse=True)
def media() -> Iterator[responses.RequestsMock]:
    """Twilio's media URLs answer the account's Basic credentials with a redirect to its CDN, as Twilio does."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        for n, (url, body, mime) in enumerate(zip(MEDIA_URLS, (JPEG, PDF), ("image/jpeg", "application/pdf"),
                                                  strict=True)):
            mock.get(url, status=307, headers={"Location": f"{CDN}/m{n}"},
                     match=[responses.matchers.header_matcher({"Authorization": BASIC})])
            mock.get(f"{CDN}/m{n}", body=body, content_type=mime)
        yield mock


def phone(value: str) -> list[dict[str, str]]:
    return [{"kind": "phone", "value": value}]


class TestTwilioConformance(ChannelConformance):
    """The shared suite for ``twilio``.

    Twilio's ``X-Twilio-Signature`` covers the URL and the form fields but carries no timestamp, so there is no
    replay window to test: a replayed request is a duplicate MessageSid, stored once (checked by the double-delivery
    test). Twilio has no subscription handshake either, so a GET is refused with 405.
    """

    connector_class = TwilioChannel
    channel_name = CHANNEL
    required_secrets = ("auth_token",)
    has_timestamp = False
    has_handshake = False
    expected = {
        "sms": Expected("message", ({
            "channel": "sms", "provider_message_id": SMS_SID, "direction": "inbound",
            "sender.identifiers": phone("+14017122661"), "sender.display_name": None,
            "recipients.0.identifiers": phone("+15558675310"),
            "text": "Ahoy! Let's build something amazing.", "full_text": "Ahoy! Let's build something amazing.",
            "attachments": [], "extras": {"To": "+15558675310", "AccountSid": TWILIO_SID,
                       "MessagingServiceSid": "MG9752274e9e519418a7406176694466fa", "NumSegments": "1",
                       "FromCountry": "US", "FromState": "CA", "FromCity": "SAN FRANCISCO"},
        },), (SMS_SID,)),
        "mms": Expected("message", ({
            "channel": "mms", "provider_message_id": MMS_SID, "sender.identifiers": phone("+14017122661"),
            "text": "The box arrived crushed, photo and invoice attached.",
            "attachments.0.filename": "media0.jpg", "attachments.0.content_type": "image/jpeg",
            "attachments.1.filename": "media1.pdf", "attachments.1.content_type": "application/pdf",
        },), (MMS_SID,)),
        "whatsapp": Expected("message", ({
            "channel": "whatsapp", "provider_message_id": "SM7d2e9a0c4b6f48e1a3c5d7e9f1b3a5c7",
            "sender.identifiers": [{"kind": "phone", "value": "+14017122661"},
                                   {"kind": "whatsapp", "value": "+14017122661"}],
            "sender.display_name": "Perspective Coffee",
            "recipients.0.identifiers": phone("+14155238886"),
            "text": "Hi, is my order of 2 kg beans shipped yet?",
            "extras.WaId": "14017122661", "extras.ProfileName": "Perspective Coffee",
        },)),
        "unicode_sms": Expected("message", ({
            "channel": "sms", "sender.identifiers": phone("+919847012345"),
            "text": UNICODE_BODY, "full_text": UNICODE_BODY, "extras.NumSegments": "3", "extras.FromCountry": "IN",
        },)),
        "status_delivered": Expected("status", (), ("SM1342fe1b2c904d1ab04f0fc7a58abca9:status:delivered",)),
    }

    def channel_settings(self) -> dict[str, Any]:
        return {"type": "twilio", "account_sid": TWILIO_SID, "auth_token": TWILIO_TOKEN}

    def signed_request(self, fixture: str, connector: ChannelConnector) -> HookRequest:
        return form_request(load_fixture(fixture))

    def tamper(self, request: HookRequest) -> HookRequest:
        pairs = parse_qsl(request.body.decode(), keep_blank_values=True)
        altered = replace(pairs, Body="Please refund to account 0000")
        return HookRequest(request.method, request.path, request.query_string, request.headers,
                           urlencode(altered).encode(), request.public_url)

    def malformed_requests(self, connector: ChannelConnector) -> dict[str, HookRequest]:
        sms = load_fixture("sms")
        full = urlencode(sms).encode()
        cut = full.index(b"&From=") + len(b"&From")  # the body ends inside a field name: no '='
        return {
            "json_content_type": form_request(sms, content_type="application/json",
                                              body=json.dumps(dict(sms)).encode()),
            "truncated": form_request(sms, body=full[:cut]),
            "not_utf8": form_request(sms, body=full.replace(b"Ahoy", b"\xff\xfeAhoy")),
            "no_message_sid": form_request([(k, v) for k, v in sms if "Sid" not in k or k == "AccountSid"]),
            "num_media_not_a_number": form_request(replace(sms, NumMedia="two")),
            # Twilio sends at most 10 media per message; the count drove a loop of that many turns
            "num_media_over_twilio_limit": form_request(replace(sms, NumMedia="99999999999999999999")),
            "num_media_eleven": form_request(replace(sms, NumMedia="11")),
        }

    def test_extras_only_carry_fields_sent(self) -> None:
        """Geographic fields Twilio leaves blank are not copied into extras."""
        connector = self.make_connector()
        [record] = split_records(connector, self.signed_request("unicode_sms", connector))
        [message] = connector.normalize(record)
        assert "FromCity" not in message.extras and "FromState" not in message.extras


def test_signed_for_another_url_is_refused_and_logged(runtime: Runtime, caplog: pytest.LogCaptureFixture) -> None:
    """A proxy that rewrote the URL: 401, and the log names the URL checked and the header, never the token."""
    caplog.set_level(logging.DEBUG)
    client = create_app(runtime).test_client()
    request = form_request(load_fixture("sms"), signed_url="http://10.0.0.7:8080/hooks/sms-main")
    response = send(client, request, CHANNEL)
    assert response.status_code == 401
    [line] = [r.getMessage() for r in caplog.records if r.name == "gateway.ingress"]
    assert HOOK_URL in line and SIGNATURE_HEADER in line and "public_url" in line
    assert TWILIO_TOKEN not in caplog.text
    assert count(runtime, inbox, CHANNEL) == 0


def test_default_port_variants_are_accepted() -> None:
    """Twilio sometimes signs the URL with the default port spelled out; both forms verify."""
    connector = twilio()
    connector.verify(form_request(load_fixture("sms"), signed_url="https://gw.example.com:443/hooks/sms-main"))
    with pytest.raises(SignatureInvalid):
        connector.verify(form_request(load_fixture("sms"), signed_url="https://gw.example.com:8443/hooks/sms-main"))


def test_query_string_is_part_of_the_signed_url(runtime: Runtime) -> None:
    """A webhook URL with a query string: the web layer rebuilds it from public_url, so the signature matches."""
    client = create_app(runtime).test_client()
    url = f"{HOOK_URL}?tenant=acme&x=%2F1"
    response = send(client, form_request(load_fixture("sms"), signed_url=url, url=url), CHANNEL)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert count(runtime, inbox, CHANNEL) == 1
    unsigned_query = form_request(load_fixture("whatsapp"), url=url)
    assert send(client, unsigned_query, CHANNEL).status_code == 401


def test_acknowledgement_is_empty_twiml(runtime: Runtime) -> None:
    """The reply is TwiML that sends nothing back (an empty body is Twilio error 11200)."""
    response = send(create_app(runtime).test_client(), form_request(load_fixture("sms")), CHANNEL)
    assert response.status_code == 200
    assert response.mimetype == "text/xml"
    assert response.get_data() == b'<?xml version="1.0" encoding="UTF-8"?><Response/>'


def test_token_rotation_accepts_the_previous_token() -> None:
    """While a token rotation is under way, requests signed with either token are accepted, others refused."""
    rotating = twilio(auth_token="test-new-token", previous_auth_token="test-old-token")
    rotating.verify(form_request(load_fixture("sms"), token="test-old-token"))
    rotating.verify(form_request(load_fixture("sms"), token="test-new-token"))
    with pytest.raises(SignatureInvalid):
        rotating.verify(form_request(load_fixture("sms"), token="test-other-token"))
    with pytest.raises(SignatureInvalid):
        twilio(auth_token="test-new-token").verify(form_request(load_fixture("sms"), token="test-old-token"))
    assert "test-old-token" not in repr(rotating) and "test-new-token" not in repr(rotating)


def test_repeated_form_keys_are_all_signed() -> None:
    """A field sent twice is signed with both values (sorted); a signature over one value only is refused."""
    pairs = [*load_fixture("sms"), ("AddOns", "zeta"), ("AddOns", "alpha")]
    connector = twilio()
    connector.verify(form_request(pairs))
    with pytest.raises(SignatureInvalid):
        connector.verify(form_request(pairs, signed_pairs=[*load_fixture("sms"), ("AddOns", "zeta")]))


def test_other_account_is_refused() -> None:
    """A request correctly signed with our token but naming another account is not ours."""
    other = "AC" + "f" * 32
    with pytest.raises(SignatureInvalid, match="AccountSid"):
        twilio().verify(form_request(replace(load_fixture("sms"), AccountSid=other)))


@pytest.mark.parametrize(("settings", "sender", "e164"), [
    ({}, "(401) 712-2661", "+14017122661"),
    ({}, "401.712.2661", "+14017122661"),
    ({"default_region": "GB"}, "07700 900123", "+447700900123"),
    ({"default_region": "IN"}, "098470 12345", "+919847012345"),
    ({"default_region": "GB"}, "+1 401 712 2661", "+14017122661"),
])
def test_national_numbers_become_e164(settings: dict[str, str], sender: str, e164: str) -> None:
    """From numbers in national format are normalised with the channel's (or the gateway's) default region."""
    connector = twilio(**settings)
    request = form_request(replace(load_fixture("sms"), From=sender))
    connector.verify(request)
    [record] = split_records(connector, request)
    [message] = connector.normalize(record)
    assert [(i.kind.value, i.value) for i in message.sender.identifiers] == [("phone", e164)]


def test_status_callback_is_stored_but_gives_no_message(runtime: Runtime) -> None:
    """A delivery receipt is kept (kind ``status``) and never becomes a customer message, each status once."""
    client = create_app(runtime).test_client()
    delivered = load_fixture("status_delivered")
    sent = replace(delivered, MessageStatus="sent", SmsStatus="sent")
    for pairs in (sent, delivered, delivered):
        assert send(client, form_request(pairs), CHANNEL).status_code == 200
    with runtime.engine.connect() as conn:
        rows = conn.execute(inbox.select().order_by(inbox.c.id)).all()
    assert [(row.kind, row.provider_id) for row in rows] == [
        ("status", "SM1342fe1b2c904d1ab04f0fc7a58abca9:status:sent"),
        ("status", "SM1342fe1b2c904d1ab04f0fc7a58abca9:status:delivered"),
    ]


def test_mms_media_downloaded_into_attachment_store(media: responses.RequestsMock) -> None:
    """MMS media are fetched with the account's credentials and stored by content; the CDN never sees them."""
    connector = twilio()
    [record] = split_records(connector, form_request(load_fixture("mms")))
    [message] = connector.normalize(record)
    enriched = connector.enrich(message)
    assert [(a.filename, a.content_type, a.size) for a in enriched.attachments] == [
        ("media0.jpg", "image/jpeg", len(JPEG)), ("media1.pdf", "application/pdf", len(PDF))]
    assert enriched.attachments[0].sha256 == hashlib.sha256(JPEG).hexdigest()
    assert connector.context.attachments.read(enriched.attachments[1].location) == PDF
    cdn_calls = [call for call in media.calls if call.request.url.startswith(CDN)]
    assert cdn_calls and all("Authorization" not in call.request.headers for call in cdn_calls)


def test_mms_through_the_pipeline_keeps_the_bytes(runtime: Runtime) -> None:
    """Through the web app and the pipeline: the stored message points at stored bytes, not Twilio's URLs."""
    client = create_app(runtime).test_client()
    assert send(client, form_request(load_fixture("mms")), CHANNEL).status_code == 200
    assert drain_pipeline(runtime) == 1
    with runtime.engine.connect() as conn:
        data = conn.execute(select(messages.c.data)).scalar_one()
    assert [a["location"].startswith(SCHEME) for a in data["attachments"]] == [True, True]


def test_a_stored_row_with_a_huge_media_count_is_quarantined_at_once(runtime: Runtime) -> None:
    """A row stored before the ingress refused such counts: normalize refuses it quickly instead of looping 10^20
    times, and the pipeline quarantines it with the reason."""
    pairs = replace(load_fixture("sms"), NumMedia="99999999999999999999")
    runtime.queues.store_inbox(CHANNEL, [InboxItem(SMS_SID, urlencode(pairs).encode(), FORM)], {}, HOOK_URL)
    drained = threading.Thread(target=drain_pipeline, args=(runtime,), daemon=True)
    drained.start()
    drained.join(timeout=30)
    assert not drained.is_alive(), "normalize is still looping over NumMedia"
    with runtime.engine.connect() as conn:
        [letter] = conn.execute(select(dead_letters)).all()
    assert (letter.error_class, letter.error_code) == ("quarantined", "normalize_failed")
    assert "NumMedia 99999999999999999999 is over Twilio's limit of 10" in letter.reason


def test_media_from_other_hosts_or_too_large_is_refused() -> None:
    """Only Twilio's media host is fetched from, and never more than max_media_bytes."""
    pairs = replace(load_fixture("mms"), MediaUrl0="https://evil.example.com/steal", NumMedia="1")
    connector = twilio()
    [record] = split_records(connector, form_request(pairs))
    with pytest.raises(ValueError, match="refusing"):
        connector.enrich(connector.normalize(record)[0])
    small = twilio(max_media_bytes=50)
    [record] = split_records(small, form_request(load_fixture("mms")))
    with pytest.raises(AttachmentTooLarge):
        small.enrich(small.normalize(record)[0])


def test_media_redirected_off_twilio_is_refused(media: responses.RequestsMock) -> None:
    """Twilio's media URL may only send the download on to its CDN hosts, and never with the credentials."""
    media.replace(responses.GET, MEDIA_URLS[0], status=307, headers={"Location": "https://evil.example.com/m0"})
    connector = twilio()
    [record] = split_records(connector, form_request(load_fixture("mms")))
    refused = r"refusing to follow a redirect from api\.twilio\.com to 'evil\.example\.com'"
    with pytest.raises(MediaRefused, match=refused):
        connector.enrich(connector.normalize(record)[0])
    assert [call.request.url for call in media.calls] == [MEDIA_URLS[0]]
    cdn_only = twilio(media_hosts=["twiliocdn.com"])  # the CDN is reached by redirect only, never asked first
    [record] = split_records(cdn_only, form_request(replace(load_fixture("mms"), MediaUrl0=f"{CDN}/m0", NumMedia="1")))
    with pytest.raises(MediaRefused, match=r"refusing to fetch media from 's3-external-1\.amazonaws\.com'"):
        cdn_only.enrich(cdn_only.normalize(record)[0])


def test_whatsapp_media_through_twilio() -> None:
    """A WhatsApp image sent through Twilio: phone + whatsapp identity, the image fetched like MMS media."""
    pairs = replace(load_fixture("whatsapp"), NumMedia="1", MediaUrl0=MEDIA_URLS[0], MediaContentType0="image/jpeg",
                    Body="")
    connector = twilio()
    [record] = split_records(connector, form_request(pairs))
    [message] = connector.normalize(record)
    assert message.channel.value == "whatsapp"
    [attachment] = connector.enrich(message).attachments
    assert attachment.size == len(JPEG)


def test_status_callbacks_are_recorded_against_sent_messages(runtime: Runtime) -> None:
    """sent, delivered, then undelivered with Twilio's error code: each recorded once in provider_statuses."""
    client = create_app(runtime).test_client()
    delivered = load_fixture("status_delivered")
    sent = replace(delivered, MessageStatus="sent", SmsStatus="sent")
    failed = replace(delivered, MessageStatus="undelivered", SmsStatus="undelivered", ErrorCode="30003")
    for pairs in (sent, delivered, delivered, failed):
        assert send(client, form_request(pairs), CHANNEL).status_code == 200
    assert drain_pipeline(runtime) == 3
    with runtime.engine.connect() as conn:
        rows = conn.execute(select(provider_statuses.c.provider_message_id, provider_statuses.c.status,
                                   provider_statuses.c.error_code).order_by(provider_statuses.c.id)).all()
    sid = "SM1342fe1b2c904d1ab04f0fc7a58abca9"
    assert [tuple(row) for row in rows] == [(sid, "sent", None), (sid, "delivered", None),
                                            (sid, "undelivered", "30003")]
    assert count(runtime, messages, CHANNEL) == 0


def random_forms(count: int) -> Iterator[str]:
    """Form bodies with what makes form decoding tricky: empty fields, no ``=`` or two, ``+``, ``%`` escapes that are
    valid, invalid (``%zz``, ``%4``) or cut-off UTF-8 sequences, and characters outside ASCII."""
    pieces = ["a", "Body", "=", "&", "&&", "+", "%20", "%2B", "%26", "%3D", "%zz", "%4", "%", "%e2%82", "%e2%82%ac",
              "%C3%A9", "é", "€", "x y", "%00", "0", "MediaUrl0", "https%3A%2F%2Fapi.twilio.com"]
    rng = random.Random(1804)
    for _ in range(count):
        yield "".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))


def test_the_form_is_read_as_parse_qsl_reads_it() -> None:
    for body in [*random_forms(3000), "", "&", "=", "a", "a=", "=b", "a=b=c", "a=1&a=2"]:
        assert _parse(body.encode()) == parse_qsl(body, keep_blank_values=True), body
