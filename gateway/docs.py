"""Connector settings reference, generated from the connectors' config models (``gateway connectors``)."""

from __future__ import annotations

from typing import Any

from pydantic import SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from gateway.plugins import Registry, abilities


def _type_name(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) or str(annotation)
    return text.replace("typing.", "").replace("pydantic.types.", "")


def _is_secret(field: FieldInfo) -> bool:
    return "SecretStr" in str(field.annotation) or field.annotation is SecretStr


def settings(cls: Any) -> list[dict[str, str]]:
    rows = []
    for name, field in cls.Config.model_fields.items():
        if name == "type":
            continue
        required = field.is_required()
        default = "" if required or field.default is PydanticUndefined else repr(field.default)
        rows.append({
            "name": name,
            "type": ("secret" if _is_secret(field) else _type_name(field.annotation)),
            "required": "yes" if required else "no",
            "default": default,
            "description": field.description or "",
        })
    return rows


def connectors_text(registry: Registry) -> str:
    lines = []
    for name, cls in registry.items():
        lines.append(f"{name} ({cls.role}): {cls.summary}")
        lines.append(f"    abilities: {', '.join(abilities(cls)) or 'none'}")
        for row in settings(cls):
            flag = "required" if row["required"] == "yes" else f"default {row['default']}"
            lines.append(f"    {row['name']:<22} {row['type']:<14} {flag:<22} {row['description']}")
        lines.append("")
    return "\n".join(lines)


def connectors_markdown(registry: Registry) -> str:
    out = ["# Connector settings", "",
           "Generated from the connectors' config models by `gateway connectors --markdown`; a test fails when",
           "this file is stale. Secrets are masked whenever a config is printed.", ""]
    for name, cls in registry.items():
        out += [f"## `{name}` ({cls.role})", "", cls.summary, "",
                f"Abilities: {', '.join(f'`{a}`' for a in abilities(cls)) or 'none'}.", "",
                "| setting | type | required | default | description |", "| --- | --- | --- | --- | --- |"]
        out += [f"| `{r['name']}` | {r['type'].replace('|', '&#124;')} | {r['required']} "  # a bare | splits the cell
                f"| {r['default'].replace('|', '/')} | {r['description']} |" for r in settings(cls)]
        out.append("")
    return "\n".join(out)
