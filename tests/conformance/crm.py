"""Conformance suite every CRM connector's tests subclass.

A subclass is named ``Test...`` and provides:

- ``build(http, tmp_path)``: the connector under test, its outbound HTTP going through ``http``;
- ``mock_success(mocked)``: the mocked HTTP answers (``responses``) of a healthy CRM;
- ``count_writes(mocked, tmp_path)``: how many distinct records the CRM now holds as written;
- ``written_messages(mocked, tmp_path)``: the gateway message ids those records carry, one entry per message per
  record (a record carrying several coalesced messages names each of them);
- ``secrets``: every secret value in the connector's config.

Most cases call ``deliver_groups`` as the delivery worker does: one list per conversation, its pending messages in
order; an outbox id missing from the outcomes was not attempted and comes back as the same attempt.

Some cases apply only to a connector with an optional ability: ``DirectorySyncCases`` (syncing the CRM's directory of
existing contacts; hook ``mock_directory``) and ``ContactMergeCases`` (merging two contacts; hooks ``mock_merge`` and
``merges``). A suite mixes them in exactly when its connector declares the ability, and a case of the base suite
fails when the two disagree, so no ability goes untested and nothing is skipped.

``HttpCrmConformance`` adds the error-classification tests for CRMs reached over HTTP; its subclasses also provide
``mock_failure(mocked, ...)`` (the first write answers with the given failure) and ``error_body(status)``. The group
cases register ``mock_success`` after ``mock_failure``: each failure registered once is then answered once, and the
healthy CRM answers from the next request on. Its lost-answer cases put ``LostAnswers`` over the healthy CRM: each
kind of write is carried out and then its connection closes without an answer, once, as when a CRM commits and the
network fails before the reply arrives. A CRM that keeps a contact record per customer (a delivery links the
customer) also mixes in ``ContactRecordCases`` (hooks ``rename_contact`` and ``contact_name``).
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from http.client import RemoteDisconnected
from pathlib import Path
from typing import Any, ClassVar

import pytest
import requests
import responses
from urllib3.exceptions import ProtocolError

from gateway.errors import DeliveryError, PermanentError, RetryableError
from gateway.model import ChannelType, Identifier, IdentifierKind, Message, Party, RawRef, ThreadRef
from gateway.plugins import (
    ContactMerge,
    ConversationView,
    CrmConnector,
    CustomerView,
    DeliveryItem,
    DeliveryResult,
    DirectorySync,
    secret_fields,
)

CUSTOMER_PHONE = "+14017122661"
BUSINESS_PHONE = "+15558675310"
CUSTOMER_ID = "5f0c6a3e9b1d4c2a8e7f6d5c4b3a2918"
CONVERSATION_ID = "c0ffee00c0ffee00c0ffee00c0ffee00"
OTHER_PHONE = "+14155550132"
OTHER_CUSTOMER_ID = "7a1e0b9c3d5f4e6a8b2c1d0e9f8a7b6c"
OTHER_CONVERSATION_ID = "beef0000beef0000beef0000beef0000"
Outcomes = dict[int, DeliveryResult | DeliveryError]
Group = list[DeliveryItem]


class MemoryLinkStore:
    """In-memory ``LinkStore``: local id -> (CRM id, data), with every write recorded."""

    def __init__(self) -> None:
        self.links: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}
        self.puts: list[tuple[str, str, str]] = []

    def get(self, entity: str, local_id: str) -> tuple[str, dict[str, Any]] | None:
        found = self.links.get((entity, local_id))
        return (found[0], dict(found[1])) if found else None

    def put(self, entity: str, local_id: str, remote_id: str, data: dict[str, Any] | None = None) -> None:
        self.links[(entity, local_id)] = (remote_id, dict(data or {}))
        self.puts.append((entity, local_id, remote_id))

    def get_many(self, entity: str, local_ids: Sequence[str]) -> dict[str, tuple[str, dict[str, Any]]]:
        return {local_id: found for local_id in local_ids if (found := self.get(entity, local_id)) is not None}

    def put_many(self, entity: str, links: Mapping[str, str]) -> None:
        for local_id, remote_id in links.items():
            self.put(entity, local_id, remote_id)

    def find_records(self, kind: str, value: str) -> list[str]:
        return []

    def find_local(self, entity: str, remote_id: str) -> str | None:
        return next((local for (kind, local), (remote, _) in self.links.items()
                     if kind == entity and remote == remote_id), None)


def twilio_sms(text: str = "My order #1234 never arrived", *, sid: str = "SM" + "1" * 32,
               inbox_id: int = 1) -> Message:
    """A canonical message as the Twilio connector makes it from an inbound SMS."""
    received = datetime(2025, 3, 9, 14, 30, tzinfo=UTC)
    return Message(
        channel=ChannelType.SMS, connector="sms-main", connector_type="twilio", provider_message_id=sid,
        thread=ThreadRef(provider_thread_id=f"{BUSINESS_PHONE}|{CUSTOMER_PHONE}"),
        sender=Party(identifiers=(Identifier(kind=IdentifierKind.PHONE, value=CUSTOMER_PHONE),)),
        recipients=(Party(identifiers=(Identifier(kind=IdentifierKind.PHONE, value=BUSINESS_PHONE),)),),
        text=text, full_text=text, sent_at=received, received_at=received,
        extras={"To": BUSINESS_PHONE, "AccountSid": "AC" + "F" * 31 + "1", "NumSegments": "1"},
        raw=RawRef(inbox_id=inbox_id, connector="sms-main"))


def delivery_item(message: Message | None = None, *, crm: str = "crm", attempt: int = 1, outbox_id: int = 1,
                  opened: bool = True, fields: dict[str, Any] | None = None) -> DeliveryItem:
    """An outbox row for ``message`` (a Twilio SMS by default), built as the delivery worker builds it."""
    message = message or twilio_sms()
    return DeliveryItem(
        outbox_id=outbox_id, attempt=attempt, idempotency_key=f"gw-{crm}-{message.id}", message=message,
        customer=CustomerView(CUSTOMER_ID, None, (("phone", CUSTOMER_PHONE),)),
        conversation=ConversationView(CONVERSATION_ID, message.channel.value, opened),
        fields=fields if fields is not None else {
            "subject": f"SMS from {CUSTOMER_PHONE}", "comment": message.text, "public": True,
            "priority": "normal", "tags": ["channel-gateway", "sms"]})


def conversation(crm: str, texts: Iterable[str], *, first_outbox_id: int = 1, other: bool = False) -> Group:
    """One conversation's pending messages as the delivery worker groups them: in order, the first opening it.

    ``other`` makes them another customer's, in another conversation (a second group of the same batch).
    """
    items = []
    for index, text in enumerate(texts):
        outbox_id = first_outbox_id + index
        item = delivery_item(twilio_sms(text, sid=f"SM{outbox_id:032d}", inbox_id=outbox_id), crm=crm,
                             outbox_id=outbox_id, opened=index == 0)
        if other:
            item = replace(item, customer=CustomerView(OTHER_CUSTOMER_ID, None, (("phone", OTHER_PHONE),)),
                           conversation=ConversationView(OTHER_CONVERSATION_ID, "sms", index == 0),
                           fields={**item.fields, "subject": f"SMS from {OTHER_PHONE}"})
        items.append(item)
    return items


def retried(items: Group) -> Group:
    """The same messages again as their next attempt (a worker died before recording the outcome)."""
    return [replace(item, attempt=item.attempt + 1) for item in items]


def next_round(groups: list[Group], outcomes: Outcomes) -> list[Group]:
    """What the delivery worker hands the connector after ``outcomes``: delivered and dead-lettered messages are
    settled; one that failed retryably comes back as its next attempt; one without an outcome was not attempted and
    comes back as the same attempt."""
    rounds = []
    for group in groups:
        rest = []
        for item in group:
            outcome = outcomes.get(item.outbox_id)
            if outcome is None:
                rest.append(item)
            elif isinstance(outcome, RetryableError):
                rest.append(replace(item, attempt=item.attempt + 1))
        if rest:
            rounds.append(rest)
    return rounds


def assert_outcomes_of(groups: list[Group], outcomes: Outcomes) -> None:
    """Outcomes name only outbox ids of the batch, and within a group nothing follows a failure or a gap."""
    assert set(outcomes) <= {item.outbox_id for group in groups for item in group}
    for group in groups:
        settled = [isinstance(outcomes.get(item.outbox_id), DeliveryResult) for item in group]
        assert settled == sorted(settled, reverse=True), f"a message was written after one that was not: {settled}"


def deliver_until_settled(connector: CrmConnector, groups: list[Group], links: MemoryLinkStore,
                          rounds: int = 3) -> None:
    """Deliver the groups round after round, as the delivery worker would, until every message is settled."""
    for _ in range(rounds):
        if not groups:
            return
        outcomes = connector.deliver_groups(groups, links)
        assert_outcomes_of(groups, outcomes)
        groups = next_round(groups, outcomes)
    assert not groups, f"still unsettled after {rounds} rounds: {groups}"


class LostAnswers:
    """Put over a mocked CRM's registered answers: the first request each write answer serves is carried out (its
    callback runs, so a stateful fake holds the write), then the connection closes without an answer, as requests
    reports a server that closed the socket: ``ConnectionError(ProtocolError("Connection aborted.",
    RemoteDisconnected(...)))``. Later requests are answered. ``lost`` lists the requests whose answers were lost."""

    WRITES = ("POST", "PUT", "PATCH", "DELETE")

    def __init__(self, mocked: responses.RequestsMock, spare: tuple[str, ...] = ()) -> None:
        """``spare``: URLs (their beginnings) of requests that write nothing, such as a login, always answered."""
        self.lost: list[str] = []
        for registered in mocked.registered():
            url = registered.url if isinstance(registered.url, str) else registered.url.pattern
            if registered.method in self.WRITES and not url.startswith(spare):
                self._lose_first(registered)

    def _lose_first(self, registered: responses.BaseResponse) -> None:
        answer = registered.get_response
        served = False

        def carried_out_then_dropped(request: Any) -> Any:
            nonlocal served
            response = answer(request)
            if served:
                return response
            served = True
            self.lost.append(f"{request.method} {request.url}")
            raise requests.ConnectionError(ProtocolError(
                "Connection aborted.", RemoteDisconnected("Remote end closed connection without response")),
                request=request)

        registered.get_response = carried_out_then_dropped  # type: ignore[method-assign]


class MemoryDirectory:
    """In-memory stand-in for ``CrmDirectory``: each record's raw identifiers as the connector read them."""

    def __init__(self) -> None:
        self.records: dict[str, list[tuple[str, str]]] = {}

    def replace_records(self, records: Iterable[tuple[str, Iterable[tuple[str, str]]]]) -> None:
        """Store each record's identifiers, replacing what it held before."""
        for remote_id, identifiers in records:
            self.records[remote_id] = sorted(identifiers)

    def replace_record(self, remote_id: str, identifiers: Iterable[tuple[str, str]]) -> None:
        """Store one record's identifiers."""
        self.replace_records([(remote_id, identifiers)])

    def remove_record(self, remote_id: str) -> None:
        """Forget a record (deleted, suspended, or no longer a customer in the CRM)."""
        self.records.pop(remote_id, None)


class MemoryCursors:
    """In-memory ``CursorStore``."""

    def __init__(self) -> None:
        self.values: dict[str, dict[str, Any]] = {}

    def get(self, name: str) -> dict[str, Any] | None:
        """The cursor stored under ``name``, if any."""
        return self.values.get(name)

    def put(self, name: str, value: dict[str, Any]) -> None:
        """Store a cursor under ``name``."""
        self.values[name] = dict(value)


class DirectoryLinkStore(MemoryLinkStore):
    """A ``MemoryLinkStore`` that also answers ``find_records`` from a synced directory, as ``DbLinkStore`` does."""

    def __init__(self, records: dict[tuple[str, str], list[str]]) -> None:
        super().__init__()
        self.records = records

    def find_records(self, kind: str, value: str) -> list[str]:
        """The CRM records that hold this identifier."""
        return list(self.records.get((kind, value), []))


def secret_forms(secret: str) -> list[str]:
    """The forms a leaked secret could take: as is, and base64-encoded (as in an Authorization header)."""
    return [secret, base64.b64encode(secret.encode()).decode()]


class CrmConformance:
    """Tests every CRM connector passes: idempotent replay, conversation groups, abilities and secret masking."""

    secrets: ClassVar[tuple[str, ...]] = ()

    # -- what a subclass provides ------------------------------------------------------------------------------
    def build(self, http: requests.Session, tmp_path: Path) -> CrmConnector:
        """The connector under test; its outbound HTTP goes through ``http``, its files under ``tmp_path``."""
        raise NotImplementedError

    def mock_success(self, mocked: responses.RequestsMock) -> None:
        """Register the answers of a healthy CRM (stateful where replays need to find earlier writes)."""
        raise NotImplementedError

    def count_writes(self, mocked: responses.RequestsMock, tmp_path: Path) -> int:
        """How many distinct records the CRM now holds as written."""
        raise NotImplementedError

    def written_messages(self, mocked: responses.RequestsMock, tmp_path: Path) -> list[str]:
        """The gateway message ids of the records the CRM holds: each message once per record that carries it."""
        raise NotImplementedError

    def mock_directory(self, mocked: responses.RequestsMock, records: dict[str, list[tuple[str, str]]]) -> None:
        """Register a CRM holding these contact records (remote id -> email and phone identifiers), as its directory
        export lists them (``sync_directory`` only)."""
        raise NotImplementedError

    def mock_merge(self, mocked: responses.RequestsMock) -> None:
        """Register a CRM that merges contacts (``merge_contacts`` only)."""
        raise NotImplementedError

    def merges(self, mocked: responses.RequestsMock) -> list[tuple[str, str]]:
        """The merges the CRM received, as (survivor remote id, absorbed remote id) (``merge_contacts`` only)."""
        raise NotImplementedError

    # -- fixtures ----------------------------------------------------------------------------------------------
    @pytest.fixture
    def mocked(self) -> Iterator[responses.RequestsMock]:
        """Every HTTP request is answered by ``responses``; an unregistered one raises ConnectionError."""
        with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
            yield mock

    @pytest.fixture
    def connector(self, mocked: responses.RequestsMock, tmp_path: Path) -> CrmConnector:
        return self.build(requests.Session(), tmp_path)

    # -- idempotent replay -------------------------------------------------------------------------------------
    def test_replay_after_crash_writes_nothing_twice(
            self, connector: CrmConnector, mocked: responses.RequestsMock, tmp_path: Path) -> None:
        self.mock_success(mocked)
        links = MemoryLinkStore()
        item = delivery_item(crm=connector.name)
        connector.deliver(item, links)
        written = self.count_writes(mocked, tmp_path)
        assert written == 1

        connector.deliver(replace(item, attempt=2), links)
        assert self.count_writes(mocked, tmp_path) == written

    def test_next_message_is_written_and_its_replay_is_not(
            self, connector: CrmConnector, mocked: responses.RequestsMock, tmp_path: Path) -> None:
        self.mock_success(mocked)
        links = MemoryLinkStore()
        connector.deliver(delivery_item(crm=connector.name), links)
        second = delivery_item(twilio_sms("Any news?", sid="SM" + "2" * 32, inbox_id=2), crm=connector.name,
                               outbox_id=2, opened=False)
        connector.deliver(second, links)
        assert self.count_writes(mocked, tmp_path) == 2

        connector.deliver(replace(second, attempt=2), links)
        connector.deliver(replace(second, attempt=3), links)
        assert self.count_writes(mocked, tmp_path) == 2

    # -- conversation groups, as the delivery worker hands them over ---------------------------------------------
    def test_groups_are_written_once_and_their_replay_writes_nothing(
            self, connector: CrmConnector, mocked: responses.RequestsMock, tmp_path: Path) -> None:
        self.mock_success(mocked)
        links = MemoryLinkStore()
        first = conversation(connector.name, ["My order #1234 never arrived", "It was due Monday", "Any news?"])
        second = conversation(connector.name, ["Wrong size delivered", "Can I swap it?"], first_outbox_id=11,
                              other=True)
        outcomes = connector.deliver_groups([first, second], links)
        assert all(isinstance(outcomes.get(item.outbox_id), DeliveryResult) for item in first + second), outcomes
        expected = sorted(item.message.id for item in first + second)
        assert sorted(self.written_messages(mocked, tmp_path)) == expected
        written = self.count_writes(mocked, tmp_path)

        replayed = connector.deliver_groups([retried(first), retried(second)], links)
        assert all(isinstance(replayed.get(item.outbox_id), DeliveryResult) for item in first + second), replayed
        assert sorted(self.written_messages(mocked, tmp_path)) == expected
        assert self.count_writes(mocked, tmp_path) == written

    def test_a_replayed_group_with_a_new_message_writes_only_the_new_one(
            self, connector: CrmConnector, mocked: responses.RequestsMock, tmp_path: Path) -> None:
        self.mock_success(mocked)
        links = MemoryLinkStore()
        texts = ["My order #1234 never arrived", "It was due Monday", "Any news?", "Hello?"]
        one, two, three, four = conversation(connector.name, texts)
        deliver_until_settled(connector, [[one, two, three]], links)
        written = self.count_writes(mocked, tmp_path)
        # the worker recorded the first message, then died; the other two come back with a message that arrived since
        deliver_until_settled(connector, [[*retried([two, three]), four]], links)
        assert sorted(self.written_messages(mocked, tmp_path)) == sorted(i.message.id for i in (one, two, three, four))
        assert self.count_writes(mocked, tmp_path) == written + 1

    def test_every_declared_ability_is_tested(self, connector: CrmConnector) -> None:
        for ability, cases in ABILITY_CASES:
            declared, tested = isinstance(connector, ability), isinstance(self, cases)
            assert declared == tested, (
                f"{type(connector).__name__} {'declares' if declared else 'does not declare'} {ability.__name__}: "
                f"{'mix' if declared else 'do not mix'} {cases.__name__} into {type(self).__name__}")

    # -- secret masking ----------------------------------------------------------------------------------------
    def test_every_secret_field_is_covered(self, connector: CrmConnector) -> None:
        values = [getattr(connector.config, name) for name in secret_fields(type(connector.config))]
        assert sorted(v.get_secret_value() for v in values if v is not None) == sorted(self.secrets)

    def test_repr_and_str_never_show_secrets(self, connector: CrmConnector) -> None:
        shown = " ".join([repr(connector), str(connector), repr(connector.config), str(connector.config),
                          str(connector.config.model_dump()), connector.config.model_dump_json()])
        for secret in self.secrets:
            for form in secret_forms(secret):
                assert form not in shown


class HttpCrmConformance(CrmConformance):
    """The suite for CRMs reached over HTTP: failures are classified, Retry-After honoured, secrets kept out, lost
    answers recovered."""

    login_urls: ClassVar[tuple[str, ...]] = ()  # requests that write nothing: their answers are never lost

    def mock_failure(self, mocked: responses.RequestsMock, *, status: int = 500, body: str | Exception = "",
                     headers: dict[str, str] | None = None) -> None:
        """Register a CRM whose first write answers ``status``/``body`` (or raises ``body``)."""
        raise NotImplementedError

    def error_body(self, status: int) -> tuple[str, str]:
        """The CRM's error body for a 4xx ``status``, and the code a PermanentError must carry for it."""
        raise NotImplementedError

    def _fail(self, connector: CrmConnector) -> DeliveryError:
        with pytest.raises(DeliveryError) as caught:
            connector.deliver(delivery_item(crm=connector.name), MemoryLinkStore())
        return caught.value

    def test_429_is_retryable_with_retry_after(
            self, connector: CrmConnector, mocked: responses.RequestsMock) -> None:
        self.mock_failure(mocked, status=429, body="Rate limit exceeded, please wait",
                          headers={"Retry-After": "93", "Content-Type": "text/plain"})
        error = self._fail(connector)
        assert isinstance(error, RetryableError)
        assert error.retry_after == 93.0

    @pytest.mark.parametrize("status", [500, 503])
    def test_server_errors_are_retryable(
            self, connector: CrmConnector, mocked: responses.RequestsMock, status: int) -> None:
        self.mock_failure(mocked, status=status, body="<html>Service Unavailable</html>",
                          headers={"Content-Type": "text/html"})
        error = self._fail(connector)
        assert isinstance(error, RetryableError)
        assert error.retry_after is None

    @pytest.mark.parametrize("exc", [requests.ReadTimeout("read timed out"),
                                     requests.ConnectTimeout("connect timed out"),
                                     requests.ConnectionError("connection reset by peer")])
    def test_timeouts_and_network_errors_are_retryable(
            self, connector: CrmConnector, mocked: responses.RequestsMock, exc: Exception) -> None:
        self.mock_failure(mocked, body=exc)
        assert isinstance(self._fail(connector), RetryableError)

    @pytest.mark.parametrize("status", [400, 422])
    def test_client_errors_are_permanent_with_the_crm_code(
            self, connector: CrmConnector, mocked: responses.RequestsMock, status: int) -> None:
        body, code = self.error_body(status)
        self.mock_failure(mocked, status=status, body=body, headers={"Content-Type": "application/json"})
        error = self._fail(connector)
        assert isinstance(error, PermanentError)
        assert not error.retryable
        assert error.code == code

    def _refuse_first_write(self, mocked: responses.RequestsMock, status: int) -> type[DeliveryError]:
        """The CRM refuses its first write with ``status`` (422: for good, 503: for now), then is healthy again
        (``responses`` answers a request with the first registered match, and drops it while others remain);
        the error class the refusal must be reported as."""
        if status < 500:
            self.mock_failure(mocked, status=status, body=self.error_body(status)[0],
                              headers={"Content-Type": "application/json"})
            expected: type[DeliveryError] = PermanentError
        else:
            self.mock_failure(mocked, status=status, body="<html>Service Unavailable</html>",
                              headers={"Content-Type": "text/html"})
            expected = RetryableError
        self.mock_success(mocked)
        return expected

    def _two_conversations(self, connector: CrmConnector) -> list[Group]:
        return [conversation(connector.name, ["My order #1234 never arrived", "It was due Monday", "Any news?"]),
                conversation(connector.name, ["Wrong size delivered", "Can I swap it?"], first_outbox_id=11,
                             other=True)]

    @pytest.mark.parametrize("status", [422, 503])
    def test_a_failing_first_message_stops_its_group(
            self, connector: CrmConnector, mocked: responses.RequestsMock, status: int) -> None:
        expected = self._refuse_first_write(mocked, status)
        groups = self._two_conversations(connector)
        outcomes = connector.deliver_groups(groups, MemoryLinkStore())
        assert_outcomes_of(groups, outcomes)
        head, *rest = groups[0]
        assert isinstance(outcomes.get(head.outbox_id), expected), outcomes
        assert not any(isinstance(outcomes.get(item.outbox_id), DeliveryResult) for item in rest), outcomes

    @pytest.mark.parametrize("status", [422, 503])
    def test_messages_without_an_outcome_are_written_once_as_untried(
            self, connector: CrmConnector, mocked: responses.RequestsMock, tmp_path: Path, status: int) -> None:
        """Behind a refused message, the rest of its group is left without an outcome or failed with it; the worker
        hands an untried message over again as the same attempt, so it must not have been written."""
        self._refuse_first_write(mocked, status)
        groups = self._two_conversations(connector)
        links = MemoryLinkStore()
        outcomes = connector.deliver_groups(groups, links)
        dead = {outbox_id for outbox_id, outcome in outcomes.items() if isinstance(outcome, PermanentError)}
        deliver_until_settled(connector, next_round(groups, outcomes), links)
        expected = sorted(item.message.id for group in groups for item in group if item.outbox_id not in dead)
        assert sorted(self.written_messages(mocked, tmp_path)) == expected


    # -- lost answers: the CRM carried a write out, then the connection closed without an answer ------------------
    def _next_message(self, connector: CrmConnector) -> Group:
        return [delivery_item(twilio_sms("Any news?", sid="SM" + "2" * 32, inbox_id=2), crm=connector.name,
                              outbox_id=2, opened=False)]

    def test_lost_answers_write_nothing_twice_and_every_link_is_recovered(
            self, connector: CrmConnector, mocked: responses.RequestsMock, tmp_path: Path) -> None:
        self.mock_success(mocked)
        other = conversation(connector.name, ["Wrong size delivered"], first_outbox_id=21, other=True)
        clean = MemoryLinkStore()
        deliver_until_settled(connector, [other], clean)
        lost = LostAnswers(mocked, self.login_urls)
        links = MemoryLinkStore()
        first = conversation(connector.name, ["My order #1234 never arrived"])
        deliver_until_settled(connector, [first], links, rounds=5)
        assert lost.lost, "no answer was lost: the case tested nothing"
        # the links a clean write makes (customer, conversation), each recovered from the CRM
        assert sorted(entity for entity, _ in links.links) == sorted(entity for entity, _ in clean.links)

        following = self._next_message(connector)
        deliver_until_settled(connector, [following], links, rounds=5)
        expected = sorted(item.message.id for item in other + first + following)
        assert sorted(self.written_messages(mocked, tmp_path)) == expected

    def test_a_crm_that_links_customers_runs_the_contact_cases(
            self, connector: CrmConnector, mocked: responses.RequestsMock) -> None:
        self.mock_success(mocked)
        links = MemoryLinkStore()
        deliver_until_settled(connector, [conversation(connector.name, ["My order #1234 never arrived"])], links)
        keeps_contacts = links.get("customer", CUSTOMER_ID) is not None
        assert keeps_contacts == isinstance(self, ContactRecordCases), (
            f"{type(connector).__name__} {'links' if keeps_contacts else 'does not link'} customers: "
            f"{'mix' if keeps_contacts else 'do not mix'} ContactRecordCases into {type(self).__name__}")

    @pytest.mark.parametrize("status", [400, 422, 429, 500])
    def test_errors_and_logs_never_show_secrets(
            self, connector: CrmConnector, mocked: responses.RequestsMock, status: int,
            caplog: pytest.LogCaptureFixture) -> None:
        body = self.error_body(status)[0] if status < 429 else "error"
        self.mock_failure(mocked, status=status, body=body, headers={"Retry-After": "1"})
        with caplog.at_level(logging.DEBUG):
            error = self._fail(connector)
        shown = " ".join([str(error), repr(error), repr(error.args), str(error.code), caplog.text])
        for secret in self.secrets:
            for form in secret_forms(secret):
                assert form not in shown


class DirectorySyncCases:
    """Cases for a CRM that declares ``DirectorySync``: mix into its conformance suite (with ``mock_directory``)."""

    mock_success: Any
    count_writes: Any
    mock_directory: Any

    def test_directory_sync_reads_the_crms_contacts(self, connector: Any,
                                                    mocked: responses.RequestsMock) -> None:
        records = {"9001": [("email", "asha@example.com")], "9002": [("phone", OTHER_PHONE)]}
        self.mock_directory(mocked, records)
        directory = MemoryDirectory()
        assert connector.sync_directory(directory, MemoryCursors()) == 2
        assert directory.records == records

    def test_the_one_contact_in_the_directory_is_adopted(self, connector: CrmConnector,
                                                         mocked: responses.RequestsMock, tmp_path: Path) -> None:
        self.mock_success(mocked)
        links = DirectoryLinkStore({("phone", CUSTOMER_PHONE): ["9001"]})
        deliver_until_settled(connector, [conversation(connector.name, ["My order #1234 never arrived"])], links)
        link = links.get("customer", CUSTOMER_ID)
        assert link is not None and link[0] == "9001"
        assert self.count_writes(mocked, tmp_path) == 1

    def test_a_customer_matching_two_contacts_adopts_neither(self, connector: CrmConnector,
                                                             mocked: responses.RequestsMock) -> None:
        self.mock_success(mocked)
        customer = CustomerView(CUSTOMER_ID, None, (("phone", CUSTOMER_PHONE), ("email", "asha@example.com")))
        links = DirectoryLinkStore({("phone", CUSTOMER_PHONE): ["9001"], ("email", "asha@example.com"): ["9002"]})
        group = [replace(item, customer=customer) for item in conversation(connector.name, ["Any news?"])]
        deliver_until_settled(connector, [group], links)
        link = links.get("customer", CUSTOMER_ID)
        assert link is not None and link[0] not in ("9001", "9002")


class ContactMergeCases:
    """Cases for a CRM that declares ``ContactMerge``: mix into its suite (with ``mock_merge`` and ``merges``)."""

    mock_merge: Any
    merges: Any

    def test_merge_carries_an_admins_merge_into_the_crm(self, connector: Any,
                                                        mocked: responses.RequestsMock) -> None:
        self.mock_merge(mocked)
        connector.merge_contacts("9001", "9002")
        assert self.merges(mocked) == [("9001", "9002")]


class ContactRecordCases:
    """Cases for a CRM that keeps a contact record per customer: mix into its suite, with ``rename_contact`` and
    ``contact_name`` (the record's name, found by the customer id the gateway stamps on it)."""

    mock_success: Any
    rename_contact: Any
    contact_name: Any
    login_urls: tuple[str, ...]
    AGENTS_NAME = "Asha Rao (verified by phone)"

    def test_a_lost_answer_never_puts_the_first_write_back_over_an_agents_edit(
            self, connector: CrmConnector, mocked: responses.RequestsMock) -> None:
        """The issue's case: after a lost answer the retry must learn the contact is written and linked, so neither
        it nor the customer's next message upserts the contact again with its first-write body."""
        self.mock_success(mocked)
        lost = LostAnswers(mocked, self.login_urls)
        links = MemoryLinkStore()
        group = conversation(connector.name, ["My order #1234 never arrived"])
        outcomes = connector.deliver_groups([group], links)
        assert isinstance(outcomes.get(group[0].outbox_id), RetryableError) and lost.lost, outcomes
        # the write landed: an agent corrects the contact's name before the retry comes
        self.rename_contact(mocked, CUSTOMER_ID, self.AGENTS_NAME)
        deliver_until_settled(connector, next_round([group], outcomes), links, rounds=5)
        assert links.get("customer", CUSTOMER_ID) is not None

        following = [delivery_item(twilio_sms("Any news?", sid="SM" + "2" * 32, inbox_id=2), crm=connector.name,
                                   outbox_id=2, opened=False)]
        deliver_until_settled(connector, [following], links, rounds=5)
        assert self.contact_name(mocked, CUSTOMER_ID) == self.AGENTS_NAME


ABILITY_CASES: tuple[tuple[type, type], ...] = ((DirectorySync, DirectorySyncCases), (ContactMerge, ContactMergeCases))
