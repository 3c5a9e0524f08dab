"""SIGHUP in a worker process, or a changed config file: read the config again and take what is safe to take while
running (routes, the CRMs' mapping settings), then load every mapping again. What needs a restart (connector
settings, storage, workers, ...) is named in the log and left as it is; a config or mapping that fails its checks is
refused with the errors logged, and the one before stays in use.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from gateway.config import GatewayConfig, load_config
from gateway.mapping_store import file_signature
from gateway.runtime import Runtime, mapping_sources
from gateway.yamlsource import ConfigError

log = logging.getLogger(__name__)


def _without_mapping(crm: Any) -> Any:
    return crm.model_copy(update={"mapping": None}) if "mapping" in type(crm).model_fields else crm


def needs_restart(old: GatewayConfig, new: GatewayConfig) -> list[str]:
    """The parts of the config that changed and are only taken at the next start."""
    changed = [f"settings.{name}" for name in type(old.settings).model_fields
               if name not in ("routes", "channels", "crms")
               and getattr(old.settings, name) != getattr(new.settings, name)]
    for section, before, after in (("channels", old.channels, new.channels), ("crms", old.crms, new.crms)):
        for name in sorted(before.keys() | after.keys()):
            one, other = before.get(name), after.get(name)
            if one is None or other is None or _without_mapping(one) != _without_mapping(other):
                changed.append(f"{section}.{name}")
    return changed


def reload_runtime(runtime: Runtime) -> list[str]:
    """Take the config file's routes and mapping files, when nothing else needs a restart, then load every mapping
    again; the names of the CRMs whose mapping is now the file's."""
    try:
        new = load_config(runtime.config.path, runtime.registry)
    except ConfigError as exc:
        log.error("config %s refused on reload, the one loaded before stays in use:\n  %s",
                  runtime.config.path, "\n  ".join(str(issue) for issue in exc.issues))
        return runtime.mappings.reload()
    pending = needs_restart(runtime.config, new)
    if pending:
        log.warning("config %s: changes to %s take effect at the next start, and so do its routes and mapping "
                    "settings; the mapping files are loaded again", runtime.config.path, ", ".join(pending))
        return runtime.mappings.reload()
    runtime.config = replace(runtime.config, crms=new.crms,
                             settings=runtime.config.settings.model_copy(update={"routes": new.settings.routes}))
    return runtime.mappings.reload(mapping_sources(runtime.config, runtime.registry))


class Watch:
    """What a worker process reloads: the config when its file changed or on request, else each changed mapping."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self.seen = file_signature(runtime.config.path)

    def poll(self, *, requested: bool = False) -> list[str]:
        """Reload what changed (everything when ``requested``); the CRMs whose mapping was loaded again."""
        now = file_signature(self.rt.config.path)
        if requested or now != self.seen:
            self.seen = now
            return reload_runtime(self.rt)
        return self.rt.mappings.refresh()
