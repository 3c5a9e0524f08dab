"""The visible reply: what the sender wrote now, without the quoted history and the signature.

``mail-parser-reply`` recognises the reply headers of Gmail, Outlook, Apple Mail and Thunderbird in several
languages ("On ... wrote:", "Von: ... Gesendet:", "Le ... a écrit :", 32-underscore separators) and "Sent from my ..."
lines. What it leaves is trimmed further here: trailing ``>`` quoted lines and an RFC 3676 ``-- `` signature.
The full text is always kept beside it.
"""

from __future__ import annotations

import re

from mailparser_reply.parser import EmailMessage

DEFAULT_LANGUAGES = ("en", "de", "fr", "es", "it", "nl", "pl", "sv", "da", "cs", "ja", "ko", "zh")
_SIGNATURE = re.compile(r"^-- ?$", re.MULTILINE)
_MOBILE = re.compile(r"^\s*(Sent from my|Sent from Outlook|Get Outlook for|Envoyé de mon|Von meinem|Gesendet von"
                     r"|Enviado desde mi|Inviato da|Verzonden vanaf|iPhoneから送信)\b.*$",
                     re.MULTILINE | re.IGNORECASE)


def visible_reply(text: str, languages: tuple[str, ...] = DEFAULT_LANGUAGES) -> str:
    """The newly written part of a plain-text body; the whole text when nothing is recognised as quoted."""
    if not text.strip():
        return ""
    try:
        # keep_hyphen_lists: a "- item" list in the reply is not a signature
        message = EmailMessage(text=text, languages=list(languages), keep_hyphen_lists=True).read()
        reply = message.replies[0].body if message.replies else text
    except Exception:  # a pathological body must never stop a message: fall back to the text as written
        reply = text
    lines = reply.replace("\r\n", "\n").split("\n")
    while lines and (not lines[-1].strip() or lines[-1].lstrip().startswith(">")):
        lines.pop()
    reply = "\n".join(lines)
    signature = _SIGNATURE.search(reply)
    if signature and signature.start() > 0:
        reply = reply[:signature.start()]
    mobile = _MOBILE.search(reply)
    if mobile and mobile.start() > 0:
        reply = reply[:mobile.start()]
    reply = reply.strip()
    return reply or text.strip()
