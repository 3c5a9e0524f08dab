# ruff: noqa: RUF001  (the full-width colon ends CJK attribution lines)
"""The visible reply: what the sender wrote now, without the quoted history and the signature.

Rules apply in this order, and when unsure the text is kept (a kept quote costs an agent a glance, a dropped
sentence costs the customer an answer):

1. Forward markers ("---------- Forwarded message ---------", "Begin forwarded message:", an Outlook header block
   whose subject is "FW: ..."): what follows is material the customer sends on purpose, nothing is cut.
2. Strong separators and attribution lines: "-----Original Message-----" and its localised and Thunderbird forms,
   Outlook's underscore line and From/Sent/To header blocks, "On ... wrote:" in every language of
   ``quote_patterns``. When the history after them is not ``>``-quoted (Outlook), everything from there is cut.
3. Quote markers: a ``>`` block is cut only when no customer text follows it; text after it (interleaved answers,
   bottom-posting) keeps everything up to that text.
4. Signatures, in the customer's last segment only: an RFC 3676 "-- " block, trailing device lines ("Sent from my
   iPhone"), a trailing legal disclaimer. Closings ("Thanks, Alex", "Med venlig hilsen") are the customer's words.

The work is linear in the lines and capped (``MAX_CHARS``), so any input is trimmed in a few milliseconds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gateway.mail import quote_patterns as p

DEFAULT_LANGUAGES = ("en", "de", "fr", "es", "it", "nl", "pl", "sv", "da", "cs", "ja", "ko", "zh")
# Caps that keep any input to a few milliseconds; past them nothing more is cut (the text is kept).
MAX_CHARS = 100_000  # only the head of a longer body is searched for the quote
MAX_LINES = 5_000  # lines searched for the quote
MAX_CHECKS = 200  # lines that look like a header line (end in ":", start with "-") given the full pattern set
MAX_BLOCKS = 100  # quote blocks followed by more of the customer's text (interleaved answers)
MAX_HEADER_LINE = 300  # longer lines are prose, never an attribution or a header line
_TIME = re.compile(r"\d{1,2}[:.h]\d{2}|\d{4}-\d{2}-\d{2}|\d{1,2}[./]\d{1,2}[./]\d{2,4}")
# Where an attribution may start inside the reply's own last line ("Great, thanks! On Mon, ... wrote:").
_SHARED_OPENER = re.compile(r"\s(?:On|Le|Am|El|Op|Em|Den)\s")
_CANDIDATE_START = frozenset(">-_*")
_WROTE_END = re.compile(rf"(?:{p.WROTE})\s*$", re.IGNORECASE)
_SENTENCE_END = (".", "!", "?", "。", "！", "？")
_LINK_TAIL = re.compile(r"\s*<https?://[^<>\s]*>\s*$")  # "Get Outlook for Android<https://aka.ms/...>"


class _Budget:
    """How many more lines may be given the full pattern set."""

    def __init__(self) -> None:
        self.checks = MAX_CHECKS

    def spend(self) -> bool:
        self.checks -= 1
        return self.checks >= 0


@dataclass(frozen=True)
class _Boundary:
    kind: str  # "forward" | "header" (separator, attribution, header block) | "quote" (a ">" line)
    begin: int
    end: int  # first line after the marker lines


def visible_reply(text: str, languages: tuple[str, ...] = DEFAULT_LANGUAGES) -> str:
    """The newly written part of a plain-text body; the whole text when nothing is recognised as quoted.

    ``languages`` is accepted for compatibility: every language's patterns are always on, since a customer's
    mail client may write its reply header in a language other than the customer's.
    """
    del languages
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        return ""
    head, tail = text[:MAX_CHARS], text[MAX_CHARS:]
    lines = head.split("\n")
    if len(lines) > MAX_LINES:
        lines, tail = lines[:MAX_LINES], "\n".join(lines[MAX_LINES:]) + tail
    budget = _Budget()
    kept, cut = _visible_lines(_split_shared_lines(lines, budget), budget)
    if not cut and tail:  # nothing recognised in the head: the whole text, the part past the cap too
        kept = text.split("\n")
    reply = "\n".join(kept).strip("\n").rstrip()
    return reply if reply.strip() else text.strip()


def _split_shared_lines(lines: list[str], budget: _Budget) -> list[str]:
    """Lines with an attribution written after the customer's own words split in two (share sheets and some
    phone clients put "On ... wrote:" at the end of the reply's last line)."""
    out: list[str] = []
    for line in lines:
        stripped = line.strip()
        if (len(stripped) <= MAX_HEADER_LINE and stripped.endswith((":", "：")) and not stripped.startswith(">")
                and not p.OPENER.match(line) and budget.spend()):
            starts = [m.start() + 1 for m in _SHARED_OPENER.finditer(line)][-3:]
            split = next((at for at in starts if any(ch.isalnum() for ch in line[:at]) and _is_attribution(line[at:])),
                         None)
            if split is not None:
                out += [line[:split].rstrip(), line[split:]]
                continue
        out.append(line)
    return out


def _visible_lines(lines: list[str], budget: _Budget) -> tuple[list[str], bool]:
    """(kept lines, whether anything was recognised as quoted or forwarded)."""
    kept: list[str] = []
    pending_cut: int | None = None  # where to cut if no customer text follows the last quote block
    pos = 0
    for _ in range(MAX_BLOCKS):
        boundary = _next_boundary(lines, pos, budget)
        if boundary is None:
            return _finish(kept, lines[pos:], pending_cut), pending_cut is not None
        if boundary.kind == "forward":
            return kept + lines[pos:], True
        after = _skip_blank(lines, boundary.end)
        quoted = after < len(lines) and lines[after].lstrip().startswith(">")
        if boundary.kind == "header" and not quoted:  # Outlook-style history, not quoted: all of it goes
            return _finish(kept, lines[pos:boundary.begin], pending_cut), True
        end = _skip_quote_block(lines, boundary.end)
        if _skip_blank(lines, end) >= len(lines):  # nothing after the quote: cut it
            segment = _drop_unknown_attribution(lines[pos:boundary.begin], boundary.kind)
            return _finish(kept, segment, pending_cut), True
        segment = lines[pos:boundary.begin]
        if _has_text(segment) or pending_cut is None:
            pending_cut = len(kept) + len(segment)
        kept += lines[pos:end]
        pos = end
    return kept + lines[pos:], True  # past the cap on interleaved blocks the rest is kept as it is


def _finish(kept: list[str], segment: list[str], pending_cut: int | None) -> list[str]:
    """The last segment with its signature trimmed; if nothing of the customer's is left in it, the quote block
    before it was the end of the reply after all."""
    trimmed = _trim_signature(segment)
    if not _has_text(trimmed) and pending_cut is not None:
        return _trim_signature(kept[:pending_cut])
    return kept + trimmed


def _next_boundary(lines: list[str], start: int, budget: _Budget) -> _Boundary | None:
    for i in range(start, len(lines)):
        line = lines[i]
        stripped = line.strip()
        if not stripped or len(stripped) > MAX_HEADER_LINE:
            continue
        # 3. quote markers (an attribution quoted with ">", as Apple Mail writes it, is 2.)
        if stripped[0] == ">" and not (stripped.endswith((":", "：")) and _attribution_start(lines, i) is not None):
            return _Boundary("quote", i, i)
        # every other marker line starts with a dash, an underscore or an asterisk, or holds a colon
        if stripped[0] not in _CANDIDATE_START and ":" not in stripped and "：" not in stripped:
            continue
        if not budget.spend():
            return None
        # 1. forwards (Apple Mail, iOS; Gmail and Thunderbird dashed markers)
        if p.FORWARD_LINE.match(stripped):
            return _Boundary("forward", i, i + 1)
        dashed = p.DASHED.match(stripped)
        if dashed:
            kind = "forward" if p.FORWARD_WORDS.search(dashed.group("inner")) else "header"
            return _Boundary(kind, i, i + 1)
        # 2. Outlook's underscore separator and header blocks (Outlook, Exchange, GMX/Web.de, Samsung, Lotus)
        if p.UNDERSCORES.match(stripped):
            block = _header_block(lines, _skip_blank(lines, i + 1))
            if block and _forward_block(lines, block):
                return _Boundary("forward", i, block[1])
            return _Boundary("header", i, block[1] if block else i + 1)
        #    a rule of dashes right above a header block (Outlook and Gmail's plain text of an Outlook reply)
        if p.DASH_RULE.match(stripped):
            block = _header_block(lines, _skip_blank(lines, i + 1))
            if block:
                return _Boundary("forward" if _forward_block(lines, block) else "header", i, block[1])
            continue
        if p.HEADER_LINE.match(stripped):
            block = _header_block(lines, i)
            if block:
                return _Boundary("forward" if _forward_block(lines, block) else "header", i, block[1])
        #    attribution lines ("On ... wrote:"), possibly wrapped over up to three lines
        if stripped.endswith((":", "：")) or _WROTE_END.search(stripped[-30:]):
            begin = _attribution_start(lines, i)
            if begin is not None:
                return _Boundary("header", begin, i + 1)
    return None


def _is_attribution(window: str) -> bool:
    window = window.strip().lstrip(">").strip()
    if len(window) > MAX_HEADER_LINE:
        return False
    if not window.endswith((":", "：")):
        # some clients drop the colon: "On Wed, 14 Nov 2018 08:14:43 -0200 Name <a@b> wrote"
        return bool(p.OPENER.match(window) and _WROTE_END.search(window[-30:])
                    and ("@" in window or _TIME.search(window)))
    if p.ADDRESS_COLON.search(window[-120:]) and any(ch.isdigit() for ch in window):
        return True
    if not p.WROTE_RE.search(window):
        return False
    return "@" in window or bool(_TIME.search(window)) or bool(p.OPENER.match(window) and re.search(r"\d", window))


def _attribution_start(lines: list[str], end: int) -> int | None:
    """First line of an attribution ending at line ``end``, or None."""
    for size in (1, 2, 3):
        begin = end - size + 1
        if begin < 0 or (size > 1 and not lines[begin].strip()):
            break
        if _is_attribution(" ".join(line.strip() for line in lines[begin:end + 1])):
            return _wrapped_start(lines, begin, end)
    # "Name wrote:" with no date (Thunderbird's short form), directly above a ">" block
    window = lines[end].strip().lstrip(">").strip()
    following = _skip_blank(lines, end + 1)
    if (len(window) <= 80 and p.WROTE_RE.search(window) and following < len(lines) and following - end <= 2
            and lines[following].lstrip().startswith(">")):
        return end
    return None


def _wrapped_start(lines: list[str], begin: int, end: int) -> int:
    """The first line of a wrapped attribution whose last lines were recognised ("Le lun. 3 juin 2024 à 10:12,
    Support <", "On Nov 21, 2014,\nat 10:18,"): up to the start of its paragraph when every line above is a
    fragment of a header (a date, an address, an opening word, no full stop), else only opening-word lines."""
    start = begin
    while start > 0 and end - start < 3 and lines[start - 1].strip() and _header_fragment(lines[start - 1]):
        start -= 1
    if start == 0 or not lines[start - 1].strip():
        return start
    while begin > 0 and end - begin < 3 and lines[begin - 1].strip() and p.OPENER.match(lines[begin - 1]):
        begin -= 1
    return begin


def _header_fragment(line: str) -> bool:
    stripped = line.strip()
    return bool(p.OPENER.match(stripped) or re.search(r"[\d@<]", stripped)) and not stripped.endswith(_SENTENCE_END)


def _header_block(lines: list[str], start: int) -> tuple[int, int] | None:
    """(begin, end) of a header block of at least three "Label: value" lines, one of them From, or None."""
    if start >= len(lines) or not p.HEADER_LINE.match(lines[start].strip()):
        return None
    headers, has_from, i, gap = 0, False, start, 0
    while i < len(lines) and i - start < 12:
        line = lines[i].strip()
        if p.HEADER_LINE.match(line):
            headers += 1
            has_from = has_from or bool(p.FROM_LINE.match(line))
            gap = 0
        elif line.strip() and gap == 0 and headers:  # a wrapped To: or Cc: line
            gap = 1
        else:
            break
        i += 1
    if headers >= 3 and has_from:
        return start, i - gap
    return None


def _forward_block(lines: list[str], block: tuple[int, int]) -> bool:
    """Whether a header block heads a forward: its subject starts with a forward prefix ("FW:", "WG:", "TR:", ...).
    "VS:" forwards in Danish and Norwegian Outlook but answers in Finnish Outlook (whose labels say which)."""
    finnish = any(re.match(r"^\s*>?\s*[*_]{0,2}\s*(?:Lähettäjä|Aihe)\s*[*_]{0,2}\s*:", line)
                  for line in lines[block[0]:block[1]])
    return any(p.FORWARD_SUBJECT.match(line) and not (finnish and re.search(r":\s*[*_]{0,2}\s*VS\s*:", line))
               for line in lines[block[0]:block[1]])


def _skip_blank(lines: list[str], i: int) -> int:
    while i < len(lines) and not lines[i].strip():
        i += 1
    return i


def _skip_quote_block(lines: list[str], i: int) -> int:
    while i < len(lines) and (not lines[i].strip() or lines[i].lstrip().startswith(">")):
        i += 1
    return i


def _has_text(lines: list[str]) -> bool:
    return any(line.strip() for line in lines)


def _drop_unknown_attribution(segment: list[str], kind: str) -> list[str]:
    """Above a trailing ``>`` block, a last line ending in ':' with an address or a time is an attribution in a
    language without patterns here ("... Name <a@b> kirjutas:"); it goes with the quote."""
    if kind != "quote":
        return segment
    end = len(segment)
    while end and not segment[end - 1].strip():
        end -= 1
    if end and len(segment) - end <= 1:
        last = segment[end - 1].strip()
        if last.endswith((":", "：")) and len(last) <= MAX_HEADER_LINE and ("@" in last or _TIME.search(last)):
            return segment[:end - 1]
    return segment


def _trim_signature(lines: list[str]) -> list[str]:
    """The customer's last segment without an RFC 3676 signature, trailing device lines or a trailing disclaimer."""
    lines = list(lines)
    while lines and not lines[-1].strip():
        lines.pop()
    for k, line in enumerate(lines):
        if p.SIGNATURE.match(line):
            block = [rest for rest in lines[k + 1:] if rest.strip()]
            exact = line == p.SIGNATURE_EXACT
            if len(block) <= (15 if exact else 8) and (exact or all(len(rest) <= 80 for rest in block)):
                lines = lines[:k]
                break
    changed = True
    while changed:
        changed = False
        while lines and not lines[-1].strip():
            lines.pop()
        if len(lines) > 1 and p.DEVICE.match(_LINK_TAIL.sub("", lines[-1])) and _has_text(lines[:-1]):
            lines.pop()
            changed = True
    return _trim_disclaimer(lines)


def _trim_disclaimer(lines: list[str]) -> list[str]:
    for k, line in enumerate(lines):
        if (k and not lines[k - 1].strip() and p.DISCLAIMER.match(line) and _has_text(lines[:k])
                and sum(len(rest) for rest in lines[k:]) >= 100):
            return _trim_signature(lines[:k])
    return lines
