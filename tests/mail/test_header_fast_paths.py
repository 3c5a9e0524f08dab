"""Dates, charsets and top-level headers read without the standard library's parsing give exactly what it gives."""

from __future__ import annotations

import email
from email import policy
from email.utils import parsedate_to_datetime

import pytest

from gateway.mail.mime import _RFC5322_DATE, _SIMPLE_CHARSET, TopHeaders, _content_charset, parse_date

READ_DIRECTLY = [
    "Mon, 03 Jun 2024 10:12:00 +0000", "Mon, 3 Jun 2024 10:12:00 -0000", "3 Jun 2024 10:12:00 +0530",
    "Sun, 31 Dec 2023 23:59:59 -1200", "Tue, 04 Jun 2024 00:00:00 +0060", "Wed, 29 Feb 2024 12:00:00 -0030",
    "Sat, 03 Jun 1000 10:12:00 +1400", "Thu, 01 Jan 9999 23:59:59 -2359",
]
LEFT_TO_THE_LIBRARY = [
    "Mon, 03 Jun 24 10:12:00 +0000", "Mon, 03 jun 2024 10:12:00 +0000", "Tue, 1 Jan 0001 00:00:00 +0000",
    "Mon, 03 Jun 2024 10:12:00 GMT", "Mon, 03 Jun 2024 10:12:00 +0000 (UTC)", "Mon,  3 Jun 2024 10:12:00 -0700",
    "Mon, 03 Jun 2024 10:12 +0100", "Mon,03 Jun 2024 10:12:00 +0100", "Mon 03 Jun 2024 10:12:00 +0100",
    "Mon, 03 June 2024 10:12:00 +0100", "Mon, 03 Jun 2024 10:12:00", "Mon, 03 Jun 2024 1:2:3 +0100",
    "Mon, 03 Jun 2024 10:12:00 +01000",
]
RAISING_ALIKE = ["Mon, 31 Feb 2024 10:12:00 +0000", "Mon, 03 Jun 2024 24:00:00 +0000",
                 "Mon, 03 Jun 2024 10:12:60 +0000", "Mon, 03 Jun 2024 10:12:00 +2400"]


@pytest.mark.parametrize("value", READ_DIRECTLY)
def test_usual_dates_read_as_the_library_reads_them(value: str) -> None:
    assert _RFC5322_DATE.fullmatch(value)
    mine, theirs = parse_date(value), parsedate_to_datetime(value)
    assert (mine, mine.tzinfo, mine.utcoffset()) == (theirs, theirs.tzinfo, theirs.utcoffset())


@pytest.mark.parametrize("value", LEFT_TO_THE_LIBRARY)
def test_other_dates_are_left_to_the_library(value: str) -> None:
    assert _RFC5322_DATE.fullmatch(value) is None
    try:
        expected = parsedate_to_datetime(value)
    except ValueError:
        with pytest.raises(ValueError):
            parse_date(value)
    else:
        assert parse_date(value) == expected


@pytest.mark.parametrize("value", RAISING_ALIKE)
def test_impossible_dates_raise_as_the_library_raises(value: str) -> None:
    assert _RFC5322_DATE.fullmatch(value)
    with pytest.raises(ValueError):
        parsedate_to_datetime(value)
    with pytest.raises(ValueError):
        parse_date(value)


CHARSET_READ_DIRECTLY = [
    'text/plain; charset="utf-8"', "text/plain; charset=UTF-8", "TEXT/HTML; CHARSET=Windows-1252",
    "text/plain;charset=iso-8859-1", "text/plain ; charset = utf-8", "text/plain; charset=utf-8; format=flowed",
    "text/plain; charset=us-ascii; format=flowed; delsp=yes", "\ttext/plain; charset=x-unknown",
]
CHARSET_LEFT_TO_THE_LIBRARY = [
    "text/plain", "text/plain; format=flowed; charset=utf-8", "text/plain; charset*=utf-8''utf-8",
    'text/plain; charset=""', "text/plain; charset=", 'text/plain; charset="utf-8', "text/plain; charset=utf-8 (x)",
    'text/plain; charset="windows-1252"; format="flowed"', "text/plain;\r\n charset=utf-8", "text; charset=utf-8",
    "text/plain; name=a.txt; charset=utf-8",
]


def _part(content_type: str) -> email.message.Message:
    return email.message_from_bytes(f"Content-Type: {content_type}\r\n\r\nbody\r\n".encode(),
                                    policy=policy.compat32)


@pytest.mark.parametrize("value", CHARSET_READ_DIRECTLY)
def test_usual_charsets_read_as_the_library_reads_them(value: str) -> None:
    part = _part(value)
    assert _SIMPLE_CHARSET.fullmatch(part["Content-Type"])
    assert _content_charset(part) == part.get_content_charset()


@pytest.mark.parametrize("value", CHARSET_LEFT_TO_THE_LIBRARY)
def test_other_charsets_are_left_to_the_library(value: str) -> None:
    part = _part(value)
    assert _SIMPLE_CHARSET.fullmatch(part["Content-Type"]) is None
    assert _content_charset(part) == part.get_content_charset()


def test_top_headers_answer_as_the_message_does() -> None:
    raw = (b"From: a@example.org\r\nReceived: one\r\nreceived: two\r\nSubject: caf\xc3\xa9\r\n"
           b"X-Empty:\r\nRECEIVED: three\r\n\r\nbody\r\n")
    mime = email.message_from_bytes(raw, policy=policy.compat32)
    headers = TopHeaders(mime)
    for name in ("From", "received", "Received", "SUBJECT", "x-empty", "Missing"):
        assert headers.get(name) == mime.get(name)
        assert type(headers.get(name)) is type(mime.get(name))
        assert headers.get_all(name) == (mime.get_all(name) or [])
    assert headers.get_all("Received") == ["one", "two", "three"]
