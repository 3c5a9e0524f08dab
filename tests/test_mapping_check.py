"""Mappings checked strictly by `gateway check`, `gateway mapping test` and delivery: every stumble of issue 17."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import requests
import responses
from click.testing import CliRunner
from sqlalchemy import update

from gateway.cli import main
from gateway.config import load_config
from gateway.delivery import DeliveryWorker
from gateway.delivery_contexts import StoredContexts
from gateway.mapping import Mapping, default_catalog, mappings_named
from gateway.mapping_store import MappingStore
from gateway.runtime import build_runtime
from gateway.storage.tables import outbox
from tests.conftest import PUBLIC_URL, TWILIO_SID
from tests.test_pipeline import drain_once, sms, store

ROOT = Path(__file__).resolve().parent.parent
ZENDESK = "{type: zendesk, subdomain: acme, email: agent@example.com, api_token: test-zendesk-token, mapping: m.yaml}"
INSTANCE = "https://acme.my.salesforce.com"
DATA = f"{INSTANCE}/services/data/v59.0"
SALESFORCE = (f'{{type: salesforce, instance_url: "{INSTANCE}", session_id: "00Dtest!session-id-for-tests", '
              'mapping: m.yaml}')


def config_with(write_config: Callable[..., Path], tmp_path: Path, crm: str, mapping: str) -> Path:
    (tmp_path / "m.yaml").write_text(textwrap.dedent(mapping), encoding="utf-8")
    return write_config(f"""
        storage: {{url: "{{storage_url}}"}}
        server: {{public_url: "{PUBLIC_URL}"}}
        channels:
          sms-main: {{type: twilio, account_sid: "{TWILIO_SID}", auth_token: "test-token"}}
        crms:
          desk: {crm}
        routes:
          - {{from: [sms-main], to: desk}}
    """)


THE_ISSUE_MAPPING = """\
    crm: zendesk
    fields:
      subject: "{{ message.txt | uper }}"
      comment: "{{ message.body }}"
      priorty: high
    rules:
      - when: "msg.language == 'es'"
        set: {group_id: "42"}
"""


def test_check_reports_each_mistake_of_the_issue_with_file_and_line(
        write_config: Callable[..., Path], tmp_path: Path) -> None:
    path = config_with(write_config, tmp_path, ZENDESK, THE_ISSUE_MAPPING)
    result = CliRunner().invoke(main, ["check", "-c", str(path)])
    assert result.exit_code == 1
    m = tmp_path / "m.yaml"
    for line in (f"{m}:3 fields.subject: unknown filter 'uper' (did you mean 'upper'?)",
                 f"{m}:3 fields.subject: message has no field 'txt' (did you mean 'text'?)",
                 f"{m}:4 fields.comment: message has no field 'body'",
                 f"{m}:5 fields.priorty: not a zendesk field (did you mean 'priority'?)",
                 f"{m}:7 rules[0].when: unknown name 'msg' (did you mean 'message'?)"):
        assert line in result.output, result.output
    assert "5 error(s)" in result.output


def test_a_template_that_fails_on_some_channels_names_them(write_config: Callable[..., Path], tmp_path: Path) -> None:
    path = config_with(write_config, tmp_path, ZENDESK, """\
        crm: zendesk
        fields:
          comment: "{{ message.text }} ({{ message.attachments[0].filename }})"
    """)
    result = CliRunner().invoke(main, ["check", "-c", str(path)])
    assert result.exit_code == 1
    [line] = [x for x in result.output.splitlines() if "fields.comment" in x]
    # email, MMS and WhatsApp samples carry an attachment: the others fail, and are named
    assert line.startswith(f"{tmp_path / 'm.yaml'}:3 fields.comment: fails on a sample sms, slack, messenger, "
                           "instagram, x message: UndefinedError")


def test_mapping_test_catches_a_misspelt_field_its_own_tests_expect(tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text("crm: zendesk\nfields:\n  comment: '{{ message.text }}'\n  priorty: high\n")
    (tmp_path / "m.tests.yaml").write_text(textwrap.dedent("""\
        cases:
          - name: priority
            input: {message: {text: hi}, customer: {}, conversation: {}}
            expect: {priorty: high}
    """))
    result = CliRunner().invoke(main, ["mapping", "test", str(tmp_path / "m.yaml")])
    assert result.exit_code == 1
    assert f"{tmp_path / 'm.yaml'}:4 fields.priorty: not a zendesk field (did you mean 'priority'?)" in result.output


def test_mapping_test_takes_a_tests_file_for_its_mapping() -> None:
    shipped = sorted((ROOT / "mappings").glob("*.yaml"))  # what the shell makes of mappings/*.yaml
    assert any(p.name.endswith(".tests.yaml") for p in shipped)
    result = CliRunner().invoke(main, ["mapping", "test", *map(str, shipped)])
    assert result.exit_code == 0, result.output
    assert "tests.tests.yaml" not in result.output
    named = [line.split(":")[0] for line in result.output.splitlines()]
    assert sorted(named) == sorted(str(p) for p in shipped if not p.name.endswith(".tests.yaml"))
    assert mappings_named([ROOT / "mappings/zendesk.tests.yaml"]) == [ROOT / "mappings/zendesk.yaml"]


def test_salesforce_fields_are_checked_against_its_standard_fields_offline(tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text(textwrap.dedent("""\
        crm: salesforce
        fields:
          case.Subject: "{{ message.subject or message.text }}"
          case.priority: High
          case.Priorty: High
          case.Region__c: "{{ message.channel }}"
          contact.Emial: "x"
        rules:
          - when: "message.channel == 'email'"
            add_tags: [email]
    """))
    try:
        Mapping.load(tmp_path / "m.yaml")
        raise AssertionError("the mapping should be refused")
    except Exception as exc:
        issues = [str(i) for i in exc.issues]  # type: ignore[attr-defined]
    m = tmp_path / "m.yaml"
    assert issues == [
        f"{m}:5 fields.case.Priorty: no salesforce case field 'Priorty' (did you mean 'Priority'?)",
        f"{m}:7 fields.contact.Emial: no salesforce contact field 'Emial' (did you mean 'Email'?)",
        f"{m}:10 rules[0].add_tags: not a salesforce field; the salesforce connector reads comment, public, "
        "contact.<Field>, case.<Field>, activity.<Field>",
    ], "field names are case-insensitive in Salesforce, and custom fields are taken offline"


@responses.activate
def test_check_online_asks_salesforce_describe_for_custom_fields(
        write_config: Callable[..., Path], tmp_path: Path) -> None:
    path = config_with(write_config, tmp_path, SALESFORCE, """\
        crm: salesforce
        fields:
          comment: "{{ message.text }}"
          case.Subject: "{{ message.text }}"
          case.Regoin__c: "{{ message.channel }}"
    """)
    assert CliRunner().invoke(main, ["check", "-c", str(path)]).exit_code == 0, "offline, __c fields are taken"
    responses.get(f"{DATA}/limits", json={"DailyApiRequests": {"Max": 100000, "Remaining": 99000}})
    described = {"Contact": ["Id", "LastName", "Email"], "Case": ["Id", "Subject", "Region__c"],
                 "CaseComment": ["Id", "ParentId", "CommentBody"], "EmailMessage": ["Id", "ParentId", "TextBody"]}
    for obj, names in described.items():  # the shape of GET /sobjects/{obj}/describe, trimmed to what is read
        responses.get(f"{DATA}/sobjects/{obj}/describe", json={"name": obj, "fields": [
            {"name": name, "createable": name != "Id", "updateable": name != "Id", "type": "string"}
            for name in names]})
    result = CliRunner().invoke(main, ["check", "-c", str(path), "--online"])
    assert result.exit_code == 1
    assert (f"{tmp_path / 'm.yaml'}:5 fields.case.Regoin__c: no salesforce case field 'Regoin__c' "
            "(did you mean 'Region__c'?)") in result.output


def test_delivery_renders_stored_fields_the_crm_does_not_read_again_or_refuses_them(
        write_config: Callable[..., Path], tmp_path: Path) -> None:
    from gateway.pipeline import PipelineWorker

    path = config_with(write_config, tmp_path, ZENDESK, """\
        crm: zendesk
        fields:
          comment: "{{ message.text }}"
          priority: high
    """)
    rt = build_runtime(load_config(path), http=requests.Session())
    try:
        store(rt, sms("SM" + "0" * 31 + "1", "+14155550100", "hello"))
        drain_once(PipelineWorker(rt, "p"))
        with rt.engine.begin() as conn:  # rendered by an older mapping, before field names were checked
            conn.execute(update(outbox).values(fields={"comment": "hello", "priorty": "high"}))
        worker = DeliveryWorker(rt, "d")
        [[[row]]] = worker.claim()
        with rt.engine.connect() as conn:
            stored = StoredContexts(conn, [row.message_id])
        assert worker._item(row, stored).fields == {"comment": "hello", "priority": "high"}
        rt.mappings = MappingStore({})  # no mapping to render them again: refused, not dropped
        worker.process([[row]])
        [letter] = rt.queues.list_dead_letters()
        assert (letter.error_code, letter.field) == ("mapping_error", "priorty")
        assert "not a zendesk field (did you mean 'priority'?)" in letter.reason
    finally:
        rt.close()


def test_zendesk_writes_every_ticket_field_its_list_names() -> None:
    from connectors.zendesk.connector import TICKET_FIELDS

    catalog = default_catalog("zendesk")
    assert catalog is not None
    assert set(TICKET_FIELDS) | {"comment", "public"} == set(catalog.names)
    assert catalog.problem("requester_id") is not None and "set by the gateway" in str(catalog.problem("external_id"))


def test_zendesk_user_fields_reach_the_user_and_the_gateways_own_are_refused() -> None:
    from connectors.zendesk.connector import ZendeskConfig, ZendeskCrm
    from gateway.plugins import ConnectorContext
    from tests.conformance.crm import delivery_item

    config = ZendeskConfig(type="zendesk", subdomain="acme", email="agent@example.com", api_token="test-zendesk-token")
    crm = ZendeskCrm("desk", config, ConnectorContext(http=requests.Session()))
    item = delivery_item(fields={"comment": "hi", "user.locale": "es", "user.organization_id": "361", "user.notes": ""})
    user = crm.user_payload(item)
    assert (user["locale"], user["organization_id"], user["external_id"]) == ("es", 361, item.customer.id)
    assert "notes" not in user, "an empty value is left out"
    catalog = ZendeskCrm.mapping_fields(config)
    assert "set by the gateway itself" in str(catalog.problem("user.external_id"))
    assert catalog.problem("user.locale") is None
    assert catalog.problem("user.locael") == "no zendesk user field 'locael' (did you mean 'locale'?)"
