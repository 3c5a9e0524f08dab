"""A template that is one variable is read without Jinja, and the others render in a lighter context than
Template.render makes: both must give exactly what Jinja gives."""

from __future__ import annotations

from typing import Any

import pytest
from jinja2 import UndefinedError

from gateway.mapping import _ENV, MappingRenderError, _plain_path, _render

VARIABLES: dict[str, Any] = {**_ENV.globals, "message": {
    "text": "Where is my order?", "subject": None, "count": 3, "ratio": 0.5, "urgent": True, "tags": ["a", "b"],
    "sender": {"identifiers": [{"kind": "phone", "value": "+14155550100"}], "name": {"first": "Asha"}},
    "attachments": [], "extras": {"items": "an item called items", "pop": 1}, "empty": "",
}, "customer": {"display_name": "Asha Rao"}, "conversation": type("Conversation", (), {"id": "v1"})()}


def jinja(source: str) -> Any:
    template = _ENV.from_string(source)
    return "".join(template.root_render_func(template.new_context(VARIABLES, shared=True)))


@pytest.mark.parametrize("source", [
    "{{ message.text }}", "{{message.text}}", "{{   message.text   }}", "{{ message.subject }}", "{{ message.count }}",
    "{{ message.ratio }}", "{{ message.urgent }}", "{{ message.tags }}", "{{ message.sender.name.first }}",
    "{{ message.sender.name }}", "{{ message.extras.pop }}", "{{ message.empty }}", "{{ customer }}",
    "{{ conversation.id }}", "{{ message.text }}\n", " {{ message.text }}", "{{ message.sender.identifiers }}",
    # and templates that are more than a variable, rendered by Jinja in a context of their own
    "{{ message.text }} {{ customer.display_name }}", "{% set x = message.count %}{{ x + 1 }}",
    "{% for i in range(message.count) %}{{ i }}{% endfor %}", "{{ message.tags | join(',') }}",
    "{% set ns = namespace(n=0) %}{% for t in message.tags %}{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }}",
])
def test_a_variable_renders_as_jinja_renders_it(source: str) -> None:
    assert _render(source, VARIABLES, "field") == jinja(source)


@pytest.mark.parametrize("source", ["{{ message.extras.items }}", "{{ message.text.upper }}"])
def test_what_is_not_a_dict_item_goes_to_jinja(source: str) -> None:
    assert _render(source, VARIABLES, "field") == jinja(source)
    assert "built-in method" in jinja(source)


@pytest.mark.parametrize("source", ["{{ message.nothing }}", "{{ nobody.text }}", "{{ message.text.nothing }}"])
def test_a_missing_name_fails_as_in_jinja_naming_the_field(source: str) -> None:
    with pytest.raises(UndefinedError):
        jinja(source)
    with pytest.raises(MappingRenderError, match=r"field.*UndefinedError"):
        _render(source, VARIABLES, "field")


def test_only_a_lone_variable_is_read_without_jinja() -> None:
    assert _plain_path("{{ message.sender.name }}") == ("message", "sender", "name")
    for source in ("{{ message.text }} ", "{{ message.text }}\n", "{{ message.text or 'x' }}", "{{ message['text'] }}",
                   "{{ message.text }}{{ message.subject }}", "{{ message.text | upper }}", "{{ 1message }}"):
        assert _plain_path(source) is None, source
