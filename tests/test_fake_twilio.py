"""The fake Twilio server, and the ``twilio`` connector's replies against it over real HTTP.

The interrupted cases are the ones the fake exists for: the message is created and the answer never arrives (the
connection dropped, or held past the client's deadline); reconciliation then finds it and it is not sent twice.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests

from connectors import _twilio_outbound
from connectors.twilio import TwilioChannel
from gateway.errors import PermanentError, RetryableError
from gateway.plugins import ConnectorContext
from tests.conformance.sender import REPLY_TEXT, DeadlineSession
from tests.conftest import PUBLIC_URL, TWILIO_SID, TWILIO_TOKEN
from tests.connectors.test_twilio_send import CUSTOMER, customer_message, request_for
from tests.fake_twilio import FakeTwilio


@pytest.fixture
def fake() -> Iterator[FakeTwilio]:
    with FakeTwilio(TWILIO_SID, TWILIO_TOKEN) as server:
        yield server


def connector(fake: FakeTwilio, **settings: Any) -> TwilioChannel:
    config = TwilioChannel.Config.model_validate({"type": "twilio", "account_sid": TWILIO_SID,
                                                  "auth_token": TWILIO_TOKEN, "api_base_url": fake.url, **settings})
    return TwilioChannel("sms-main", config, ConnectorContext(http=DeadlineSession(), public_url=PUBLIC_URL))


def later(channel: TwilioChannel, seconds: float) -> TwilioChannel:
    """The connector with its clock moved on (past the settle time, say)."""
    now = datetime.now(UTC) + timedelta(seconds=seconds)
    channel._now = lambda: now  # type: ignore[method-assign]
    return channel


def test_a_send_is_created_with_twilios_shape(fake: FakeTwilio) -> None:
    result = connector(fake).send(request_for(customer_message()))
    [message] = fake.messages()
    assert message["sid"] == result.provider_message_id and result.status == "queued"
    assert (message["to"], message["from"], message["body"]) == (CUSTOMER, "+15558675310", REPLY_TEXT)
    assert message["direction"] == "outbound-api" and message["date_sent"] is not None  # queue_seconds=0: sent
    assert fake.forms[0]["StatusCallback"] == [f"{PUBLIC_URL}/hooks/sms-main"]
    assert fake.sent_counts() == {CUSTOMER: 1}


def test_a_dropped_answer_is_reconciled_not_resent(fake: FakeTwilio) -> None:
    channel = connector(fake)
    started = datetime.now(UTC)
    fake.set_mode("drop", times=1)
    with pytest.raises(requests.ConnectionError):
        channel.send(request_for(customer_message()))
    assert fake.sent_counts() == {CUSTOMER: 1}, "the provider took it although the client never heard"
    found = later(channel, 0).reconcile(request_for(customer_message(), started=started))
    assert found is not None and found.provider_message_id == fake.messages()[0]["sid"]
    assert fake.requests["GET list"] == 1


def test_a_held_answer_times_out_and_is_then_found(fake: FakeTwilio, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_twilio_outbound, "SEND_TIMEOUT", (2.0, 0.3))
    channel = connector(fake)
    started = datetime.now(UTC)
    fake.set_mode("hang")
    with pytest.raises(requests.Timeout):
        channel.send(request_for(customer_message()))
    assert fake.held.is_set()
    fake.release.set()
    assert later(channel, 1).reconcile(request_for(customer_message(), started=started)) is not None
    assert fake.sent_counts() == {CUSTOMER: 1}


def test_nothing_created_is_surely_absent_once_settled(fake: FakeTwilio) -> None:
    channel = connector(fake)
    started = datetime.now(UTC)
    fake.set_mode("fail", times=1)
    with pytest.raises(RetryableError):
        channel.send(request_for(customer_message()))
    request = request_for(customer_message(), started=started)
    with pytest.raises(RetryableError):
        later(channel, 10).reconcile(request)  # too early to call it absent
    assert later(channel, 121).reconcile(request) is None
    assert channel.send(request).provider_message_id and fake.sent_counts() == {CUSTOMER: 1}


def test_a_queued_message_is_outside_a_date_sent_filter_until_sent() -> None:
    moments = iter([datetime(2026, 11, 30, 9, 0, tzinfo=UTC), datetime(2026, 11, 30, 9, 0, 30, tzinfo=UTC),
                    datetime(2026, 11, 30, 9, 2, tzinfo=UTC)])
    now = {"value": next(moments)}
    with FakeTwilio(TWILIO_SID, TWILIO_TOKEN, queue_seconds=60, clock=lambda: now["value"]) as server:
        channel = connector(server)
        channel.send(request_for(customer_message()))
        listed = requests.get(f"{server.url}/2010-04-01/Accounts/{TWILIO_SID}/Messages.json",
                              params={"DateSent>": "2026-11-30"}, auth=(TWILIO_SID, TWILIO_TOKEN), timeout=5)
        assert listed.json()["messages"] == []
        now["value"] = next(moments)
        now["value"] = next(moments)
        listed = requests.get(f"{server.url}/2010-04-01/Accounts/{TWILIO_SID}/Messages.json",
                              params={"DateSent>": "2026-11-30"}, auth=(TWILIO_SID, TWILIO_TOKEN), timeout=5)
        [message] = listed.json()["messages"]
        assert message["status"] == "sent"


def test_refusals_and_throttling_use_twilios_codes(fake: FakeTwilio) -> None:
    channel = connector(fake)
    fake.opted_out.add(CUSTOMER)
    with pytest.raises(PermanentError) as opted_out:
        channel.send(request_for(customer_message()))
    assert opted_out.value.code == "opted_out"
    fake.opted_out.clear()
    fake.set_mode("throttle", times=1)
    with pytest.raises(RetryableError) as throttled:
        channel.send(request_for(customer_message()))
    assert throttled.value.retry_after == 1.0
    with pytest.raises(PermanentError) as refused:
        connector(fake, auth_token="not-the-token").send(request_for(customer_message()))
    assert refused.value.code == "20003" and "not-the-token" not in str(refused.value)
    assert fake.sent_counts() == {}


def test_listing_pages_newest_first_with_next_page_uri(fake: FakeTwilio) -> None:
    channel = connector(fake)
    for n in range(5):
        channel.send(request_for(customer_message(), text=f"reply {n}"))
    url = f"{fake.url}/2010-04-01/Accounts/{TWILIO_SID}/Messages.json"
    first = requests.get(url, params={"To": CUSTOMER, "PageSize": 2}, auth=(TWILIO_SID, TWILIO_TOKEN),
                         timeout=5).json()
    assert [m["body"] for m in first["messages"]] == ["reply 4", "reply 3"]
    second = requests.get(fake.url + first["next_page_uri"], auth=(TWILIO_SID, TWILIO_TOKEN), timeout=5).json()
    assert [m["body"] for m in second["messages"]] == ["reply 2", "reply 1"]


def test_concurrent_sends_are_all_counted(fake: FakeTwilio) -> None:
    channel = connector(fake)
    threads = [threading.Thread(target=channel.send, args=(request_for(customer_message(), text=f"r{n}"),))
               for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert fake.sent_counts() == {CUSTOMER: 8} and fake.requests["POST create"] == 8
