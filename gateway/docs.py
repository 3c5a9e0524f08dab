"""Connector settings reference, generated from the connectors' config models (``gateway connectors``)."""

from __future__ import annotations

from typing import Any, get_args

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from gateway.plugins import Registry, abilities


def _type_name(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) or str(annotation)
    return text.replace("typing.", "").replace("pydantic.types.", "")


def _is_secret(field: FieldInfo) -> bool:
    return "SecretStr" in str(field.annotation) or field.annotation is SecretStr


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    """The settings model of a nested block (``Model`` or ``Model | None``), else None."""
    for candidate in (annotation, *get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _rows(model: type[BaseModel], prefix: str = "") -> list[dict[str, str]]:
    rows = []
    for name, field in model.model_fields.items():
        if name == "type" and not prefix:
            continue
        required = field.is_required()
        default = "" if required or field.default is PydanticUndefined else repr(field.default)
        nested = _nested_model(field.annotation)
        rows.append({
            "name": prefix + name,
            "type": ("secret" if _is_secret(field) else "block" if nested else _type_name(field.annotation)),
            "required": "yes" if required else "no",
            "default": default,
            "description": field.description or "",
        })
        if nested is not None:  # a block's own settings follow it, as ``block.setting``
            rows += _rows(nested, f"{prefix}{name}.")
    return rows


def settings(cls: Any) -> list[dict[str, str]]:
    return _rows(cls.Config)


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
