"""The gateway's YAML configuration: typed models, and a loader that reports every error at once."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from gateway import sla_config
from gateway.ack_rules import AckRule, reference_issues
from gateway.calendars import CalendarConfig
from gateway.kpis import KpisConfig
from gateway.kpis import check_references as kpi_references
from gateway.plugins import ChannelConnector, ConnectorConfig, CrmConnector, Registry
from gateway.privacy import install_key
from gateway.routing import RouteWhen, route_issues
from gateway.sensitive import Masker, combined
from gateway.yamlsource import ConfigError, ConfigIssue, YamlDocument, interpolate, load_yaml

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StorageConfig(_Section):
    url: str = "sqlite:///var/gateway.db"
    sqlite_synchronous: Literal["full", "normal"] = Field(
        "full", description="full: a 2xx means the row survived power loss; normal: faster, survives crashes only.")
    auto_migrate: bool = True
    pool_size: int = Field(5, ge=1, le=100)


class ServerConfig(_Section):
    listen: str = "127.0.0.1:8080"
    public_url: str = Field("http://127.0.0.1:8080", description="The base URL providers are told to call.")
    processes: int = Field(
        1, ge=1, le=64,
        description="Web server processes. One suits SQLite (a single writer); with PostgreSQL and more cores, "
                    "raise it. On SQLite, ingest holds the write lock only for its inserts, so two processes also "
                    "work (measured side by side in docs/benchmarks.md).")
    threads: int = Field(8, ge=1, le=256, description="Threads per web server process.")
    max_body_bytes: int | None = Field(
        None, ge=1024, description="No longer used, accepted so older configs still load: each webhook endpoint's own "
                                   "limit applies (README, Connectors).")
    metrics_token: SecretStr | None = Field(
        None, description="When set, GET /metrics needs `Authorization: Bearer <token>` (it names channels and CRMs).")
    read_timeout_seconds: float = Field(
        30.0, gt=0, le=600,
        description="A request (headers and body) must arrive in full within this time, or it is answered 408. "
                    "Requests are read by the server's event loop, so a slow client never holds a thread.")

    @field_validator("public_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+(/[^\s]*)?$", value):
            raise ValueError("must be an absolute http(s) URL such as https://gw.example.com")
        return value.rstrip("/")

    @field_validator("metrics_token")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters (a random token)")
        return value

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not host:
            raise ValueError("must be HOST:PORT, such as 127.0.0.1:8080")
        return value


class RetryConfig(_Section):
    max_attempts: int = Field(10, ge=1, le=100)
    initial_seconds: float = Field(2.0, gt=0)
    max_seconds: float = Field(1800.0, gt=0)
    jitter_seconds: float = Field(2.0, ge=0)


class WorkersConfig(_Section):
    processes: Literal["one", "per_stage"] = Field(
        "per_stage", description="How 'gateway run' runs the workers: 'per_stage' starts a pipeline process and a "
                                 "delivery process (each stage gets a core of its own), 'one' runs both stages in "
                                 "one process (a single core, or to save the memory of a process).")
    pipeline_threads: int = Field(1, ge=0, le=32)
    delivery_threads: int = Field(2, ge=0, le=64)
    send_threads: int = Field(
        1, ge=0, le=64, description="Threads sending agent replies to channels (0: this process sends none).")
    note_threads: int = Field(1, ge=0, le=16, description="Threads writing notes for agents to the CRMs.")
    batch_size: int = Field(
        20, ge=1, le=500, description="Conversations (outbox), replies to send or notes per claim of a thread.")
    inbox_batch_size: int = Field(
        100, ge=1, le=1000, description="Inbox rows per pipeline claim, stored in one transaction (one commit, one "
                                        "settle); a failing row is then stored again alone.")
    coalesce_max: int = Field(20, ge=1, le=100, description="Pending messages of one conversation written together.")
    idle_poll_seconds: float = Field(0.2, gt=0, le=60)
    lease_seconds: int = Field(120, ge=5)
    enrich_threads: int = Field(
        4, ge=1, le=64, description="Threads per pool fetching media and profiles (one pool for messages with "
                                    "media, one for the rest).")
    enrich_wait_seconds: float = Field(
        5.0, gt=0, le=300, description="How long a batch waits for its media and profiles; a message still "
                                       "waiting then goes back to the queue while the others go on.")
    max_processing_seconds: float = Field(
        300.0, gt=0, description="An inbox row whose normalising and media fetching take longer is dead-lettered "
                                 "(the lease is no longer renewed) and the worker process restarts without the stuck "
                                 "thread.")
    retry: RetryConfig = RetryConfig()


DEFAULT_ROLE_LOCAL_PARTS = (
    "noreply", "donotreply", "mailerdaemon", "postmaster", "bounce", "bounces", "notifications", "notification",
    "support", "info", "sales", "admin", "administrator", "help", "helpdesk", "contact", "billing", "webmaster",
    "abuse", "office", "team", "hostmaster", "marketing", "newsletter", "service", "customerservice",
)


class EmailRuleConfig(_Section):
    fold_case: bool = Field(True, description="Treat the local part case-insensitively (the default for every "
                                              "domain; false for a domain whose mailboxes differ by case).")
    strip_plus: bool = Field(False, description="Drop a +tag from the local part.")
    ignore_dots: bool = Field(False, description="Ignore dots in the local part.")
    canonical_domain: str | None = Field(None, description="Domain to write instead (googlemail.com -> gmail.com).")


class IdentityConfig(_Section):
    default_region: str = Field("US", pattern=r"^[A-Z]{2}$", description="ISO 3166 region for national numbers.")
    email_rules: dict[str, EmailRuleConfig] = Field(
        {}, description="Per-domain local-part rules; the key '*' applies to every other domain. Without a rule, "
                        "an address's case is folded and nothing else is changed.")
    role_local_parts: list[str] = Field(
        list(DEFAULT_ROLE_LOCAL_PARTS),
        description="Local parts of shared role addresses: such addresses never join identities.")
    blocked_emails: list[str] = Field([], description="Addresses (glob patterns) of the business itself.")
    blocked_phones: list[str] = Field([], description="The business's own numbers, E.164.")
    max_identifiers_per_kind: int = Field(5, ge=1, le=100)
    suggestion_min_score: float = Field(85.0, ge=0, le=100)
    carry_merges_to_crm: bool = Field(False, description="Merge CRM contacts too when an admin merges customers.")


class ConversationsConfig(_Section):
    continuity: Literal["same_ticket", "per_channel"] = "same_ticket"
    window_hours: float = Field(72.0, gt=0)
    subject_token: str | None = Field(
        r"\[#(\d+)\]", description="Regex with one group: the CRM ticket number in a subject, such as [#1234]. "
        "Used only when no thread key matched, and only when the sender belongs to that ticket's customer.")

    @field_validator("subject_token")
    @classmethod
    def _one_group(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                groups = re.compile(value).groups
            except re.error as exc:
                raise ValueError(f"not a regular expression: {exc}") from None
            if groups != 1:
                raise ValueError("must have exactly one capturing group (the ticket number)")
        return value


def _network(value: str) -> str:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"{value!r} is not a network such as 127.0.0.0/8 or fd00::/8") from None
    return value


class MediaConfig(_Section):
    deadline_seconds: float = Field(
        60.0, gt=0, le=600, description="The most one media download may take, redirects and every read included.")
    allow_networks: list[Annotated[str, AfterValidator(_network)]] = Field(
        [], description="Networks media may come from although they are not public (loopback, private, "
                        "link-local), in CIDR notation: 127.0.0.0/8 for a test server, an internal media proxy.")
    allow_http: bool = Field(False, description="Plain http, only to addresses in allow_networks (a test server).")


class LoggingConfig(_Section):
    format: Literal["text", "json"] = "text"
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    include_pii: bool = Field(
        False, description="Write phone numbers and email addresses into logs as they are. Off: each appears as a "
                           "short stable hash (phone#1a2b3c4d), the same in every line and process.")


class PrivacyConfig(_Section):
    key: SecretStr | None = Field(
        None, description="Key of the hashes kept for erased customers and written to logs. Unset: a random key "
                          "kept in {data_dir}/secrets/privacy.key. Give one (${file:/run/secrets/...}) when several "
                          "hosts share one database.")


class ConsoleConfig(_Section):
    enabled: bool = Field(True, description="Serve the operations console at /admin (off: /admin answers 404).")
    session_secret: SecretStr | None = Field(
        None, description="Key that signs console session cookies. Unset: a random key kept in "
                          "{data_dir}/secrets/console-session.key. Give one when several hosts serve the console.")
    session_hours: float = Field(12.0, gt=0, le=24 * 30, description="How long a login lasts.")
    max_failures_per_account: int = Field(
        5, ge=1, description="Failed logins of one account within failure_window_minutes before it is refused.")
    max_failures_per_address: int = Field(
        20, ge=1, description="Failed logins from one client address within failure_window_minutes.")
    failure_window_minutes: float = Field(15.0, gt=0)


class PatternConfig(_Section):
    regex: str = Field(description="A regular expression; each match is replaced.")
    replacement: str = Field("[redacted]", description="What a match becomes.")

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
        return value


class RedactConfig(_Section):
    cards: bool = Field(True, description="Mask Luhn-valid payment card numbers as **** **** **** 4242.")
    national_ids: list[Literal["us_ssn", "in_aadhaar", "uk_nino"]] = Field(
        [], description="National ids to mask: US SSN, India Aadhaar (Verhoeff-checked), UK National Insurance.")
    patterns: list[PatternConfig] = Field([], description="Further patterns to mask.")


Days = Annotated[int | None, Field(ge=1, le=36500)]


class RetentionConfig(_Section):
    """How long each kind of data is kept, in days; null keeps it. Rows still waiting to be processed, delivered
    or sent, and open dead letters, are kept whatever their age (README, Privacy)."""

    raw_payloads_days: Days = Field(
        30, description="Raw webhook and mail payloads in the inbox: emptied (or removed when no message came "
                        "of them) once processed and delivered.")
    provider_statuses_days: Days = Field(30, description="Delivery statuses reported by providers.")
    attachments_days: Days = Field(
        30, description="Attachment files on disk, once their message is delivered (the CRM holds its copy); the "
                        "message keeps the attachment's name, type, size and digest.")
    message_text_days: Days = Field(
        None, description="Message text (subject, text, HTML, attachment file names, channel extras with the "
                          "customer's content such as a shared location or contact card), survey comments, and the "
                          "CRM fields rendered from them; ids, times, direction, sender and conversation stay.")
    delivery_logs_days: Days = Field(
        90, description="Delivery and send attempt logs, notes already written, finished acknowledgements and "
                        "escalation clocks.")
    dead_letters_days: Days = Field(90, description="Dead letters replayed or discarded this long ago.")
    conversations_days: Days = Field(
        None, description="Conversations idle this long, whole: messages, thread keys, ticket links. A later "
                          "message then opens a new conversation (and ticket). Customers and identifiers stay.")
    admin_audit_days: Days = Field(
        365, description="The console's audit log (logins, merges, replays): kept a year by default, as the "
                         "record of what each admin did.")
    batch_size: int = Field(500, ge=1, le=10000, description="Rows removed per transaction.")


class RouteConfig(_Section):
    sources: list[str] = Field(alias="from", min_length=1)
    to: str
    name: str | None = Field(None, description="Shown to the mapping as `route.name` when the route holds.")
    when: RouteWhen | None = Field(
        None, description="Conditions on the message (channel, language, keywords, customer, business hours); "
                          "without them the route takes every message of its channels (README, Routing).")
    otherwise: bool = Field(False, description="Take the message only when no route with `when` took it.")
    redact: RedactConfig = Field(
        RedactConfig(), description="What is masked in a message's text before it is stored and sent to the CRM.")


class GatewaySettings(_Section):
    storage: StorageConfig = StorageConfig()
    server: ServerConfig = ServerConfig()
    workers: WorkersConfig = WorkersConfig()
    identity: IdentityConfig = IdentityConfig()
    conversations: ConversationsConfig = ConversationsConfig()
    logging: LoggingConfig = LoggingConfig()
    media: MediaConfig = MediaConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    retention: RetentionConfig = RetentionConfig()
    console: ConsoleConfig = ConsoleConfig()
    data_dir: str = "var"
    channels: dict[str, dict[str, Any]] = Field({}, repr=False)
    crms: dict[str, dict[str, Any]] = Field({}, repr=False)
    routes: list[RouteConfig] = []
    business_hours: dict[str, CalendarConfig] = Field(
        {}, description="Named calendars (time zone, weekly hours, holidays) for acknowledgements, routes and "
                        "escalations.")
    acknowledgements: list[AckRule] = Field(
        [], description="Automatic answers to the first message of a new conversation (README, Automation).")
    escalations: list[sla_config.EscalationRule] = Field(
        [], description="Escalate a ticket left without an agent reply (README, Automation).")
    surveys: list[sla_config.SurveyRule] = Field(
        [], description="Ask for a 1-5 rating when a ticket is solved (README, Automation).")
    kpis: KpisConfig = Field(
        KpisConfig(), description="Which calendar the KPIs' response times count in (README, Console).")


@dataclass(frozen=True)
class GatewayConfig:
    """A validated config: the settings plus each connector instance's typed config."""

    path: Path
    settings: GatewaySettings
    channels: dict[str, ConnectorConfig]
    crms: dict[str, ConnectorConfig]

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    def resolve_path(self, value: str) -> Path:
        path = Path(value)
        return path if path.is_absolute() else self.base_dir / path

    def routes_from(self, channel: str) -> list[RouteConfig]:
        return [route for route in self.settings.routes if channel in route.sources]

    def masker_for(self, channel: str) -> Masker:
        """What a message from ``channel`` is masked with: every route it feeds, the strictest union."""
        return combined((r.redact.cards, r.redact.national_ids, [(p.regex, p.replacement) for p in r.redact.patterns])
                        for r in self.routes_from(channel))

    @property
    def privacy_key(self) -> bytes:
        """The key of identifier hashes (``gateway.privacy``)."""
        key = self.settings.privacy.key
        return install_key(self.resolve_path(self.settings.data_dir), key.get_secret_value() if key else None)


def _pydantic_issues(doc: YamlDocument, prefix: tuple[str | int, ...], exc: ValidationError,
                     suffix: str = "") -> list[ConfigIssue]:
    issues = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        elif error["type"] == "missing":
            message = "field required"
        issues.append(doc.issue((*prefix, *loc), message + suffix))
    return issues


def _connector_configs(doc: YamlDocument, section: str, raw: dict[str, Any], registry: Registry,
                       role: str) -> tuple[dict[str, ConnectorConfig], list[ConfigIssue]]:
    configs: dict[str, ConnectorConfig] = {}
    issues: list[ConfigIssue] = []
    for name, body in raw.items():
        path = (section, name)
        if not _NAME.match(name):
            issues.append(doc.issue(path, "name must be lower-case letters, digits, '-' or '_'"))
        if not isinstance(body, dict):
            issues.append(doc.issue(path, "must be a mapping with at least a 'type'"))
            continue
        type_name = body.get("type")
        cls = registry.get(type_name) if isinstance(type_name, str) else None
        if cls is None:
            known = ", ".join(registry.names(role)) or "none installed"
            issues.append(doc.issue((*path, "type"), f"unknown {role} connector type {type_name!r} (known: {known})"))
            continue
        if cls.role != role:
            issues.append(doc.issue((*path, "type"), f"{type_name!r} is a {cls.role} connector, not a {role}"))
            continue
        try:
            configs[name] = cls.Config.model_validate(body)
        except ValidationError as exc:
            issues.extend(_pydantic_issues(doc, path, exc, f" ({type_name})"))
    return configs, issues


def validate_document(doc: YamlDocument, registry: Registry, path: Path) -> GatewayConfig:
    """Validate a parsed document; raise ConfigError listing every issue."""
    issues = interpolate(doc)
    if not isinstance(doc.data, dict):
        raise ConfigError([*issues, doc.issue((), "the config must be a YAML mapping")])
    try:
        settings = GatewaySettings.model_validate(doc.data)
    except ValidationError as exc:
        issues.extend(_pydantic_issues(doc, (), exc))
        settings = GatewaySettings.model_construct()
    raw_channels = doc.data.get("channels") if isinstance(doc.data.get("channels"), dict) else {}
    raw_crms = doc.data.get("crms") if isinstance(doc.data.get("crms"), dict) else {}
    channels, channel_issues = _connector_configs(doc, "channels", raw_channels, registry, "channel")
    crms, crm_issues = _connector_configs(doc, "crms", raw_crms, registry, "crm")
    issues += channel_issues + crm_issues
    for index, route in enumerate(doc.data.get("routes") or []):
        if not isinstance(route, dict):
            continue
        sources = route.get("from") if isinstance(route.get("from"), list) else []
        for position, source in enumerate(sources):
            if source not in raw_channels:
                issues.append(doc.issue(("routes", index, "from", position), f"no channel named {source!r}"))
        target = route.get("to")
        if isinstance(target, str) and target not in raw_crms:
            issues.append(doc.issue(("routes", index, "to"), f"no crm named {target!r}"))
    issues += route_issues(doc, settings, raw_channels)
    raw_routes = [(r.get("from") if isinstance(r.get("from"), list) else [], r.get("to"))
                  for r in doc.data.get("routes") or [] if isinstance(r, dict)]
    raw_calendars = doc.data.get("business_hours") if isinstance(doc.data.get("business_hours"), dict) else {}
    raw_route_names = {r.get("name") for r in doc.data.get("routes") or [] if isinstance(r, dict)} - {None}
    issues += reference_issues(doc, doc.data.get("acknowledgements"), set(raw_channels), set(raw_crms),
                               set(raw_calendars), raw_routes, raw_route_names)
    issues += sla_config.check_references(doc, doc.data)
    issues += kpi_references(doc, doc.data)
    # the raw connector sections hold secrets in plain text: only the typed, masked configs are kept
    settings = settings.model_copy(update={"channels": {}, "crms": {}})
    config = GatewayConfig(path=path, settings=settings, channels=channels, crms=crms)
    issues += _check_mappings(doc, config, registry)
    if issues:
        raise ConfigError(sorted(issues, key=lambda issue: (issue.file, issue.line or 0)))
    return config


def _check_mappings(doc: YamlDocument, config: GatewayConfig, registry: Registry) -> list[ConfigIssue]:
    from gateway.mapping import mapping_path_for, validate_mapping_file

    issues = []
    for name, crm in config.crms.items():
        cls = registry.get(crm.type)
        if cls is None or not issubclass(cls, CrmConnector):
            continue
        mapping = mapping_path_for(config, name, registry)
        if mapping is None:
            continue
        if not mapping.exists():
            issues.append(doc.issue(("crms", name, "mapping"), f"mapping file {mapping} does not exist"))
            continue
        issues += validate_mapping_file(mapping, cls.mapping_fields(crm))
    return issues


def load_config(path: str | Path, registry: Registry | None = None) -> GatewayConfig:
    """Read, interpolate and validate a config file; raise ConfigError with every issue found."""
    path = Path(path)
    if not path.exists():
        raise ConfigError([ConfigIssue(str(path), None, "", "file not found")])
    doc = load_yaml(path)
    return validate_document(doc, registry or Registry.from_entry_points(), path)


def channel_class(registry: Registry, config: ConnectorConfig) -> type[ChannelConnector]:
    cls = registry.get(config.type)
    assert cls is not None and issubclass(cls, ChannelConnector)
    return cls


def crm_class(registry: Registry, config: ConnectorConfig) -> type[CrmConnector]:
    cls = registry.get(config.type)
    assert cls is not None and issubclass(cls, CrmConnector)
    return cls
