"""The mappings a process uses, loaded again when their files change or on request (SIGHUP, a config reload).

A file's change is noticed by its modification time and size, looked at no more often than ``check_seconds``
(and at once when a replayed row is rendered). A changed mapping goes through every check ``gateway check`` makes;
one that fails is refused with a logged error and the mapping loaded before stays in use.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from gateway.crmfields import FieldCatalog
from gateway.mapping import Mapping
from gateway.yamlsource import ConfigError

log = logging.getLogger(__name__)
Source = tuple[Path, FieldCatalog | None]
Signature = tuple[int, int, int] | None


def file_signature(path: Path) -> Signature:
    """What tells a changed file: modification time, size and inode (None when it cannot be read)."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size, stat.st_ino


class MappingStore:
    """The current mapping of each CRM, by CRM name."""

    def __init__(self, sources: dict[str, Source], *, check_seconds: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.check_seconds = check_seconds
        self.clock = clock
        self._lock = threading.Lock()
        self._sources: dict[str, Source] = {}
        self._mappings: dict[str, Mapping] = {}
        self._seen: dict[str, Signature] = {}
        self._checked_at = clock()
        self.reloads = 0  # mappings loaded again since the start
        for name, (path, catalog) in sources.items():  # at the start, a bad mapping is a config error
            self._seen[name] = file_signature(path)
            self._mappings[name] = Mapping.load(path, catalog)
        self._sources = dict(sources)

    def get(self, name: str, default: Mapping | None = None, *, fresh: bool = False) -> Mapping | None:
        """The CRM's mapping; ``fresh`` looks at its file now rather than at the next periodic look."""
        self.refresh(now=fresh)
        return self._mappings.get(name, default)

    def __getitem__(self, name: str) -> Mapping:
        mapping = self.get(name)
        if mapping is None:
            raise KeyError(name)
        return mapping

    def refresh(self, *, now: bool = False) -> list[str]:
        """Load again the mappings whose file changed; the names of those now in use."""
        if not now and self.clock() - self._checked_at < self.check_seconds:
            return []
        with self._lock:
            self._checked_at = self.clock()
            changed = [name for name, (path, _) in self._sources.items()
                       if file_signature(path) != self._seen.get(name)]
            return self._load(changed)

    def reload(self, sources: dict[str, Source] | None = None) -> list[str]:
        """Load every mapping again (SIGHUP), from ``sources`` when the config named other files; the names of
        those now in use. A CRM missing from ``sources`` keeps its mapping."""
        with self._lock:
            self._checked_at = self.clock()
            if sources is not None:
                self._sources.update(sources)
            return self._load(list(self._sources))

    def _load(self, names: list[str]) -> list[str]:
        loaded = []
        for name in names:
            path, catalog = self._sources[name]
            self._seen[name] = file_signature(path)
            try:
                mapping = Mapping.load(path, catalog)
            except (ConfigError, OSError) as exc:
                issues = [str(i) for i in exc.issues] if isinstance(exc, ConfigError) else [f"{path}: {exc}"]
                log.error("crm %s: mapping %s refused, the one loaded before stays in use:\n  %s",
                          name, path, "\n  ".join(issues))
                continue
            self._mappings[name] = mapping
            self.reloads += 1
            loaded.append(name)
            log.info("crm %s: mapping loaded again from %s", name, path)
        return loaded
