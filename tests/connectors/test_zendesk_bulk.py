"""Zendesk under backlog: conversation coalescing, the batch endpoints and their job statuses, the shared budget.

Request bodies are checked exactly. Job statuses are ``JobStatusObject`` as Zendesk documents it
(https://developer.zendesk.com/api-reference/ticketing/ticket-management/job_statuses/): results of creations are
``CreateResourceResult`` ``{id, index}``, of updates ``UpdateResourceResult`` ``{id, action, success, status}``, and
a failure is a ``FailedResult`` ``{id, action, error, details, success}``. Zendesk names no error codes for failed
results; the codes below are placeholders the tests follow through to the dead letter.
"""

from __future__ import annotations

import functools
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import requests
import responses
from responses import matchers

from connectors.zendesk import MARKER, ZendeskConfig, ZendeskCrm
from gateway.errors import DeliveryError, RetryableError
from gateway.plugins import ConnectorContext, ConversationView, CustomerView, DeliveryItem, DeliveryResult
from gateway.ratelimit import DbRateLimiter, MemoryRateLimiter
from gateway.runtime import Runtime
from gateway.storage.db import make_engine
from tests.conformance.crm import MemoryLinkStore, delivery_item, twilio_sms
from tests.fake_zendesk import FakeZendesk

API = "https://acme.zendesk.com/api/v2"
JSON = {"Content-Type": "application/json"}
STAMP = "[2025-03-09 14:30 UTC, sms]"  # the time and channel heading each message of a coalesced comment
TAGS = ["channel-gateway", "sms"]


class FakeTime:
    """A clock that only moves when something sleeps: the limiter and the job polling never really wait."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 3))
        self.now += seconds


def zendesk(fake_time: FakeTime, **settings: Any) -> ZendeskCrm:
    values = {"subdomain": "acme", "email": "agent@example.com", "api_token": "test-zendesk-token",
              "bulk_threshold": 2, "search_before_create": False, **settings}
    context = ConnectorContext(
        http=requests.Session(),
        limiter=lambda _name, per_minute: MemoryRateLimiter(per_minute, sleep=fake_time.sleep,
                                                            clock=fake_time.clock))
    crm = ZendeskCrm("helpdesk", ZendeskConfig(**values), context)
    crm.client.sleep = fake_time.sleep
    return crm


def phone(n: int) -> str:
    return f"+1415555{n:04d}"


@functools.cache
def item(n: int, k: int = 0, *, attempt: int = 1, text: str | None = None) -> DeliveryItem:
    """Message ``k`` of customer ``n``'s conversation (one conversation per customer); the same object each call,
    so expectations can name its message id."""
    message = twilio_sms(text or f"customer {n} message {k}", sid=f"SM{n:016d}{k:016d}")
    base = delivery_item(message, crm="helpdesk", attempt=attempt, outbox_id=n * 100 + k, opened=k == 0)
    return replace(base, customer=CustomerView(f"cust-{n}", None, (("phone", phone(n)),)),
                   conversation=ConversationView(f"conv-{n}", "sms", k == 0),
                   fields={**base.fields, "subject": f"SMS from {phone(n)}"})


def user_body(n: int) -> dict[str, Any]:
    return {"name": phone(n), "external_id": f"cust-{n}", "skip_verify_email": True, "phone": phone(n)}


def ticket_body(n: int, user_id: int, items: list[DeliveryItem], body: str) -> dict[str, Any]:
    return {"comment": {"body": body, "public": True, "author_id": user_id}, "requester_id": user_id,
            "external_id": f"conv-{n}", "metadata": {MARKER: ",".join(i.message.id for i in items)},
            "subject": f"SMS from {phone(n)}", "priority": "normal", "tags": TAGS}


def job_status(job_id: str, status: str = "completed", results: list[dict[str, Any]] | None = None,
               total: int = 1) -> dict[str, Any]:
    """A ``JobStatusObject``: queued and working jobs have no results and no progress yet."""
    done = status in ("completed", "failed")
    return {"id": job_id, "job_type": "bulk_job", "message": "Completed at 2025-03-09 14:31:02 +0000" if done
            else None, "progress": total if done else None, "results": results if done else None,
            "status": status, "total": total, "url": f"{API}/job_statuses/{job_id}.json"}


def queued(job_id: str, total: int) -> dict[str, Any]:
    return {"job_status": job_status(job_id, "queued", total=total)}


def statuses(*jobs: dict[str, Any]) -> dict[str, Any]:
    return {"job_statuses": list(jobs)}


def poll(mocked: responses.RequestsMock, ids: str, *jobs: dict[str, Any]) -> Any:
    return mocked.get(f"{API}/job_statuses/show_many", json=statuses(*jobs),
                      match=[matchers.query_param_matcher({"ids": ids})])


def linked(*customers: int, tickets: dict[int, int] | None = None) -> MemoryLinkStore:
    links = MemoryLinkStore()
    for n in customers:
        links.put("customer", f"cust-{n}", str(7000 + n))
    for n, ticket_id in (tickets or {}).items():
        links.put("conversation", f"conv-{n}", str(ticket_id), {"status": "open", "tags": TAGS})
    return links


def ops(outcomes: dict[int, DeliveryResult | DeliveryError]) -> dict[int, str]:
    return {oid: o.operation if isinstance(o, DeliveryResult) else f"{type(o).__name__}:{o.code}"
            for oid, o in sorted(outcomes.items())}


@pytest.fixture
def mocked() -> Any:
    with responses.RequestsMock(assert_all_requests_are_fired=True) as mock:
        yield mock


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


# -- the three batch endpoints ------------------------------------------------------------------------------------
def test_a_backlog_goes_through_the_batch_endpoints_with_exact_bodies(mocked: responses.RequestsMock,
                                                                       fake_time: FakeTime) -> None:
    new1, new2 = [item(1)], [item(2)]
    ongoing = [item(3, 1, text="Any news?"), item(3, 2, text="Hello?")]
    users = mocked.post(f"{API}/users/create_or_update_many", json=queued("u1", 2), match=[
        matchers.json_params_matcher({"users": [user_body(1), user_body(2)]}, strict_match=True)])
    poll(mocked, "u1", job_status("u1", results=[{"id": 501, "index": 0}, {"id": 502, "index": 1}], total=2))
    creates = mocked.post(f"{API}/tickets/create_many", json=queued("t1", 2), match=[
        matchers.json_params_matcher({"tickets": [ticket_body(1, 501, new1, "customer 1 message 0"),
                                                  ticket_body(2, 502, new2, "customer 2 message 0")]},
                                     strict_match=True)])
    updates = mocked.put(f"{API}/tickets/update_many", json=queued("t2", 1), match=[
        matchers.json_params_matcher({"tickets": [{
            "id": 35436,
            "comment": {"body": f"{STAMP}\nAny news?\n\n{STAMP}\nHello?", "public": True, "author_id": 7003},
            # its ticket has the channel's tags already: no tags sent
            "metadata": {MARKER: f"{ongoing[0].message.id},{ongoing[1].message.id}"}}]}, strict_match=True)])
    poll(mocked, "t1,t2",
         job_status("t1", results=[{"id": 801, "index": 0}, {"id": 802, "index": 1}], total=2),
         job_status("t2", results=[{"id": 35436, "action": "update", "success": True, "status": "Updated"}]))
    links = linked(3, tickets={3: 35436})

    outcomes = zendesk(fake_time).deliver_groups([new1, new2, ongoing], links)

    assert ops(outcomes) == {100: "ticket_created", 200: "ticket_created", 301: "comment_added",
                             302: "comment_added"}
    assert outcomes[100].remote_id == "801" and outcomes[200].remote_id == "802"
    assert users.call_count == creates.call_count == updates.call_count == 1
    assert len(mocked.calls) == 5, "users, tickets and comments: one call each, plus two polls"
    assert links.get("customer", "cust-1") == ("501", {"placeholder": phone(1)})
    assert links.get("customer", "cust-2") == ("502", {"placeholder": phone(2)})
    assert links.get("conversation", "conv-1")[0] == "801" and links.get("conversation", "conv-2")[0] == "802"


def test_jobs_are_polled_together_until_they_complete(mocked: responses.RequestsMock, fake_time: FakeTime) -> None:
    groups = [[item(1)], [item(2)]]
    mocked.post(f"{API}/tickets/create_many", json=queued("t1", 2))
    poll(mocked, "t1", job_status("t1", "queued", total=2))
    poll(mocked, "t1", job_status("t1", "working", total=2))
    poll(mocked, "t1", job_status("t1", results=[{"id": 801, "index": 0}, {"id": 802, "index": 1}], total=2))

    outcomes = zendesk(fake_time).deliver_groups(groups, linked(1, 2))

    assert ops(outcomes) == {100: "ticket_created", 200: "ticket_created"}
    assert fake_time.sleeps == [1.0, 2.0, 4.0], "every look at a job waits first, longer each time"


def test_results_are_matched_by_index_not_by_position(mocked: responses.RequestsMock, fake_time: FakeTime) -> None:
    mocked.post(f"{API}/tickets/create_many", json=queued("t1", 2))
    poll(mocked, "t1", job_status("t1", results=[{"id": 802, "index": 1}, {"id": 801, "index": 0}], total=2))
    links = linked(1, 2)
    zendesk(fake_time).deliver_groups([[item(1)], [item(2)]], links)
    assert links.get("conversation", "conv-1")[0] == "801" and links.get("conversation", "conv-2")[0] == "802"


# -- partial failures -----------------------------------------------------------------------------------------------
def test_a_failed_result_fails_its_group_with_zendesks_error_and_the_rest_is_delivered(
        mocked: responses.RequestsMock, fake_time: FakeTime) -> None:
    groups = [[item(1)], [item(2), item(2, 1)], [item(3)]]
    mocked.post(f"{API}/tickets/create_many", json=queued("t1", 3))
    # a creation that failed has no id to report
    failed = {"index": 1, "action": "create", "success": False, "error": "InvalidValue",
              "details": "Priority: is not valid"}
    poll(mocked, "t1", job_status("t1", results=[{"id": 801, "index": 0}, failed, {"id": 803, "index": 2}],
                                  total=3))
    links = linked(1, 2, 3)

    outcomes = zendesk(fake_time).deliver_groups(groups, links)

    assert ops(outcomes) == {100: "ticket_created", 200: "PermanentError:InvalidValue", 300: "ticket_created"}
    assert "Priority: is not valid" in str(outcomes[200])
    assert 201 not in outcomes, "the rest of a failed group waits for the next round, in order"
    assert links.get("conversation", "conv-2") is None


def test_a_failed_user_fails_only_that_customers_groups(mocked: responses.RequestsMock, fake_time: FakeTime) -> None:
    mocked.post(f"{API}/users/create_or_update_many", json=queued("u1", 2))
    failed = {"index": 0, "action": "create", "success": False, "error": "InvalidValue",
              "details": "Phone: is invalid"}
    poll(mocked, "u1", job_status("u1", results=[failed, {"id": 502, "index": 1}], total=2))
    tickets = mocked.post(f"{API}/tickets/create_many", json=queued("t1", 1), match=[
        matchers.json_params_matcher({"tickets": [ticket_body(2, 502, [item(2)], "customer 2 message 0")]},
                                     strict_match=True)])
    poll(mocked, "t1", job_status("t1", results=[{"id": 802, "index": 0}]))

    outcomes = zendesk(fake_time).deliver_groups([[item(1)], [item(2)]], MemoryLinkStore())

    assert ops(outcomes) == {100: "PermanentError:InvalidValue", 200: "ticket_created"}
    assert "Phone: is invalid" in str(outcomes[100])
    assert tickets.call_count == 1


def test_a_closed_ticket_in_update_many_takes_the_single_path_to_a_follow_up(
        mocked: responses.RequestsMock, fake_time: FakeTime) -> None:
    groups = [[item(1, 1)], [item(2, 1)]]
    mocked.put(f"{API}/tickets/update_many", json=queued("t1", 2))
    closed = {"id": 35001, "action": "update", "success": False, "error": "TicketUpdateFailed",
              "details": "Status: closed prevents ticket update"}
    poll(mocked, "t1", job_status("t1", results=[
        closed, {"id": 35002, "action": "update", "success": True, "status": "Updated"}], total=2))
    # the batch result already says the ticket is closed: straight to a follow-up, no PUT to find that out again
    followup = mocked.post(f"{API}/tickets", status=201, json={"ticket": {"id": 35100, "status": "new"}})
    links = linked(1, 2, tickets={1: 35001, 2: 35002})

    outcomes = zendesk(fake_time).deliver_groups(groups, links)

    assert ops(outcomes) == {101: "followup_ticket_created", 201: "comment_added"}
    sent = json.loads(followup.calls[0].request.body)["ticket"]
    assert sent["via_followup_source_id"] == 35001
    assert sent["metadata"] == {MARKER: groups[0][0].message.id}
    assert links.get("conversation", "conv-1")[0] == "35100"
    assert [c.request.method for c in mocked.calls] == ["PUT", "GET", "POST"]


def test_refused_bulk_user_import_creates_users_one_by_one(mocked: responses.RequestsMock,
                                                           fake_time: FakeTime) -> None:
    refused = mocked.post(f"{API}/users/create_or_update_many", status=403, json={
        "error": "Forbidden", "description": "You do not have access to this page."})
    singles = [mocked.post(f"{API}/users/create_or_update", status=201, json={"user": {"id": 500 + n}}, match=[
        matchers.json_params_matcher({"user": user_body(n)}, strict_match=True)]) for n in (1, 2)]
    mocked.post(f"{API}/tickets/create_many", json=queued("t1", 2), match=[matchers.json_params_matcher(
        {"tickets": [ticket_body(1, 501, [item(1)], "customer 1 message 0"),
                     ticket_body(2, 502, [item(2)], "customer 2 message 0")]}, strict_match=True)])
    poll(mocked, "t1", job_status("t1", results=[{"id": 801, "index": 0}, {"id": 802, "index": 1}], total=2))

    outcomes = zendesk(fake_time).deliver_groups([[item(1)], [item(2)]], MemoryLinkStore())

    assert ops(outcomes) == {100: "ticket_created", 200: "ticket_created"}
    assert refused.call_count == 1 and [s.call_count for s in singles] == [1, 1]


# -- retryable trouble ----------------------------------------------------------------------------------------------
def test_a_job_still_working_after_job_timeout_seconds_is_retryable(mocked: responses.RequestsMock,
                                                                     fake_time: FakeTime) -> None:
    mocked.post(f"{API}/tickets/create_many", json=queued("t1", 2))
    working = poll(mocked, "t1", job_status("t1", "working", total=2))

    outcomes = zendesk(fake_time, job_timeout_seconds=10).deliver_groups([[item(1)], [item(2)]], linked(1, 2))

    assert ops(outcomes) == {100: "RetryableError:job_timeout", 200: "RetryableError:job_timeout"}
    assert sum(fake_time.sleeps) >= 10 and fake_time.sleeps == [1.0, 2.0, 4.0, 5.0]
    assert working.call_count == 4


def test_a_429_inside_a_batch_waits_retry_after_and_sends_again(mocked: responses.RequestsMock,
                                                                fake_time: FakeTime) -> None:
    throttled = mocked.post(f"{API}/tickets/create_many", status=429, body="Rate limit exceeded",
                            headers={"Retry-After": "7", "Content-Type": "text/html; charset=utf-8"})
    accepted = mocked.post(f"{API}/tickets/create_many", json=queued("t1", 2))
    poll(mocked, "t1", job_status("t1", results=[{"id": 801, "index": 0}, {"id": 802, "index": 1}], total=2))

    outcomes = zendesk(fake_time).deliver_groups([[item(1)], [item(2)]], linked(1, 2))

    assert ops(outcomes) == {100: "ticket_created", 200: "ticket_created"}
    assert throttled.call_count == accepted.call_count == 1
    assert fake_time.sleeps == [7.0, 1.0], "Retry-After held the batch back, then the job poll waited"
    assert json.loads(mocked.calls[0].request.body) == json.loads(mocked.calls[1].request.body)


def test_a_long_retry_after_is_handed_to_the_outbox(mocked: responses.RequestsMock, fake_time: FakeTime) -> None:
    mocked.post(f"{API}/tickets/create_many", status=429, body="Rate limit exceeded", headers={"Retry-After": "93"})
    outcomes = zendesk(fake_time).deliver_groups([[item(1)], [item(2)]], linked(1, 2))
    assert ops(outcomes) == {100: "RetryableError:429", 200: "RetryableError:429"}
    assert outcomes[100].retry_after == 93.0  # type: ignore[union-attr]
    assert fake_time.sleeps == []


@pytest.mark.parametrize("status", [500, 502, 503])
def test_a_5xx_on_a_batch_is_retryable_for_every_group_in_it(mocked: responses.RequestsMock, fake_time: FakeTime,
                                                             status: int) -> None:
    mocked.post(f"{API}/tickets/create_many", status=status, json={"error": "ServerError"})
    outcomes = zendesk(fake_time).deliver_groups([[item(1), item(1, 1)], [item(2)]], linked(1, 2))
    assert ops(outcomes) == {100: "RetryableError:ServerError", 200: "RetryableError:ServerError"}


def test_a_timeout_on_a_batch_is_retryable_for_every_group_in_it(mocked: responses.RequestsMock,
                                                                 fake_time: FakeTime) -> None:
    mocked.post(f"{API}/users/create_or_update_many", body=requests.Timeout("read timed out"))
    outcomes = zendesk(fake_time).deliver_groups([[item(1)], [item(2)]], MemoryLinkStore())
    assert ops(outcomes) == {100: "RetryableError:network", 200: "RetryableError:network"}


def test_a_timeout_while_polling_is_retryable(mocked: responses.RequestsMock, fake_time: FakeTime) -> None:
    mocked.post(f"{API}/tickets/create_many", json=queued("t1", 2))
    mocked.get(f"{API}/job_statuses/show_many", body=requests.ConnectionError("reset"))
    outcomes = zendesk(fake_time).deliver_groups([[item(1)], [item(2)]], linked(1, 2))
    assert ops(outcomes) == {100: "RetryableError:network", 200: "RetryableError:network"}


# -- coalescing and careful retries -----------------------------------------------------------------------------
def test_three_pending_messages_of_a_conversation_become_one_comment(mocked: responses.RequestsMock,
                                                                     fake_time: FakeTime) -> None:
    group = [item(1, 1, text="Hi"), item(1, 2, text="my parcel"), item(1, 3, text="is late")]
    put = mocked.put(f"{API}/tickets/35001", json={"ticket": {"id": 35001, "status": "open"}}, match=[
        matchers.json_params_matcher({"ticket": {
            "comment": {"body": f"{STAMP}\nHi\n\n{STAMP}\nmy parcel\n\n{STAMP}\nis late", "public": True,
                        "author_id": 7001},
            "metadata": {MARKER: ",".join(i.message.id for i in group)}}}, strict_match=True)])

    outcomes = zendesk(fake_time).deliver_groups([group], linked(1, tickets={1: 35001}))

    assert ops(outcomes) == {101: "comment_added", 102: "comment_added", 103: "comment_added"}
    assert put.call_count == 1 and len(mocked.calls) == 1


def test_a_retried_group_checks_the_audits_before_writing(mocked: responses.RequestsMock,
                                                          fake_time: FakeTime) -> None:
    retried = [item(1, 1, attempt=2), item(1, 2, attempt=2), item(1, 3, attempt=2)]
    fresh = [item(2, 1)]
    written = f"{retried[0].message.id},{retried[1].message.id}"  # an earlier coalesced write that landed
    audits = mocked.get(f"{API}/tickets/35001/audits", json={
        "audits": [{"id": 1, "ticket_id": 35001, "metadata": {"custom": {MARKER: written}, "system": {}},
                    "events": []}],
        "meta": {"has_more": False, "after_cursor": None, "before_cursor": None},
        "links": {"next": None, "prev": None}}, match=[matchers.query_param_matcher({"page[size]": "100"})])
    put = mocked.put(f"{API}/tickets/35001", json={"ticket": {"id": 35001, "status": "open"}})
    mocked.put(f"{API}/tickets/update_many", json=queued("t1", 1))
    poll(mocked, "t1", job_status("t1", results=[{"id": 35002, "action": "update", "success": True,
                                                  "status": "Updated"}]))

    outcomes = zendesk(fake_time).deliver_groups([retried, fresh], linked(1, 2, tickets={1: 35001, 2: 35002}))

    assert ops(outcomes) == {101: "already_written", 102: "already_written", 103: "comment_added",
                             201: "comment_added"}
    sent = json.loads(put.calls[0].request.body)["ticket"]
    assert sent["metadata"] == {MARKER: retried[2].message.id}
    assert audits.call_count == 1
    assert mocked.calls[0].request.url.startswith(f"{API}/tickets/35001/audits"), "the audits are read first"


def test_a_small_backlog_stays_on_single_calls(mocked: responses.RequestsMock, fake_time: FakeTime) -> None:
    put = mocked.put(f"{API}/tickets/35001", json={"ticket": {"id": 35001, "status": "open"}})
    outcomes = zendesk(fake_time, bulk_threshold=10).deliver_groups([[item(1, 1)]], linked(1, tickets={1: 35001}))
    assert ops(outcomes) == {101: "comment_added"} and put.call_count == 1


def test_a_tag_the_ticket_lacks_goes_in_update_many_as_its_whole_list_under_the_stamp(
        mocked: responses.RequestsMock, fake_time: FakeTime) -> None:
    """Batch updates take ticket objects (``tags`` replaces the list) with ``safe_update``; ``additional_tags`` is
    only documented for the ``update_many.json?ids=`` form, where every ticket gets the same change
    (https://developer.zendesk.com/documentation/ticketing/managing-tickets/adding-tags-to-tickets-without-overwriting-existing-tags/)."""
    links = linked(1, 2)
    links.put("conversation", "conv-1", "801",
              {"status": "open", "tags": ["vip"], "updated_at": "2025-03-09T14:00:00Z"})
    links.put("conversation", "conv-2", "802", {"status": "open", "tags": TAGS})
    many = mocked.put(f"{API}/tickets/update_many", json=queued("t1", 2))
    poll(mocked, "t1", job_status("t1", results=[
        {"id": 801, "action": "update", "success": True, "status": "Updated"},
        {"id": 802, "action": "update", "success": True, "status": "Updated"}], total=2))
    outcomes = zendesk(fake_time).deliver_groups([[item(1, 1)], [item(2, 1)]], links)
    assert ops(outcomes) == {101: "comment_added", 201: "comment_added"}
    tagged, untouched = json.loads(many.calls[0].request.body)["tickets"]
    assert (tagged["tags"], tagged["safe_update"], tagged["updated_stamp"]) == (["vip", *TAGS], True,
                                                                               "2025-03-09T14:00:00Z")
    assert not {"tags", "additional_tags", "safe_update"} & untouched.keys()


def test_a_ticket_whose_tags_are_unknown_is_read_on_the_single_path(mocked: responses.RequestsMock,
                                                                    fake_time: FakeTime) -> None:
    links = linked(1, 2, tickets={2: 802})
    links.put("conversation", "conv-1", "801", {"status": "open", "updated_at": "2025-03-09T14:00:00Z"})  # no tags
    read = mocked.get(f"{API}/tickets/801", json={"ticket": {
        "id": 801, "status": "open", "tags": ["vip"], "updated_at": "2025-03-09T14:10:00Z"}})
    single = mocked.put(f"{API}/tickets/801", json={"ticket": {"id": 801, "status": "open"}})
    mocked.put(f"{API}/tickets/update_many", json=queued("t1", 1))
    poll(mocked, "t1", job_status("t1", results=[{"id": 802, "action": "update", "success": True,
                                                  "status": "Updated"}]))
    outcomes = zendesk(fake_time).deliver_groups([[item(1, 1)], [item(2, 1)]], links)
    assert ops(outcomes) == {101: "comment_added", 201: "comment_added"} and read.call_count == 1
    sent = json.loads(single.calls[0].request.body)["ticket"]
    assert (sent["tags"], sent["updated_stamp"]) == (["vip", *TAGS], "2025-03-09T14:10:00Z")


# -- the local fake Zendesk behind the connector ---------------------------------------------------------------
def test_the_fake_zendesk_runs_the_batch_jobs_the_connector_sends(fake_time: FakeTime) -> None:
    with FakeZendesk(job_delay_seconds=0.0) as fake:
        crm = zendesk(fake_time, base_url=fake.url)
        links = MemoryLinkStore()
        first = crm.deliver_groups([[item(n, 0), item(n, 1)] for n in range(3)], links)
        fake.close_ticket(int(links.get("conversation", "conv-0")[0]))
        second = crm.deliver_groups([[item(n, 2)] for n in range(3)], links)

        assert set(ops(first).values()) == {"ticket_created"}
        assert ops(second) == {2: "followup_ticket_created", 102: "comment_added", 202: "comment_added"}
        assert set(fake.comment_counts().values()) == {1} and len(fake.comment_counts()) == 9
        # the batch result already said the ticket was closed: no PUT is spent finding that out again
        assert fake.write_counts() == {"users_many": 1, "tickets_many": 1, "update_many": 1, "ticket": 1}
        for n in (1, 2):
            ticket = int(links.get("conversation", f"conv-{n}")[0])
            assert fake.ticket_markers(ticket) == [item(n, k).message.id for k in range(3)]


def test_the_fake_zendesk_holds_requests_to_its_per_minute_limit() -> None:
    now = [0.0]
    with FakeZendesk(requests_per_minute=2, clock=lambda: now[0]) as fake:
        session = requests.Session()
        session.auth = ("agent@example.com/token", "test-zendesk-token")
        url = f"{fake.url}/api/v2/users/me"
        assert [session.get(url).status_code for _ in range(2)] == [200, 200]
        now[0] = 45.0
        throttled = session.get(url)
        assert throttled.status_code == 429 and throttled.headers["Retry-After"] == "15"
        now[0] = 60.0
        assert session.get(url).status_code == 200
        assert fake.throttled == 1 and fake.request_count() == 4


# -- the budget shared by every process ---------------------------------------------------------------------------
class Waited(Exception):
    """Raised by a test sleep: the limiter wanted to wait."""


def test_two_db_rate_limiters_on_one_sqlite_file_share_one_budget(runtime: Runtime, tmp_path: Path) -> None:
    other_engine = make_engine(f"sqlite:///{tmp_path / 'gateway.db'}")
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        raise Waited

    # 6 a minute: a bucket of one request, refilled every 10 s
    first = DbRateLimiter(runtime.engine, "zendesk:acme", 6, sleep=sleep)
    second = DbRateLimiter(other_engine, "zendesk:acme", 6, sleep=sleep)
    elsewhere = DbRateLimiter(other_engine, "zendesk:other", 6, sleep=sleep)
    try:
        first.acquire()
        with pytest.raises(Waited):
            second.acquire()  # the other process finds the budget spent
        assert 9.0 < waits[0] <= 10.0
        elsewhere.acquire()  # another account's budget is its own

        second.block(60)  # a 429 seen by one process stops both
        for limiter in (first, second):
            with pytest.raises(RetryableError) as caught:
                limiter.acquire()
            assert caught.value.code == "rate_limited" and 59.0 < (caught.value.retry_after or 0) <= 60.0
        assert len(waits) == 1
    finally:
        other_engine.dispose()


def test_a_retry_after_a_lost_batch_reads_the_ticket_from_the_job(mocked: responses.RequestsMock,
                                                                 fake_time: FakeTime) -> None:
    """create_many was queued, then the worker died before reading the job: the retry asks the job."""
    links = linked(1, 2)
    one, two = item(1), item(2)
    mocked.post(f"{API}/tickets/create_many", json=queued("t1", 2))
    mocked.get(f"{API}/job_statuses/show_many", body=requests.exceptions.ConnectionError("worker died"))
    first = zendesk(fake_time, bulk_threshold=2).deliver_groups([[one], [two]], links)
    assert {type(o).__name__ for o in first.values()} == {"RetryableError"}
    mocked.get(f"{API}/job_statuses/t1", json={"job_status": job_status(
        "t1", results=[{"id": 901, "index": 0}, {"id": 902, "index": 1}], total=2)})
    mocked.get(f"{API}/tickets/901/audits", json={"audits": [{"id": 1, "ticket_id": 901, "metadata": {
        "custom": {MARKER: one.message.id}, "system": {}}}], "meta": {"has_more": False}, "links": {}})
    retried = zendesk(fake_time).deliver_groups([[replace(one, attempt=2)]], links)
    assert ops(retried) == {100: "already_written"}
    assert links.get("conversation", "conv-1")[0] == "901"
    assert not [c for c in mocked.calls if c.request.method == "POST" and c.request.url.endswith("/tickets")]


def test_an_update_without_a_result_is_retried_as_uncertain(mocked: responses.RequestsMock,
                                                           fake_time: FakeTime) -> None:
    mocked.put(f"{API}/tickets/update_many", json=queued("t1", 2))
    poll(mocked, "t1", job_status("t1", results=[
        {"id": 35002, "action": "update", "success": True, "status": "Updated"}], total=2))
    outcomes = zendesk(fake_time).deliver_groups([[item(1, 1)], [item(2, 1)]],
                                                 linked(1, 2, tickets={1: 35001, 2: 35002}))
    assert ops(outcomes) == {101: "RetryableError:job_result_missing", 201: "comment_added"}
