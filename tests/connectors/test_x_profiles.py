"""X senders a delivery does not name get their profile name from ``GET /2/users/:id``, on the enrichment threads.

The answer follows X's documented user lookup (https://docs.x.com/x-api/users/user-lookup-by-id):
``{"data": {"id", "name", "username"}}``; unknown users answer 200 with an ``errors`` array; rate limits come as
429 with ``x-rate-limit-limit``, ``x-rate-limit-remaining`` and ``x-rate-limit-reset`` (epoch seconds).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests
import responses
from responses import matchers

from gateway.model import Message
from tests.conformance.channel import split_records
from tests.connectors.test_x import CUSTOMER, MEDIA_KEYS, post, raw, x_channel

BEARER = "test-x-bearer-token"
LOOKUP = f"https://api.x.com/2/users/{CUSTOMER}"
FOUND = {"data": {"id": CUSTOMER, "name": "Jo Müller", "username": "jo_mueller"}}


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def unnamed_message(channel: Any) -> Message:
    """A DM whose delivery carries no ``users`` object for its sender."""
    body = json.loads(raw("dm_text"))
    body.pop("users", None)
    [record] = split_records(channel, post(body))
    [message] = channel.normalize(record)
    assert message.sender.display_name is None
    return message


@pytest.fixture
def mocked() -> Any:
    with responses.RequestsMock(assert_all_requests_are_fired=True) as mock:
        yield mock


def test_an_unnamed_sender_is_named_from_the_profile_once(mocked: responses.RequestsMock) -> None:
    lookup = mocked.get(LOOKUP, json=FOUND, headers={"x-rate-limit-remaining": "299"},
                        match=[matchers.header_matcher({"Authorization": f"Bearer {BEARER}"})])
    channel = x_channel(bearer_token=BEARER)
    message = unnamed_message(channel)
    assert channel.enrich(message).sender.display_name == "Jo Müller"
    assert channel.enrich(message).sender.display_name == "Jo Müller"
    assert lookup.call_count == 1, "cached"
    assert mocked.calls[0].request.req_kwargs["timeout"] == 5.0, "one lookup has a deadline"


def test_a_named_sender_and_a_channel_without_credentials_look_nothing_up(mocked: responses.RequestsMock) -> None:
    channel = x_channel(bearer_token=BEARER)
    body = json.loads(raw("dm_text"))
    [record] = split_records(channel, post(body))
    [named] = channel.normalize(record)
    assert channel.enrich(named) == named
    plain = x_channel()
    assert plain.enrich(unnamed_message(plain)).sender.display_name is None
    assert not mocked.calls


def test_oauth1_keys_sign_the_lookup_when_no_bearer_token_is_set(mocked: responses.RequestsMock) -> None:
    mocked.get(LOOKUP, json=FOUND)
    channel = x_channel(**MEDIA_KEYS)
    assert channel.enrich(unnamed_message(channel)).sender.display_name == "Jo Müller"
    header = mocked.calls[0].request.headers["Authorization"]
    assert (header.decode() if isinstance(header, bytes) else header).startswith("OAuth ")


def test_a_rate_limit_pauses_lookups_until_the_window_resets(mocked: responses.RequestsMock) -> None:
    clock = Clock()
    reset = int(clock.now) + 600
    limited = mocked.get(LOOKUP, status=429, json={"title": "Too Many Requests", "detail": "Too Many Requests",
                                                   "type": "about:blank", "status": 429},
                         headers={"x-rate-limit-limit": "300", "x-rate-limit-remaining": "0",
                                  "x-rate-limit-reset": str(reset)})
    channel = x_channel(bearer_token=BEARER)
    channel.profiles.clock = clock
    message = unnamed_message(channel)
    assert channel.enrich(message).sender.display_name is None, "the message goes on unnamed"
    clock.now = reset - 1
    assert channel.enrich(message).sender.display_name is None
    assert limited.call_count == 1, "no call while the window is exhausted"
    mocked.replace(responses.GET, LOOKUP, json=FOUND)
    clock.now = reset + 1
    assert channel.enrich(message).sender.display_name == "Jo Müller"


@pytest.mark.parametrize("answer", [
    {"body": requests.Timeout("read timed out")},
    {"status": 503, "json": {"title": "Service Unavailable", "type": "about:blank", "status": 503}},
    {"json": {"errors": [{"value": CUSTOMER, "detail": f"Could not find user with id: [{CUSTOMER}].",
                          "title": "Not Found Error", "resource_type": "user", "parameter": "id",
                          "resource_id": CUSTOMER, "type": "https://api.twitter.com/2/problems/resource-not-found"}]}},
])
def test_a_failed_or_empty_lookup_leaves_the_message_unnamed(mocked: responses.RequestsMock,
                                                             answer: dict[str, Any]) -> None:
    mocked.get(LOOKUP, **answer)
    channel = x_channel(bearer_token=BEARER)
    message = unnamed_message(channel)
    assert channel.enrich(message) == message
