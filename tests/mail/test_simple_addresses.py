"""The address headers read without ``getaddresses`` give exactly what it gives; the others are left to it."""

from __future__ import annotations

from email.utils import getaddresses

import pytest

from gateway.mail.mime import _simple_addresses

READ_DIRECTLY = [
    '"Customer 12" <customer12@example.org>', "Customer 12 <customer12@example.org>", "a@b.example",
    " <a@b.example> ", '"" <a@b.example>', '"two  spaces" <x@y.example>', '"=?utf-8?b?w7Y=?= x" <a@b.example>',
    '"J. Smith" <j@x.example>', '"alice@example.com" <bob@example.org>', '"a,b" <c@d.example>',
    '"Zoë Ö" <a@b.example>', '"a\tb" <a@b.example>', '"a (b) <c>" <a@b.example>', '\t"x" <a+tag@b.example>\t',
]
LEFT_TO_GETADDRESSES = [
    "a@b.example, c@d.example", "Joe <a@b.example> (comment)", '"x\\"y" <a@b.example>', "\u00a0a@b.example",
    "J. Smith <j@x.example>", "Undisclosed recipients:;", "<a@b.example", "just a name",
]


@pytest.mark.parametrize("value", READ_DIRECTLY)
def test_common_forms_read_as_getaddresses_reads_them(value: str) -> None:
    assert _simple_addresses([value]) == getaddresses([value])


@pytest.mark.parametrize("value", LEFT_TO_GETADDRESSES)
def test_other_forms_are_left_to_getaddresses(value: str) -> None:
    assert _simple_addresses([value]) is None
    assert _simple_addresses(['"Customer 1" <c1@example.org>', value]) is None
