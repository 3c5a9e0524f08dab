"""The example connector packages, importable and registered as if ``pip install -e examples/NAME`` had run.

Each package's folder goes on ``sys.path`` (where an editable install puts it), and the ``gateway.connectors`` entry
points each declares in its own ``pyproject.toml`` are added to the installed ones: the gateway finds the examples
exactly as it finds an installed package, the entry point's name checked against the class's ``type_name``.
"""

from __future__ import annotations

import sys
import tomllib
from importlib.metadata import EntryPoint

import pytest

from gateway import plugins
from tests.conftest import ROOT

EXAMPLES = ROOT / "examples"
PACKAGES = ("acme_sms", "ticketbox")

for _package in PACKAGES:
    if str(EXAMPLES / _package) not in sys.path:
        sys.path.insert(0, str(EXAMPLES / _package))


def example_entry_points() -> list[EntryPoint]:
    """The ``gateway.connectors`` entry points the example packages declare."""
    found = []
    for package in PACKAGES:
        project = tomllib.loads((EXAMPLES / package / "pyproject.toml").read_text(encoding="utf-8"))["project"]
        for name, value in project["entry-points"][plugins.ENTRY_POINT_GROUP].items():
            found.append(EntryPoint(name=name, value=value, group=plugins.ENTRY_POINT_GROUP))
    return found


@pytest.fixture(autouse=True)
def examples_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every ``Registry.from_entry_points()`` (config loading, runtimes, the CLI) finds the examples too."""
    installed = plugins.entry_points
    monkeypatch.setattr(plugins, "entry_points",
                        lambda group: [*installed(group=group), *example_entry_points()])
