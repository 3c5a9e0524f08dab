"""The field names a CRM connector reads from a mapping, so that a misspelt one is an error instead of a silent drop.

Each CRM connector says which names its mappings may produce (``CrmConnector.mapping_fields``); the shipped lists
live beside the shipped mappings, in ``mappings/fields/NAME.yaml``.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

# The shipped mappings live in the top-level mappings/ folder; an installed copy points here with an env var.
UPDATE_KEY = "_update"
"""The key under which a mapping hands over the fields its rules may change on an existing ticket (name -> value)."""
MAPPINGS_DIR = Path(os.environ.get("GATEWAY_MAPPINGS_DIR") or Path(__file__).resolve().parent.parent / "mappings")


@lru_cache(maxsize=16)
def field_list(name: str) -> dict[str, Any]:
    """A shipped field list, ``mappings/fields/NAME.yaml``."""
    data = yaml.safe_load((MAPPINGS_DIR / "fields" / f"{name}.yaml").read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"mappings/fields/{name}.yaml must be a mapping"
    return data


def _hint(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


@dataclass(frozen=True)
class FieldCatalog:
    """The names a CRM connector reads: plain ones, ``prefix.Field`` ones, and ones the gateway sets itself.

    A prefix mapped to None takes any field; ``custom_suffix`` names (Salesforce's ``__c``) are taken under any
    prefix, since only the CRM itself knows its custom fields.
    """

    crm: str
    names: frozenset[str]
    prefixes: Mapping[str, frozenset[str] | None] = field(default_factory=dict)
    reserved: Mapping[str, str] = field(default_factory=dict)
    custom_suffix: str | None = None
    case_sensitive: bool = True

    def _has(self, name: str, known: frozenset[str]) -> bool:
        if self.case_sensitive:
            return name in known
        return name.lower() in {k.lower() for k in known}

    def problem(self, name: str) -> str | None:
        """Why the connector would not write ``name``; None when it does."""
        if name == UPDATE_KEY:
            return None
        if name in self.reserved:
            return f"set by the gateway itself ({self.reserved[name]}); a mapping cannot set it"
        if self._has(name, self.names):
            return None
        prefix, dot, rest = name.partition(".")
        if dot and prefix in self.prefixes:
            allowed = self.prefixes[prefix]
            if allowed is None or self._has(rest, allowed) or (
                    self.custom_suffix and rest.lower().endswith(self.custom_suffix.lower())):
                return None
            return f"no {self.crm} {prefix} field {rest!r}{_hint(rest, allowed)}"
        known = sorted(self.names) + [f"{p}.<Field>" for p in self.prefixes]
        return f"not a {self.crm} field{_hint(name, self.names)}; the {self.crm} connector reads {', '.join(known)}"

    def problems(self, names: Iterable[str]) -> dict[str, str]:
        """The names the connector would not write, each with its reason."""
        return {name: reason for name in names if (reason := self.problem(name)) is not None}
