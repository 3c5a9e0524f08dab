"""Everything a process needs, built once from a validated config: engine, queues, connectors, mappings."""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import requests
from sqlalchemy import Engine

from gateway.attachments import AttachmentStore, MediaPolicy
from gateway.config import GatewayConfig, channel_class, crm_class
from gateway.crmfields import FieldCatalog
from gateway.directory import CrmDirectory
from gateway.enrich import Enricher
from gateway.identity import rules_from_config
from gateway.mapping import mapping_path_for
from gateway.mapping_store import MappingStore, Source
from gateway.plugins import ChannelConnector, ConnectorContext, CrmConnector, Registry
from gateway.ratelimit import DbRateLimiter, RateLimiter
from gateway.replay import DbUsedTokens
from gateway.retry import RetryPolicy
from gateway.storage.db import make_engine, migrate
from gateway.storage.queues import Queues

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    config: GatewayConfig
    registry: Registry
    engine: Engine
    queues: Queues
    http: requests.Session
    channels: dict[str, ChannelConnector] = field(default_factory=dict)
    crms: dict[str, CrmConnector] = field(default_factory=dict)
    mappings: MappingStore = field(default_factory=lambda: MappingStore({}))
    catalogs: dict[str, FieldCatalog | None] = field(default_factory=dict)  # the field names each CRM reads
    directories: dict[str, CrmDirectory] = field(default_factory=dict)
    sends_waiting: threading.Event = field(default_factory=threading.Event)  # set when replies were queued
    _enricher: Enricher | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(self.config.settings.workers.retry)

    @property
    def data_dir(self) -> Path:
        return self.config.resolve_path(self.config.settings.data_dir)

    def limiter(self, name: str, per_minute: float) -> RateLimiter:
        """A request budget shared by every process of this gateway (kept in the database)."""
        return DbRateLimiter(self.engine, name, per_minute)

    @property
    def enricher(self) -> Enricher:
        """The threads the pipeline's network work runs on, shared by this process's pipeline threads."""
        with self._lock:
            if self._enricher is None:
                self._enricher = Enricher(self.config.settings.workers.enrich_threads)
            return self._enricher

    def close(self) -> None:
        if self._enricher is not None:
            self._enricher.close()
        self.http.close()
        self.engine.dispose()


def storage_url(config: GatewayConfig) -> str:
    """The storage URL, with a relative SQLite path taken relative to the config file."""
    url = config.settings.storage.url
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and url != "sqlite:///:memory:":
        return prefix + str(config.resolve_path(url[len(prefix):]))
    return url


def connector_context(config: GatewayConfig, http: requests.Session, engine: Engine | None) -> ConnectorContext:
    """What connectors get: with an engine, rate limits and used tokens shared through the database; without, per
    process."""
    data_dir = config.resolve_path(config.settings.data_dir)
    media = config.settings.media
    policy = MediaPolicy(deadline_seconds=media.deadline_seconds, allow_networks=tuple(media.allow_networks),
                         allow_http=media.allow_http)
    context = ConnectorContext(
        http=http, public_url=config.settings.server.public_url, data_dir=data_dir, base_dir=config.base_dir,
        attachments=AttachmentStore(data_dir / "attachments", policy=policy),
        default_region=config.settings.identity.default_region)
    if engine is not None:
        context.limiter = lambda name, per_minute: DbRateLimiter(engine, name, per_minute)
        context.used_tokens = DbUsedTokens(engine)
    return context


def build_connectors(config: GatewayConfig, registry: Registry, context: ConnectorContext
                     ) -> tuple[dict[str, ChannelConnector], dict[str, CrmConnector]]:
    channels = {name: channel_class(registry, cfg)(name, cfg, context) for name, cfg in config.channels.items()}
    crms = {name: crm_class(registry, cfg)(name, cfg, context) for name, cfg in config.crms.items()}
    return channels, crms


def build_runtime(config: GatewayConfig, registry: Registry | None = None,
                  http: requests.Session | None = None, *, migrate_schema: bool | None = None) -> Runtime:
    registry = registry or Registry.from_entry_points()
    storage = config.settings.storage
    engine = make_engine(storage_url(config), sqlite_synchronous=storage.sqlite_synchronous,
                         pool_size=storage.pool_size)
    if storage.auto_migrate if migrate_schema is None else migrate_schema:
        migrate(engine)
    session = http or requests.Session()
    session.headers.setdefault("User-Agent", f"channel-gateway/{_version()}")
    runtime = Runtime(config, registry, engine, Queues(engine), session)
    runtime.channels, runtime.crms = build_connectors(config, registry, connector_context(config, session, engine))
    rules = rules_from_config(config.settings.identity)
    for name, crm in config.crms.items():
        runtime.directories[name] = CrmDirectory(engine, name, rules)
        runtime.catalogs[name] = crm_class(registry, crm).mapping_fields(crm)
    runtime.mappings = MappingStore(mapping_sources(config, registry))
    return runtime


def mapping_sources(config: GatewayConfig, registry: Registry) -> dict[str, Source]:
    """Each CRM's mapping file and the field names its connector reads."""
    sources: dict[str, Source] = {}
    for name, crm in config.crms.items():
        path = mapping_path_for(config, name, registry)
        if path is not None:
            sources[name] = (path, crm_class(registry, crm).mapping_fields(crm))
    return sources


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("channel-gateway")
    except PackageNotFoundError:
        return os.environ.get("GATEWAY_VERSION", "dev")
