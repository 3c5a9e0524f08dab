# ruff: noqa: RUF001  (full-width commas, dashes and curly quotes are the point of this test data)
"""A corpus of test emails the project writes itself, each with the canonical fields it must normalise to.

Every mail is built with Python's ``email`` package in the shape real clients send: the charsets, transfer encodings,
reply headers and auto-reply markers of Gmail, Outlook, Apple Mail, Thunderbird and phones. ``expected`` holds dotted
paths into ``Message.model_dump(mode="json")``; ``ignored`` names why the mail is no customer message; ``broken``
is a word the quarantine reason must contain.
"""

from __future__ import annotations

import base64
import hashlib
import quopri
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from email import message_from_bytes
from email.header import Header
from email.message import Message
from email.mime.message import MIMEMessage
from email.mime.multipart import MIMEMultipart
from email.utils import format_datetime, formataddr
from typing import Any

BASE_DATE = datetime(2024, 6, 3, 10, 12, tzinfo=UTC)
CUSTOMER = "anna.kowalski@example.org"
PDF = b"%PDF-1.4\n" + bytes(range(256)) * 8 + b"\n%%EOF"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(64)


@dataclass(frozen=True)
class CorpusMail:
    name: str
    raw: bytes
    expected: dict[str, Any] = field(default_factory=dict)
    ignored: str | None = None
    broken: str | None = None


def leaf(data: bytes, content_type: str = "text/plain", charset: str | None = None, cte: str = "base64",
         filename: str | None = None, disposition: str | None = None, content_id: str | None = None) -> Message:
    """One MIME leaf with exactly these bytes, charset label and transfer encoding."""
    part = Message()
    part["Content-Type"] = content_type + (f'; charset="{charset}"' if charset else "")
    if filename is not None and disposition is None:
        disposition = "attachment"
    if disposition:
        part["Content-Disposition"] = disposition + (f'; filename="{filename}"' if filename else "")
    if content_id:
        part["Content-ID"] = f"<{content_id}>"
    part["Content-Transfer-Encoding"] = cte
    if cte == "base64":
        part.set_payload(base64.encodebytes(data).decode("ascii"))
    elif cte == "quoted-printable":
        part.set_payload(quopri.encodestring(data).decode("ascii"))
    else:
        part.set_payload(data.decode("ascii", "surrogateescape"))  # raw 8-bit bytes written back as they are
    return part


def mail(body: Message, *, subject: str | Header = "Question about my order",
         sender: str = f"Anna Kowalski <{CUSTOMER}>",
         message_id: str | None = "m1@mail.example.org", in_reply_to: str | None = None,
         references: tuple[str, ...] = (), date: datetime = BASE_DATE, headers: dict[str, str] | None = None,
         to: str = "Support <support@example.test>") -> bytes:
    """A whole message around ``body``, with headers in the order a client writes them."""
    message = body
    fields: list[tuple[str, str | Header]] = [("From", sender), ("To", to), ("Subject", subject),
                                              ("Date", format_datetime(date))]
    if message_id:
        fields.append(("Message-ID", f"<{message_id}>"))
    if in_reply_to:
        fields.append(("In-Reply-To", f"<{in_reply_to}>"))
    if references:
        fields.append(("References", " ".join(f"<{r}>" for r in references)))
    fields.append(("MIME-Version", "1.0"))
    for name, value in (headers or {}).items():
        fields.append((name, value))
    existing = list(message.items())
    for name in list(message.keys()):
        del message[name]
    for name, value in fields:
        if name == "Subject" and isinstance(value, str) and not value.isascii():
            value = Header(value, "utf-8")
        message[name] = value
    for name, value in existing:
        message[name] = value
    return message.as_bytes()


def text_mail(text: str, **kwargs: Any) -> bytes:
    return mail(leaf(text.encode("utf-8"), charset="utf-8", cte="quoted-printable"), **kwargs)


def alternative(plain: bytes | None, html: bytes | None, charset: str = "utf-8") -> Message:
    container = MIMEMultipart("alternative")
    del container["MIME-Version"]
    if plain is not None:
        container.attach(leaf(plain, charset=charset, cte="quoted-printable"))
    if html is not None:
        container.attach(leaf(html, "text/html", charset=charset, cte="quoted-printable"))
    return container


def mixed(*parts: Message, subtype: str = "mixed", **params: str) -> Message:
    container = MIMEMultipart(subtype, **params)
    del container["MIME-Version"]
    for part in parts:
        container.attach(part)
    return container


def email_id(address: str) -> list[dict[str, str]]:
    return [{"kind": "email", "value": address}]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


MALAYALAM = "നമസ്കാരം, എന്റെ ഓർഡർ ഇതുവരെ എത്തിയിട്ടില്ല."
TELUGU = "నమస్కారం, నా ఆర్డర్ ఇంకా రాలేదు."
ARABIC = "مرحبا، لم يصل طلبي بعد."
EMOJI = "Thanks 🙏🏽 the parcel arrived 📦✅"
JAPANESE = "注文した商品がまだ届きません。確認をお願いします。"
CHINESE_GBK = "您好，我的订单还没有到。請確認。"  # includes traditional characters outside GB2312 (GBK only)
BIG5_TEXT = "您好，我的訂單還沒有送到。"
RUSSIAN = "Здравствуйте, мой заказ до сих пор не пришёл."
WIN1252 = "Café “quoted” – 50 € please"
UTF7_TEXT = "Grüße aus Köln – 5 €"


def corpus() -> list[CorpusMail]:
    """Every case, each with its expected canonical fields."""
    items: list[CorpusMail] = []
    add = items.append

    add(CorpusMail("plain_ascii", text_mail("Hello,\nmy order #1234 has not arrived yet.\n\nAnna"), {
        "subject": "Question about my order", "text": "Hello,\nmy order #1234 has not arrived yet.\n\nAnna",
        "sender.identifiers": email_id(CUSTOMER), "sender.display_name": "Anna Kowalski",
        "thread.message_id": "m1@mail.example.org", "sent_at": "2024-06-03T10:12:00Z",
        "recipients.0.identifiers": email_id("support@example.test")}))

    # charsets, each declared as real clients declare them
    jp = mail(leaf(JAPANESE.encode("iso-2022-jp") + b"\r\n", charset="ISO-2022-JP", cte="7bit"),
              subject=Header("注文について", "iso-2022-jp"), message_id="jp@mail.example.jp",
              sender=f"{Header('山田 太郎', 'iso-2022-jp').encode()} <taro@example.jp>")
    add(CorpusMail("iso_2022_jp", jp, {"subject": "注文について", "text": JAPANESE,
                                       "sender.display_name": "山田 太郎"}))
    add(CorpusMail("shift_jis", mail(leaf(JAPANESE.encode("cp932"), charset="Shift_JIS", cte="8bit"),
                                     message_id="sjis@mail.example.jp"), {"text": JAPANESE}))
    add(CorpusMail("gb2312_declared_gbk_bytes", mail(
        leaf(CHINESE_GBK.encode("gbk"), charset="gb2312"), subject=Header("订单", "gb2312"),
        message_id="gb@mail.example.cn"), {"text": CHINESE_GBK, "subject": "订单"}))
    add(CorpusMail("big5", mail(leaf(BIG5_TEXT.encode("big5"), charset="big5"), message_id="big5@mail.example.tw"),
                   {"text": BIG5_TEXT}))
    add(CorpusMail("windows_1252", mail(leaf(WIN1252.encode("cp1252"), charset="windows-1252",
                                             cte="quoted-printable"), message_id="w1252@mail.example.fr"),
                   {"text": WIN1252}))
    add(CorpusMail("iso_8859_1_label_cp1252_bytes", mail(
        leaf(WIN1252.encode("cp1252"), charset="iso-8859-1", cte="quoted-printable"),
        message_id="latin1@mail.example.fr"), {"text": WIN1252}))
    add(CorpusMail("koi8_r", mail(leaf(RUSSIAN.encode("koi8-r"), charset="KOI8-R", cte="8bit"),
                                  subject=Header("Заказ", "koi8-r"), message_id="koi@mail.example.ru"),
                   {"text": RUSSIAN, "subject": "Заказ"}))
    add(CorpusMail("utf_7", mail(leaf(UTF7_TEXT.encode("utf-7"), charset="UTF-7", cte="7bit"),
                                 message_id="utf7@mail.example.de"), {"text": UTF7_TEXT}))
    scripts = f"{MALAYALAM}\n{TELUGU}\n{ARABIC}\n{EMOJI}"
    add(CorpusMail("indic_arabic_emoji", mail(leaf(scripts.encode("utf-8"), charset="utf-8"),
                                              subject=f"ഓർഡർ 📦 {ARABIC[:5]}", message_id="scripts@mail.example.in"),
                   {"text": scripts, "subject": f"ഓർഡർ 📦 {ARABIC[:5]}"}))
    add(CorpusMail("undeclared_utf8", mail(leaf(scripts.encode("utf-8"), cte="8bit"),
                                           message_id="nocharset@mail.example.in"), {"text": scripts}))
    add(CorpusMail("declared_ascii_but_utf8", mail(leaf("Grüße, Jürgen".encode(), charset="us-ascii", cte="8bit"),
                                                   message_id="ascii-lie@mail.example.de"),
                   {"text": "Grüße, Jürgen"}))
    add(CorpusMail("undeclared_cp1251", mail(leaf(RUSSIAN.encode("cp1251"), cte="8bit"),
                                             message_id="cp1251@mail.example.ru"), {"text": RUSSIAN}))
    add(CorpusMail("raw_8bit_subject", (
        f"From: Jürgen Weiß <{CUSTOMER}>\r\nTo: support@example.test\r\nSubject: Bestellung Nr. 5 – Rückfrage\r\n"
        "Message-ID: <raw8@mail.example.de>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n\r\nKörper\r\n").encode(),
        {"subject": "Bestellung Nr. 5 – Rückfrage", "sender.display_name": "Jürgen Weiß", "text": "Körper"}))

    # structure: alternative, HTML only, attachments, inline images, RFC 2231/2047 file names, forwarded message
    add(CorpusMail("alternative_prefers_plain", mail(
        alternative(b"Plain version of my question.", b"<p>HTML <b>version</b></p>"),
        message_id="alt@mail.example.org"),
        {"text": "Plain version of my question.", "html": "<p>HTML <b>version</b></p>"}))
    html = (b"<html><head><style>p{color:red}</style></head><body><p>Hello,</p><p>see the "
            b"<a href=\"https://shop.example.org/orders/1234\">order page</a> and"
            b"<br>the <a href=\"https://shop.example.org/faq\">FAQ</a>.</p><ul><li>one</li><li>two</li></ul></body>"
            b"</html>")
    add(CorpusMail("html_only_links", mail(leaf(html, "text/html", charset="utf-8", cte="quoted-printable"),
                                           message_id="html@mail.example.org"), {
        "text": "Hello,\n\nsee the order page (https://shop.example.org/orders/1234) and\nthe FAQ "
                "(https://shop.example.org/faq).\n\n- one\n- two",
        "extras.text_from_html": True}))
    pdf = leaf(PDF, "application/pdf")
    pdf["Content-Disposition"] = "attachment; filename*=UTF-8''%C3%9Cberweisung%20%E2%82%AC.pdf"
    encoded_name = leaf(b"col1,col2\n1,2\n", "text/csv", filename=Header("Rechnungsübersicht.csv", "utf-8").encode())
    image = leaf(PNG, "image/png", disposition="inline", filename="logo.png", content_id="logo@example.org")
    related = mixed(alternative(b"See the attached files.", b'<p>See <img src="cid:logo@example.org"></p>'),
                    image, subtype="related")
    add(CorpusMail("attachments_rfc2231_rfc2047_inline", mail(mixed(related, pdf, encoded_name),
                                                              message_id="att@mail.example.org"), {
        "text": "See the attached files.",
        "attachments.0.filename": "logo.png", "attachments.0.inline": True, "attachments.0.sha256": sha(PNG),
        "attachments.0.content_type": "image/png",
        "attachments.1.filename": "Überweisung €.pdf", "attachments.1.content_type": "application/pdf",
        "attachments.1.size": len(PDF), "attachments.1.sha256": sha(PDF), "attachments.1.inline": False,
        "attachments.1.location": f"store:sha256/{sha(PDF)}",
        "attachments.2.filename": "Rechnungsübersicht.csv", "extras.content_ids": {"logo@example.org": sha(PNG)}}))
    forwarded = text_mail("Original complaint text", message_id="orig@mail.example.org", subject="Broken kettle")
    add(CorpusMail("forward_with_attached_message", mail(
        mixed(leaf(b"Forwarding the mail below.", charset="utf-8", cte="7bit"),
              MIMEMessage(message_from_bytes(forwarded))),
        subject="Fwd: Broken kettle", message_id="fwd@mail.example.org"), {
        "text": "Forwarding the mail below.", "attachments.0.filename": "Broken kettle.eml",
        "attachments.0.content_type": "message/rfc822"}))

    # replies in the common client styles: visible text separated, full text kept
    quoted = "> Please try restarting the router.\n> Regards, Support"
    replies = {
        "gmail_reply": ("Thanks, that fixed it.\n\nOn Mon, 3 Jun 2024 at 10:12, Support <support@example.test> "
                        f"wrote:\n{quoted}\n", "Thanks, that fixed it."),
        "outlook_reply_en": ("Yes please go ahead.\n\n________________________________\nFrom: Support "
                             "<support@example.test>\nSent: Monday, June 3, 2024 10:12 AM\nTo: Anna Kowalski\n"
                             "Subject: RE: Question about my order\n\nPlease try restarting the router.\n",
                             "Yes please go ahead."),
        "outlook_reply_de": ("Ja, bitte so machen.\n\n________________________________\nVon: Support "
                             "<support@example.test>\nGesendet: Montag, 3. Juni 2024 10:12\nAn: Anna Kowalski\n"
                             "Betreff: AW: Bestellung\n\nBitte starten Sie den Router neu.\n", "Ja, bitte so machen."),
        "outlook_reply_fr": ("Merci beaucoup.\n\nDe : Support <support@example.test>\nEnvoyé : lundi 3 juin 2024 "
                             "10:12\nÀ : Anna Kowalski\nObjet : RE: Commande\n\nVeuillez redémarrer.\n",
                             "Merci beaucoup."),
        "apple_mail_reply": ("Got it, thanks!\n\n> On 3 Jun 2024, at 10:12, Support <support@example.test> wrote:\n"
                             f">\n{quoted}\n", "Got it, thanks!"),
        "thunderbird_reply": (f"Works now.\n\nOn 03.06.24 10:12, Support wrote:\n{quoted}\n", "Works now."),
        "gmail_reply_fr": ("Parfait, merci.\n\nLe lun. 3 juin 2024 à 10:12, Support <support@example.test> a "
                           f"écrit :\n{quoted}\n", "Parfait, merci."),
        "mobile_signature": ("Will do, thanks.\n\nSent from my iPhone\n\nOn 3 Jun 2024, at 10:12, Support "
                             f"<support@example.test> wrote:\n{quoted}\n", "Will do, thanks."),
        "dash_signature": ("The tracking link does not open.\n\n-- \nAnna Kowalski\nKowalski Design\n"
                           "+48 22 123 45 67\n",
                           "The tracking link does not open."),
        "malayalam_reply": (f"{MALAYALAM} 🙏\n\nOn Mon, 3 Jun 2024 at 10:12, Support <support@example.test> wrote:\n"
                            f"{quoted}\n", f"{MALAYALAM} 🙏"),
    }
    for n, (name, (body, visible)) in enumerate(replies.items()):
        add(CorpusMail(name, text_mail(body, subject="Re: Question about my order", message_id=f"r{n}@mail.example.org",
                                       in_reply_to="agent-1@support.example.test",
                                       references=("m1@mail.example.org", "agent-1@support.example.test")), {
            "text": visible, "full_text": body.rstrip("\n"),
            "thread.in_reply_to": "agent-1@support.example.test",
            "thread.references": ["m1@mail.example.org", "agent-1@support.example.test"]}))

    # not customer messages
    add(CorpusMail("auto_submitted", text_mail("I am away until Monday.", message_id="ooo1@mail.example.org",
                                               headers={"Auto-Submitted": "auto-replied"}),
                   ignored="auto_submitted:auto-replied"))
    add(CorpusMail("x_autoreply", text_mail("Away.", message_id="ooo2@mail.example.org",
                                            headers={"X-Autoreply": "yes"}), ignored="x_autoreply"))
    add(CorpusMail("precedence_bulk", text_mail("Our newsletter.", message_id="bulk@mail.example.org",
                                                headers={"Precedence": "bulk"}), ignored="precedence:bulk"))
    add(CorpusMail("out_of_office_subject", text_mail("Ich bin nicht im Büro.", message_id="ooo3@mail.example.de",
                                                      subject="Automatische Antwort: Ihre Anfrage"),
                   ignored="out_of_office"))
    add(CorpusMail("outlook_automatic_reply", text_mail("I am out of the office.", message_id="ooo4@mail.example.org",
                                                        subject="Automatic reply: Question about my order"),
                   ignored="out_of_office"))
    dsn = message_from_bytes(
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="dsn-b"\r\n\r\n'
        b"--dsn-b\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
        b"Delivery to the following recipient failed permanently: x@example.org\r\n"
        b"--dsn-b\r\nContent-Type: message/delivery-status\r\n\r\n"
        b"Reporting-MTA: dns; mx.example.org\r\n\r\nFinal-Recipient: rfc822; x@example.org\r\nAction: failed\r\n"
        b"Status: 5.1.1\r\n\r\n--dsn-b--\r\n")
    add(CorpusMail("bounce_dsn", mail(dsn, sender="Mail Delivery Subsystem <mailer-daemon@example.org>",
                                      subject="Delivery Status Notification (Failure)", message_id="dsn@example.org"),
                   ignored="bounce:delivery-status"))
    add(CorpusMail("own_outgoing_mail", text_mail("Our reply", sender="Support <support@example.test>",
                                                  message_id="own@support.example.test",
                                                  headers={"X-Channel-Gateway": "support"}), ignored="own_mail"))
    add(CorpusMail("mailing_list", text_mail("List traffic", message_id="list@lists.example.org",
                                             headers={"List-Id": "<users.lists.example.org>"}),
                   ignored="mailing_list"))

    # identity and ids
    add(CorpusMail("no_message_id", text_mail("No id on this one.", message_id=None),
                   {"text": "No id on this one.", "thread.message_id": None}))
    add(CorpusMail("upper_case_domain", text_mail("Hi", sender=formataddr(("Jürgen Weiß", "Juergen.Weiss@Example.DE")),
                                                  message_id="case@mail.example.de"),
                   {"sender.identifiers": email_id("Juergen.Weiss@example.de"), "sender.display_name": "Jürgen Weiß"}))
    add(CorpusMail("date_with_offset", text_mail("Hi", date=datetime(2024, 6, 3, 12, 12, tzinfo=UTC)
                                                 .astimezone(timezone(timedelta(hours=2))),
                                                 message_id="tz@mail.example.org"),
                   {"sent_at": "2024-06-03T12:12:00Z"}))

    # broken: quarantined with the reason, raw bytes kept
    add(CorpusMail("broken_no_from", b"To: support@example.test\r\nSubject: no sender\r\nMessage-ID: <nofrom@x>\r\n"
                   b"\r\nWho sent this?\r\n", broken="From"))
    add(CorpusMail("broken_garbage", bytes(range(256)) * 4, broken="header"))
    add(CorpusMail("broken_from_not_address",
                   b"From: just a name\r\nSubject: hi\r\nMessage-ID: <badfrom@x>\r\n\r\nx\r\n",
                   broken="From"))
    return items


def by_name() -> dict[str, CorpusMail]:
    return {item.name: item for item in corpus()}


@dataclass(frozen=True)
class MailboxMail:
    raw: bytes
    kind: str  # customer | reply | ignored | broken
    message_id: str | None
    parent: str | None = None


def _with_id(raw: bytes, old: str, new: str) -> bytes:
    return raw.replace(f"<{old}>".encode(), f"<{new}>".encode(), 1)


def mixed_mailbox(count: int, *, seed: str = "a") -> list[MailboxMail]:
    """``count`` distinct mails mixing every corpus case: charsets, attachments, replies threaded onto earlier
    mails of the same mailbox, auto-replies and bounces, and about 1 % broken ones."""
    cases = corpus()
    customer = [c for c in cases if not c.ignored and not c.broken and c.name != "no_message_id"
                and b"In-Reply-To" not in c.raw]
    ignored = [c for c in cases if c.ignored]
    broken = [c for c in cases if c.broken and c.name != "broken_garbage"]
    out: list[MailboxMail] = []
    originals: list[tuple[str, str]] = []
    for n in range(count):
        new_id = f"{seed}{n}@bulk.example.org"
        if n % 97 == 13:
            case = broken[n % len(broken)]
            out.append(MailboxMail(case.raw.replace(b"Subject: ", f"Subject: [{n}] ".encode(), 1)
                                   if b"Message-ID" not in case.raw else
                                   case.raw.replace(b"Message-ID: <", f"Message-ID: <{seed}{n}.".encode(), 1),
                                   "broken", None))
        elif n % 10 == 7:
            case = ignored[n % len(ignored)]
            old = case.raw.split(b"Message-ID: <", 1)[1].split(b">", 1)[0].decode()
            out.append(MailboxMail(_with_id(case.raw, old, new_id), "ignored", new_id))
        elif n % 4 == 3 and originals:
            parent, sender = originals[(n * 7) % len(originals)]
            raw = text_mail(f"Reply {n}: still waiting.\n\nOn Mon, 3 Jun 2024 at 10:12, Support "
                            f"<support@example.test> wrote:\n> We are on it.\n",
                            sender=sender, subject="Re: Question about my order", message_id=new_id,
                            in_reply_to=f"agent-{parent}", references=(parent, f"agent-{parent}"),
                            date=BASE_DATE + timedelta(minutes=n))
            out.append(MailboxMail(raw, "reply", new_id, parent))
        else:
            case = customer[n % len(customer)]
            old = case.raw.split(b"Message-ID: <", 1)[1].split(b">", 1)[0].decode()
            sender = f"Customer {n} <customer{n}@example.org>"
            raw = _with_id(case.raw, old, new_id)
            raw = raw.replace(f"{CUSTOMER}".encode(), f"customer{n}@example.org".encode())
            if f"customer{n}@".encode() not in raw:
                raw = text_mail(f"Mail {n} from a customer.", sender=sender, message_id=new_id,
                                date=BASE_DATE + timedelta(minutes=n))
            originals.append((new_id, sender))
            out.append(MailboxMail(raw, "customer", new_id))
    return out


CASES_FOR_WEBHOOKS = by_name()
