"""A Salesforce org behind ``responses`` that answers SOQL by evaluating it, for the reply-polling tests.

It extends the composite/upsert org of ``tests/connectors/test_salesforce.py``: every record it creates is stamped
with ``CreatedById`` (the integration user), ``CreatedDate`` and ``SystemModstamp`` (the org's clock), and the query
resource evaluates the WHERE clause the connector sends (AND/OR, parentheses, ``= != > >= < <=``, ``IN``/``NOT IN``
lists, an ``IN (SELECT Id FROM ...)`` semi-join, dateTime literals), ``ORDER BY`` and ``LIMIT``, and answers with
the documented shape: ``{totalSize, done, records: [{attributes: {type, url}, ...}], nextRecordsUrl}`` with
relationship fields (``CreatedBy.Name``) as nested records. dateTime values are serialised as Salesforce does
(``2026-11-29T10:00:00.000+0000``). ``batch_size`` cuts an answer short (``done: false`` and a
``nextRecordsUrl``), as Salesforce may for rows with large text fields.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import responses

from tests.connectors.test_salesforce import DATA, JSON_CT, MockedSalesforce

INSTANCE = DATA.split("/services/")[0]
INTEGRATION_USER = "005R0000000IUUMIA4"
AGENT_USER, AGENT_NAME = "005R0000000AgntIAC", "Mira Okafor"
ORG_ID = "00DR00000008oBTMAY"
_TOKEN = re.compile(r"\s*(?:('(?:[^'\\]|\\.)*')|(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d))"
                    r"|(!=|>=|<=|=|>|<|\(|\)|,)|([\w.]+))")


def sf_datetime(moment: datetime) -> str:
    """A dateTime as the REST API serialises it."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000+0000")


def tokens(text: str) -> list[str]:
    found, position = [], 0
    while position < len(text.rstrip()):
        match = _TOKEN.match(text, position)
        assert match and match.end() > position, f"cannot read SOQL at: {text[position:]!r}"
        found.append(next(group for group in match.groups() if group is not None))
        position = match.end()
    return found


def value_of(token: str) -> Any:
    if token.startswith("'"):
        return re.sub(r"\\(.)", r"\1", token[1:-1])
    if re.fullmatch(r"\d{4}-\d\d-\d\dT.*", token):
        return datetime.fromisoformat(token.replace("Z", "+00:00"))
    return {"true": True, "false": False, "null": None}.get(token.lower(), token)


class Where:
    """A recursive-descent reader of a SOQL condition, evaluated against one record."""

    def __init__(self, org: ReplyOrg, parts: list[str]) -> None:
        self.org, self.parts, self.at = org, parts, 0

    def peek(self) -> str | None:
        return self.parts[self.at] if self.at < len(self.parts) else None

    def take(self, expected: str | None = None) -> str:
        token = self.parts[self.at]
        assert expected is None or token.upper() == expected, (expected, token, self.parts)
        self.at += 1
        return token

    def expression(self, record: dict[str, Any]) -> bool:
        result = self.conjunction(record)
        while (self.peek() or "").upper() == "OR":
            self.take()
            result = self.conjunction(record) or result
        return result

    def conjunction(self, record: dict[str, Any]) -> bool:
        result = self.term(record)
        while (self.peek() or "").upper() == "AND":
            self.take()
            result = self.term(record) and result
        return result

    def term(self, record: dict[str, Any]) -> bool:
        if self.peek() == "(":
            self.take()
            result = self.expression(record)
            self.take(")")
            return result
        name = self.take()
        actual = self.org.field(record, name)
        operator = self.take().upper()
        if operator == "NOT":
            self.take("IN")
            return actual not in self.values()
        if operator == "IN":
            return actual in self.values()
        expected = value_of(self.take())
        if isinstance(actual, str) and isinstance(expected, datetime):
            actual = datetime.fromisoformat(actual)
        return {"=": actual == expected, "!=": actual != expected}.get(operator) if operator in ("=", "!=") \
            else actual is not None and {">": actual > expected, ">=": actual >= expected,
                                         "<": actual < expected, "<=": actual <= expected}[operator]

    def values(self) -> set[Any]:
        self.take("(")
        if (self.peek() or "").upper() == "SELECT":
            start = self.at
            depth = 1
            while depth:
                token = self.take()
                depth += {"(": 1, ")": -1}.get(token, 0)
            return {r["Id"] for r in self.org.select(" ".join(self.parts[start:self.at - 1]))}
        found = set()
        while self.peek() != ")":
            found.add(value_of(self.take()))
            if self.peek() == ",":
                self.take()
        self.take(")")
        return found


class ReplyOrg(MockedSalesforce):
    """The org: records by object, users by id, a clock for stamps, and every SOQL query received."""

    def __init__(self, usage: str = "api-usage=18/100000") -> None:
        super().__init__(usage)
        self.now = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
        self.users = {INTEGRATION_USER: "Gateway Integration", AGENT_USER: AGENT_NAME}
        self.queries: list[str] = []
        self.batch_size: int | None = None

    def install(self, mocked: responses.RequestsMock, *, query: bool = True) -> None:
        super().install(mocked, query=False)
        mocked.add_callback("GET", re.compile(rf"{re.escape(DATA)}/query\?.*"), callback=self.query)
        mocked.add_callback("POST", f"{DATA}/sobjects/CaseComment", callback=self.insert_comment)
        mocked.get(f"{INSTANCE}/services/oauth2/userinfo", json={
            "sub": f"https://login.salesforce.com/id/{ORG_ID}/{INTEGRATION_USER}", "user_id": INTEGRATION_USER,
            "organization_id": ORG_ID, "preferred_username": "integration@acme.example", "name": "Gateway Integration",
            "active": True, "user_type": "STANDARD"}, headers=JSON_CT)

    def apply(self, method: str, url: str, body: dict[str, Any]) -> dict[str, Any]:
        answer = super().apply(method, url, body)
        obj = url.split("/sobjects/", 1)[1].split("/")[0]
        record = self.records[obj][answer["body"]["id"]]
        record.setdefault("CreatedById", INTEGRATION_USER)
        record.setdefault("CreatedDate", sf_datetime(self.now))
        record["SystemModstamp"] = sf_datetime(self.now)
        return answer

    def insert_comment(self, request: Any) -> tuple[int, dict[str, str], str]:
        answer = self.apply("POST", "/sobjects/CaseComment", json.loads(request.body))
        return 201, self.headers(), json.dumps(answer["body"])

    def add(self, obj: str, *, by: str = AGENT_USER, created: datetime | None = None, **fields: Any) -> str:
        """A record written in Salesforce by someone (an agent by default), stamped now."""
        record_id = self.new_id(obj)
        self.records.setdefault(obj, {})[record_id] = {
            "Id": record_id, "CreatedById": by, "CreatedDate": sf_datetime(created or self.now),
            "SystemModstamp": sf_datetime(self.now), **fields}
        return record_id

    def field(self, record: dict[str, Any], name: str) -> Any:
        if name == "CreatedBy.Name":
            return self.users.get(record.get("CreatedById", ""))
        return record.get(name)

    def project(self, obj: str, record: dict[str, Any], columns: list[str]) -> dict[str, Any]:
        url = f"/services/data/v59.0/sobjects/{obj}/{record['Id']}"
        out: dict[str, Any] = {"attributes": {"type": obj, "url": url}}
        for column in columns:
            if column == "CreatedBy.Name":
                user = record.get("CreatedById")
                out["CreatedBy"] = {"attributes": {"type": "User", "url": f"/services/data/v59.0/sobjects/User/{user}"},
                                    "Name": self.users.get(user or "")}
            else:
                out[column] = record.get(column)
        return out

    def select(self, soql: str) -> list[dict[str, Any]]:
        """The records a query selects, in its order and within its LIMIT (projected)."""
        match = re.fullmatch(r"SELECT (.+?) FROM (\w+)(?: WHERE (.+?))?(?: ORDER BY (.+?))?(?: LIMIT (\d+))?", soql)
        assert match, soql
        columns, obj, where, order, limit = match.groups()
        found = [r for r in self.records.get(obj, {}).values()
                 if where is None or self._matches(r, where)]
        for term in reversed([t.strip().split() for t in (order or "").split(",") if t.strip()]):
            found.sort(key=lambda r, name=term[0]: self.field(r, name) or "",
                       reverse=len(term) > 1 and term[1].upper() == "DESC")
        found = found[:int(limit)] if limit else found
        names = [c.strip() for c in columns.split(",")]
        return [self.project(obj, r, names) for r in found]

    def _matches(self, record: dict[str, Any], where: str) -> bool:
        reader = Where(self, tokens(where))
        result = reader.expression(record)
        assert reader.peek() is None, f"unread SOQL: {reader.parts[reader.at:]}"
        return result

    def query(self, request: Any) -> tuple[int, dict[str, str], str]:
        soql = parse_qs(urlsplit(request.url).query)["q"][0]
        self.queries.append(soql)
        if soql.startswith("SELECT Id, Gateway_Customer_Id__c FROM Contact"):
            return super().query(request)  # the delivery's contact match
        records = self.select(soql)
        answer: dict[str, Any] = {"totalSize": len(records), "done": True, "records": records}
        if self.batch_size is not None and len(records) > self.batch_size:
            answer.update(done=False, records=records[:self.batch_size],
                          nextRecordsUrl=f"/services/data/v59.0/query/01gR0000000t7ZqIAI-{self.batch_size}")
        return 200, self.headers(), json.dumps(answer)

    def comments(self) -> Iterator[dict[str, Any]]:
        yield from self.records.get("CaseComment", {}).values()
