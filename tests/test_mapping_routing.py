"""Language routing with a few lines of mapping YAML: WhatsApp in Malayalam to the Kerala group."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import requests
import responses

from connectors.zendesk import ZendeskConfig, ZendeskCrm
from gateway.mapping import Mapping
from gateway.plugins import ConnectorContext
from tests.conformance.crm import MemoryLinkStore, delivery_item, twilio_sms
from tests.conftest import ROOT

CONTEXT = {
    "message": {"channel": "whatsapp", "connector": "whatsapp-main", "language": "ml", "subject": None,
                "text": "എന്റെ ഓർഡർ എവിടെ?",
                "attachments": [], "sender": {"identifiers": [{"kind": "phone", "value": "+919847000001"}]}},
    "customer": {"id": "c1", "display_name": "Anil", "identifiers": []},
    "conversation": {"id": "v1", "channel": "whatsapp"},
}


def test_malayalam_whatsapp_goes_to_the_configured_group(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZENDESK_GROUP_KERALA", "360001234567")
    fields = Mapping.load(ROOT / "mappings/zendesk.yaml").apply(CONTEXT)
    assert fields["group_id"] == "360001234567" and "ml" in fields["tags"]
    other = Mapping.load(ROOT / "mappings/zendesk.yaml").apply(
        {**CONTEXT, "message": {**CONTEXT["message"], "language": "te"}})
    assert "group_id" not in other and "ml" not in other["tags"]


@responses.activate
def test_the_group_reaches_zendesk_as_a_number(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZENDESK_GROUP_KERALA", "360001234567")
    fields = Mapping.load(ROOT / "mappings/zendesk.yaml").apply(CONTEXT)
    item = replace(delivery_item(twilio_sms("hi"), crm="desk"), fields=fields)
    responses.get("https://acme.zendesk.com/api/v2/users/search", json={"users": [], "count": 0, "next_page": None,
                                                                         "previous_page": None})
    responses.post("https://acme.zendesk.com/api/v2/users/create_or_update", status=201, json={"user": {"id": 7}})
    created = responses.post("https://acme.zendesk.com/api/v2/tickets", status=201,
                             json={"ticket": {"id": 9, "status": "new"}})
    config = ZendeskConfig(type="zendesk", subdomain="acme", email="agent@example.com", api_token="test-zd-token")
    ZendeskCrm("desk", config, ConnectorContext(http=requests.Session())).deliver(item, MemoryLinkStore())
    assert json.loads(created.calls[0].request.body)["ticket"]["group_id"] == 360001234567


def test_fields_render_apart_from_each_other() -> None:
    """The renders share the input: what one template assigns is not seen by the next, globals stay, and an
    undefined name still fails with the field named."""
    from gateway.mapping import MappingRenderError, MappingSpec

    path = ROOT / "mappings/zendesk.yaml"
    spec = MappingSpec(crm="zendesk", fields={"first": "{% set customer = 'overwritten' %}{{ customer }}",
                                              "second": "{{ customer.display_name }} {{ range(2) | list | length }}"})
    assert Mapping(path, spec).apply(CONTEXT) == {"first": "overwritten", "second": "Anil 2"}
    assert CONTEXT["customer"]["display_name"] == "Anil"
    with pytest.raises(MappingRenderError, match="'third'"):
        Mapping(path, MappingSpec(crm="zendesk", fields={"third": "{{ customer.nickname }}"})).apply(CONTEXT)
    # a name of the dict's class is still the attribute, and the sandbox still guards it
    keys = {"keys": "{{ customer.keys() | list | length }}", "tags": ["{{ conversation.id }}"]}
    assert Mapping(path, MappingSpec(crm="zendesk", fields=keys)).apply(
        {**CONTEXT, "customer": {"keys": "shadowed", **CONTEXT["customer"]}}) == {"keys": "4", "tags": ["v1"]}
    with pytest.raises(MappingRenderError, match="'fourth'"):
        Mapping(path, MappingSpec(crm="zendesk", fields={"fourth": "{{ customer.__class__ }}"})).apply(CONTEXT)
