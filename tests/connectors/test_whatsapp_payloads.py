"""WhatsApp Cloud API message types beyond text and media, one test per kind.

Payload shapes follow Meta's messages webhook reference
(https://developers.facebook.com/documentation/business-messaging/whatsapp/webhooks/reference/messages: edit, revoke,
order, system, unsupported, interactive ``nfm_reply`` and ``call_permission_reply``, ``context.forwarded``,
``referral``, ``request_welcome``, value-level ``errors``); the values are our own. Each gave a message with empty
text, or lost what it said: now each is a message an agent can read, or an "ignored" logged with its reason.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from sqlalchemy import select

from gateway.model import Message
from gateway.runtime import Runtime
from gateway.storage.tables import inbox, messages
from gateway.web import create_app
from tests.conformance.channel import drain_pipeline, send, split_records
from tests.connectors.test_meta import CHANNEL, meta, post, settings

CUSTOMER = "16505551234"
ORIGINAL = "wamid.HBgLMTY1MDU1NTEyMzQVAgASGBQzRUIwQUFBMDAwMDAwMDAwMDAwMQA="


def body(*messages: dict[str, Any], contacts: bool = True, **value: Any) -> dict[str, Any]:
    """A signed-ready ``messages`` webhook: Meta's envelope around our own message objects."""
    content: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"}, **value}
    if contacts:
        content["contacts"] = [{"profile": {"name": "Ana Souza"}, "wa_id": CUSTOMER}]
    if messages:
        content["messages"] = [{"from": CUSTOMER, "id": f"wamid.TEST{n:04d}", "timestamp": "1760000000", **m}
                               for n, m in enumerate(messages)]
    return {"object": "whatsapp_business_account",
            "entry": [{"id": "102290129340398", "changes": [{"field": "messages", "value": content}]}]}


def normalise(*message: dict[str, Any], contacts: bool = True) -> list[Message]:
    connector = meta()
    return [m for record in split_records(connector, post(body(*message, contacts=contacts)))
            for m in connector.normalize(record)]


def test_edit_is_an_edit_of_its_target() -> None:
    [edit] = normalise({"type": "edit", "edit": {"original_message_id": ORIGINAL, "message": {
        "type": "text", "text": {"body": "Sorry: order 5521, not 5512"}}}})
    assert (edit.kind, edit.target_provider_message_id, edit.text) == ("edit", ORIGINAL, "Sorry: order 5521, not 5512")
    assert edit.provider_message_id == "wamid.TEST0000" and edit.language is None  # the customer's words: detected


def test_edited_caption_keeps_the_text_and_fetches_no_media_again() -> None:
    [edit] = normalise({"type": "edit", "edit": {"original_message_id": ORIGINAL, "message": {
        "context": {"id": ORIGINAL}, "type": "image", "image": {
            "caption": "The dent is on the left side", "mime_type": "image/jpeg", "sha256": "b1f0", "id": "7788"}}}})
    assert (edit.kind, edit.text, edit.attachments) == ("edit", "The dent is on the left side", ())


def test_revoke_is_a_deletion_of_its_target() -> None:
    [revoke] = normalise({"type": "revoke", "revoke": {"original_message_id": ORIGINAL}})
    assert (revoke.kind, revoke.target_provider_message_id, revoke.text) == ("delete", ORIGINAL, "")


def test_order_keeps_its_items_in_text_and_extras() -> None:
    items = [{"product_retailer_id": "TSHIRT-RED-M", "quantity": 2, "item_price": 19.9, "currency": "EUR"},
             {"product_retailer_id": "SOCKS-3PK", "quantity": 1, "item_price": 7.5, "currency": "EUR"}]
    [order] = normalise({"type": "order", "order": {"catalog_id": "880044112233", "text": "Gift wrap, please",
                                                    "product_items": items}})
    assert order.text == ("Gift wrap, please\nOrder from catalog 880044112233:\n"
                          "- 2 x TSHIRT-RED-M at 19.9 EUR\n- 1 x SOCKS-3PK at 7.5 EUR")
    assert order.extras["order"] == {"catalog_id": "880044112233", "text": "Gift wrap, please", "product_items": items}
    assert order.language is None  # the customer's note decides it
    [bare] = normalise({"type": "order", "order": {"catalog_id": "880044112233", "product_items": items[:1]}})
    assert bare.text == "Order from catalog 880044112233:\n- 2 x TSHIRT-RED-M at 19.9 EUR" and bare.language == "und"


def test_system_number_change_is_a_note_with_the_new_number() -> None:
    """System messages come without a contacts array."""
    [change] = normalise({"type": "system", "system": {
        "body": "User Ana Souza changed from 16505551234 to 16505559876", "wa_id": "16505559876",
        "type": "user_changed_number"}}, contacts=False)
    assert change.text == "(User Ana Souza changed from 16505551234 to 16505559876)"
    assert change.extras["system"]["wa_id"] == "16505559876" and change.language == "und"
    assert change.sender.identifiers[0].value == "+16505551234" and change.sender.display_name is None


def test_system_identity_change_is_a_note() -> None:
    [change] = normalise({"type": "system", "system": {"type": "customer_identity_changed",
                                                       "identity": "b8f1c2d3", "customer": CUSTOMER}})
    assert change.text == "(WhatsApp system event: customer_identity_changed)"
    assert change.extras["system"]["identity"] == "b8f1c2d3"


def test_unsupported_type_says_what_was_not_passed_on() -> None:
    errors = [{"code": 131051, "title": "Message type unknown", "message": "Message type unknown",
               "error_data": {"details": "Message type is currently not supported."}}]
    [unsupported] = normalise({"type": "unsupported", "unsupported": {"type": "poll_creation"}, "errors": errors})
    assert unsupported.text == ("(WhatsApp did not pass this message on (poll_creation): 131051 Message type unknown: "
                                "Message type is currently not supported.)")
    assert unsupported.extras["errors"] == errors and unsupported.extras["unsupported_type"] == "poll_creation"
    assert unsupported.language == "und"


def test_flow_completion_lists_the_answers() -> None:
    answers = {"flow_token": "tok-5521", "reason": "Wrong size", "order_number": "5521", "photos": ["a", "b"]}
    [flow] = normalise({"context": {"from": "15550783881", "id": ORIGINAL}, "type": "interactive", "interactive": {
        "type": "nfm_reply", "nfm_reply": {"name": "flow", "body": "Sent", "response_json": json.dumps(answers)}}})
    assert flow.text == 'Form submitted:\n- reason: Wrong size\n- order_number: 5521\n- photos: ["a", "b"]'
    assert flow.extras["flow_response"] == answers and flow.thread.in_reply_to == ORIGINAL


def test_address_message_reply_lists_the_address() -> None:
    address = {"values": {"name": "Ana Souza", "city": "Lisboa", "in_pin_code": "1000-001"}}
    [reply] = normalise({"type": "interactive", "interactive": {"type": "nfm_reply", "nfm_reply": {
        "name": "address_message", "response_json": json.dumps(address)}}})
    assert reply.text.startswith("Address sent:\n- values: {") and "Lisboa" in reply.text
    assert reply.extras["nfm_reply_name"] == "address_message"


def test_call_permission_replies() -> None:
    [accepted, refused] = normalise(
        {"type": "interactive", "interactive": {"type": "call_permission_reply", "call_permission_reply": {
            "response": "accept", "is_permanent": False, "expiration_timestamp": 1760604800,
            "response_source": "user_action"}}},
        {"type": "interactive", "interactive": {"type": "call_permission_reply", "call_permission_reply": {
            "response": "reject", "response_source": "user_action"}}})
    assert accepted.text == "(Call permission granted until 2025-10-16 08:53 UTC)"
    assert refused.text == "(Call permission refused)"
    assert accepted.extras["call_permission"]["response_source"] == "user_action"


def test_interactive_reply_with_an_error_says_so() -> None:
    errors = [{"code": 131000, "title": "Something went wrong", "message": "Something went wrong",
               "error_data": {"details": "The reply could not be read"}}]
    [reply] = normalise({"type": "interactive", "interactive": {"type": "button_reply"}, "errors": errors})
    assert reply.text == ("(WhatsApp sent this interactive message without content: 131000 Something went wrong: "
                          "The reply could not be read)")
    assert reply.extras["errors"] == errors


def test_referral_from_a_click_to_whatsapp_ad_is_kept() -> None:
    referral = {"source_url": "https://fb.me/3cr4Wqqkv", "source_id": "120226305854810726", "source_type": "ad",
                "body": "Free returns for 60 days", "headline": "Autumn sale", "media_type": "image",
                "image_url": "https://scontent.xx.fbcdn.net/v/ad.jpg", "ctwa_clid": "ARAkLkA8rmlFeiCktEJQ",
                "welcome_message": {"text": "Hi! How can we help?"}}
    [message] = normalise({"type": "text", "text": {"body": "Is the sale still on?"}, "referral": referral})
    assert message.text == "Is the sale still on?" and message.extras["referral"] == referral


def test_forwarded_markers_are_kept() -> None:
    forwarded, frequently = normalise(
        {"type": "text", "text": {"body": "Is this message really from you?"}, "context": {"forwarded": True}},
        {"type": "image", "image": {"id": "4455", "mime_type": "image/jpeg"},
         "context": {"frequently_forwarded": True}})
    assert forwarded.extras["forwarded"] is True and "frequently_forwarded" not in forwarded.extras
    assert frequently.extras["frequently_forwarded"] is True and len(frequently.attachments) == 1


def test_product_inquiry_keeps_the_product() -> None:
    [message] = normalise({"type": "text", "text": {"body": "Does it come in blue?"}, "context": {
        "from": "15550783881", "id": ORIGINAL,
        "referred_product": {"catalog_id": "880044112233", "product_retailer_id": "TSHIRT-RED-M"}}})
    assert message.extras["referred_product"]["product_retailer_id"] == "TSHIRT-RED-M"


def test_request_welcome_is_ignored_with_its_reason(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="connectors.meta"):
        assert normalise({"type": "request_welcome"}) == []
    assert "ignored: request_welcome: the customer opened the chat" in caplog.text


def test_a_type_not_read_yet_is_named_not_dropped() -> None:
    [message] = normalise({"type": "poll_vote", "poll_vote": {"option": "Tuesday"}})
    assert message.text == "(A WhatsApp message of type poll_vote that the gateway does not read yet)"
    assert message.extras["unread"] == {"poll_vote": {"option": "Tuesday"}}


REFERENCE_TYPES = [
    {"type": "text", "text": {"body": "hello"}},
    {"type": "image", "image": {"id": "1", "mime_type": "image/jpeg"}},
    {"type": "audio", "audio": {"id": "2", "mime_type": "audio/ogg; codecs=opus", "voice": True}},
    {"type": "video", "video": {"id": "3", "mime_type": "video/mp4"}},
    {"type": "document", "document": {"id": "4", "mime_type": "application/pdf", "filename": "invoice.pdf"}},
    {"type": "sticker", "sticker": {"id": "5", "mime_type": "image/webp", "animated": False}},
    {"type": "location", "location": {"latitude": 38.72, "longitude": -9.14}},
    {"type": "contacts", "contacts": [{"name": {"formatted_name": "Rui Costa"}, "phones": [{"phone": "+351"}]}]},
    {"type": "button", "button": {"payload": "STOP", "text": "Stop promotions"}},
    {"type": "interactive", "interactive": {"type": "list_reply", "list_reply": {"id": "r1", "title": "Returns"}}},
    {"type": "reaction", "reaction": {"message_id": ORIGINAL, "emoji": "\u2764\ufe0f"}},
    {"type": "reaction", "reaction": {"message_id": ORIGINAL}},
    {"type": "order", "order": {"catalog_id": "1", "product_items": []}},
    {"type": "system", "system": {"type": "user_changed_number", "wa_id": "16505559876"}},
    {"type": "unsupported", "unsupported": {"type": "edit"}},
    {"type": "edit", "edit": {"original_message_id": ORIGINAL, "message": {"type": "text", "text": {"body": "x"}}}},
    {"type": "revoke", "revoke": {"original_message_id": ORIGINAL}},
    {"type": "text", "text": {"body": ""}, "errors": [{"code": 131060, "title": "Unavailable"}]},
]


@pytest.mark.parametrize("message", REFERENCE_TYPES, ids=lambda m: str(m["type"]))
def test_every_reference_type_says_something(message: dict[str, Any]) -> None:
    """No message type gives a message with neither text nor media, except a deletion or a removed reaction,
    which the CRM mappings word themselves."""
    [normalised] = normalise(message)
    worded_by_mapping = normalised.kind == "delete" or normalised.extras.get("action") == "unreact"
    assert normalised.text or normalised.attachments or worded_by_mapping


def test_account_errors_and_other_fields_are_logged_not_stored(runtime_meta: Runtime,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """A value carrying only errors (rate limit) or other arrays, and other webhook fields, are acknowledged and
    said in the log."""
    client = create_app(runtime_meta).test_client()
    errors = body(errors=[{"code": 130429, "title": "Rate limit hit", "message": "Rate limit hit"}])
    other = {"object": "whatsapp_business_account", "entry": [{"id": "102290129340398", "changes": [{
        "field": "smb_message_echoes", "value": {"messaging_product": "whatsapp", "message_echoes": []}}]}]}
    with caplog.at_level(logging.INFO, logger="connectors.meta"):
        for payload in (errors, other, body(user_preferences=[{"wa_id": CUSTOMER, "value": "stop"}])):
            assert send(client, post(payload), CHANNEL).status_code == 200
    assert "130429 Rate limit hit" in caplog.text
    assert "'smb_message_echoes' change acknowledged, not stored" in caplog.text
    assert "user_preferences acknowledged, not stored" in caplog.text
    with runtime_meta.engine.connect() as conn:
        assert conn.execute(select(inbox.c.id)).first() is None


def test_edit_order_and_revoke_through_the_pipeline(runtime_meta: Runtime) -> None:
    """Signed deliveries through the webhook endpoint and the pipeline: stored with their kind, target and text."""
    client = create_app(runtime_meta).test_client()
    deliveries = [
        body({"type": "text", "text": {"body": "I ordered the wrong size"}}),
        body({"type": "edit", "edit": {"original_message_id": "wamid.PIPE0", "message": {
            "type": "text", "text": {"body": "I ordered the wrong size, M not L"}}}}),
        body({"type": "order", "order": {"catalog_id": "880044112233", "product_items": [
            {"product_retailer_id": "TSHIRT-RED-M", "quantity": 1, "item_price": 19.9, "currency": "EUR"}]}}),
        body({"type": "revoke", "revoke": {"original_message_id": "wamid.PIPE0"}}),
    ]
    for n, delivery in enumerate(deliveries):
        delivery["entry"][0]["changes"][0]["value"]["messages"][0]["id"] = f"wamid.PIPE{n}"
        assert send(client, post(delivery), CHANNEL).status_code == 200
    assert drain_pipeline(runtime_meta) == 4
    with runtime_meta.engine.connect() as conn:
        rows = [row.data for row in conn.execute(select(messages.c.data).order_by(messages.c.provider_message_id))]
    assert [(d["kind"], d["target_provider_message_id"], d["language"]) for d in rows] == [
        ("message", None, "en"), ("edit", "wamid.PIPE0", "en"), ("message", None, "und"),
        ("delete", "wamid.PIPE0", "und")]
    assert "1 x TSHIRT-RED-M at 19.9 EUR" in rows[2]["text"]


@pytest.fixture
def runtime_meta(write_config: Any) -> Iterator[Runtime]:
    from gateway.config import load_config
    from gateway.runtime import build_runtime
    from tests.conformance.channel import config_text

    rt = build_runtime(load_config(write_config(config_text(CHANNEL, settings()))), http=requests.Session())
    yield rt
    rt.close()
