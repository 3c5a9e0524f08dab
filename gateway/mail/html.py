"""HTML mail turned into readable text: paragraphs and line breaks kept, links kept as ``text (url)``.

Quoted history is written as ``>`` lines, the way plain-text clients quote, so one set of rules
(``gateway.mail.quotes``) finds it: ``<blockquote>`` (Apple Mail's ``type=cite``, Gmail's, Thunderbird's), Gmail's
``gmail_attr`` attribution (not the whole ``gmail_quote`` container: interleaved answers are written inside it),
Thunderbird's ``moz-cite-prefix``, Yahoo's ``yahoo_quoted``, and everything from Outlook's ``divRplyFwdMsg`` /
Outlook for Mac's ``OLK_SRC_BODY_SECTION`` header to the end (Outlook writes the old message after its header, not
inside it).
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

_BLOCK = {"p", "div", "br", "tr", "li", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "table", "ul", "ol",
          "hr", "pre", "section", "article", "header", "footer"}
_SKIP = {"style", "script", "head", "title"}
_QUOTE_CLASS = re.compile(r"gmail_attr|moz-cite-prefix|yahoo_quoted|AppleOriginalContents|protonmail_quote"
                          r"|zmail_extra|ms-outlook-mobile-reference-message", re.IGNORECASE)
_REST_QUOTED_ID = re.compile(r"divRplyFwdMsg|OLK_SRC_BODY_SECTION|mail-editor-reference-message-container",
                             re.IGNORECASE)


class _Text(HTMLParser):
    def __init__(self, quotes: bool) -> None:
        super().__init__(convert_charrefs=True)
        self.quotes = quotes
        self.out: list[tuple[str, int]] = []
        self.skip = 0
        self.links: list[str | None] = []
        self.link_text: list[str] = []
        self.open_quotes: list[list[str | int]] = []  # [tag, nesting of that tag inside the quote]
        self.rest_quoted = False

    @property
    def depth(self) -> int:
        return len(self.open_quotes) + (1 if self.rest_quoted else 0)

    def emit(self, text: str) -> None:
        self.out.append((text, self.depth))

    def _quote_start(self, tag: str, attrs: dict[str, str | None]) -> None:
        for entry in self.open_quotes:
            if entry[0] == tag:
                entry[1] = int(entry[1]) + 1
        if not self.quotes:
            return
        if _REST_QUOTED_ID.search(attrs.get("id") or ""):
            self.rest_quoted = True
        elif tag == "blockquote" or _QUOTE_CLASS.search(f"{attrs.get('class') or ''} {attrs.get('id') or ''}"):
            self.open_quotes.append([tag, 1])

    def _quote_end(self, tag: str) -> None:
        for entry in self.open_quotes:
            if entry[0] == tag:
                entry[1] = int(entry[1]) - 1
        while self.open_quotes and int(self.open_quotes[-1][1]) <= 0:
            self.open_quotes.pop()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        if tag in _SKIP:
            self.skip += 1
        elif tag == "a":
            self.links.append(named.get("href"))
            self.link_text.append("")
        elif tag == "li":
            self.emit("\n- ")
        elif tag in _BLOCK:
            self.emit("\n")
        elif tag == "img":
            alt = named.get("alt")
            if alt:
                self.emit(f"[{alt}]")
        if tag in ("div", "blockquote", "span", "table"):
            self._quote_start(tag, named)

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP:
            self.skip = max(0, self.skip - 1)
        elif tag == "a" and self.links:
            href, text = self.links.pop(), self.link_text.pop().strip()
            if href and href.startswith(("http://", "https://", "mailto:")) and href.removeprefix("mailto:") != text:
                self.emit(f" ({href})")
        elif tag in _BLOCK and tag not in ("br", "li"):
            self.emit("\n")
        if tag in ("div", "blockquote", "span", "table"):
            self._quote_end(tag)

    def handle_data(self, data: str) -> None:
        if self.skip:
            return
        data = re.sub(r"\s+", " ", data)
        if self.link_text:
            self.link_text[-1] += data
        self.emit(data)


def _lines(fragments: list[tuple[str, int]]) -> list[str]:
    """Join the fragments into lines; a line with quoted text gets one "> " per quote level."""
    lines: list[str] = []
    current, depth = "", 0
    for text, level in fragments:
        pieces = text.split("\n")
        for n, piece in enumerate(pieces):
            if n:
                lines.append("> " * depth + current.strip() if current.strip() else "")
                current, depth = "", 0
            if piece.strip():
                depth = max(depth, level)
            current += piece
    lines.append("> " * depth + current.strip() if current.strip() else "")
    return lines


def html_to_text(html: str, *, quotes: bool = True) -> str:
    """Readable plain text of an HTML body; quoted history as ``>`` lines unless ``quotes`` is False."""
    parser = _Text(quotes)
    parser.feed(html)
    parser.close()
    lines = [line.replace("\xa0", " ").rstrip() for line in _lines(parser.out)]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
