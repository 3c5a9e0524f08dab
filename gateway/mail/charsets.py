"""Text decoding: the declared charset first, detection (charset-normalizer) only when none is declared or it is wrong.

Declared names are mapped to the superset codecs mail clients actually write with: mail labelled GB2312 is often
GBK, Big5 often Big5-HKSCS, Shift_JIS often Windows-31J (cp932), ISO-8859-1 often windows-1252.
"""

from __future__ import annotations

import codecs
import re
import unicodedata

from charset_normalizer import from_bytes

SUPERSETS = {
    "gb2312": "gb18030", "gbk": "gb18030", "x-gbk": "gb18030", "euc-cn": "gb18030", "cp936": "gb18030",
    "big5": "big5hkscs", "x-big5": "big5hkscs",
    "shift_jis": "cp932", "shift-jis": "cp932", "sjis": "cp932", "x-sjis": "cp932", "ms_kanji": "cp932",
    "iso-2022-jp": "iso2022_jp_ext", "csiso2022jp": "iso2022_jp_ext",
    "iso-8859-1": "cp1252", "latin1": "cp1252", "latin-1": "cp1252", "us-ascii": "ascii", "ascii": "ascii",
    "ks_c_5601-1987": "cp949", "euc-kr": "cp949", "iso-8859-8-i": "iso-8859-8", "windows-874": "cp874",
    "unicode-1-1-utf-7": "utf-7", "x-unknown": "", "unknown-8bit": "", "default": "", "x-user-defined": "",
}
_SINGLE_BYTE_LATIN = {"cp1252", "iso8859-15", "ascii"}
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?([A-Za-z0-9_.:-]+)""", re.IGNORECASE)


def codec_for(declared: str | None) -> str | None:
    """The Python codec to decode a declared charset with, or None when it is missing or unknown."""
    if not declared:
        return None
    name = declared.strip().strip('"').lower()
    name = SUPERSETS.get(name, name)
    if not name:
        return None
    try:
        return codecs.lookup(name).name
    except LookupError:
        return None


def detect(data: bytes) -> str | None:
    """The likeliest charset of undeclared bytes (UTF-8 first: valid UTF-8 is almost never anything else)."""
    try:
        data.decode("utf-8")
        return "utf-8"
    except UnicodeDecodeError:
        pass
    best = from_bytes(data).best()
    if best is None:
        return None
    return "cp1252" if _western_rather_than(best.encoding, data) else best.encoding


# Letters and typographic marks of Western European text in windows-1252 (Latin-1 letters, Œ œ Š š Ž ž Ÿ, quotes,
# dashes, €); "¿" and "¡" only where a word starts.
_WESTERN = re.compile(r"^(?:[\x00-\x7f\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u00ff\u0152\u0153\u0160\u0161\u017d\u017e"
                      r"\u0178\u20ac\u201a\u201e\u2026\u2018\u2019\u201c\u201d\u2022\u2013\u2014\u2122\u00ab\u00bb"
                      r"\u00b0\u00a3\u00a9\u00ae\u00a0\u00a7]|(?<![^\W\d_])[\u00bf\u00a1])*$")


_OTHER_SCRIPTS = ("CYRILLIC", "GREEK", "HEBREW", "ARABIC", "THAI", "CJK", "HIRAGANA", "KATAKANA", "HANGUL",
                  "DEVANAGARI", "ARMENIAN", "GEORGIAN")


def _western_rather_than(found: str, data: bytes) -> bool:
    """Whether undeclared bytes detected as a rare Latin code page (cp1250, cp1258, mac_roman, ...) read as plain
    windows-1252 text: the detector's guess between Latin code pages is weak on short texts, windows-1252 is what
    most undeclared Western mail is written in. Cyrillic, Greek, Hebrew, Arabic and CJK guesses are left alone,
    and so is Central European text whose letters windows-1252 would turn into ³, ¹ or ¿ inside words."""
    if codec_for(found) in (None, "cp1252", "ascii", "utf-8"):
        return False
    try:
        guessed, western = data.decode(found), data.decode("cp1252")
    except (UnicodeDecodeError, LookupError):
        return False
    if any(unicodedata.name(ch, "").startswith(_OTHER_SCRIPTS) for ch in guessed if ord(ch) > 127):
        return False
    return bool(_WESTERN.match(western))


def decode_text(data: bytes, declared: str | None, *, html: bool = False) -> tuple[str, str, str | None]:
    """(text, codec used, note) for a text part's bytes; the note says when the declared charset was not used."""
    if html and not declared:
        meta = _META_CHARSET.search(data[:4096])
        declared = meta.group(1).decode("ascii") if meta else None
    codec = codec_for(declared)
    if codec is not None:
        try:
            text = data.decode(codec)
        except UnicodeDecodeError:
            note = f"declared charset {declared} does not fit the bytes"
        else:
            # the most frequent mislabel: UTF-8 sent as Latin-1/ASCII; valid non-ASCII UTF-8 is never accidental
            if codec in _SINGLE_BYTE_LATIN and not data.isascii():
                try:
                    return data.decode("utf-8"), "utf-8", f"declared {declared} but the bytes are UTF-8"
                except UnicodeDecodeError:
                    pass
            return text, codec, None
    else:
        note = f"unknown charset {declared}" if declared else None
    found = detect(data)
    if found:
        try:
            text = data.decode(found)
            return text, found, note or (None if found == "utf-8" else f"no charset declared: detected {found}")
        except (UnicodeDecodeError, LookupError):
            pass
    return data.decode("utf-8", errors="replace"), "utf-8", (note or "undecodable") + ": replaced invalid bytes"
