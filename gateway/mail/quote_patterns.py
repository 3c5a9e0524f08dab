# ruff: noqa: RUF001, RUF003  (full-width colons and localised letters are the point of these patterns)
"""The lines mail clients write around a quoted message, in the languages they write them in.

Each pattern says which clients and languages it serves. The localised words are the ones the clients themselves
write: Gmail's and Outlook's reply headers, Apple Mail's and Thunderbird's "wrote:" lines, their separators and their
device lines. ``gateway.mail.quotes`` decides in which order they apply.
"""

from __future__ import annotations

import re

# "X wrote:" verbs. Gmail, Apple Mail and Thunderbird, by language; a line is an attribution only when it also
# holds a date or an address (see quotes._is_attribution), so "what my colleague wrote:" stays the customer's.
WROTE = (
    r"wrote|writes|schrieb|schreibt|a\s+écrit|a\s+ecrit|écrit|escribió|escribio|ha\s+escrito|ha\s+scritto|scrive"
    r"|schreef|schrijft|escreveu|escreve|napisał\(a\)|napisał|napisała|pisze|napsal\(a\)|napsal|napísal"
    r"|skrev|skriver|kirjoitti|написал\(а\)|написала|написал|пишет|написав\(ла\)|написав|пише"
    r"|đã\s+viết|viết|yazdı|menulis|έγραψε|ezt\s+írta|írta|scrise|je\s+napisal|napisao|написа"
    r"|ने\s+लिखा|लिखा|எழுதியது|எழுதினார்|എഴുതി|ఇలా\s+రాశారు|రాశారు|כתב|كتب"
    r"|geschreven|napisana|写道|寫道|のメール|님이\s+작성|작성|쓴\s+글"
)
WROTE_RE = re.compile(rf"(?:{WROTE})", re.IGNORECASE)

# Words that open an attribution line (Gmail/Apple/Thunderbird): "On", "Am", "Le", "El", "Il giorno", "Op", "Em",
# "Den", "W dniu", "Dne", "Vào", "Pada", "Στις", "في", "בתאריך" (Zimbra's webmail writes "- " before them). A wrapped
# attribution is extended up to them.
OPENER = re.compile(
    r"^\s*+>?\s*+(?:-\s+)?(?:On|Am|Le|El|Il\s+giorno|Il|Op|Em|Den|W\s+dniu|Dne|Vào|Pada|Στις|في|בתאריך|Ngày|Dana|Em)\s",
    re.IGNORECASE)

# Gmail in Russian, Ukrainian, Japanese, Korean and others writes no verb: "пн, 3 июн. 2024 г. в 10:12, Name <a@b>:";
# ISO-date headers of Android and Chinese clients too: "2016-03-03 17:21 GMT+01:00 Name <addr>:".
ADDRESS_COLON = re.compile(r"<\s*(?:mailto:)?[^<>\s@]{1,64}@[^<>\s]{1,255}\s*>\s*[:：]\s*$")  # with a digit before

# Outlook, Exchange, Lotus, GMX/Web.de and Samsung reply headers: "From:", "*From:*", "Von:", "De :", "Da:", ...
FROM_LABELS = (r"From|Von|De|Da|Van|Od|Från|Fra|Frá|От|Від|Kimden|Lähettäjä|Feladó|Από|Expeditor|Dari|Từ"
               r"|差出人|送信者|发件人|寄件者|발신|보낸\s*사람|Remitente|Mittente|Afzender|Absender|Envoyeur|من|प्रेषक")
OTHER_LABELS = (
    r"Sent|Date|Dato|To|Cc|Subject|Reply-To|Gesendet|Datum|An|Betreff|Envoyé|Envoye|Date\s*d'envoi|À|A|Objet|Enviado"
    r"|Enviado\s+el|Fecha|Para|Asunto|Inviato|Data|Oggetto|Risposta|Rispondi\s+a|Verzonden|Aan|Onderwerp|Assunto"
    r"|Wysłano|Wysłane|Do|DW|Temat|Skickat|Datum|Till|Kopia|Ämne|Sendt|Til|Kopi|Emne|Отправлено|Дата|Кому|Копия"
    r"|Тема|Надіслано|Копія|Gönderildi|Tarih|Kime|Konu|Lähetetty|Vastaanottaja|Aihe|Elküldve|Címzett|Tárgy"
    r"|Odesláno|Komu|Kopie|Předmět|Đã\s+gửi|Ngày|Đến|Chủ\s+đề|Dikirim|Kepada|Subjek|Στάλθηκε|Προς|Θέμα"
    r"|Pour|送信日時|日時|送信メール|宛先|件名|日付|إلى|الموضوع|التاريخ|أرسلت|प्रति|विषय|发送时间|发送日期|日期|收件人|主题|寄件日期|收件者|主旨|보낸\s*날짜|받는\s*사람|제목")
_LABEL = r"^\s*+>?\s*+[*_]{0,2}+\s*+(?:%s)\s*+[*_]{0,2}+\s*+[:：]"
FROM_LINE = re.compile(_LABEL % FROM_LABELS, re.IGNORECASE)
HEADER_LINE = re.compile(_LABEL % f"{FROM_LABELS}|{OTHER_LABELS}", re.IGNORECASE)
# The Subject line of a header block that belongs to a forward (Outlook writes no forward marker, only "FW:").
FORWARD_SUBJECT = re.compile(
    r"^\s*+>?\s*+[*_]{0,2}+\s*+(?:Subject|Betreff|Objet|Sujet|Asunto|Oggetto|Onderwerp|Assunto|Temat|Ämne|Emne|Тема"
    r"|Předmět|Aihe|Konu|件名|主题|主旨|제목)\s*[*_]{0,2}\s*[:：]\s*[*_]{0,2}\s*"
    r"(?:Fwd?|WG|TR|RV|I|Doorst|VS|VB|ENC|PD|Пересл|转发|轉寄)\s*:", re.IGNORECASE)

# "-----Original Message-----" (Outlook), "-------- Original Message --------" (Thunderbird), "----- Original Message
# -----" (Zimbra, Lotus), "---- Name wrote ----" (Zoho), localised, bold: any text between runs of four dashes or
# more. Forward markers of the same shape are told apart by FORWARD_WORDS.
DASHED = re.compile(r"^\s*+>?\s*+[*_]{0,2}+\s*+-{4,}\s*[*_]{0,2}(?P<inner>[^-\n]{2,80}?)[*_]{0,2}\s*"
                    r"-{4,}+\s*+[*_]{0,2}+\s*+$")
# Outlook's plain-text separator: a line of underscores (32 in Outlook desktop and on the web).
DASH_RULE = re.compile(r"^>?\s*+[*_]{0,2}+\s*+-{10,}+\s*+[*_]{0,2}+$")
UNDERSCORES = re.compile(r"^\s*+>?\s*+_{20,}+\s*+$")
FORWARD_WORDS = re.compile(
    r"forward|weitergeleitet|transféré|transfere|reenviado|inoltrato|doorgestuurd|encaminhad|przekazan"
    r"|vidarebefordrat|videresendt|пересланное|пересылаемое|переслане|转发|轉寄|転送|전달|chuyển\s+tiếp"
    r"|iletilen|välitetty|továbbított|přeposlan|προωθημένο|diteruskan|przekazana|転送メール|اعادة التوجيه",
    re.IGNORECASE)
# Apple Mail's and iOS's forward opener, localised.
FORWARD_LINE = re.compile(
    r"^\s*(?:Begin forwarded message|Anfang der weitergeleiteten Nachricht|Début du message réexpédié"
    r"|Inicio del mensaje reenviado|Inizio messaggio inoltrato|Begin doorgestuurd bericht"
    r"|Início da mensagem reencaminhada|Início da mensagem encaminhada|Początek przekazywanej wiadomości"
    r"|Vidarebefordrat brev|Videresendt besked|Начало переадресованного сообщения|以下是转发的邮件"
    r"|転送されたメッセージ)\s*[:：]\s*$", re.IGNORECASE)

# Phones and mail apps that add a line of their own ("Sent from my iPhone"), localised. Only a short whole line
# matches; an ordinary sentence that starts "Sent from my office..." and goes on is the customer's.
DEVICE = re.compile(
    r"^\s*(?![^\n]*[:：]\s)(?:Sent from my|Sent from|Sent with|Sent via|Get Outlook for|Envoyé de mon|Envoyé depuis"
    r"|Envoyé à partir de|Obtenir Outlook pour|Outlook für (?:iOS|Android) herunterladen|Holen Sie sich Outlook für"
    r"|Descargar Outlook para|Scarica Outlook per|Outlook voor (?:iOS|Android) downloaden|Baixe o Outlook para"
    r"|Envoyé avec"
    r"|Von meinem|Gesendet von|Gesendet mit|Enviado desde mi|Enviado desde|Enviado do meu|Enviado do|Inviato da"
    r"|Verzonden met|Verzonden vanaf|Verstuurd vanaf|Verstuurd met|Wysłane z|Wysłano z|Skickat från|Sendt fra"
    r"|Отправлено с|Отправлено из|Надіслано з|Odesláno z|Lähetetty|Được gửi từ|Gửi từ|Dikirim dari"
    r"|Από το|从我的|发自我的|從我的|寄件者：我的|أرسلت من|Yahoo Mail)[^.!?\n]{0,40}\.?\s*$"
    r"|^\s*[^\n]{1,30}(?:에서 보냄|से भेजा गया|gönderildi|傳送)\s*$"
    r"|^\s*\S{1,20}から送信\s*$|^\s*(?:Get|Download) (?:Outlook|Yahoo Mail)[^\n]{0,40}$",
    re.IGNORECASE)

# Legal footers and disclaimers: a paragraph that opens like this ends the customer's text.
DISCLAIMER = re.compile(
    r"^\s*(?:CONFIDENTIALITY NOTICE|CONFIDENTIAL|DISCLAIMER|This e-?mail (?:and any|message|is|may)"
    r"|The information (?:contained|in this)|This message (?:and any|is intended|contains|may)"
    r"|Diese E-?Mail (?:enthält|kann)|Ce message (?:et|est)|Questo messaggio|Este mensaje|Dit bericht"
    r"|Ta wiadomość|Detta meddelande|Denne e-?mail|Dette e-?post)\b",
    re.IGNORECASE)

# Patterns use possessive quantifiers (\s*+) where two runs of spaces meet, so no line costs more than one pass.

# RFC 3676 signature separator "-- " (many clients strip the space, so "--" alone too, for a short block only).
SIGNATURE = re.compile(r"^--\s*$")
SIGNATURE_EXACT = "-- "
