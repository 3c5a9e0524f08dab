"""Mail that is not a customer writing: auto-replies, bounces, bulk and list mail, and the gateway's own mail.

Signals (RFC 3834 ``Auto-Submitted``; Microsoft's ``X-Auto-Response-Suppress`` is not one, it is a request):
``Auto-Submitted`` other than ``no``, ``X-Autoreply``/``X-Autorespond``, ``Precedence: bulk|junk|list|auto_reply``,
delivery status notifications (``multipart/report; report-type=delivery-status``, mailer-daemon senders),
out-of-office subjects in common languages, and ``List-Id``/``List-Unsubscribe`` list traffic when configured.
"""

from __future__ import annotations

import fnmatch
import re

from gateway.mail.mime import ParsedMail

LOOP_HEADER = "X-Channel-Gateway"
_OOO_SUBJECT = re.compile(
    r"^(auto(matic|matische)?[ -]?(reply|response|antwort)|out of (the )?office|abwesenheitsnotiz|"
    r"r[ée]ponse automatique|respuesta autom[aá]tica|fuori sede|risposta automatica|automatisch antwoord|"
    r"afwezig|autosvar|自動返信|自动回复)", re.IGNORECASE)
_DAEMON = re.compile(r"^(mailer-daemon|postmaster|mail-daemon|mailerdaemon)@", re.IGNORECASE)


def auto_reason(mail: ParsedMail, *, own_addresses: tuple[str, ...] = (), ignore_lists: bool = True) -> str | None:
    """Why this mail is not a customer message (a short code), or None when it is one."""
    sender = mail.sender[1].lower()
    if mail.get(LOOP_HEADER) is not None:
        return "own_mail"
    if any(fnmatch.fnmatch(sender, pattern.lower()) for pattern in own_addresses):
        return "own_mail"
    auto_submitted = mail.header("Auto-Submitted").lower()
    if auto_submitted and not auto_submitted.startswith("no"):
        return f"auto_submitted:{auto_submitted.split(';')[0].strip()}"
    if mail.get("X-Autoreply") is not None or mail.get("X-Autorespond") is not None:
        return "x_autoreply"
    precedence = mail.header("Precedence").lower()
    if precedence in ("bulk", "junk", "list", "auto_reply"):
        return f"precedence:{precedence}"
    content_type = mail.mime.get_content_type()
    if content_type == "multipart/report" or _DAEMON.match(sender):
        report = (mail.mime.get_param("report-type") or "")
        return f"bounce:{report}" if report else "bounce"
    if _OOO_SUBJECT.match(mail.subject.strip()):
        return "out_of_office"
    if ignore_lists and (mail.get("List-Id") is not None or mail.get("List-Unsubscribe") is not None):
        return "mailing_list"
    return None


def robot_reason(mail: ParsedMail, *, known_not_auto: bool = False) -> str | None:
    """Why no automatic answer may go to this mail, whatever the channel ignores: every ``auto_reason``, list mail
    included, and a null sender (``Return-Path: <>``, which bounces and other machine mail carry).

    ``known_not_auto``: the caller already found ``auto_reason(mail, ignore_lists=True)`` to be None.
    """
    reason = None if known_not_auto else auto_reason(mail, ignore_lists=True)
    if reason is None and mail.header("Return-Path").strip() == "<>":
        reason = "null_sender"
    return reason
