"""Deleting a person's CRM record (``gateway customers forget --crm``): Zendesk's permanent user deletion,
Salesforce's delete as configured, and the CLI that erases nothing locally when a CRM could not delete."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import requests
import responses
from click.testing import CliRunner
from sqlalchemy import select

from gateway.cli import main
from gateway.config import load_config
from gateway.errors import PermanentError
from gateway.plugins import abilities
from gateway.runtime import build_runtime
from gateway.storage.db import utcnow
from gateway.storage.tables import crm_links, customers, identities, tombstones
from tests.connectors.test_salesforce import INSTANCE, salesforce
from tests.connectors.test_zendesk import API, zendesk

USER = 9873843
CONTACT = "003Dn00000AshaRao"
SF_CONTACT = f"{INSTANCE}/services/data/v59.0/sobjects/Contact/{CONTACT}"


def test_both_crms_declare_the_ability() -> None:
    from connectors.salesforce import SalesforceCrm
    from connectors.zendesk import ZendeskCrm

    assert "contact_erasure" in abilities(ZendeskCrm) and "contact_erasure" in abilities(SalesforceCrm)


@responses.activate
def test_zendesk_deletes_the_user_then_deletes_it_permanently() -> None:
    responses.delete(f"{API}/users/{USER}", json={"user": {"id": USER, "name": "Asha Rao", "active": False}})
    responses.delete(f"{API}/deleted_users/{USER}", json={"deleted_user": {"id": USER, "name": "Asha Rao",
                                                                           "active": False}})
    assert zendesk().erase_contact(str(USER)) == f"user {USER} deleted permanently"
    assert [(c.request.method, c.request.url) for c in responses.calls] == [
        ("DELETE", f"{API}/users/{USER}"), ("DELETE", f"{API}/deleted_users/{USER}")]


@responses.activate
def test_zendesk_user_deleted_already_is_still_deleted_permanently() -> None:
    responses.delete(f"{API}/users/{USER}", status=404, json={"error": "RecordNotFound",
                                                              "description": "Not found"})
    responses.delete(f"{API}/deleted_users/{USER}", json={"deleted_user": {"id": USER, "active": False}})
    zendesk().erase_contact(str(USER))
    assert len(responses.calls) == 2


@responses.activate
def test_zendesk_refusal_is_an_error() -> None:
    responses.delete(f"{API}/users/{USER}", status=403, json={"error": "Forbidden", "description": "agents only"})
    with pytest.raises(PermanentError, match="403"):
        zendesk().erase_contact(str(USER))


@responses.activate
def test_salesforce_deletes_the_contact_or_keeps_it_as_configured() -> None:
    responses.delete(SF_CONTACT, status=204)
    assert "deleted" in salesforce().erase_contact(CONTACT)
    assert "kept" in salesforce(erase_contacts="keep").erase_contact(CONTACT)
    assert len(responses.calls) == 1


@responses.activate
def test_salesforce_contact_gone_already_counts_as_deleted() -> None:
    responses.delete(SF_CONTACT, status=404, json=[{"errorCode": "NOT_FOUND",
                                                    "message": "The requested resource does not exist"}])
    assert "deleted" in salesforce().erase_contact(CONTACT)


CONFIG = """
storage: {url: "{storage_url}"}
crms:
  helpdesk: {type: zendesk, subdomain: acme, email: agent@example.com, api_token: test-zendesk-token}
"""


def seed(write_config: Callable[..., Path]) -> Path:
    path = write_config(CONFIG)
    rt = build_runtime(load_config(path), http=requests.Session())
    now = utcnow()
    with rt.engine.begin() as conn:
        conn.execute(customers.insert().values(id="c1", display_name="Asha Rao", created_at=now, updated_at=now))
        conn.execute(identities.insert().values(kind="email", value="asha.rao@example.com", customer_id="c1",
                                                evidence="asserted_by_channel", created_at=now))
        conn.execute(crm_links.insert().values(crm="helpdesk", entity="customer", local_id="c1",
                                               remote_id=str(USER), data={}, updated_at=now))
    rt.close()
    return path


def rows(path: Path) -> tuple[int, int]:
    rt = build_runtime(load_config(path), http=requests.Session())
    try:
        with rt.engine.connect() as conn:
            return (len(conn.execute(select(customers)).all()), len(conn.execute(select(tombstones)).all()))
    finally:
        rt.close()


@responses.activate
def test_forget_with_crm_deletes_the_zendesk_user_then_erases(write_config: Callable[..., Path]) -> None:
    path = seed(write_config)
    responses.delete(f"{API}/users/{USER}", json={"user": {"id": USER, "active": False}})
    responses.delete(f"{API}/deleted_users/{USER}", json={"deleted_user": {"id": USER, "active": False}})
    result = CliRunner().invoke(main, ["customers", "forget", "-c", str(path), "asha.rao@example.com", "--yes",
                                       "--crm"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert f"helpdesk: user {USER} deleted permanently" in result.output
    assert rows(path) == (0, 1)


@responses.activate
def test_forget_erases_nothing_when_the_crm_could_not_delete(write_config: Callable[..., Path]) -> None:
    path = seed(write_config)
    responses.delete(f"{API}/users/{USER}", status=403, json={"error": "Forbidden"})
    result = CliRunner().invoke(main, ["customers", "forget", "-c", str(path), "c1", "--yes", "--crm"])
    assert result.exit_code == 1 and "nothing was erased here" in result.output
    assert rows(path) == (1, 0)
    without = CliRunner().invoke(main, ["customers", "forget", "-c", str(path), "c1", "--yes"])
    assert without.exit_code == 0 and f"still in the CRM (use --crm, or delete them there): helpdesk {USER}" \
        in without.output
    assert rows(path) == (0, 1)
