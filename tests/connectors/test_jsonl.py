"""The jsonl CRM: the conformance suite, and what a written record holds."""

from __future__ import annotations

import contextlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import requests
import responses

from connectors.jsonl import JsonlConfig, JsonlCrm
from gateway.plugins import ConnectorContext, CrmConnector
from tests.conformance.crm import CONVERSATION_ID, CUSTOMER_ID, CrmConformance, MemoryLinkStore, delivery_item


def jsonl(tmp_path: Path, **settings: Any) -> JsonlCrm:
    config = JsonlConfig(**{"path": "out/crm.jsonl", **settings})
    context = ConnectorContext(http=requests.Session(), data_dir=tmp_path / "var", base_dir=tmp_path)
    return JsonlCrm("trial", config, context)


def records(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "out" / "crm.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


class TestJsonlConformance(CrmConformance):
    """jsonl passes the shared suite; a write is a line in the file."""

    def build(self, http: requests.Session, tmp_path: Path) -> CrmConnector:
        return jsonl(tmp_path)

    def mock_success(self, mocked: responses.RequestsMock) -> None:
        """Nothing to mock: the jsonl CRM makes no HTTP requests (any request would fail the test)."""

    def count_writes(self, mocked: responses.RequestsMock, tmp_path: Path) -> int:
        assert not mocked.calls
        return len(records(tmp_path))

    def written_messages(self, mocked: responses.RequestsMock, tmp_path: Path) -> list[str]:
        return [record["message"]["id"] for record in records(tmp_path)]


def test_replay_writes_one_line(tmp_path: Path) -> None:
    crm = jsonl(tmp_path)
    links = MemoryLinkStore()
    item = delivery_item(crm="trial")
    first = crm.deliver(item, links)
    again = crm.deliver(replace(item, attempt=2), links)

    assert (first.operation, again.operation) == ("appended", "already_written")
    lines = (tmp_path / "out" / "crm.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["idempotency_key"] == item.idempotency_key
    assert record["customer"] == {"id": CUSTOMER_ID, "display_name": None,
                                  "identifiers": [{"kind": "phone", "value": "+14017122661"}]}
    assert record["conversation"] == {"id": CONVERSATION_ID, "channel": "sms"}
    assert record["fields"] == dict(item.fields)
    assert record["message"] == item.message.model_dump(mode="json")


def test_absolute_path_and_check_online(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere" / "records.jsonl"
    crm = jsonl(tmp_path, path=str(target), fsync=False)
    assert crm.check_online() == f"writable: {target}"
    crm.deliver(delivery_item(crm="trial"), MemoryLinkStore())
    assert len(target.read_text(encoding="utf-8").splitlines()) == 1


class _DiesBeforeLinking(MemoryLinkStore):
    def put(self, entity: str, local_id: str, remote_id: str, data: dict[str, Any] | None = None) -> None:
        raise SystemExit("killed between the append and the link")


def test_a_retry_after_a_crash_between_append_and_link_writes_no_second_line(tmp_path: Path) -> None:
    crm = jsonl(tmp_path)
    item = delivery_item(crm="trial")
    with contextlib.suppress(SystemExit):
        crm.deliver(item, _DiesBeforeLinking())
    links = MemoryLinkStore()
    again = crm.deliver(replace(item, attempt=2), links)

    assert again.operation == "already_written"
    assert len(records(tmp_path)) == 1
    assert links.get("message", item.message.id) == (item.idempotency_key, {})
