"""Declarative mappings from canonical message + customer + conversation to a CRM's fields.

A mapping file holds ``fields`` (each string is a sandboxed Jinja template) and ``rules`` (a ``when`` expression
and the fields to ``set`` or tags to ``add_tags`` when it holds). Its sibling ``NAME.tests.yaml`` lists sample inputs
and the fields they must produce; ``gateway mapping test`` and the test suite run them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from jinja2 import StrictUndefined, TemplateSyntaxError, UndefinedError
from jinja2.sandbox import SandboxedEnvironment
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gateway.crmfields import MAPPINGS_DIR, UPDATE_KEY, FieldCatalog
from gateway.plugins import CrmConfig, CrmConnector
from gateway.routing import NO_ROUTE
from gateway.yamlsource import ConfigError, ConfigIssue, YamlDocument, dotted, interpolate, load_yaml

if TYPE_CHECKING:
    from gateway.config import GatewayConfig
    from gateway.plugins import Registry

_DICT_ATTRIBUTES = frozenset(dir(dict))


class _Environment(SandboxedEnvironment):
    """The sandbox, with ``message.text`` on a plain dict read as the item it is: Jinja tries the attribute first
    and takes the item when that raises, at the cost of an exception for every name in every template."""

    def getattr(self, obj: Any, attribute: str) -> Any:
        if type(obj) is dict and attribute not in _DICT_ATTRIBUTES:  # a dict has no attribute but its class's
            try:
                return obj[attribute]
            except KeyError:
                pass
        return super().getattr(obj, attribute)


_ENV = _Environment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False)
__all__ = ["MAPPINGS_DIR", "Mapping", "MappingRenderError", "MappingSpec"]


class Rule(BaseModel):
    """Applied in order after the fields: when ``when`` holds, ``set`` overrides fields and ``add_tags`` adds tags."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    when: str = Field(min_length=1, description="A Jinja expression over message, customer and conversation.")
    set: dict[str, Any] = Field({}, description="Fields to set (values are templates).")
    add_tags: list[str] = Field([], description="Tags to add (templates); duplicates are dropped.")
    on: Literal["create", "every_message"] = Field(
        "create", description="create: the fields it sets are written when a ticket is created; every_message: "
                              "they also change the conversation's existing ticket (a priority only ever rises).")
    update: list[str] = Field([], description="The fields it sets that may change an existing ticket (implies "
                                              "on: every_message); without it, every_message changes them all.")

    @model_validator(mode="after")
    def _updates_known(self) -> Rule:
        if self.update and self.on == "create" and "on" in self.model_fields_set:
            raise ValueError("`update` changes existing tickets: leave `on` out or write on: every_message")
        unknown = [name for name in self.update if name not in self.set and name != "tags"]
        if unknown:
            raise ValueError(f"update names {', '.join(map(repr, unknown))}, which the rule does not set")
        return self

    def changes_existing(self, name: str) -> bool:
        """Whether the field ``name`` this rule sets is also written on an existing ticket."""
        return (self.on == "every_message" or bool(self.update)) and (not self.update or name in self.update)


class MappingSpec(BaseModel):
    """A mapping file (mappings/*.yaml): canonical message, customer and conversation to one CRM's fields."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="Mapping")
    crm: str = Field(description="The connector type the mapping is written for (zendesk, salesforce, ...).")
    fields: dict[str, Any] = Field(description="CRM field name to value; every string is a sandboxed Jinja template.")
    rules: list[Rule] = Field([], description="Conditional overrides, applied in order.")


def render_mapping_schema() -> str:
    """The JSON Schema mapping files are validated against, as published in docs/schema/mapping.schema.json."""
    schema = MappingSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://channel-gateway.dev/schema/mapping.schema.json"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


class MappingRenderError(Exception):
    """A template failed on this input; ``field`` names the mapped field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"mapping field {field!r}: {message}")
        self.field = field


def _templates(value: Any, path: tuple[str | int, ...]) -> list[tuple[tuple[str | int, ...], str]]:
    if isinstance(value, str):
        return [(path, value)]
    if isinstance(value, dict):
        return [t for key, item in value.items() for t in _templates(item, (*path, key))]
    if isinstance(value, list):
        return [t for index, item in enumerate(value) for t in _templates(item, (*path, index))]
    return []


def _check(doc: YamlDocument, catalog: FieldCatalog | None) -> tuple[MappingSpec | None, list[ConfigIssue]]:
    try:
        spec = MappingSpec.model_validate(doc.data)
    except ValidationError as exc:
        return None, [doc.issue(tuple(e["loc"]), "unknown key" if e["type"] == "extra_forbidden" else e["msg"])
                      for e in exc.errors()]
    issues = []
    for path, source in _templates(spec.fields, ("fields",)):
        try:
            _ENV.parse(source)
        except TemplateSyntaxError as exc:
            issues.append(doc.issue(path, f"template syntax: {exc.message}"))
    for index, rule in enumerate(spec.rules):
        try:
            _ENV.compile_expression(rule.when)
        except TemplateSyntaxError as exc:
            issues.append(doc.issue(("rules", index, "when"), f"expression syntax: {exc.message}"))
        for path, source in _templates(rule.set, ("rules", index, "set")):
            try:
                _ENV.parse(source)
            except TemplateSyntaxError as exc:
                issues.append(doc.issue(path, f"template syntax: {exc.message}"))
    if not issues:
        from gateway.mapping_check import check_mapping

        issues = sorted(check_mapping(doc, spec, catalog, _ENV, _render_strict,
                                      lambda source, context: _compiled_expression(source)(**context)),
                        key=lambda issue: issue.line or 0)
    return spec, issues


def _render_strict(source: str, context: dict[str, Any]) -> Any:
    return _compiled_template(source).render(**context) if "{" in source else source


def default_catalog(crm_type: str, registry: Registry | None = None) -> FieldCatalog | None:
    """The field names a connector type reads with its default settings (None: any, or no such type)."""
    from gateway.plugins import Registry

    cls = (registry or Registry.from_entry_points()).get(crm_type)
    return cls.mapping_fields(None) if cls is not None and issubclass(cls, CrmConnector) else None


def _load(path: Path) -> tuple[YamlDocument, list[ConfigIssue]]:
    """Parse a mapping; ``${VAR}`` and ``${VAR:-default}`` take environment values, as in the config file."""
    doc = load_yaml(path)
    return doc, interpolate(doc)


def validate_mapping_file(path: Path, catalog: FieldCatalog | None) -> list[ConfigIssue]:
    """Every issue of a mapping file, its field names checked against ``catalog`` (None: any name)."""
    try:
        doc, issues = _load(path)
    except ConfigError as exc:
        return exc.issues
    return issues + _check(doc, catalog)[1]


@dataclass(frozen=True)
class Mapping:
    """A loaded, validated mapping."""

    path: Path
    spec: MappingSpec

    @classmethod
    def load(cls, path: Path, catalog: FieldCatalog | None = None) -> Mapping:
        """Load and check a mapping; its field names against ``catalog``, by default its ``crm`` type's names."""
        doc, issues = _load(path)
        if catalog is None and isinstance(doc.data, dict) and isinstance(doc.data.get("crm"), str):
            catalog = default_catalog(doc.data["crm"])
        spec, more = _check(doc, catalog)
        issues += more
        if issues or spec is None:
            raise ConfigError(issues)
        return cls(path, spec)

    def apply(self, context: dict[str, Any]) -> dict[str, Any]:
        """Render the fields for one input (``message``, ``customer``, ``conversation`` and ``route`` as plain
        dicts). The fields that rules with ``on: every_message`` set are also under ``UPDATE_KEY``: the connector
        writes those on an existing ticket too."""
        variables = {**_ENV.globals, **context}  # what each template's render would copy again
        fields = {name: _render(value, variables, name) for name, value in self.spec.fields.items()}
        updates: dict[str, Any] = {}
        for index, rule in enumerate(self.spec.rules):
            try:
                holds = _compiled_expression(rule.when)(**context)
            except UndefinedError as exc:
                raise MappingRenderError(f"rules[{index}].when", str(exc)) from None
            if not holds:
                continue
            for name, value in rule.set.items():
                fields[name] = _render(value, variables, name)
                if rule.changes_existing(name):
                    updates[name] = fields[name]
            if rule.add_tags:
                tags = list(fields.get("tags") or [])
                tags += [tag for tag in (_render(t, variables, "tags") for t in rule.add_tags) if tag not in tags]
                fields["tags"] = tags
        if updates:
            fields[UPDATE_KEY] = updates
        return fields


@lru_cache(maxsize=1024)
def _compiled_expression(source: str) -> Any:
    return _ENV.compile_expression(source)


@lru_cache(maxsize=4096)
def _compiled_template(source: str) -> Any:
    return _ENV.from_string(source)


_PLAIN_PATH = re.compile(r"\{\{\s*([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)\s*\}\}")


@lru_cache(maxsize=4096)
def _plain_path(source: str) -> tuple[str, ...] | None:
    """The names of a template that is one variable and nothing else (``{{ message.text }}``), else None."""
    match = _PLAIN_PATH.fullmatch(source)
    return tuple(match.group(1).split(".")) if match else None


_MISSING = object()


def _read_plain_path(path: tuple[str, ...], variables: dict[str, Any]) -> str | None:
    """``{{ a.b.c }}`` over plain dicts, rendered as Jinja renders it (``str`` of the value); None where Jinja has
    more to do (a missing name, an attribute, an object that is not a dict), which the template then does."""
    value = variables.get(path[0], _MISSING)
    for name in path[1:]:
        if type(value) is not dict or name in _DICT_ATTRIBUTES:
            return None
        value = value.get(name, _MISSING)
    return None if value is _MISSING else str(value)


def _render(value: Any, variables: dict[str, Any], field: str) -> Any:
    """``value`` with each template rendered; ``variables`` hold the environment's globals and the input, shared by
    the renders (a template's own assignments go to its context, never to them)."""
    if isinstance(value, str):
        if "{" not in value:
            return value
        path = _plain_path(value)
        if path is not None:
            plain = _read_plain_path(path, variables)
            if plain is not None:
                return plain
        template = _compiled_template(value)
        try:  # Template.render without its copy of the variables, nor the set of globals' names its context
            # makes for {% import %}, which a template without a loader cannot do
            context = _ENV.context_class(_ENV, variables, template.name, template.blocks)
            return "".join(template.root_render_func(context))
        except Exception as exc:  # a template error is an admin's mapping bug: name the field
            raise MappingRenderError(field, f"{type(exc).__name__}: {exc}") from None
    if isinstance(value, dict):
        return {key: _render(item, variables, f"{field}.{key}") for key, item in value.items()}
    if isinstance(value, list):
        rendered = [_render(item, variables, f"{field}[{i}]") for i, item in enumerate(value)]
        return [item for item in rendered if item != ""]
    return value


def mapping_path_for(config: GatewayConfig, crm_name: str, registry: Registry) -> Path | None:
    """The mapping file a CRM instance uses: its ``mapping`` setting, else the connector's shipped default."""
    crm = config.crms[crm_name]
    if isinstance(crm, CrmConfig) and crm.mapping:
        return config.resolve_path(crm.mapping)
    cls = registry.get(crm.type)
    default = cls.default_mapping if cls is not None and issubclass(cls, CrmConnector) else None
    return MAPPINGS_DIR / default if default else None


def test_file_for(mapping: Path) -> Path:
    return mapping.with_name(mapping.name.removesuffix(".yaml") + ".tests.yaml")


def mappings_named(paths: list[Path]) -> list[Path]:
    """The mappings among ``paths``: a ``NAME.tests.yaml`` stands for its ``NAME.yaml``, so that
    ``mappings/*.yaml`` names each mapping once."""
    chosen: list[Path] = []
    for path in paths:
        if path.name.endswith(".tests.yaml"):
            path = path.with_name(path.name.removesuffix(".tests.yaml") + ".yaml")
        if path not in chosen:
            chosen.append(path)
    return chosen


def run_mapping_tests(mapping_path: Path) -> list[str]:
    """Check a mapping and run its sibling tests; return one line per failure (empty when all pass)."""
    if not mapping_path.exists():
        return [f"{mapping_path}: missing (named by {test_file_for(mapping_path).name})"]
    try:
        mapping = Mapping.load(mapping_path)
    except ConfigError as exc:
        return [str(issue) for issue in exc.issues]
    tests_path = test_file_for(mapping_path)
    if not tests_path.exists():
        return [f"{tests_path}: missing (every mapping needs a sibling test file)"]
    doc = load_yaml(tests_path)
    cases = doc.data.get("cases") if isinstance(doc.data, dict) else None
    if not isinstance(cases, list) or not cases:
        return [f"{tests_path}: needs a non-empty 'cases' list"]
    failures = []
    for index, case in enumerate(cases):
        name = case.get("name", f"case {index}")
        where = f"{tests_path}:{doc.line_of(('cases', index))}"
        try:
            got = mapping.apply({"route": NO_ROUTE, **case["input"]})
        except MappingRenderError as exc:
            failures.append(f"{where} {name}: {exc}")
            continue
        for key, want in (case.get("expect") or {}).items():
            if got.get(key) != want:
                failures.append(f"{where} {name}: {dotted(('expect', key))} expected {want!r}, got {got.get(key)!r}")
        for key in case.get("absent") or []:
            if key in got:
                failures.append(f"{where} {name}: {key} expected absent, got {got[key]!r}")
    return failures
