"""The examples as packages: registered by their entry points, their settings reference generated and current, kept
small, out of the main package, and working together from a provider's webhook to a ticket."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from collections.abc import Callable
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
import requests
import responses
from acme_sms import AcmeSmsChannel
from click.testing import CliRunner
from ticketbox import TicketboxCrm

from gateway import plugins
from gateway.cli import main
from gateway.config import load_config
from gateway.docs import connectors_markdown
from gateway.plugins import ConnectorNameMismatch, Registry
from gateway.runtime import build_runtime
from gateway.web import create_app
from tests.conformance.channel import send
from tests.conftest import PUBLIC_URL, ROOT
from tests.examples.conftest import EXAMPLES, PACKAGES
from tests.examples.test_ticketbox import BASE, TOKEN, FakeTicketbox

CLASSES = {"acme_sms": AcmeSmsChannel, "ticketbox": TicketboxCrm}
MODULES = {"acme_sms": EXAMPLES / "acme_sms/acme_sms.py", "ticketbox": EXAMPLES / "ticketbox/ticketbox/__init__.py"}


def test_each_package_registers_its_connector_under_its_type_name() -> None:
    registry = Registry.from_entry_points()
    for name, cls in CLASSES.items():
        assert registry.get(name) is cls
    assert "acme_sms" in registry.names("channel") and "ticketbox" in registry.names("crm")


def test_an_entry_point_named_unlike_its_connector_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    wrong = EntryPoint(name="acme", value="acme_sms:AcmeSmsChannel", group=plugins.ENTRY_POINT_GROUP)
    monkeypatch.setattr(plugins, "entry_points", lambda group: [wrong])
    with pytest.raises(ConnectorNameMismatch, match=r"'acme'.*'acme_sms'"):
        Registry.from_entry_points()


@pytest.mark.parametrize("name", PACKAGES)
def test_settings_reference_is_generated_and_current(name: str) -> None:
    """Each package's SETTINGS.md is what ``gateway connectors --markdown NAME`` prints, from its config model."""
    generated = connectors_markdown(Registry([(name, CLASSES[name])]))
    published = (EXAMPLES / name / "SETTINGS.md").read_text(encoding="utf-8")
    assert published == generated, (
        f"examples/{name}/SETTINGS.md is stale: with the example installed, run "
        f"'gateway connectors --markdown {name} > examples/{name}/SETTINGS.md'")
    result = CliRunner().invoke(main, ["connectors", "--markdown", name])
    assert result.exit_code == 0, result.output
    assert result.output == generated


def test_the_reference_lists_every_setting_and_marks_secrets() -> None:
    reference = connectors_markdown(Registry(CLASSES.items()))
    for row in ("| `signing_secret` | secret | yes |", "| `previous_signing_secret` | secret | no |",
                "| `replay_window_seconds` | int | no | 300 |", "| `base_url` | str | yes |",
                "| `api_token` | secret | yes |", "| `timeout_seconds` | float | no | 10.0 |", "| `mapping` |"):
        assert row in reference
    assert "## `acme_sms` (channel)" in reference and "Abilities: `webhook`." in reference
    assert "## `ticketbox` (crm)" in reference and "Abilities: none." in reference


def test_connectors_command_refuses_an_unknown_type() -> None:
    result = CliRunner().invoke(main, ["connectors", "acme_sms", "acme_fax"])
    assert result.exit_code == 2
    assert "'acme_fax'" in result.output and "acme_sms" in result.output


@pytest.mark.parametrize("name", PACKAGES)
def test_connector_module_is_well_under_100_lines(name: str) -> None:
    assert len(MODULES[name].read_text(encoding="utf-8").splitlines()) < 100


def test_the_main_package_does_not_pick_up_the_examples() -> None:
    """setuptools keeps a folder found under the repository when its dotted name matches an ``include`` pattern."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    include = project["tool"]["setuptools"]["packages"]["find"]["include"]
    folders = [".".join(path.relative_to(ROOT).parts) for path in [EXAMPLES, *EXAMPLES.rglob("*")] if path.is_dir()]
    assert "examples.ticketbox.ticketbox" in folders
    assert not [name for name in folders if any(fnmatch.fnmatchcase(name, pattern) for pattern in include)]


def test_an_acme_sms_becomes_a_ticketbox_ticket(write_config: Callable[..., Path]) -> None:
    """The two examples together: the webhook ``gateway simulate`` would send, stored, normalised, mapped by
    Ticketbox's shipped mapping, and written as a ticket whose first comment is the customer's text."""
    from gateway.delivery import DeliveryWorker
    from gateway.pipeline import PipelineWorker
    from gateway.worker import drain_once

    config = load_config(write_config(f"""
        storage: {{url: "{{storage_url}}"}}
        server: {{public_url: "{PUBLIC_URL}"}}
        channels:
          sms-acme: {{type: acme_sms, signing_secret: test-acme-signing-secret}}
        crms:
          helpdesk: {{type: ticketbox, base_url: "{BASE}", api_token: "{TOKEN}"}}
        routes:
          - {{from: [sms-acme], to: helpdesk}}
    """))
    fake = FakeTicketbox()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mocked:
        fake.register(mocked)
        runtime = build_runtime(config, http=requests.Session())
        try:
            channel = runtime.channels["sms-acme"]
            assert isinstance(channel, AcmeSmsChannel)
            request = channel.sample_request(sender="(415) 555-0100", text="Where is my order?",
                                             recipient="+15555550123", public_url=f"{PUBLIC_URL}/hooks/sms-acme")
            assert send(create_app(runtime).test_client(), request, "sms-acme").status_code == 200
            pipeline, delivery = PipelineWorker(runtime, "p"), DeliveryWorker(runtime, "d")
            while drain_once(pipeline) + drain_once(delivery):
                pass
        finally:
            runtime.close()
    [ticket] = fake.tickets.values()
    assert ticket["subject"] == "SMS from +14155550100"
    assert ticket["tags"] == ["channel-gateway", "sms"]
    assert ticket["comment"]["body"] == "Where is my order?"
    assert ticket["requester"]["phone"] == "+14155550100"


def guide_excerpts() -> list[tuple[str, str]]:
    """The code blocks of docs/writing-a-connector.md that open with ``# examples/PATH``: (path, the rest)."""
    guide = (ROOT / "docs/writing-a-connector.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```\w*\n(.*?)^```$", guide, flags=re.MULTILINE | re.DOTALL)
    return [(first.removeprefix("# "), rest) for first, _, rest in (block.partition("\n") for block in blocks)
            if first.startswith("# examples/")]


def test_the_guides_excerpts_are_the_examples_code() -> None:
    excerpts = guide_excerpts()
    assert {path for path, _ in excerpts} >= {
        "examples/acme_sms/acme_sms.py", "examples/ticketbox/ticketbox/__init__.py", "examples/acme_sms/pyproject.toml"}
    for path, excerpt in excerpts:
        assert excerpt in (ROOT / path).read_text(encoding="utf-8"), f"the guide quotes {path} as it no longer is"
