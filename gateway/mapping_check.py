"""Strict checks of a mapping, run by ``gateway check``, ``gateway mapping test``, every start and every reload.

Each template and rule is read for the names, filters and message fields it uses, then rendered against a sample
message of every channel type (with and without a customer name); each field it sets is checked against the CRM's
field names. A mapping that passes does not dead-letter messages for a misspelling.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from jinja2 import TemplateAssertionError, TemplateSyntaxError, meta, nodes
from jinja2.sandbox import SandboxedEnvironment

from gateway.context import conversation_context, mapping_context
from gateway.crmfields import FieldCatalog
from gateway.model import Attachment, ChannelType, Identifier, Message, Party, RawRef, ThreadRef
from gateway.yamlsource import ConfigIssue, YamlDocument

Path_ = tuple[str | int, ...]
VARIABLES = {
    "message": frozenset(Message.model_fields),
    "customer": frozenset({"id", "display_name", "identifiers"}),
    "conversation": frozenset({"id", "channel", "thread_rule", "opened_by_message", "previous_id"}),
    "route": frozenset({"name", "names"}),
}
_DICT_METHODS = frozenset({"get", "items", "keys", "values"})
_SENDERS = {
    ChannelType.EMAIL: ("email", "ada@example.com"), ChannelType.SMS: ("phone", "+14155550100"),
    ChannelType.MMS: ("phone", "+14155550100"), ChannelType.WHATSAPP: ("whatsapp", "+919847000001"),
    ChannelType.SLACK: ("slack", "T0001:U0001"), ChannelType.MESSENGER: ("messenger", "100001:200001"),
    ChannelType.INSTAGRAM: ("instagram", "300001:400001"), ChannelType.X: ("x", "1234567890"),
}
_WITH_MEDIA = {ChannelType.EMAIL, ChannelType.MMS, ChannelType.WHATSAPP}


def sample_message(channel: ChannelType, named: bool) -> Message:
    """A message as the channel's connector would produce it."""
    kind, value = _SENDERS[channel]
    now = datetime(2026, 1, 5, 9, 30, tzinfo=UTC)
    attachments = (Attachment(filename="photo.jpg", content_type="image/jpeg", size=1024, location="att:3f2a"),) \
        if channel in _WITH_MEDIA else ()
    email = channel is ChannelType.EMAIL
    return Message(
        channel=channel, connector=f"sample-{channel.value}", connector_type="sample",
        provider_message_id=f"sample-{channel.value}-1",
        thread=ThreadRef(message_id="<1@example.com>") if email else ThreadRef(provider_thread_id="thread-1"),
        sender=Party(identifiers=(Identifier(kind=kind, value=value),), display_name="Ada Lovelace" if named else None),
        recipients=(Party(identifiers=(Identifier(kind="email", value="help@example.com"),)),) if email else (),
        subject="Invoice 2291 is wrong" if email else None, text="Where is my order?",
        full_text="Where is my order?", html="<p>Where is my order?</p>" if email else None,
        attachments=attachments, sent_at=now, received_at=now, language="en",
        raw=RawRef(inbox_id=1, connector=f"sample-{channel.value}"))


@lru_cache(maxsize=1)
def samples() -> tuple[tuple[str, dict[str, Any]], ...]:
    """(channel, mapping variables) for every channel type, with and without a customer name."""
    return tuple(_samples())


def _samples() -> Iterator[tuple[str, dict[str, Any]]]:
    for channel in ChannelType:
        for named in (True, False):
            message = sample_message(channel, named)
            identifiers = [{"kind": i.kind.value, "value": i.value} for i in message.sender.identifiers]
            customer = {"id": "c0ffee", "display_name": message.sender.display_name, "identifiers": identifiers}
            conversation = conversation_context("v0ffee", channel.value, "new", opened_by_message=True,
                                                previous_id=None)
            yield channel.value, mapping_context(message, customer, conversation)


def _hint(name: str, known: frozenset[str] | set[str]) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


@lru_cache(maxsize=4096)
def read_template(env: SandboxedEnvironment, source: str) -> tuple[str, ...]:
    """What is wrong with the names, filters, tests and fields one template uses (it has parsed already)."""
    try:
        tree = env.parse(source)
    except TemplateSyntaxError:
        return ()  # reported as a syntax error
    problems = []
    known_names = set(VARIABLES) | set(env.globals)
    for name in sorted(_free_names(env, tree) - known_names):
        problems.append(f"unknown name {name!r}{_hint(name, known_names)}; a mapping sees message, customer, "
                        "conversation and route")
    for node in tree.find_all(nodes.Filter):
        if node.name not in env.filters:
            problems.append(f"unknown filter {node.name!r}{_hint(node.name, set(env.filters))}")
    for test in tree.find_all(nodes.Test):
        if test.name not in env.tests:
            problems.append(f"unknown test {test.name!r}{_hint(test.name, set(env.tests))}")
    for owner, attr in _top_level_fields(tree):
        if attr not in VARIABLES[owner] and attr not in _DICT_METHODS:
            problems.append(f"{owner} has no field {attr!r}{_hint(attr, set(VARIABLES[owner]))}")
    return tuple(dict.fromkeys(problems))


def _free_names(env: SandboxedEnvironment, tree: nodes.Template) -> set[str]:
    try:
        return meta.find_undeclared_variables(tree)
    except TemplateAssertionError:  # an unknown filter stops the compiler: count names read and never assigned
        stored = {n.name for n in tree.find_all(nodes.Name) if n.ctx in ("store", "param")}
        return {n.name for n in tree.find_all(nodes.Name) if n.ctx == "load"} - stored


def _top_level_fields(tree: nodes.Template) -> Iterator[tuple[str, str]]:
    """``message.x`` and ``message['x']`` in a template."""
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        target = node.node
        if not isinstance(target, nodes.Name) or target.name not in VARIABLES or target.ctx != "load":
            continue
        if isinstance(node, nodes.Getattr):
            yield target.name, node.attr
        elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
            yield target.name, node.arg.value


def check_mapping(doc: YamlDocument, spec: Any, catalog: FieldCatalog | None, env: SandboxedEnvironment,
                  render: Callable[[str, dict[str, Any]], Any],
                  evaluate: Callable[[str, dict[str, Any]], Any]) -> list[ConfigIssue]:
    """Every problem of a parsed mapping: names and filters, sample renders, CRM field names."""
    issues: list[ConfigIssue] = []
    templates: list[tuple[Path_, str]] = []  # (where, source) of every template, in file order
    conditions: list[tuple[int, str]] = []

    def collect(value: Any, path: Path_) -> None:
        if isinstance(value, str):
            templates.append((path, value))
        elif isinstance(value, dict):
            for key, item in value.items():
                collect(item, (*path, key))
        elif isinstance(value, list):
            for index, item in enumerate(value):
                collect(item, (*path, index))

    collect(spec.fields, ("fields",))
    for index, rule in enumerate(spec.rules):
        conditions.append((index, rule.when))
        collect(rule.set, ("rules", index, "set"))
        collect(rule.add_tags, ("rules", index, "add_tags"))
    unreadable: set[Path_] = set()
    for path, source in [*templates, *((("rules", i, "when"), "{{ (" + w + ") }}") for i, w in conditions)]:
        for problem in read_template(env, source):
            issues.append(doc.issue(path, problem))
            unreadable.add(path)
    issues += _render_samples(doc, spec, templates, unreadable, render, evaluate)
    if catalog is not None:
        issues += _field_names(doc, spec, catalog)
    return issues


def _render_samples(doc: YamlDocument, spec: Any, templates: list[tuple[Path_, str]], unreadable: set[Path_],
                    render: Callable[[str, dict[str, Any]], Any],
                    evaluate: Callable[[str, dict[str, Any]], Any]) -> list[ConfigIssue]:
    failures: dict[tuple[Path_, str], list[str]] = {}
    channels: list[str] = []

    def attempt(path: Path_, run: Callable[[str, dict[str, Any]], Any], source: str, context: dict[str, Any],
                channel: str) -> Any:
        if path in unreadable:
            return None
        try:
            return run(source, context)
        except Exception as exc:  # any error a message would meet at run time
            failures.setdefault((path, f"{type(exc).__name__}: {exc}"), []).append(channel)
            return None

    for channel, context in samples():
        channels.append(channel)
        for path, source in templates:
            if path[0] == "fields":
                attempt(path, render, source, context, channel)
        for index, rule in enumerate(spec.rules):
            if not attempt(("rules", index, "when"), evaluate, rule.when, context, channel):
                continue
            for path, source in templates:
                if path[:2] == ("rules", index):
                    attempt(path, render, source, context, channel)
    everyone = list(dict.fromkeys(channels))
    issues = []
    for (path, error), failed in failures.items():
        failed = list(dict.fromkeys(failed))
        which = "every sample message" if failed == everyone else f"a sample {', '.join(failed)} message"
        issues.append(doc.issue(path, f"fails on {which}: {error}"))
    return issues


def _field_names(doc: YamlDocument, spec: Any, catalog: FieldCatalog) -> list[ConfigIssue]:
    issues = []
    if spec.crm != catalog.crm:
        issues.append(doc.issue(("crm",), f"the mapping is written for {spec.crm!r}, but used by a {catalog.crm} crm"))
    for name, reason in catalog.problems(spec.fields).items():
        issues.append(doc.issue(("fields", name), reason))
    for index, rule in enumerate(spec.rules):
        for name, reason in catalog.problems(rule.set).items():
            issues.append(doc.issue(("rules", index, "set", name), reason))
        if rule.add_tags and (reason := catalog.problem("tags")) is not None:
            issues.append(doc.issue(("rules", index, "add_tags"), reason))
    return issues


def check_against_crms(config: Any, registry: Any, crms: dict[str, Any]) -> list[str]:
    """``gateway check --online``: each mapping's field names checked against the fields the CRM describes."""
    from gateway.mapping import mapping_path_for, validate_mapping_file

    lines = []
    for name, crm in crms.items():
        path = mapping_path_for(config, name, registry)
        try:
            catalog = crm.describe_fields()
        except Exception as exc:  # reachability was reported above; this names what could not be checked
            lines.append(f"{name}: mapping fields not checked against the CRM: {type(exc).__name__}: {exc}")
            continue
        if catalog is not None and path is not None:
            lines += [str(issue) for issue in validate_mapping_file(path, catalog)]
    return lines
