"""The reply corpus: customer replies as mail clients write them, each with the text an agent must see.

Two sources, both written for this project:

- ``replies/languages/<lang>.yaml``: per language, a customer's reply, a closing, the agent's earlier message, and the
  strings each client writes in that language (Gmail's, Apple Mail's and Thunderbird's attribution lines, Outlook's
  header labels and separator, the phone's device line, the forward marker). Each file gives the same set of shapes
  (``SHAPES``): top-posted under every client, plain and HTML, wrapped attributions, bottom-posted, interleaved,
  with an RFC 3676 signature, forwarded.
- ``replies/cases/*.yaml``: hand-written cases of one kind each (signatures and closings, separators, forwards,
  headers of less common clients, traps where customer text looks like a quote).

``expected`` is the visible text; comparison ignores blank lines and the spaces at the ends of lines (HTML rendering
decides those).
"""

from __future__ import annotations

import html
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from gateway.mail.html import html_to_text

HERE = Path(__file__).parent / "replies"
SUPPORT = "Support <support@example.test>"


@dataclass(frozen=True)
class ReplyCase:
    name: str
    lang: str
    client: str
    style: str  # top | bottom | interleaved | forward | signature | plain (no quote)
    format: str  # plain | html
    body: str
    expected: str

    def text(self) -> str:
        """The plain text the gateway trims: the body itself, or the HTML rendered as the normaliser renders it."""
        return self.body if self.format == "plain" else html_to_text(self.body)


def normal(text: str) -> str:
    """Lines stripped, blank lines dropped: the form in which results are compared."""
    return "\n".join(line.strip() for line in text.replace("\r\n", "\n").split("\n") if line.strip())


def _quote(text: str) -> str:
    return "\n".join(f"> {line}" if line else ">" for line in text.split("\n"))


def _h(text: str) -> str:
    """Plain lines as an HTML fragment (one <br> per line break)."""
    return "<br>".join(html.escape(line) for line in text.split("\n"))


def _outlook_block(lang: dict[str, Any], bold: str = "", subject: str = "Order 1234") -> str:
    o = lang["outlook"]
    return (f"{bold}{o['from'].strip()}:{bold} {SUPPORT}\n{bold}{o['sent'].strip()}:{bold} {o['date']}\n"
            f"{bold}{o['to'].strip()}:{bold} Customer <customer@example.org>\n"
            f"{bold}{o['subject'].strip()}:{bold} {o['re']}: {subject}")


def _own(lang: dict[str, Any]) -> str:
    return f"{lang['reply']}\n\n{lang['closing']}"


def _gmail(lang: dict[str, Any]) -> tuple[str, str, str]:
    return "gmail", f"{_own(lang)}\n\n{lang['gmail']}\n{_quote(lang['quoted'])}\n", _own(lang)


def _gmail_wrapped(lang: dict[str, Any]) -> tuple[str, str, str]:
    attribution = "\n".join(textwrap.wrap(lang["gmail"], 50)) if " " in lang["gmail"] else lang["gmail"]
    return "gmail", f"{_own(lang)}\n\n{attribution}\n\n{_quote(lang['quoted'])}\n", _own(lang)


def _gmail_html(lang: dict[str, Any]) -> tuple[str, str, str]:
    body = (f'<div dir="ltr">{_h(lang["reply"])}<br><br>{_h(lang["closing"])}</div><br><div class="gmail_quote">'
            f'<div dir="ltr" class="gmail_attr">{html.escape(lang["gmail"])}<br></div><blockquote class="gmail_quote"'
            f' style="margin:0px 0px 0px 0.8ex;border-left:1px solid rgb(204,204,204);padding-left:1ex">'
            f'<div dir="ltr">{_h(lang["quoted"])}</div></blockquote></div>')
    return "gmail", body, _own(lang)


def _apple_ios(lang: dict[str, Any]) -> tuple[str, str, str]:
    body = f"{_own(lang)}\n\n{lang['device']}\n\n> {lang['apple']}\n>\n{_quote(lang['quoted'])}\n"
    return "apple_ios", body, _own(lang)


def _apple_html(lang: dict[str, Any]) -> tuple[str, str, str]:
    body = ('<html><head><meta http-equiv="content-type" content="text/html; charset=utf-8"></head>'
            f'<body dir="auto"><div dir="ltr">{_h(lang["reply"])}<br><br>{_h(lang["closing"])}</div>'
            '<div dir="ltr"><br></div><div dir="ltr"><br><blockquote type="cite">'
            f'{html.escape(lang["apple"])}<br><br></blockquote></div><blockquote type="cite"><div dir="ltr">'
            f'{_h(lang["quoted"])}</div></blockquote></body></html>')
    return "apple_mail", body, _own(lang)


def _thunderbird(lang: dict[str, Any]) -> tuple[str, str, str]:
    return "thunderbird", f"{_own(lang)}\n\n{lang['thunderbird']}\n{_quote(lang['quoted'])}\n", _own(lang)


def _thunderbird_html(lang: dict[str, Any]) -> tuple[str, str, str]:
    body = (f'<html><body><p>{_h(lang["reply"])}</p><p>{_h(lang["closing"])}</p><div class="moz-cite-prefix">'
            f'{html.escape(lang["thunderbird"])}<br></div><blockquote type="cite" cite="mid:a1@support.example.test">'
            f'<p>{_h(lang["quoted"])}</p></blockquote></body></html>')
    return "thunderbird", body, _own(lang)


def _outlook(lang: dict[str, Any]) -> tuple[str, str, str]:
    body = f"{_own(lang)}\n\n{'_' * 32}\n{_outlook_block(lang)}\n\n{lang['quoted']}\n"
    return "outlook", body, _own(lang)


def _outlook_html(lang: dict[str, Any]) -> tuple[str, str, str]:
    o = lang["outlook"]
    rows = "<br>".join(f"<b>{html.escape(o[k].strip())}:</b> {html.escape(v)}" for k, v in (
        ("from", SUPPORT), ("sent", o["date"]), ("to", "Customer"), ("subject", f"{o['re']}: Order 1234")))
    body = (f'<html><body><div>{_h(lang["reply"])}</div><div><br></div><div>{_h(lang["closing"])}</div>'
            '<div id="appendonsend"></div><hr style="display:inline-block;width:98%" tabindex="-1">'
            f'<div id="divRplyFwdMsg" dir="ltr"><font face="Calibri, sans-serif" style="font-size:11pt">{rows}'
            f'</font><div>&nbsp;</div></div><div>{_h(lang["quoted"])}</div></body></html>')
    return "outlook_web", body, _own(lang)


def _outlook_separator(lang: dict[str, Any]) -> tuple[str, str, str]:
    return "outlook", f"{_own(lang)}\n\n{lang['original']}\n{_outlook_block(lang)}\n\n{lang['quoted']}\n", _own(lang)


def _outlook_bold(lang: dict[str, Any]) -> tuple[str, str, str]:
    # Outlook's HTML header as Gmail and many helpdesks render it in plain text: bold labels as *Label:*
    return "outlook", f"{_own(lang)}\n\n{_outlook_block(lang, bold='*')}\n\n{lang['quoted']}\n", _own(lang)


def _bottom(lang: dict[str, Any]) -> tuple[str, str, str]:
    body = f"{lang['thunderbird']}\n{_quote(lang['quoted'])}\n\n{_own(lang)}\n"
    return "thunderbird", body, body


def _interleaved(lang: dict[str, Any]) -> tuple[str, str, str]:
    (q1, a1), (q2, a2) = lang["interleaved"]
    own = f"{lang['gmail']}\n> {q1}\n\n{a1}\n\n> {q2}\n\n{a2}\n\n{lang['closing']}"
    return "gmail", f"{own}\n\n{_quote(lang['quoted'])}\n", own


def _signature(lang: dict[str, Any]) -> tuple[str, str, str]:
    body = (f"{_own(lang)}\n\n-- \nCustomer Name\nExample Design Ltd.\n+44 20 7946 0000\n\n{lang['gmail']}\n"
            f"{_quote(lang['quoted'])}\n")
    return "gmail", body, _own(lang)


def _forward(lang: dict[str, Any]) -> tuple[str, str, str]:
    o = lang["outlook"]
    body = (f"{lang['reply']}\n\n{lang['forward']}\n{o['from'].strip()}: Shop <shop@example.org>\n"
            f"Date: {o['date']}\n{o['subject'].strip()}: Order 1234\n{o['to'].strip()}: <customer@example.org>\n\n"
            f"{lang['quoted']}\n")
    return "gmail", body, body


SHAPES: dict[str, tuple[str, str, Callable[[dict[str, Any]], tuple[str, str, str]]]] = {
    "gmail": ("top", "plain", _gmail), "gmail_wrapped": ("top", "plain", _gmail_wrapped),
    "gmail_html": ("top", "html", _gmail_html), "apple_ios": ("top", "plain", _apple_ios),
    "apple_html": ("top", "html", _apple_html), "thunderbird": ("top", "plain", _thunderbird),
    "thunderbird_html": ("top", "html", _thunderbird_html), "outlook": ("top", "plain", _outlook),
    "outlook_html": ("top", "html", _outlook_html), "outlook_separator": ("top", "plain", _outlook_separator),
    "outlook_bold": ("top", "plain", _outlook_bold), "bottom": ("bottom", "plain", _bottom),
    "interleaved": ("interleaved", "plain", _interleaved), "signature": ("signature", "plain", _signature),
    "forward": ("forward", "plain", _forward),
}


@cache
def reply_cases() -> tuple[ReplyCase, ...]:
    """Every case of the corpus, generated shapes first, then the hand-written ones."""
    cases: list[ReplyCase] = []
    for path in sorted((HERE / "languages").glob("*.yaml")):
        lang = yaml.safe_load(path.read_text(encoding="utf-8"))
        for shape, (style, fmt, build) in SHAPES.items():
            client, body, expected = build(lang)
            cases.append(ReplyCase(f"{path.stem}/{shape}", path.stem, client, style, fmt, body, expected))
    for path in sorted((HERE / "cases").glob("*.yaml")):
        for item in yaml.safe_load(path.read_text(encoding="utf-8")):
            cases.append(ReplyCase(f"{path.stem}/{item['name']}", item.get("lang", "en"), item["client"],
                                   item["style"], item.get("format", "plain"), item["body"], item["expected"]))
    return tuple(cases)


@dataclass(frozen=True)
class Score:
    exact: bool  # the visible text is the expected text
    contains: bool  # the expected text is all there, in one piece (maybe with quote or signature left around it)
    lost: bool  # a line the customer wrote is missing


def score(got: str, expected: str) -> Score:
    got_n, expected_n = normal(got), normal(expected)
    got_lines = set(got_n.split("\n"))
    lost = any(line not in got_lines for line in expected_n.split("\n"))
    return Score(got_n == expected_n, expected_n in got_n, lost)
