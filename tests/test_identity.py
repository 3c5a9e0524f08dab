"""Customer resolution: strong evidence only, guardrails, recorded and reversible merges, suggestions."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import responses
from click.testing import CliRunner
from sqlalchemy import Connection, select

from gateway.cli import main
from gateway.identity import EmailRule, IdentityRules, normalize_email, normalize_phone, resolve_customer
from gateway.identity.merges import customer_family, live_customer_id, unmerge
from gateway.identity.normalize import AS_WRITTEN
from gateway.identity.suggest import suggest_for_new_customer
from gateway.model import Identifier, IdentifierKind, Party
from gateway.runtime import Runtime
from gateway.storage.db import utcnow
from gateway.storage.tables import crm_links, identities, merge_suggestions, merges

RULES = IdentityRules(role_local_parts=frozenset({"support", "noreply", "info"}),
                      blocked_phones=frozenset({"+15005550006"}), max_per_kind=2)


def phone(value: str) -> Identifier:
    return Identifier(kind=IdentifierKind.PHONE, value=value)


def email(value: str) -> Identifier:
    return Identifier(kind=IdentifierKind.EMAIL, value=value)


def party(*idents: Identifier, name: str | None = None) -> Party:
    return Party(identifiers=idents, display_name=name)


@pytest.fixture
def conn(runtime: Runtime) -> Iterator[Connection]:
    with runtime.engine.begin() as connection:
        yield connection


def resolve(conn: Connection, p: Party, message: str = "m") -> str:
    return resolve_customer(conn, p, message_id=message, rules=RULES).customer_id


@pytest.mark.parametrize("a,b", [
    (("+55 41 9999-8888", "BR"), ("41 99999-8888", "BR")),        # Brazil: mobile without and with the 9
    (("554199998888", "US"), ("+5541999998888", "US")),           # WhatsApp id without the 9
    (("+52 1 55 1234 5678", "MX"), ("55 1234 5678", "MX")),       # Mexico's former mobile 1
    (("0091 98470 00001", "IN"), ("098470 00001", "IN")),
    (("+44 (0)20 7946 0018", "GB"), ("020 7946 0018", "GB")),
])
def test_written_forms_of_one_number_normalise_alike(a: tuple[str, str], b: tuple[str, str]) -> None:
    international = a[0].isdigit()
    assert normalize_phone(a[0], a[1], international=international) == normalize_phone(*b)


def test_brazilian_landlines_keep_eight_digits() -> None:
    assert normalize_phone("+55 11 3333-4444", "BR") == "+551133334444"


def test_email_rules_apply_only_where_configured() -> None:
    rules = IdentityRules(email_rules={
        "gmail.com": EmailRule(fold_case=True, strip_plus=True, ignore_dots=True),
        "googlemail.com": EmailRule(fold_case=True, strip_plus=True, ignore_dots=True, canonical_domain="gmail.com"),
        "*": EmailRule(fold_case=True)})
    assert normalize_email("Asha.Rao+orders@GMail.com", rules) == "asharao@gmail.com"
    assert normalize_email("asha.rao@googlemail.com", rules) == "asharao@gmail.com"
    assert normalize_email("Asha.Rao+x@Example.org", rules) == "asha.rao+x@example.org"
    assert normalize_email("Asha.Rao+x@Example.org") == "asha.rao+x@example.org", "no rule: only the case folded"
    kept = IdentityRules(email_rules={"legacy.example": EmailRule(fold_case=False)})
    assert normalize_email("Asha.Rao@Legacy.Example", kept) == "Asha.Rao@legacy.example", "a rule turns folding off"
    assert normalize_email("Asha.Rao@Example.org", kept) == "asha.rao@example.org"


def test_an_address_in_two_cases_is_one_customer_without_any_rule(conn: Connection) -> None:
    """SendGrid's ``Asha@Example.com`` and a Slack profile's ``asha@example.com``: one customer by default."""
    rules = IdentityRules()
    sendgrid = resolve_customer(conn, party(email(normalize_email("Asha@Example.com", AS_WRITTEN))),
                                message_id="m1", rules=rules)
    slack = resolve_customer(conn, party(Identifier(kind=IdentifierKind.SLACK, value="T1:U1"),
                                         email(normalize_email("asha@example.com", AS_WRITTEN))),
                             message_id="m2", rules=rules)
    assert slack.customer_id == sendgrid.customer_id and not slack.merges
    stored = conn.execute(select(identities.c.value).where(identities.c.kind == "email")).scalars().all()
    assert stored == ["asha@example.com"]


def test_a_rule_keeps_the_case_for_a_domain_that_needs_it(conn: Connection) -> None:
    rules = IdentityRules(email_rules={"legacy.example": EmailRule(fold_case=False)})
    upper = resolve_customer(conn, party(email(normalize_email("Asha@Legacy.example", AS_WRITTEN))),
                             message_id="m1", rules=rules)
    lower = resolve_customer(conn, party(email(normalize_email("asha@legacy.example", AS_WRITTEN))),
                             message_id="m2", rules=rules)
    assert upper.customer_id != lower.customer_id


def test_same_identifier_is_the_same_customer_and_names_never_join(conn: Connection) -> None:
    first = resolve(conn, party(phone("+14155550100"), name="Asha Rao"))
    assert resolve(conn, party(phone("+14155550100"))) == first
    other = resolve(conn, party(phone("+14155550199"), name="Asha Rao"))
    assert other != first, "the same name is never evidence"


def test_channel_asserted_link_merges_two_customers_with_a_record(conn: Connection) -> None:
    by_phone = resolve(conn, party(phone("+14155550100")), "m1")
    by_email = resolve(conn, party(email("asha@example.com")), "m2")
    joined = resolve_customer(conn, party(phone("+14155550100"), email("asha@example.com")), message_id="m3",
                              rules=RULES)
    assert joined.customer_id == by_phone and len(joined.merges) == 1
    assert live_customer_id(conn, by_email) == by_phone
    assert sorted(customer_family(conn, by_phone)) == sorted([by_phone, by_email])
    record = conn.execute(select(merges)).one()
    assert (record.survivor_id, record.absorbed_id, record.evidence, record.message_id) == (
        by_phone, by_email, "asserted_by_channel", "m3")
    assert record.detail["identifiers"] == ["phone:+14155550100", "email:asha@example.com"]


def test_unmerge_restores_both_customers_and_their_identifiers(conn: Connection) -> None:
    a = resolve(conn, party(phone("+14155550100")))
    b = resolve(conn, party(email("asha@example.com")))
    resolve(conn, party(phone("+14155550100"), email("asha@example.com")))
    merge_id = conn.execute(select(merges.c.id)).scalar_one()
    unmerge(conn, merge_id, "wrong person")
    assert live_customer_id(conn, b) == b
    owners = dict(conn.execute(select(identities.c.value, identities.c.customer_id)).all())
    assert owners == {"+14155550100": a, "asha@example.com": b}
    assert conn.execute(select(merges.c.undo_reason)).scalar_one() == "wrong person"


def test_customers_mapped_to_different_crm_records_are_never_merged(conn: Connection) -> None:
    a = resolve(conn, party(phone("+14155550100")))
    b = resolve(conn, party(email("asha@example.com")))
    for local, remote in ((a, "101"), (b, "202")):
        conn.execute(crm_links.insert().values(crm="zd", entity="customer", local_id=local, remote_id=remote,
                                               data={}, updated_at=utcnow()))
    result = resolve_customer(conn, party(phone("+14155550100"), email("asha@example.com")), message_id="m",
                              rules=RULES)
    assert result.merges == [] and len(result.suggestions) == 1
    assert live_customer_id(conn, b) == b
    reason = conn.execute(select(merge_suggestions.c.reason)).scalar_one()
    assert "different records in zd" in reason


def test_role_addresses_and_own_numbers_never_join(conn: Connection) -> None:
    person = resolve(conn, party(phone("+14155550100")))
    assert resolve(conn, party(phone("+14155550100"), email("support@customer-co.com"))) == person
    assert conn.execute(select(identities.c.value).where(identities.c.customer_id == person)).scalars().all() == [
        "+14155550100"]
    shared = resolve(conn, party(email("support@customer-co.com")))
    assert shared != person, "a role address alone keys a customer of its own"
    assert resolve(conn, party(phone("+15005550006"), email("asha@example.com"))) != person


def test_identifiers_per_kind_are_limited(conn: Connection) -> None:
    result = resolve_customer(conn, party(phone("+14155550100"), phone("+14155550101"), phone("+14155550102")),
                              message_id="m", rules=RULES)
    assert [s[1] for s in result.skipped] == ["+14155550102"]
    assert conn.execute(select(identities.c.value)).scalars().all() == ["+14155550100", "+14155550101"]


def test_similar_names_with_partial_evidence_become_a_suggestion_only(conn: Connection) -> None:
    a = resolve(conn, party(email("asha.rao@example.com"), name="Asha Rao"))
    b = resolve(conn, party(email("asha.rao@example.org"), name="Rao Asha"))
    made = suggest_for_new_customer(conn, b, 85)
    assert len(made) == 1 and live_customer_id(conn, b) == b
    row = conn.execute(select(merge_suggestions)).one()
    assert {row.customer_a, row.customer_b} == {a, b} and "local part" in row.reason
    c = resolve(conn, party(email("someone@example.net"), name="Asha Rao"))
    assert suggest_for_new_customer(conn, c, 85) == [], "a name alone suggests nothing"


def test_customers_cli_explains_merges_and_undoes_them(runtime: Runtime, config) -> None:  # type: ignore[no-untyped-def]
    with runtime.engine.begin() as conn:
        a = resolve(conn, party(phone("+14155550100"), name="Asha"))
        b = resolve(conn, party(email("asha@example.com")))
    cli = CliRunner()
    path = str(config.path)
    merged = cli.invoke(main, ["customers", "merge", "-c", path, a, b, "--reason", "same person, phoned in"])
    assert merged.exit_code == 0, merged.output
    [shown] = json.loads(cli.invoke(main, ["customers", "show", "-c", path, "(415) 555-0100"]).stdout)
    assert shown["id"] == a and shown["merged_customers"] == [b]
    assert {i["value"] for i in shown["identifiers"]} == {"+14155550100", "asha@example.com"}
    assert shown["merges"][0]["evidence"] == "admin"
    assert shown["merges"][0]["detail"] == {"reason": "same person, phoned in"}
    found = cli.invoke(main, ["customers", "find", "-c", path, "asha@example.com"])
    assert a in found.output
    merge_id = str(shown["merges"][0]["merge"])
    undone = cli.invoke(main, ["customers", "unmerge", "-c", path, merge_id])
    assert undone.exit_code == 0 and "identifier(s) back" in undone.output
    again = cli.invoke(main, ["customers", "unmerge", "-c", path, merge_id])
    assert again.exit_code == 1 and "already undone" in again.output
    assert [c["id"] for c in json.loads(cli.invoke(main, ["customers", "show", "-c", path, b]).stdout)] == [b]


CARRY_CONFIG = """
storage: {url: "{storage_url}"}
identity: {carry_merges_to_crm: true}
channels:
  sms-main: {type: twilio, account_sid: "ACFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF1", auth_token: "test-token"}
crms:
  desk: {type: zendesk, subdomain: acme, email: agent@example.com, api_token: test-zd-token,
         directory_sync_seconds: 0}
routes:
  - {from: [sms-main], to: desk}
"""


@responses.activate
def test_an_admin_merge_is_carried_into_the_crm_when_configured(write_config) -> None:  # type: ignore[no-untyped-def]
    from gateway.config import load_config
    from gateway.runtime import build_runtime

    path = write_config(CARRY_CONFIG)
    rt = build_runtime(load_config(path))
    with rt.engine.begin() as conn:
        a = resolve(conn, party(phone("+14155550100")))
        b = resolve(conn, party(email("asha@example.com")))
        for local, remote in ((a, "101"), (b, "202")):
            conn.execute(crm_links.insert().values(crm="desk", entity="customer", local_id=local, remote_id=remote,
                                                   data={}, updated_at=utcnow()))
    merged = responses.put("https://acme.zendesk.com/api/v2/users/202/merge", json={"user": {"id": 101}},
                           match=[responses.matchers.json_params_matcher({"user": {"id": 101}})])
    result = CliRunner().invoke(main, ["customers", "merge", "-c", str(path), a, b, "--reason", "same person"])
    assert result.exit_code == 0, result.output
    assert merged.call_count == 1
    assert "desk: record 202 merged into 101" in result.output
