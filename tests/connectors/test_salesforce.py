"""Salesforce CRM: the conformance suite, and the exact requests and answers Salesforce documents.

Bodies follow the REST API Developer Guide: upsert by external ID answers 201 ``{"id", "errors": [], "success":
true, "created": true}`` for a new record and 200 with ``"created": false`` for an update (API 46.0+), 300 with the
matching records' URLs when the value is not unique; ``/composite`` answers ``{"compositeResponse": [{"body",
"httpHeaders", "httpStatusCode", "referenceId"}]}`` and, with ``allOrNone``, ``PROCESSING_HALTED`` for the
rolled-back siblings of a failed subrequest; errors are arrays of ``{"message", "errorCode", "fields"}``;
``DUPLICATES_DETECTED`` carries a ``duplicateResult`` (DuplicateResult -> MatchResult -> MatchRecord); every answer
carries ``Sforce-Limit-Info: api-usage=N/M``. Salesforce publishes no 422 or 429 body for REST: those tests use
the same error-array shape.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import requests
import responses
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import ValidationError
from responses import matchers

from connectors.salesforce import MARKER_PREFIX, SalesforceConfig, SalesforceCrm
from gateway.config import load_config
from gateway.errors import PermanentError, RetryableError
from gateway.model import ChannelType, Identifier, IdentifierKind, Party, ThreadRef
from gateway.plugins import ConnectorContext, CrmConnector, CustomerView
from gateway.ratelimit import MemoryRateLimiter, RateLimiter
from gateway.yamlsource import ConfigError
from tests.conformance.crm import (
    CONVERSATION_ID,
    CUSTOMER_ID,
    CUSTOMER_PHONE,
    ContactRecordCases,
    HttpCrmConformance,
    LostAnswers,
    MemoryLinkStore,
    delivery_item,
    twilio_sms,
)

INSTANCE = "https://acme.my.salesforce.com"
DATA = f"{INSTANCE}/services/data/v59.0"
SESSION_ID = "00Dtest!session-id-for-tests"
PASSWORD, SECURITY_TOKEN = "test-password", "test-security-token"
ACCESS_TOKEN = "00Dtest!access-token-from-login"
CONSUMER_KEY = "3MVG9test.consumer.key"
CONTACT_ID, CASE_ID = "003R000000K1qzXIAR", "500R000000B2cDeIAF"
LIMIT = {"Sforce-Limit-Info": "api-usage=18/100000"}
JSON_CT = {"Content-Type": "application/json;charset=UTF-8"}
PREFIXES = {"Contact": "003", "Lead": "00Q", "Account": "001", "Case": "500", "CaseComment": "00a",
            "EmailMessage": "02s"}


def private_key_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


PRIVATE_KEY = private_key_pem()


class Clock:
    """A monotonic clock the test moves; sleeping advances it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def limiters(clock: Clock) -> Callable[[str, float], RateLimiter]:
    """A limiter factory like the gateway's: one limiter per name, shared by every connector built with it."""
    made: dict[str, MemoryRateLimiter] = {}

    def limiter(name: str, per_minute: float) -> RateLimiter:
        return made.setdefault(name, MemoryRateLimiter(per_minute, sleep=clock.sleep, clock=clock))

    return limiter


def salesforce(http: requests.Session | None = None, *, clock: Clock | None = None,
               limiter: Callable[[str, float], RateLimiter] | None = None, **settings: Any) -> SalesforceCrm:
    values: dict[str, Any] = {"instance_url": INSTANCE, "session_id": SESSION_ID, **settings}
    config = SalesforceConfig(**{k: v for k, v in values.items() if v is not None})
    clock = clock or Clock()
    context = ConnectorContext(http=http or requests.Session(), limiter=limiter or limiters(clock))
    connector = SalesforceCrm("sf", config, context)
    connector.api.clock = clock
    return connector


def upsert_ok(record_id: str, obj: str, created: bool) -> dict[str, Any]:
    return {"body": {"id": record_id, "success": True, "errors": [], "created": created},
            "httpHeaders": {"Location": f"/services/data/v59.0/sobjects/{obj}/{record_id}"} if created else {},
            "httpStatusCode": 201 if created else 200}


def halted() -> list[dict[str, Any]]:
    return [{"errorCode": "PROCESSING_HALTED",
             "message": "The transaction was rolled back since another operation in the same transaction failed."}]


def sub_failure(reference: str, errors: list[dict[str, Any]], status: int = 400) -> dict[str, Any]:
    return {"body": errors, "httpHeaders": {}, "httpStatusCode": status, "referenceId": reference}


def composite_answer(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"compositeResponse": list(entries)}


def sent(call: Any) -> dict[str, Any]:
    return json.loads(call.request.body)


class MockedSalesforce:
    """A stateful org behind ``responses``: upserts by external id, inserts, composite with allOrNone, SOQL."""

    def __init__(self, usage: str = "api-usage=18/100000") -> None:
        self.records: dict[str, dict[str, dict[str, Any]]] = {}
        self.counter = itertools.count(1)
        self.usage = usage

    def install(self, mocked: responses.RequestsMock, *, query: bool = True) -> None:
        mocked.add_callback("POST", f"{DATA}/composite", callback=self.composite)
        if query:
            mocked.add_callback("GET", re.compile(rf"{re.escape(DATA)}/query.*"), callback=self.query)

    def headers(self) -> dict[str, str]:
        return {**JSON_CT, "Sforce-Limit-Info": self.usage}

    def new_id(self, obj: str) -> str:
        return f"{PREFIXES.get(obj, 'a00')}R0000{next(self.counter):010d}AAA"[:18]

    def apply(self, method: str, url: str, body: dict[str, Any]) -> dict[str, Any]:
        parts = unquote(urlsplit(url).path).split("/sobjects/", 1)[1].split("/")
        table = self.records.setdefault(parts[0], {})
        if method == "POST":
            record_id = self.new_id(parts[0])
            table[record_id] = {**body, "Id": record_id}
            return upsert_ok(record_id, parts[0], True) | {"body": {"id": record_id, "success": True, "errors": []}}
        if len(parts) == 2:  # PATCH by record id
            table[parts[1]].update(body)
            return {"body": None, "httpHeaders": {}, "httpStatusCode": 204}
        field, value = parts[1], parts[2]
        found = [r for r in table.values() if r.get(field) == value]
        if len(found) > 1:
            return {"body": [f"/services/data/v59.0/sobjects/{parts[0]}/{r['Id']}" for r in found],
                    "httpHeaders": {}, "httpStatusCode": 300}
        if found:
            found[0].update(body)
            return upsert_ok(found[0]["Id"], parts[0], False)
        record_id = self.new_id(parts[0])
        table[record_id] = {**body, field: value, "Id": record_id}
        return upsert_ok(record_id, parts[0], True)

    def composite(self, request: Any) -> tuple[int, dict[str, str], str]:
        payload = json.loads(request.body)
        assert payload["allOrNone"] is True
        ids: dict[str, str] = {}
        answers = []
        for sub in payload["compositeRequest"]:
            text = re.sub(r"@\{(\w+)\.id\}", lambda m: ids[m.group(1)], json.dumps(sub.get("body", {})))
            answer = self.apply(sub["method"], sub["url"], json.loads(text))
            ids[sub["referenceId"]] = answer["body"]["id"] if answer["body"] else sub["url"].rsplit("/", 1)[1]
            answers.append({**answer, "referenceId": sub["referenceId"]})
        return 200, self.headers(), json.dumps(composite_answer(*answers))

    def query(self, request: Any) -> tuple[int, dict[str, str], str]:
        soql = parse_qs(urlsplit(request.url).query)["q"][0]
        match = re.fullmatch(r"SELECT (.+?) FROM (\w+) WHERE (.+?)(?: ORDER BY [\w ]+)?(?: LIMIT (\d+))?", soql)
        assert match, soql
        columns, obj, where, limit = match.groups()
        terms = [(field, [re.sub(r"\\(.)", r"\1", v) for v in re.findall(r"'((?:[^'\\]|\\.)*)'", value)])
                 for field, value in re.findall(r"(\w+) (?:=|IN) ('(?:[^'\\]|\\.)*'|\([^)]*\))", where)]
        test = any if " OR " in where else all
        found = [r for r in self.records.get(obj, {}).values() if test(r.get(f) in values for f, values in terms)]
        records = [{"attributes": {"type": obj, "url": f"/services/data/v59.0/sobjects/{obj}/{r['Id']}"},
                    **{c.strip(): r.get(c.strip()) for c in columns.split(",")}} for r in reversed(found)]
        records = records[:int(limit)] if limit else records
        return 200, self.headers(), json.dumps({"totalSize": len(records), "done": True, "records": records})

    def contact(self, customer_id: str) -> dict[str, Any]:
        """The one Contact holding the customer id."""
        (found,) = [r for r in self.records.get("Contact", {}).values()
                    if r.get("Gateway_Customer_Id__c") == customer_id]
        return found

    def written(self) -> int:
        return sum(len(self.records.get(obj, {})) for obj in ("CaseComment", "EmailMessage"))

    def written_messages(self) -> list[str]:
        """The gateway message ids of the message records, read from the reference line that ends each body."""
        bodies = [str(record.get("CommentBody") or record.get("TextBody") or "")
                  for obj in ("CaseComment", "EmailMessage") for record in self.records.get(obj, {}).values()]
        return [body.rsplit(MARKER_PREFIX, 1)[1].strip() for body in bodies if MARKER_PREFIX in body]


class TestSalesforceConformance(HttpCrmConformance, ContactRecordCases):
    """Salesforce with an instance URL + session id passes the shared CRM suite."""

    secrets: ClassVar[tuple[str, ...]] = (SESSION_ID,)
    org: MockedSalesforce

    def build(self, http: requests.Session, tmp_path: Path) -> CrmConnector:
        return salesforce(http)

    def mock_login(self, mocked: responses.RequestsMock) -> None:
        """No login: the session id comes from the config."""

    def mock_success(self, mocked: responses.RequestsMock) -> None:
        self.mock_login(mocked)
        self.org = MockedSalesforce()
        self.org.install(mocked)

    def count_writes(self, mocked: responses.RequestsMock, tmp_path: Path) -> int:
        return self.org.written()

    def written_messages(self, mocked: responses.RequestsMock, tmp_path: Path) -> list[str]:
        return self.org.written_messages()

    def rename_contact(self, mocked: responses.RequestsMock, customer_id: str, name: str) -> None:
        self.org.contact(customer_id)["LastName"] = name

    def contact_name(self, mocked: responses.RequestsMock, customer_id: str) -> str:
        return str(self.org.contact(customer_id)["LastName"])

    def mock_failure(self, mocked: responses.RequestsMock, *, status: int = 500, body: str | Exception = "",
                     headers: dict[str, str] | None = None) -> None:
        self.mock_login(mocked)
        mocked.get(f"{DATA}/query", json={"totalSize": 0, "done": True, "records": []}, headers=LIMIT)
        mocked.post(f"{DATA}/composite", status=status, body=body, headers=headers)

    def error_body(self, status: int) -> tuple[str, str]:
        code = {400: "JSON_PARSER_ERROR", 422: "INVALID_FIELD"}[status]
        return json.dumps([{"message": "Unexpected character ('}' (code 125)): was expecting double-quote",
                            "errorCode": code}]), code


class TestSalesforceJwtConformance(TestSalesforceConformance):
    """The same suite with OAuth 2.0 JWT bearer auth: the private key is the secret."""

    secrets: ClassVar[tuple[str, ...]] = (PRIVATE_KEY,)
    login_urls: ClassVar[tuple[str, ...]] = ("https://login.salesforce.com/services/oauth2/",)

    def build(self, http: requests.Session, tmp_path: Path) -> CrmConnector:
        return salesforce(http, instance_url=None, session_id=None, username="integration@acme.example",
                          consumer_key=CONSUMER_KEY, private_key=PRIVATE_KEY)

    def mock_login(self, mocked: responses.RequestsMock) -> None:
        mocked.post("https://login.salesforce.com/services/oauth2/token", json={
            "access_token": ACCESS_TOKEN, "scope": "api", "instance_url": INSTANCE,
            "id": "https://login.salesforce.com/id/00DR00000008oBTMAY/005R0000000IUUMIA4", "token_type": "Bearer"})


@pytest.fixture
def mocked() -> Any:
    with responses.RequestsMock(assert_all_requests_are_fired=True) as mock:
        yield mock


def sf_fields() -> dict[str, Any]:
    return {"contact.LastName": "Asha Rao", "case.Subject": f"SMS from {CUSTOMER_PHONE}", "case.Origin": "Phone",
            "case.Priority": "Medium", "case.Status": "New", "comment": "My order #1234 never arrived",
            "public": False}


def linked() -> MemoryLinkStore:
    links = MemoryLinkStore()
    links.put("customer", CUSTOMER_ID, CONTACT_ID)
    links.put("conversation", CONVERSATION_ID, CASE_ID)
    return links


def no_records() -> dict[str, Any]:
    return {"totalSize": 0, "done": True, "records": []}


def contact_records(*records: tuple[str, str | None]) -> dict[str, Any]:
    """A SOQL answer listing Contacts as (Id, Gateway_Customer_Id__c)."""
    return {"totalSize": len(records), "done": True, "records": [
        {"attributes": {"type": "Contact", "url": f"/services/data/v59.0/sobjects/Contact/{record_id}"},
         "Id": record_id, "Gateway_Customer_Id__c": external_id} for record_id, external_id in records]}


def mock_query(mocked: responses.RequestsMock, soql: str, answer: dict[str, Any]) -> responses.BaseResponse:
    return mocked.get(f"{DATA}/query", headers={**LIMIT, **JSON_CT}, json=answer,
                      match=[matchers.query_param_matcher({"q": soql}, strict_match=True)])


OWN = f"Gateway_Customer_Id__c = '{CUSTOMER_ID}'"
PHONE_MATCH = (f"SELECT Id, Gateway_Customer_Id__c FROM Contact WHERE {OWN} OR Phone = '{CUSTOMER_PHONE}' "
               f"OR MobilePhone = '{CUSTOMER_PHONE}' LIMIT 3")


# -- first message: one query and one composite call ----------------------------------------------------------------
def test_first_message_is_one_query_and_one_composite_call_with_references(mocked: responses.RequestsMock) -> None:
    item = delivery_item(crm="sf", fields=sf_fields())
    marker = f"\n\n{MARKER_PREFIX}{item.message.id}"
    match = mock_query(mocked, PHONE_MATCH, no_records())
    call = mocked.post(f"{DATA}/composite", headers=LIMIT, json=composite_answer(
        {**upsert_ok(CONTACT_ID, "Contact", True), "referenceId": "contact"},
        {**upsert_ok(CASE_ID, "Case", True), "referenceId": "case"},
        {"body": {"id": "00aR0000000AbCdIAK", "success": True, "errors": []},
         "httpHeaders": {"Location": "/services/data/v59.0/sobjects/CaseComment/00aR0000000AbCdIAK"},
         "httpStatusCode": 201, "referenceId": "message"}),
        match=[matchers.header_matcher({"Authorization": f"Bearer {SESSION_ID}"}),
               matchers.json_params_matcher({"allOrNone": True, "compositeRequest": [
                   {"method": "PATCH", "referenceId": "contact",
                    "url": f"/services/data/v59.0/sobjects/Contact/Gateway_Customer_Id__c/{CUSTOMER_ID}",
                    "body": {"LastName": "Asha Rao", "MobilePhone": CUSTOMER_PHONE}},
                   {"method": "PATCH", "referenceId": "case",
                    "url": f"/services/data/v59.0/sobjects/Case/Gateway_Conversation_Id__c/{CONVERSATION_ID}",
                    "body": {"Subject": f"SMS from {CUSTOMER_PHONE}", "Origin": "Phone", "Priority": "Medium",
                             "Status": "New", "ContactId": "@{contact.id}"}},
                   {"method": "POST", "referenceId": "message", "url": "/services/data/v59.0/sobjects/CaseComment",
                    "body": {"ParentId": "@{case.id}", "CommentBody": "My order #1234 never arrived" + marker,
                             "IsPublished": False}},
               ]}, strict_match=True)])
    links = MemoryLinkStore()
    connector = salesforce()

    result = connector.deliver(item, links)

    assert (result.operation, result.remote_id, result.calls) == ("case_created", CASE_ID, 2)
    assert (match.call_count, call.call_count) == (1, 1)
    assert links.get("customer", CUSTOMER_ID) == (CONTACT_ID, {})
    assert links.get("conversation", CONVERSATION_ID) == (CASE_ID, {"created": True})
    assert (connector.api.budget.used, connector.api.budget.total) == (18, 100000)


def test_next_message_on_a_linked_case_writes_only_the_comment(mocked: responses.RequestsMock) -> None:
    item = delivery_item(twilio_sms("Any news?", sid="SM" + "2" * 32), crm="sf", opened=False,
                         fields={"comment": "Any news?", "public": True})
    call = mocked.post(f"{DATA}/composite", headers=LIMIT, json=composite_answer(
        {"body": {"id": "00aR0000000AbCeIAK", "success": True, "errors": []}, "httpHeaders": {},
         "httpStatusCode": 201, "referenceId": "message"}))
    result = salesforce().deliver(item, linked())
    assert (result.operation, result.remote_id) == ("message_added", CASE_ID)
    assert sent(call.calls[0])["compositeRequest"] == [{
        "method": "POST", "referenceId": "message", "url": "/services/data/v59.0/sobjects/CaseComment",
        "body": {"ParentId": CASE_ID, "CommentBody": f"Any news?\n\n{MARKER_PREFIX}{item.message.id}",
                 "IsPublished": True}}]


def test_email_becomes_an_email_message(mocked: responses.RequestsMock) -> None:
    message = twilio_sms("The invoice is wrong").model_copy(update={
        "channel": ChannelType.EMAIL, "subject": "Invoice 2291",
        "thread": ThreadRef(message_id="<a1@example.com>"),
        "sender": Party(identifiers=(Identifier(kind=IdentifierKind.EMAIL, value="ada@example.com"),),
                        display_name="Ada Lovelace"),
        "recipients": (Party(identifiers=(Identifier(kind=IdentifierKind.EMAIL, value="help@acme.example"),)),)})
    item = delivery_item(message, crm="sf", fields={"comment": "The invoice is wrong"})
    call = mocked.post(f"{DATA}/composite", headers=LIMIT, json=composite_answer(
        {"body": {"id": "02sR0000000XyZaIAK", "success": True, "errors": []}, "httpHeaders": {},
         "httpStatusCode": 201, "referenceId": "message"}))
    salesforce(message_marker_field="Gateway_Message_Id__c").deliver(item, linked())
    assert sent(call.calls[0])["compositeRequest"][0] == {
        "method": "POST", "referenceId": "message", "url": "/services/data/v59.0/sobjects/EmailMessage",
        "body": {"ParentId": CASE_ID, "Subject": "Invoice 2291", "TextBody": "The invoice is wrong",
                 "Incoming": True, "Status": "0", "MessageDate": "2025-03-09T14:30:00Z",
                 "FromAddress": "ada@example.com", "FromName": "Ada Lovelace", "ToAddress": "help@acme.example",
                 "Gateway_Message_Id__c": message.id}}


def test_message_external_id_is_upserted_and_replays_need_no_lookup(mocked: responses.RequestsMock) -> None:
    org = MockedSalesforce()
    org.install(mocked, query=False)
    connector = salesforce(message_external_id_field="Gateway_Message_Id__c", match_existing_contacts=False)
    item = delivery_item(crm="sf", fields=sf_fields())
    links = MemoryLinkStore()
    connector.deliver(item, links)
    connector.deliver(replace(item, attempt=2), links)
    assert org.written() == 1
    assert not [c for c in mocked.calls if "/query" in c.request.url]
    urls = [s["url"] for c in mocked.calls for s in sent(c)["compositeRequest"]]
    assert urls[-1] == f"/services/data/v59.0/sobjects/CaseComment/Gateway_Message_Id__c/{item.message.id}"


def test_replay_with_marker_field_looks_it_up(mocked: responses.RequestsMock) -> None:
    org = MockedSalesforce()
    org.install(mocked)
    connector = salesforce(message_marker_field="Gateway_Message_Id__c", comment_object="Case_Message__c",
                           message_body_field="Body__c")
    item = delivery_item(crm="sf", fields=sf_fields())
    links = MemoryLinkStore()
    connector.deliver(item, links)
    result = connector.deliver(replace(item, attempt=2), links)
    assert result.operation == "already_written"
    assert org.written() == 0 and len(org.records["Case_Message__c"]) == 1
    soql = parse_qs(urlsplit(mocked.calls[-1].request.url).query)["q"][0]
    assert soql == f"SELECT Id FROM Case_Message__c WHERE Gateway_Message_Id__c = '{item.message.id}' LIMIT 1"


def test_replay_after_a_crash_before_linking_finds_the_case(mocked: responses.RequestsMock) -> None:
    org = MockedSalesforce()
    org.install(mocked)
    item = delivery_item(crm="sf", fields=sf_fields())
    salesforce().deliver(item, MemoryLinkStore())  # written, but the links were lost with the crash
    links = MemoryLinkStore()
    result = salesforce().deliver(replace(item, attempt=2), links)
    assert result.operation == "already_written"
    assert org.written() == 1
    assert links.get("conversation", CONVERSATION_ID)[0] == next(iter(org.records["Case"]))


# -- existing contacts --------------------------------------------------------------------------------------------
EXISTING = "003R000000K1qzZIAR"


def test_the_one_existing_contact_is_adopted_in_the_composite_call(mocked: responses.RequestsMock) -> None:
    item = replace(delivery_item(crm="sf", fields=sf_fields()), customer=CustomerView(
        CUSTOMER_ID, "Asha Rao", (("phone", CUSTOMER_PHONE), ("email", "asha@example.com"))))
    soql = (f"SELECT Id, Gateway_Customer_Id__c FROM Contact WHERE {OWN} OR Email = 'asha@example.com' "
            f"OR Phone = '{CUSTOMER_PHONE}' OR MobilePhone = '{CUSTOMER_PHONE}' LIMIT 3")
    mock_query(mocked, soql, contact_records((EXISTING, None)))
    call = mocked.post(f"{DATA}/composite", headers=LIMIT, json=composite_answer(
        {"body": None, "httpHeaders": {}, "httpStatusCode": 204, "referenceId": "contact"},
        {**upsert_ok(CASE_ID, "Case", True), "referenceId": "case"},
        {"body": {"id": "00aR0000000AbCdIAK", "success": True, "errors": []}, "httpHeaders": {},
         "httpStatusCode": 201, "referenceId": "message"}),
        match=[matchers.json_params_matcher({"allOrNone": True, "compositeRequest": [
            {"method": "PATCH", "referenceId": "contact", "url": f"/services/data/v59.0/sobjects/Contact/{EXISTING}",
             "body": {"Gateway_Customer_Id__c": CUSTOMER_ID}},
            {"method": "PATCH", "referenceId": "case",
             "url": f"/services/data/v59.0/sobjects/Case/Gateway_Conversation_Id__c/{CONVERSATION_ID}",
             "body": {"Subject": f"SMS from {CUSTOMER_PHONE}", "Origin": "Phone", "Priority": "Medium",
                      "Status": "New", "ContactId": EXISTING}},
            {"method": "POST", "referenceId": "message", "url": "/services/data/v59.0/sobjects/CaseComment",
             "body": {"ParentId": "@{case.id}",
                      "CommentBody": f"My order #1234 never arrived\n\n{MARKER_PREFIX}{item.message.id}",
                      "IsPublished": False}},
        ]}, strict_match=True)])
    links = MemoryLinkStore()

    result = salesforce().deliver(item, links)

    assert (result.operation, result.remote_id, result.calls) == ("case_created", CASE_ID, 2)
    assert call.call_count == 1
    assert links.get("customer", CUSTOMER_ID) == (EXISTING, {"adopted": True})

    # the next message of this customer neither looks the contact up again nor writes it
    follow_up = mocked.post(f"{DATA}/composite", headers=LIMIT, json=composite_answer(
        {"body": {"id": "00aR0000000AbCeIAK", "success": True, "errors": []}, "httpHeaders": {},
         "httpStatusCode": 201, "referenceId": "message"}))
    second = delivery_item(twilio_sms("Any news?", sid="SM" + "2" * 32, inbox_id=2), crm="sf", outbox_id=2,
                           fields={"comment": "Any news?"})
    assert salesforce().deliver(second, links).calls == 1
    assert [s["referenceId"] for s in sent(follow_up.calls[0])["compositeRequest"]] == ["message"]


def test_several_existing_contacts_adopt_none(mocked: responses.RequestsMock,
                                             caplog: pytest.LogCaptureFixture) -> None:
    mock_query(mocked, PHONE_MATCH, contact_records((EXISTING, None), ("003R000000K1qzYIAR", None)))
    call = mocked.post(f"{DATA}/composite", headers=LIMIT, json=composite_answer(
        {**upsert_ok(CONTACT_ID, "Contact", True), "referenceId": "contact"},
        {**upsert_ok(CASE_ID, "Case", True), "referenceId": "case"},
        {"body": {"id": "00aR0000000AbCdIAK", "success": True, "errors": []}, "httpHeaders": {},
         "httpStatusCode": 201, "referenceId": "message"}))
    links = MemoryLinkStore()

    with caplog.at_level(logging.INFO, logger="connectors.salesforce"):
        salesforce().deliver(delivery_item(crm="sf", fields=sf_fields()), links)

    contact = sent(call.calls[0])["compositeRequest"][0]
    assert (contact["method"], contact["url"]) == (
        "PATCH", f"/services/data/v59.0/sobjects/Contact/Gateway_Customer_Id__c/{CUSTOMER_ID}")
    assert links.get("customer", CUSTOMER_ID) == (CONTACT_ID, {})
    assert "matches 2 Salesforce Contact records" in caplog.text
    assert CUSTOMER_PHONE not in caplog.text


def test_another_customers_contact_is_not_adopted(mocked: responses.RequestsMock) -> None:
    mock_query(mocked, PHONE_MATCH, contact_records((EXISTING, "another-customer-id")))
    call = mocked.post(f"{DATA}/composite", headers=LIMIT, json=composite_answer(
        {**upsert_ok(CONTACT_ID, "Contact", True), "referenceId": "contact"},
        {**upsert_ok(CASE_ID, "Case", True), "referenceId": "case"},
        {"body": {"id": "00aR0000000AbCdIAK", "success": True, "errors": []}, "httpHeaders": {},
         "httpStatusCode": 201, "referenceId": "message"}))
    salesforce().deliver(delivery_item(crm="sf", fields=sf_fields()), MemoryLinkStore())
    assert sent(call.calls[0])["compositeRequest"][0]["url"].endswith(f"/Gateway_Customer_Id__c/{CUSTOMER_ID}")


def test_a_contact_already_holding_the_customer_id_is_linked_not_upserted(mocked: responses.RequestsMock) -> None:
    """Written by an attempt whose answer was lost (for this conversation or another): upserting it again would
    put the first write's body back over an agent's edits."""
    mock_query(mocked, PHONE_MATCH, contact_records((EXISTING, CUSTOMER_ID)))
    call = mocked.post(f"{DATA}/composite", headers=LIMIT, json=composite_answer(
        {**upsert_ok(CASE_ID, "Case", True), "referenceId": "case"},
        {"body": {"id": "00aR0000000AbCdIAK", "success": True, "errors": []}, "httpHeaders": {},
         "httpStatusCode": 201, "referenceId": "message"}))
    links = MemoryLinkStore()
    salesforce().deliver(delivery_item(crm="sf", fields=sf_fields()), links)
    subrequests = sent(call.calls[0])["compositeRequest"]
    assert [s["referenceId"] for s in subrequests] == ["case", "message"]
    assert subrequests[0]["body"]["ContactId"] == EXISTING
    assert links.get("customer", CUSTOMER_ID) == (EXISTING, {"recovered": True})


def test_match_query_escapes_quotes_and_backslashes(mocked: responses.RequestsMock) -> None:
    item = replace(delivery_item(crm="sf", fields=sf_fields()), customer=CustomerView(
        CUSTOMER_ID, None, (("email", "o'brien\\x@example.com"), ("whatsapp", CUSTOMER_PHONE))))
    soql = (f"SELECT Id, Gateway_Customer_Id__c FROM Contact WHERE {OWN} OR Email = 'o\\'brien\\\\x@example.com' "
            "LIMIT 3")
    match = mock_query(mocked, soql, no_records())
    mocked.post(f"{DATA}/composite", headers=LIMIT, json=composite_answer(
        {**upsert_ok(CONTACT_ID, "Contact", True), "referenceId": "contact"},
        {**upsert_ok(CASE_ID, "Case", True), "referenceId": "case"},
        {"body": {"id": "00aR0000000AbCdIAK", "success": True, "errors": []}, "httpHeaders": {},
         "httpStatusCode": 201, "referenceId": "message"}))
    salesforce().deliver(item, MemoryLinkStore())
    assert match.call_count == 1


def test_match_query_per_contact_object() -> None:
    item = replace(delivery_item(crm="sf"), customer=CustomerView(
        CUSTOMER_ID, None, (("email", "a@example.com"), ("email", "b@example.com"), ("phone", CUSTOMER_PHONE))))
    assert salesforce(contact_object="Account").contact_query(item, match=True) == (
        f"SELECT Id, Gateway_Customer_Id__c FROM Account WHERE {OWN} OR (IsPersonAccount = true AND ("
        f"PersonEmail IN ('a@example.com','b@example.com') OR Phone = '{CUSTOMER_PHONE}' "
        f"OR PersonMobilePhone = '{CUSTOMER_PHONE}')) LIMIT 3")
    assert salesforce(contact_object="Lead").contact_query(item, match=True) == (
        f"SELECT Id, Gateway_Customer_Id__c FROM Lead WHERE {OWN} OR (IsConverted = false AND ("
        f"Email IN ('a@example.com','b@example.com') OR Phone = '{CUSTOMER_PHONE}' "
        f"OR MobilePhone = '{CUSTOMER_PHONE}')) LIMIT 3")
    assert salesforce().contact_query(item, match=False) == (
        f"SELECT Id, Gateway_Customer_Id__c FROM Contact WHERE {OWN} LIMIT 3")
    slack_only = replace(item, customer=CustomerView(CUSTOMER_ID, None, (("slack", "U024BE7LH"),)))
    assert not salesforce().can_match(slack_only)
    assert not salesforce(contact_object="Member__c").can_match(item)
    assert salesforce(contact_object="Lead").can_match(item)


def test_matching_can_be_turned_off(mocked: responses.RequestsMock) -> None:
    call = mocked.post(f"{DATA}/composite", headers=LIMIT, json=composite_answer(
        {**upsert_ok(CONTACT_ID, "Contact", True), "referenceId": "contact"},
        {**upsert_ok(CASE_ID, "Case", True), "referenceId": "case"},
        {"body": {"id": "00aR0000000AbCdIAK", "success": True, "errors": []}, "httpHeaders": {},
         "httpStatusCode": 201, "referenceId": "message"}))
    result = salesforce(match_existing_contacts=False).deliver(delivery_item(crm="sf", fields=sf_fields()),
                                                               MemoryLinkStore())
    assert (result.calls, call.call_count, len(mocked.calls)) == (1, 1, 1)


# -- errors ---------------------------------------------------------------------------------------------------------
def test_validation_error_names_the_mapped_field(mocked: responses.RequestsMock) -> None:
    mocked.post(f"{DATA}/composite", headers=LIMIT, json=composite_answer(
        sub_failure("contact", halted()),
        sub_failure("case", [{"message": "Subject: data value too large: 300 characters (max length=255)",
                              "errorCode": "STRING_TOO_LONG", "fields": ["Subject"]}]),
        sub_failure("message", halted())))
    with pytest.raises(PermanentError) as caught:
        salesforce(match_existing_contacts=False).deliver(delivery_item(crm="sf", fields=sf_fields()),
                                                          MemoryLinkStore())
    assert (caught.value.code, caught.value.field) == ("STRING_TOO_LONG", "case.Subject")


def test_several_contacts_with_the_external_id_is_permanent(mocked: responses.RequestsMock) -> None:
    mocked.post(f"{DATA}/composite", headers=LIMIT, json=composite_answer(
        {"body": [f"/services/data/v59.0/sobjects/Contact/{CONTACT_ID}",
                  "/services/data/v59.0/sobjects/Contact/003R000000K1qzYIAR"],
         "httpHeaders": {}, "httpStatusCode": 300, "referenceId": "contact"},
        sub_failure("case", halted()), sub_failure("message", halted())))
    with pytest.raises(PermanentError) as caught:
        salesforce(match_existing_contacts=False).deliver(delivery_item(crm="sf", fields=sf_fields()),
                                                          MemoryLinkStore())
    assert caught.value.code == "300"


def test_duplicate_rule_match_is_adopted(mocked: responses.RequestsMock) -> None:
    matched = "003R000000K1qzZIAR"
    duplicate = [{"message": "Use one of these records?", "errorCode": "DUPLICATES_DETECTED", "fields": [],
                  "duplicateResult": {
                      "allowSave": False, "duplicateRule": "Standard_Rule_for_Contacts_with_Duplicate_Leads",
                      "duplicateRuleEntityType": "Contact", "errorMessage": "Use one of these records?",
                      "matchResults": [{"entityType": "Contact", "errors": [], "matchEngine": "FuzzyMatchEngine",
                                        "matchRecords": [{"additionalInformation": [], "fieldDiffs": [],
                                                          "matchConfidence": 100.0,
                                                          "record": {"attributes": {"type": "Contact", "url":
                                                              f"/services/data/v59.0/sobjects/Contact/{matched}"},
                                                              "Id": matched}}],
                                        "rule": "Standard_Contact_Match_Rule_v1_1", "size": 1, "success": True}]}}]
    mocked.post(f"{DATA}/composite", headers=LIMIT, json=composite_answer(
        sub_failure("contact", duplicate), sub_failure("case", halted()), sub_failure("message", halted())))
    stamp = mocked.patch(f"{DATA}/sobjects/Contact/{matched}", status=204, headers=LIMIT, match=[
        matchers.json_params_matcher({"Gateway_Customer_Id__c": CUSTOMER_ID}, strict_match=True)])
    second = mocked.post(f"{DATA}/composite", headers=LIMIT, json=composite_answer(
        {**upsert_ok(CASE_ID, "Case", True), "referenceId": "case"},
        {"body": {"id": "00aR0000000AbCdIAK", "success": True, "errors": []}, "httpHeaders": {},
         "httpStatusCode": 201, "referenceId": "message"}))
    links = MemoryLinkStore()

    result = salesforce(match_existing_contacts=False).deliver(delivery_item(crm="sf", fields=sf_fields()), links)

    assert (result.operation, result.calls) == ("case_created", 3)
    assert stamp.call_count == 1
    assert links.get("customer", CUSTOMER_ID) == (matched, {"adopted": True})
    assert sent(second.calls[0])["compositeRequest"][0]["body"]["ContactId"] == matched


def test_a_deleted_case_is_upserted_again_by_its_external_id(mocked: responses.RequestsMock) -> None:
    """The linked Case is gone: the comment is refused, nothing is written, and the write goes again with the Case
    upserted by the conversation id."""
    new_case = "500R000000B2cDfIAF"
    deleted = [{"message": "entity is deleted", "errorCode": "ENTITY_IS_DELETED", "fields": []}]
    first = mocked.post(f"{DATA}/composite", headers=LIMIT, json=composite_answer(sub_failure("message", deleted)))
    second = mocked.post(f"{DATA}/composite", headers=LIMIT, json=composite_answer(
        {**upsert_ok(new_case, "Case", True), "referenceId": "case"},
        {"body": {"id": "00aR0000000AbCfIAK", "success": True, "errors": []}, "httpHeaders": {},
         "httpStatusCode": 201, "referenceId": "message"}))
    links = linked()

    result = salesforce().deliver(delivery_item(crm="sf", fields=sf_fields()), links)

    assert (result.operation, result.remote_id, result.calls) == ("case_created", new_case, 2)
    assert (first.call_count, second.call_count) == (1, 1)
    assert [r["referenceId"] for r in sent(mocked.calls[1])["compositeRequest"]] == ["case", "message"]
    assert links.get("conversation", CONVERSATION_ID) == (new_case, {"created": True})


def test_expired_session_logs_in_again_once(mocked: responses.RequestsMock) -> None:
    logins = iter([SOAP_LOGIN, SOAP_LOGIN.replace(ACCESS_TOKEN, ACCESS_TOKEN + "-2")])
    mocked.add_callback("POST", "https://login.salesforce.com/services/Soap/u/59.0",
                        callback=lambda request: (200, {"Content-Type": "text/xml"}, next(logins)))
    expired = [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]
    mocked.post(f"{DATA}/composite", status=401, json=expired,
                match=[matchers.header_matcher({"Authorization": f"Bearer {ACCESS_TOKEN}"})])
    renewed = mocked.post(f"{DATA}/composite", headers=LIMIT, json=composite_answer(
        {"body": {"id": "00aR0000000AbCdIAK", "success": True, "errors": []}, "httpHeaders": {},
         "httpStatusCode": 201, "referenceId": "message"}),
        match=[matchers.header_matcher({"Authorization": f"Bearer {ACCESS_TOKEN}-2"})])
    connector = salesforce(instance_url=None, session_id=None, username="integration@acme.example",
                           password=PASSWORD, security_token=SECURITY_TOKEN)

    result = connector.deliver(delivery_item(crm="sf", fields=sf_fields()), linked())

    assert result.operation == "message_added"
    assert renewed.call_count == 1
    login_bodies = [c.request.body for c in mocked.calls if "/Soap/u/" in c.request.url]
    assert len(login_bodies) == 2
    assert f"<n1:password>{PASSWORD}{SECURITY_TOKEN}</n1:password>" in login_bodies[0]


def test_expired_configured_session_waits_for_a_new_one(mocked: responses.RequestsMock) -> None:
    mocked.post(f"{DATA}/composite", status=401,
                json=[{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}])
    with pytest.raises(RetryableError) as caught:
        salesforce().deliver(delivery_item(crm="sf", fields=sf_fields()), linked())
    assert caught.value.code == "INVALID_SESSION_ID"
    assert SESSION_ID not in str(caught.value)


# -- API budget -----------------------------------------------------------------------------------------------------
def test_budget_below_the_reserve_pauses_until_the_window_frees(mocked: responses.RequestsMock) -> None:
    org = MockedSalesforce(usage="api-usage=95001/100000")
    org.install(mocked, query=False)
    clock = Clock()
    connector = salesforce(clock=clock, api_reserve_percent=5, budget_pause_seconds=600,
                           match_existing_contacts=False)
    connector.deliver(delivery_item(crm="sf", fields=sf_fields()), MemoryLinkStore())
    assert connector.api.budget.remaining == 4999
    calls = len(mocked.calls)

    second = delivery_item(twilio_sms("Any news?", sid="SM" + "2" * 32, inbox_id=2), crm="sf", outbox_id=2)
    with pytest.raises(RetryableError) as caught:
        connector.deliver(second, MemoryLinkStore())
    assert caught.value.code == "API_BUDGET"
    assert caught.value.retry_after == 600
    assert len(mocked.calls) == calls, "no API call is spent while paused"

    clock.now += 601
    org.usage = "api-usage=60000/100000"
    connector.deliver(second, MemoryLinkStore())
    assert org.written() == 2
    connector.api.check_budget()


def test_request_limit_exceeded_pauses_delivery(mocked: responses.RequestsMock) -> None:
    mocked.post(f"{DATA}/composite", status=403, headers={"Sforce-Limit-Info": "api-usage=100012/100000"},
                json=[{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}])
    clock = Clock()
    connector = salesforce(clock=clock, budget_pause_seconds=300, match_existing_contacts=False)
    with pytest.raises(RetryableError) as caught:
        connector.deliver(delivery_item(crm="sf", fields=sf_fields()), MemoryLinkStore())
    assert (caught.value.code, caught.value.retry_after) == ("REQUEST_LIMIT_EXCEEDED", 300)
    clock.now += 100
    with pytest.raises(RetryableError) as caught:
        connector.deliver(delivery_item(crm="sf", fields=sf_fields()), MemoryLinkStore())
    assert caught.value.retry_after == 200
    assert len(mocked.calls) == 1


def test_a_pause_stops_every_connector_sharing_the_limiter(mocked: responses.RequestsMock) -> None:
    clock = Clock()
    shared = limiters(clock)
    first = salesforce(clock=clock, limiter=shared, budget_pause_seconds=300, match_existing_contacts=False)
    other = salesforce(clock=clock, limiter=shared, budget_pause_seconds=300, match_existing_contacts=False)
    mocked.post(f"{DATA}/composite", status=403, headers={"Sforce-Limit-Info": "api-usage=100012/100000"},
                json=[{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}])
    with pytest.raises(RetryableError):
        first.deliver(delivery_item(crm="sf", fields=sf_fields()), MemoryLinkStore())
    clock.now += 100

    for connector in (first, other):
        with pytest.raises(RetryableError) as caught:
            connector.deliver(delivery_item(crm="sf", fields=sf_fields()), linked())
        assert caught.value.retry_after == 200
    assert caught.value.code == "API_BUDGET"
    assert len(mocked.calls) == 1, "no API call is spent while paused"

    clock.now += 201
    mocked.replace("POST", f"{DATA}/composite", headers=LIMIT, json=composite_answer(
        {"body": {"id": "00aR0000000AbCdIAK", "success": True, "errors": []}, "httpHeaders": {},
         "httpStatusCode": 201, "referenceId": "message"}))
    assert other.deliver(delivery_item(crm="sf", fields=sf_fields()), linked()).operation == "message_added"


def test_connectors_with_separate_limiters_do_not_share_a_pause(mocked: responses.RequestsMock) -> None:
    clock = Clock()
    first, other = salesforce(clock=clock), salesforce(clock=clock)
    first.api.pause("REQUEST_LIMIT_EXCEEDED: TotalRequests Limit exceeded.")
    with pytest.raises(RetryableError):
        first.api.check_budget()
    other.api.check_budget()


# -- auth, config, online check -------------------------------------------------------------------------------------
SOAP_LOGIN = f"""<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns="urn:partner.soap.sforce.com"
  xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><loginResponse><result>
<metadataServerUrl>{INSTANCE}/services/Soap/m/59.0/00DR00000008oBT</metadataServerUrl>
<passwordExpired>false</passwordExpired><sandbox>false</sandbox>
<serverUrl>{INSTANCE}/services/Soap/u/59.0/00DR00000008oBT</serverUrl>
<sessionId>{ACCESS_TOKEN}</sessionId><userId>005R0000000IUUMIA4</userId>
</result></loginResponse></soapenv:Body></soapenv:Envelope>"""


def test_jwt_bearer_login_posts_a_signed_assertion(mocked: responses.RequestsMock, tmp_path: Path) -> None:
    import jwt

    key_file = tmp_path / "server.key"
    key_file.write_text(PRIVATE_KEY)
    token = mocked.post("https://test.salesforce.com/services/oauth2/token", json={
        "access_token": ACCESS_TOKEN, "scope": "api", "instance_url": INSTANCE, "token_type": "Bearer",
        "id": "https://test.salesforce.com/id/00DR00000008oBTMAY/005R0000000IUUMIA4"})
    mocked.get(f"{DATA}/limits", headers=LIMIT, json={"DailyApiRequests": {"Max": 100000, "Remaining": 99982}},
               match=[matchers.header_matcher({"Authorization": f"Bearer {ACCESS_TOKEN}"})])
    config = SalesforceConfig(domain="test", username="integration@acme.example", consumer_key=CONSUMER_KEY,
                              private_key_file="server.key")
    connector = SalesforceCrm("sf", config, ConnectorContext(http=requests.Session(), base_dir=tmp_path))

    assert connector.check_online() == "daily API requests: 99982 of 100000 left"

    form = parse_qs(token.calls[0].request.body)
    assert form["grant_type"] == ["urn:ietf:params:oauth:grant-type:jwt-bearer"]
    public = serialization.load_pem_private_key(PRIVATE_KEY.encode(), None).public_key()
    claims = jwt.decode(form["assertion"][0], public, algorithms=["RS256"], audience="https://test.salesforce.com")
    assert (claims["iss"], claims["sub"]) == (CONSUMER_KEY, "integration@acme.example")


def test_failed_login_keeps_messages_waiting(mocked: responses.RequestsMock) -> None:
    mocked.post("https://login.salesforce.com/services/oauth2/token", status=400,
                json={"error": "invalid_grant", "error_description": "user hasn't approved this consumer"})
    connector = salesforce(instance_url=None, session_id=None, username="integration@acme.example",
                           consumer_key=CONSUMER_KEY, private_key=PRIVATE_KEY)
    with pytest.warns(UserWarning), pytest.raises(RetryableError) as caught:
        connector.deliver(delivery_item(crm="sf"), MemoryLinkStore())
    assert caught.value.code == "invalid_grant"


@pytest.mark.parametrize("settings", [
    {"instance_url": INSTANCE, "session_id": SESSION_ID, "username": "u@example.com", "password": "p",
     "security_token": "t"},
    {"username": "u@example.com", "password": "p"},
    {"username": "u@example.com", "consumer_key": CONSUMER_KEY},
    {"session_id": SESSION_ID},
    {},
])
def test_config_needs_exactly_one_complete_auth(settings: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        SalesforceConfig(**settings)


def test_lead_and_person_account_link_fields() -> None:
    assert salesforce(contact_object="Lead").config.link_field is None
    assert salesforce(contact_object="Account").config.link_field == "AccountId"
    assert salesforce(contact_object="Lead", case_contact_field="Lead__c").config.link_field == "Lead__c"


@pytest.mark.parametrize("version", ["45.0", "20.0", "9.0"])
def test_api_versions_before_46_are_refused_with_the_reason(write_config: Callable[..., Path], version: str) -> None:
    """Before 46.0 an upsert does not say whether it created its record (``created``)."""
    path = write_config(f"""
        crms:
          sf:
            type: salesforce
            instance_url: {INSTANCE}
            session_id: "{SESSION_ID}"
            api_version: "{version}"
    """)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    (issue,) = caught.value.issues
    assert (issue.line, issue.path) == (7, "crms.sf.api_version")
    assert f"{version} is too old: use 46.0 or later" in issue.message


@pytest.mark.parametrize("version", ["46.0", "59.0", "62.0"])
def test_api_versions_from_46_are_accepted(version: str) -> None:
    assert salesforce(api_version=version).config.api_version == version


# -- a composite call carried out, its answer lost ------------------------------------------------------------------
def lost_answer_then_next_message(org: MockedSalesforce, mocked: responses.RequestsMock, connector: SalesforceCrm,
                                  links: MemoryLinkStore, meanwhile: Callable[[], None] = lambda: None) -> None:
    """The first message's composite call is carried out and its answer lost; ``meanwhile`` runs (an agent at
    work), the message is retried, then the customer's next message is delivered."""
    first = delivery_item(crm="sf")
    lost = LostAnswers(mocked)
    with pytest.raises(RetryableError):
        connector.deliver(first, links)
    assert lost.lost == [f"POST {DATA}/composite"]
    meanwhile()
    connector.deliver(replace(first, attempt=2), links)
    connector.deliver(delivery_item(twilio_sms("Any news?", sid="SM" + "2" * 32, inbox_id=2), crm="sf",
                                    outbox_id=2, opened=False), links)


def contact_subrequests(mocked: responses.RequestsMock) -> list[dict[str, Any]]:
    return [sub for call in mocked.calls if call.request.url == f"{DATA}/composite"
            for sub in sent(call)["compositeRequest"] if sub["referenceId"] == "contact"]


def test_an_adopted_record_keeps_its_own_last_name_after_a_lost_answer(mocked: responses.RequestsMock) -> None:
    org = MockedSalesforce()
    org.install(mocked)
    org.records["Contact"] = {EXISTING: {"Id": EXISTING, "LastName": "Okafor", "MobilePhone": CUSTOMER_PHONE}}
    links = MemoryLinkStore()

    lost_answer_then_next_message(org, mocked, salesforce(), links)

    assert org.records["Contact"] == {EXISTING: {"Id": EXISTING, "LastName": "Okafor", "MobilePhone": CUSTOMER_PHONE,
                                                 "Gateway_Customer_Id__c": CUSTOMER_ID}}
    assert links.get("customer", CUSTOMER_ID) == (EXISTING, {"recovered": True})
    # the adopting PATCH (our id only) is the one contact write ever sent
    assert contact_subrequests(mocked) == [{"method": "PATCH", "referenceId": "contact", "body": {
        "Gateway_Customer_Id__c": CUSTOMER_ID}, "url": f"/services/data/v59.0/sobjects/Contact/{EXISTING}"}]
    assert len(org.records["CaseComment"]) == 2


@pytest.mark.parametrize("settings", [
    {},
    {"match_existing_contacts": False},
    {"message_external_id_field": "Gateway_Message_Id__c"},
    {"match_existing_contacts": False, "message_marker_field": "Gateway_Message_Id__c"},
])
def test_after_a_lost_answer_agents_edits_to_the_contact_and_case_survive(
        mocked: responses.RequestsMock, settings: dict[str, Any]) -> None:
    org = MockedSalesforce()
    org.install(mocked)
    links = MemoryLinkStore()

    def agent_edits() -> None:
        org.contact(CUSTOMER_ID)["LastName"] = "Asha Rao"
        (case,) = org.records["Case"].values()
        case["Status"] = "Working"

    lost_answer_then_next_message(org, mocked, salesforce(**settings), links, agent_edits)

    (contact,) = org.records["Contact"].values()
    (case,) = org.records["Case"].values()
    assert (contact["LastName"], case["Status"]) == ("Asha Rao", "Working")
    assert links.get("customer", CUSTOMER_ID) == (contact["Id"], {"recovered": True})
    assert links.get("conversation", CONVERSATION_ID) == (case["Id"], {"recovered": True})
    assert len(contact_subrequests(mocked)) == 1
    assert len(org.records["CaseComment"]) == 2
