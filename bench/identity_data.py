"""A seeded, synthetic population writing to the business through SMS, WhatsApp, email and Slack, with ground truth.

Every generated message carries what a channel would deliver (the sender as written, the channel's default
region, thread headers) and what only the generator knows: the person who wrote it, the problem it is about, and
the *evidence keys* of its identifiers: which underlying handle (a phone line, a mailbox, a Slack account) each
written identifier denotes, reduced to what the configured normalisation rules allow anyone to recover. The keys
are derived from how a value was generated, never by parsing the written form, so they are independent of the
gateway's normaliser.

Noise: phone numbers of India, Brazil, the US, the UK and Germany in national (trunk 0), ``+CC``, ``00CC``/``011``,
bare and punctuated forms; Brazilian mobiles with and without the ninth digit (WhatsApp ids of older accounts lack
it); WhatsApp ids without ``+``; email case changes, ``+tags``, Gmail dots and ``googlemail.com``; households where
two people share one phone; role addresses (``support@``, ``info@`` of a company) used by several colleagues;
name variants in several scripts (Devanagari, Malayalam, Arabic, Chinese); different people with the same name.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from gateway.identity.normalize import EmailRule, IdentityRules

COUNTRIES = ("IN", "BR", "US", "GB", "DE")
SMS_CONNECTOR = {country: f"sms-{country.lower()}" for country in COUNTRIES}
IDD = {"IN": "00", "GB": "00", "DE": "00", "US": "011"}  # Brazil's international prefix needs a carrier code
WINDOW = timedelta(hours=72)
EPOCH = datetime(2025, 1, 6, tzinfo=UTC)

_GMAIL = EmailRule(fold_case=True, strip_plus=True, ignore_dots=True, canonical_domain="gmail.com")
_PLUS = EmailRule(fold_case=True, strip_plus=True)
EMAIL_RULES: dict[str, EmailRule] = {
    "gmail.com": _GMAIL, "googlemail.com": _GMAIL,
    "outlook.com": _PLUS, "hotmail.com": _PLUS, "outlook.de": _PLUS, "hotmail.co.uk": _PLUS,
    "*": EmailRule(fold_case=True),
}
ROLE_PARTS = frozenset({"support", "info", "sales", "office", "contact", "noreply", "help", "billing"})


def identity_rules() -> IdentityRules:
    """The identity settings the evaluation runs the gateway with (what an admin would configure)."""
    return IdentityRules(default_region="US", email_rules=EMAIL_RULES, role_local_parts=ROLE_PARTS,
                         blocked_phones=frozenset({"+14155550000"}), max_per_kind=5)


# ---- names -------------------------------------------------------------------------------------------------------

# (first, last, native script or None); short lists so that different people share names, as they do.
_NAMES: dict[str, tuple[list[tuple[str, str | None]], list[tuple[str, str | None]]]] = {
    "IN-hi": ([("Priya", "प्रिया"), ("Rahul", "राहुल"), ("Amit", "अमित"), ("Sunita", "सुनीता"), ("Anjali", "अंजलि"),
               ("Vikram", "विक्रम"), ("Pooja", "पूजा"), ("Arjun", "अर्जुन"), ("Neha", "नेहा"), ("Rohit", "रोहित"),
               ("Kavita", "कविता"), ("Sanjay", "संजय")],
              [("Sharma", "शर्मा"), ("Verma", "वर्मा"), ("Gupta", "गुप्ता"), ("Singh", "सिंह"), ("Kumar", "कुमार"),
               ("Yadav", "यादव"), ("Mishra", "मिश्रा"), ("Joshi", "जोशी")]),
    "IN-ml": ([("Anil", "അനിൽ"), ("Lakshmi", "ലക്ഷ്മി"), ("Suresh", "സുരേഷ്"), ("Divya", "ദിവ്യ"), ("Manoj", "മനോജ്"),
               ("Asha", "ആശ"), ("Biju", "ബിജു"), ("Reshma", "രേഷ്മ")],
              [("Nair", "നായർ"), ("Menon", "മേനോൻ"), ("Pillai", "പിള്ള"), ("Kurian", "കുര്യൻ"), ("Varghese", "വർഗീസ്")]),
    "BR": ([("Ana", None), ("João", None), ("Maria", None), ("Pedro", None), ("Lucas", None), ("Juliana", None),
            ("Gabriel", None), ("Fernanda", None), ("Rafael", None), ("Camila", None), ("Bruno", None),
            ("Letícia", None)],
           [("Silva", None), ("Santos", None), ("Oliveira", None), ("Souza", None), ("Pereira", None),
            ("Costa", None), ("Rodrigues", None), ("Almeida", None), ("Gonçalves", None)]),
    "US": ([("James", None), ("Mary", None), ("John", None), ("Linda", None), ("Michael", None), ("Sarah", None),
            ("David", None), ("Jennifer", None), ("Chris", None), ("Emily", None), ("Robert", None),
            ("Jessica", None)],
           [("Smith", None), ("Johnson", None), ("Williams", None), ("Brown", None), ("Jones", None),
            ("Garcia", None), ("Miller", None), ("Davis", None), ("Wilson", None)]),
    "GB": ([("Oliver", None), ("Amelia", None), ("George", None), ("Isla", None), ("Harry", None), ("Ava", None),
            ("Jack", None), ("Sophie", None), ("Thomas", None), ("Grace", None)],
           [("Taylor", None), ("Evans", None), ("Thomas", None), ("Roberts", None), ("Walker", None),
            ("Wright", None), ("Hughes", None), ("Edwards", None)]),
    "DE": ([("Lukas", None), ("Anna", None), ("Jonas", None), ("Lena", None), ("Felix", None), ("Marie", None),
            ("Paul", None), ("Sophie", None), ("Jürgen", None), ("Katrin", None)],
           [("Müller", None), ("Schmidt", None), ("Schneider", None), ("Fischer", None), ("Weber", None),
            ("Meyer", None), ("Wagner", None), ("Becker", None)]),
    "AR": ([("Ahmed", "أحمد"), ("Fatima", "فاطمة"), ("Omar", "عمر"), ("Layla", "ليلى"), ("Youssef", "يوسف"),
            ("Mariam", "مريم")],
           [("Haddad", "حداد"), ("Khalil", "خليل"), ("Nasser", "ناصر"), ("Saleh", "صالح")]),
    "ZH": ([("Wei", "伟"), ("Fang", "芳"), ("Jing", "静"), ("Lei", "磊"), ("Min", "敏"), ("Jun", "军")],
           [("Wang", "王"), ("Li", "李"), ("Zhang", "张"), ("Liu", "刘"), ("Chen", "陈")]),
}
_ASCII = str.maketrans("ãáâàçéêíóôõúüöäß", "aaaaceeiooouuoas")

PERSONAL_DOMAINS = {
    "IN": ["gmail.com"] * 6 + ["yahoo.co.in", "outlook.com", "rediffmail.com"],
    "BR": ["gmail.com"] * 5 + ["hotmail.com", "outlook.com", "uol.com.br", "yahoo.com.br"],
    "US": ["gmail.com"] * 5 + ["yahoo.com", "outlook.com", "icloud.com", "aol.com"],
    "GB": ["gmail.com"] * 4 + ["hotmail.co.uk", "outlook.com", "btinternet.com", "googlemail.com"],
    "DE": ["gmail.com"] * 3 + ["web.de", "gmx.de", "t-online.de", "outlook.de", "googlemail.com"],
}
_COMPANY_WORDS = ["acme", "nova", "blue", "river", "delta", "apex", "orbit", "green", "prime", "urban", "vista",
                  "atlas", "lotus", "metro", "solar", "pixel", "cedar", "north", "bright", "coral"]
_COMPANY_KINDS = ["logistics", "foods", "labs", "retail", "health", "media", "systems", "textiles", "motors", "tech"]
_TLD = {"IN": "co.in", "BR": "com.br", "US": "com", "GB": "co.uk", "DE": "de"}


# ---- data model --------------------------------------------------------------------------------------------------

@dataclass
class Phone:
    """One phone line: its true E.164 number and how it can be written."""

    country: str
    e164: str
    national: str  # national significant number, as dialled after the trunk prefix
    mobile: bool
    shared_by: str | None = None  # household id when two people share this phone
    legacy_wa: bool = False  # Brazilian WhatsApp account registered before the ninth digit


@dataclass
class Mailbox:
    """One mailbox: the canonical address its owner gave out."""

    local: str
    domain: str
    role_of: str | None = None  # company domain when this is a shared role address


@dataclass
class Person:
    """A ground-truth person."""

    id: int
    country: str
    first: str
    last: str
    native: str | None
    phones: list[Phone] = field(default_factory=list)
    personal: Mailbox | None = None
    work: Mailbox | None = None
    company: str | None = None
    slack: tuple[str, str] | None = None  # (team, user)
    slack_profile_personal: bool = False  # the Slack profile showed the personal address until the first problem
    whatsapp: bool = False
    household: str | None = None
    email_habit: str = "exact"  # how this person usually writes their address


@dataclass
class GenMessage:
    """One inbound message as a channel would deliver it, plus the ground truth."""

    seq: int
    at: datetime
    person: int
    problem: str
    label: str  # who any system could attribute it to: "person:N", "household:H" or "role:ADDRESS"
    channel: str  # sms | whatsapp | email | slack
    connector: str
    region: str
    sender: dict[str, str]  # as written: phone / wa_id / from / team, user, email
    form: str  # which written form (for the per-form table)
    display_name: str | None
    evidence: tuple[str, ...]  # joinable evidence keys (ground truth, under the configured rules)
    isolated: tuple[str, ...] = ()  # evidence keys that key a shared handle and never join
    message_id: str | None = None
    in_reply_to: str | None = None
    thread_id: str | None = None


# ---- phone numbers -----------------------------------------------------------------------------------------------

def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789") for _ in range(n))


def _new_phone(rng: random.Random, country: str, mobile: bool) -> Phone:
    if country == "IN":
        national = rng.choice("6789") + _digits(rng, 9) if mobile else rng.choice(["11", "22", "80"]) + "2" + _digits(
            rng, 7)
        return Phone(country, "+91" + national, national, mobile)
    if country == "BR":
        area = rng.choice(["11", "21", "31", "41", "51", "61", "71", "81", "85", "19"])
        sub = (rng.choice("6789") if mobile else rng.choice("2345")) + _digits(rng, 7)
        national = area + ("9" if mobile else "") + sub
        return Phone(country, "+55" + national, national, mobile, legacy_wa=mobile and rng.random() < 0.4)
    if country == "US":
        national = rng.choice(["212", "415", "312", "617", "206", "305", "512", "702", "404", "646"]) + rng.choice(
            "23456789") + _digits(rng, 2) + _digits(rng, 4)
        return Phone(country, "+1" + national, national, mobile)
    if country == "GB":
        national = "7" + rng.choice("45789") + _digits(rng, 8) if mobile else "20" + rng.choice("378") + _digits(rng, 7)
        return Phone(country, "+44" + national, national, mobile)
    if mobile:
        national = "15" + rng.choice("12579") + _digits(rng, 8)
    else:
        national = "30" + rng.choice("2345689") + _digits(rng, 7)
    return Phone(country, "+49" + national, national, mobile)


def _group(national: str, country: str) -> str:
    """The national number spaced the way people of that country write it."""
    n = national
    if country == "IN":
        return f"{n[:5]} {n[5:]}" if len(n) == 10 and n[0] in "6789" else f"{n[:2]} {n[2:6]} {n[6:]}"
    if country == "BR":
        return f"{n[:2]} {n[2:-4]}-{n[-4:]}"
    if country == "US":
        return f"{n[:3]} {n[3:6]} {n[6:]}"
    if country == "GB":
        return f"{n[:4]} {n[4:]}" if n[0] == "7" else f"{n[:2]} {n[2:6]} {n[6:]}"
    return f"{n[:3]} {n[3:]}" if n.startswith("15") else f"{n[:2]} {n[2:]}"


def written_phone(rng: random.Random, phone: Phone, region: str) -> tuple[str, str]:
    """(form name, the number as written) for a message arriving on a channel whose default region is ``region``."""
    cc = phone.e164[1:len(phone.e164) - len(phone.national)]
    grouped = _group(phone.national, phone.country)
    national = phone.national
    forms: list[tuple[str, str]] = [("e164", phone.e164), ("intl_spaced", f"+{cc} {grouped}"),
                                    ("intl_dashed", f"+{cc}-{grouped.replace(' ', '-')}")]
    if region in IDD and not region == phone.country == "US":
        forms.append(("idd", f"{IDD[region]} {cc} {grouped}"))
    if phone.country == "BR" and phone.mobile:
        no9 = national[:2] + national[3:]
        forms += [("intl_no_ninth", f"+55 {_group(no9, 'BR')}")]
    if region == phone.country:
        if phone.country == "US":
            forms += [("national_parens", f"({national[:3]}) {national[3:6]}-{national[6:]}"),
                      ("national_dashed", f"{national[:3]}-{national[3:6]}-{national[6:]}"),
                      ("national_dotted", f"{national[:3]}.{national[3:6]}.{national[6:]}"),
                      ("national_1", f"1-{national[:3]}-{national[3:6]}-{national[6:]}")]
        elif phone.country == "BR":
            forms += [("national_parens", f"({national[:2]}) {national[2:-4]}-{national[-4:]}")]
            if phone.mobile:
                no9 = national[:2] + national[3:]
                forms += [("national_no_ninth", f"({no9[:2]}) {no9[2:-4]}-{no9[-4:]}")]
        else:
            forms += [("national_trunk", f"0{grouped}"), ("national_trunk_bare", f"0{national}")]
            if phone.country == "GB":
                forms.append(("intl_trunk_in_parens", f"+44 (0){grouped}"))
            if phone.country == "DE":
                forms += [("intl_trunk_in_parens", f"+49 (0){grouped}"),
                          ("national_slash", f"0{national[:4]}/{national[4:]}")]
            if phone.country == "IN":
                forms += [("national_bare", grouped), ("cc_without_plus", f"91 {grouped}")]
    return rng.choice(forms)


# ---- email addresses ---------------------------------------------------------------------------------------------

def _rule(domain: str) -> EmailRule:
    return EMAIL_RULES.get(domain) or EMAIL_RULES.get("*") or EmailRule()


def mailbox_key(box: Mailbox) -> str:
    """The evidence key of a mailbox written exactly as its owner gives it out."""
    return f"email:{box.local}@{box.domain}"


def written_email(rng: random.Random, box: Mailbox, habit: str) -> tuple[str, str, str]:
    """(form, the address as written, its evidence key under the configured rules).

    The key starts from the canonical mailbox and keeps every change the domain's rule does not allow folding.
    """
    form = habit if rng.random() < 0.8 else rng.choice(["exact", "case", "upper_domain", "plus", "dots", "alias"])
    if box.role_of:
        form = rng.choice(["exact", "exact", "case", "upper_domain"])
    local, domain = box.local, box.domain
    is_gmail = domain in ("gmail.com", "googlemail.com")
    if form == "dots" and not is_gmail:
        form = "case"
    if form == "alias" and not is_gmail:
        form = "plus"
    residue: list[str] = []
    written_local, written_domain = local, domain
    if form == "dots":
        written_local = local.replace(".", "") if "." in local else ".".join(local[i:i + 3] for i in range(0, len(
            local), 3))
        if not _rule(domain).ignore_dots:
            residue.append(f"dots={written_local}")
    if form == "alias":
        written_domain = "googlemail.com" if domain == "gmail.com" else "gmail.com"
        if _rule(written_domain).canonical_domain != _rule(domain).canonical_domain:
            residue.append(f"domain={written_domain}")
    if form == "plus":
        tag = rng.choice(["orders", "shop", "news", "2024", "support", "amazon"])
        written_local += "+" + tag
        if not _rule(domain).strip_plus:
            residue.append(f"tag={tag}")
    if form == "case":
        written_local = written_local.title() if rng.random() < 0.7 else written_local.upper()
        if not _rule(domain).fold_case:
            residue.append(f"case={written_local}")
    if form == "upper_domain":
        written_domain = written_domain.upper()
    key = mailbox_key(box) + ("|" + "|".join(residue) if residue else "")
    return form, f"{written_local}@{written_domain}", key


# ---- the population -------------------------------------------------------------------------------------------------

def _name_pool(rng: random.Random, country: str) -> str:
    if country == "IN":
        return "IN-ml" if rng.random() < 0.3 else "IN-hi"
    if country in ("US", "GB", "DE"):
        roll = rng.random()
        if roll < 0.08:
            return "AR"
        if roll < 0.16 and country != "DE":
            return "ZH"
    return country


def _slug(text: str) -> str:
    return text.lower().translate(_ASCII)


class _Unique:
    """Hands out values that are new under a key function (mailboxes, phone numbers)."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def take(self, key: str) -> bool:
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


def _mailbox_identity(local: str, domain: str) -> str:
    """When two addresses reach the same real mailbox (as the providers behave), used to keep people apart."""
    if domain in ("gmail.com", "googlemail.com"):
        return local.replace(".", "").lower() + "@gmail.com"
    return local.lower() + "@" + domain


def make_people(rng: random.Random, count: int) -> list[Person]:
    """``count`` people with phones, mailboxes, companies, Slack accounts and a few shared household phones."""
    companies = [
        (f"{rng.choice(_COMPANY_WORDS)}{rng.choice(_COMPANY_WORDS)}-{rng.choice(_COMPANY_KINDS)}.{_TLD[c]}", c)
        for c in (rng.choice(COUNTRIES) for _ in range(max(20, count // 8)))]
    companies = list(dict(companies).items())
    slack_teams = {domain: ("T" + _digits(rng, 9)) for domain, _ in companies if rng.random() < 0.35}
    phones_seen, boxes_seen = _Unique(), _Unique()
    people: list[Person] = []
    for pid in range(count):
        country = rng.choice(COUNTRIES)
        pool = _NAMES[_name_pool(rng, country)]
        (first, first_native), (last, last_native) = rng.choice(pool[0]), rng.choice(pool[1])
        native = None
        if first_native and last_native:
            native = f"{last_native}{first_native}" if pool is _NAMES["ZH"] else f"{first_native} {last_native}"
        person = Person(pid, country, first, last, native)
        for mobile in [True] + ([rng.random() < 0.5] if rng.random() < 0.12 else []):
            phone = _new_phone(rng, country, mobile)
            while not phones_seen.take(phone.e164):
                phone = _new_phone(rng, country, mobile)
            person.phones.append(phone)
        if rng.random() < 0.05:
            person.phones = []  # email and Slack only
        f, la = _slug(first), _slug(last)
        if rng.random() < 0.8:
            domain = rng.choice(PERSONAL_DOMAINS[country])
            pattern = rng.choice([f"{f}.{la}", f"{f}{la}", f"{f}_{la}", f"{f[0]}{la}", f"{f}.{la}{rng.randint(1, 99)}",
                                  f"{f}{rng.randint(1960, 2005)}"])
            local = pattern
            while not boxes_seen.take(_mailbox_identity(local, domain)):
                local = f"{pattern}{rng.randint(1, 9999)}"
            person.personal = Mailbox(local, domain)
        if rng.random() < 0.4:
            domain, _company_country = rng.choice(companies)
            local = rng.choice([f"{f}.{la}", f"{f[0]}.{la}", f"{f}"])
            while not boxes_seen.take(_mailbox_identity(local, domain)) or local in ROLE_PARTS:
                local = f"{f}.{la}{rng.randint(2, 99)}"
            person.work, person.company = Mailbox(local, domain), domain
            if domain in slack_teams and rng.random() < 0.7:
                person.slack = (slack_teams[domain], "U" + _digits(rng, 9))
                person.slack_profile_personal = rng.random() < 0.3
        if not person.phones and not person.personal and not person.work:
            person.personal = Mailbox(f"{f}.{la}.{pid}", "gmail.com")
        whatsapp_share = {"IN": 0.85, "BR": 0.9, "DE": 0.7, "GB": 0.6, "US": 0.25}[country]
        person.whatsapp = bool(person.phones) and person.phones[0].mobile and rng.random() < whatsapp_share
        person.email_habit = rng.choices(["exact", "case", "upper_domain", "plus", "dots"], [80, 8, 4, 5, 3])[0]
        people.append(person)
    # households: two people of one country share one mobile phone (the first person's)
    by_country: dict[str, list[Person]] = {}
    for person in people:
        if person.phones and person.phones[0].mobile and rng.random() < 0.06:
            by_country.setdefault(person.country, []).append(person)
    for members in by_country.values():
        for a, b in zip(members[::2], members[1::2], strict=False):
            household = f"h{a.id}"
            shared = a.phones[0]
            shared.shared_by = household
            a.household = b.household = household
            b.phones = [shared] + (b.phones[1:] if rng.random() < 0.5 else [])
            b.whatsapp = b.whatsapp or a.whatsapp
    return people


def display_name(rng: random.Random, person: Person, channel: str) -> str | None:
    """The name a channel reports: none on SMS, often partial or in another script elsewhere."""
    if channel == "sms":
        return None
    variants = [f"{person.first} {person.last}", f"{person.first} {person.last}".lower(),
                f"{person.last}, {person.first}", f"{person.first[0]}. {person.last}", person.first]
    if person.native:
        variants += [person.native, person.native]
    if channel == "slack":
        return f"{person.first} {person.last}"
    if channel == "whatsapp" and rng.random() < 0.2:
        return rng.choice(["🌸", "Mom", "Home", person.first + " ✨"])
    return rng.choice(variants)


def _channel_options(person: Person, use_shared: bool) -> list[str]:
    options: list[str] = []
    phones = [p for p in person.phones if use_shared or not p.shared_by]
    if phones:
        options.append("sms")
        if person.whatsapp and phones[0].mobile:
            options.append("whatsapp")
    if person.personal or person.work:
        options.append("email")
    if person.slack:
        options.append("slack")
    return options


def generate(people_count: int = 10_000, seed: int = 5) -> tuple[list[Person], list[GenMessage]]:
    """The population and its messages, in time order."""
    rng = random.Random(seed)
    people = make_people(rng, people_count)
    out: list[GenMessage] = []
    for person in people:
        out.extend(_messages_of(rng, person))
    out.sort(key=lambda m: (m.at, m.seq))
    for n, message in enumerate(out):
        message.seq = n
    return people, out


def _messages_of(rng: random.Random, person: Person) -> Iterator[GenMessage]:
    start = EPOCH + timedelta(hours=rng.uniform(0, 24 * 120))
    role_problem = person.work is not None and rng.random() < 0.1
    for k in range(rng.choices([1, 2, 3], [45, 35, 20])[0]):
        problem = f"p{person.id}.{k}"
        use_shared = person.household is not None and (len(person.phones) == 1 or rng.random() < 0.5)
        options = _channel_options(person, use_shared)
        channel = rng.choice(options)
        at = start
        last_email: str | None = None
        thread = f"{1_700_000_000 + rng.randint(0, 10**8)}.{_digits(rng, 6)}"
        from_role = role_problem and k == 0
        for n in range(rng.choices([1, 2, 3, 4, 5, 6], [10, 25, 25, 20, 12, 8])[0]):
            if n:
                at += timedelta(minutes=rng.uniform(5, 60 * 60))  # always inside the 72 h window
                if rng.random() < 0.3 and len(options) > 1:
                    channel = rng.choice([c for c in options if c != channel])
            message = _one_message(rng, person, problem, channel, at, use_shared, from_role, last_email, thread)
            if message.channel == "email":
                last_email = message.message_id
            yield message
        start = at + WINDOW + timedelta(hours=1) + timedelta(hours=rng.expovariate(1 / 240))


def _one_message(rng: random.Random, person: Person, problem: str, channel: str, at: datetime, use_shared: bool,
                 from_role: bool, last_email: str | None, thread: str) -> GenMessage:
    label = f"person:{person.id}"
    name = display_name(rng, person, channel)
    common = {"seq": 0, "at": at, "person": person.id, "problem": problem, "display_name": name}
    if channel in ("sms", "whatsapp"):
        phones = [p for p in person.phones if use_shared or not p.shared_by]
        phone = phones[0] if channel == "whatsapp" or rng.random() < 0.85 else rng.choice(phones)
        key = f"phone:{phone.e164}"
        evidence: tuple[str, ...] = (key,)
        isolated: tuple[str, ...] = ()
        if phone.shared_by:
            label, evidence, isolated = f"household:{phone.shared_by}", (), (key,)
        abroad = rng.random() < 0.1
        region = rng.choice([c for c in COUNTRIES if c != person.country]) if abroad else person.country
        if channel == "sms":
            form, written = written_phone(rng, phone, region)
            return GenMessage(**common, label=label, channel="sms", connector=SMS_CONNECTOR[region], region=region,
                              sender={"phone": written}, form=f"sms:{form}", evidence=evidence, isolated=isolated)
        digits = phone.e164[1:]
        if phone.legacy_wa:
            digits = digits[:4] + digits[5:]
        if rng.random() < 0.6:
            form, sender = ("wa_id_legacy" if phone.legacy_wa else "wa_id"), {"wa_id": digits}
            connector = "wa-cloud"
        else:
            form, sender, connector = "twilio_whatsapp", {"phone": f"whatsapp:+{digits}"}, "wa-twilio"
        return GenMessage(**common, label=label, channel="whatsapp", connector=connector, region=region,
                          sender=sender, form=f"whatsapp:{form}", evidence=evidence, isolated=isolated)
    if channel == "slack":
        assert person.slack is not None and person.work is not None
        team, user = person.slack
        profile = person.work
        if person.slack_profile_personal and person.personal and problem.endswith(".0"):
            profile = person.personal  # updated to the work address later: a link that joins two customers
        return GenMessage(**common, label=label, channel="slack", connector="slack", region=person.country,
                          sender={"team": team, "user": user, "email": f"{profile.local}@{profile.domain}"},
                          form="slack:profile_email", evidence=(f"slack:{team}:{user}", mailbox_key(profile)),
                          thread_id=f"{team}:{thread}")
    box = person.work if person.work and (not person.personal or rng.random() < 0.5) else person.personal
    assert box is not None
    isolated = ()
    if from_role and person.work is not None:
        box = Mailbox(rng.choice(["support", "info"]), person.work.domain, role_of=person.work.domain)
    form, written, key = written_email(rng, box, person.email_habit)
    evidence = (key,)
    if box.role_of:
        label, evidence, isolated = f"role:{box.local}@{box.domain}", (), (mailbox_key(box),)
        name = f"{box.local.title()} {box.domain.split('.')[0].title()}" if rng.random() < 0.5 else name
        common["display_name"] = name
    mid = f"<{problem}.{_digits(rng, 10)}@{box.domain}>"
    return GenMessage(**common, label=label, channel="email", connector="email", region=person.country,
                      sender={"from": written}, form=f"email:{form}", evidence=evidence, isolated=isolated,
                      message_id=mid, in_reply_to=last_email)
