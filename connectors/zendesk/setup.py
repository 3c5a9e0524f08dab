"""``gateway crm setup`` for Zendesk: the webhook and the trigger that report agents' public replies.

The trigger fires when an agent (not the API, so never the gateway's own writes) adds a public comment, and notifies
the webhook with the ticket and comment ids; the gateway reads the comment back through the API. Zendesk signs each
request with the webhook's secret: unless ``webhook_secret`` is set, set-up reads it back and keeps it in
``{data_dir}/secrets/NAME.webhook-secret`` (mode 0600), where the connector finds it. Running set-up twice creates
nothing the second time.

https://developer.zendesk.com/api-reference/webhooks/webhooks-api/webhooks/
https://developer.zendesk.com/api-reference/ticketing/business-rules/triggers/
"""

from __future__ import annotations

import hmac
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.errors import PermanentError

if TYPE_CHECKING:
    from connectors.zendesk.connector import ZendeskCrm

MAX_LIST_PAGES = 10
# Zendesk's via id 5 is "Web service (API)": updates the gateway makes through the API never fire the trigger
# (https://developer.zendesk.com/documentation/ticketing/reference-guides/via-types/)
VIA_API = "5"
# {{ticket.latest_comment.id}} is the comment of this update; a misspelt placeholder renders as "" without error
HOOK_BODY = {"event": "agent_reply", "ticket_id": "{{ticket.id}}", "comment_id": "{{ticket.latest_comment.id}}"}


def webhook_name(crm_name: str) -> str:
    return f"Channel gateway: agent replies ({crm_name})"


def trigger_title(crm_name: str) -> str:
    return f"Channel gateway: send agents' public replies to customers ({crm_name})"


# -- where the signing secret lives --------------------------------------------------------------------------------
def secret_path(crm: ZendeskCrm) -> Path:
    """The file set-up keeps the webhook's signing secret in when ``webhook_secret`` is not configured."""
    return crm.context.data_dir / "secrets" / f"{crm.name}.webhook-secret"


def signing_secret(crm: ZendeskCrm) -> str | None:
    """The configured secret, else the one set-up stored; None when neither exists (every request is refused)."""
    if crm.config.webhook_secret is not None:
        return crm.config.webhook_secret.get_secret_value() or None
    try:
        return secret_path(crm).read_text(encoding="utf-8").strip() or None
    except (FileNotFoundError, NotADirectoryError):
        return None


def store_secret(path: Path, secret: str) -> None:
    """Write the secret readable by its owner only, replacing the file in one step."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, secret.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(temporary, 0o600)  # O_CREAT's mode is reduced by the umask; an existing file kept its old mode
    os.replace(temporary, path)


# -- what set-up creates ---------------------------------------------------------------------------------------------
def webhook_payload(crm: ZendeskCrm, hook_url: str) -> dict[str, Any]:
    return {"webhook": {
        "name": webhook_name(crm.name), "endpoint": hook_url, "http_method": "POST", "request_format": "json",
        "status": "active", "subscriptions": ["conditional_ticket_events"],
        "description": "Tells the channel gateway that an agent answered a customer publicly."}}


def trigger_payload(crm: ZendeskCrm, webhook_id: str) -> dict[str, Any]:
    return {"trigger": {
        "title": trigger_title(crm.name), "active": True,
        "description": "Created by `gateway crm setup`: the gateway carries public agent replies to the channel "
                       "the customer wrote from.",
        "conditions": {"all": [
            {"field": "comment_is_public", "operator": "is", "value": "true"},
            {"field": "role", "operator": "is", "value": "agent"},
            {"field": "current_via_id", "operator": "is_not", "value": VIA_API},
        ], "any": []},
        "actions": [{"field": "notification_webhook", "value": [webhook_id, json.dumps(HOOK_BODY)]}]}}


def _pages(crm: ZendeskCrm, path: str, params: dict[str, Any], key: str) -> list[dict[str, Any]]:
    """Every item of a listing (cursor or offset pagination), at most ``MAX_LIST_PAGES`` pages."""
    found: list[dict[str, Any]] = []
    url: str | None = path
    for _ in range(MAX_LIST_PAGES):
        if url is None:
            break
        body = crm.client.call("GET", url, params=params if url == path else None)
        found.extend(item for item in body.get(key) or [] if isinstance(item, dict))
        cursor_next = (body.get("links") or {}).get("next") if (body.get("meta") or {}).get("has_more") else None
        next_url = cursor_next or body.get("next_page")
        url = next_url.split("/api/v2", 1)[1] if isinstance(next_url, str) and "/api/v2" in next_url else None
    return found


def find_webhook(crm: ZendeskCrm, hook_url: str) -> dict[str, Any] | None:
    """Ours: the webhook calling ``hook_url``, else one under our name (its endpoint is then updated)."""
    hooks = _pages(crm, "/webhooks", {"filter[name_contains]": webhook_name(crm.name), "page[size]": 100},
                   "webhooks")
    return (next((h for h in hooks if h.get("endpoint") == hook_url), None)
            or next((h for h in hooks if h.get("name") == webhook_name(crm.name)), None))


def find_trigger(crm: ZendeskCrm) -> dict[str, Any] | None:
    title = trigger_title(crm.name)
    triggers = _pages(crm, "/triggers/search", {"query": title}, "triggers")
    return next((t for t in triggers if t.get("title") == title), None)


def _notified_webhook(trigger: dict[str, Any]) -> str | None:
    for action in trigger.get("actions") or []:
        value = action.get("value")
        if action.get("field") == "notification_webhook" and isinstance(value, list) and value:
            return str(value[0])
    return None


def setup_replies(crm: ZendeskCrm, hook_url: str, *, dry_run: bool) -> list[str]:
    """Create the webhook and the trigger if missing and keep the signing secret; one line per thing."""
    lines: list[str] = []
    hook = find_webhook(crm, hook_url)
    name = webhook_name(crm.name)
    webhook_id: str | None = str(hook["id"]) if hook else None
    if hook is None:
        if dry_run:
            lines.append(f"webhook {name!r} -> {hook_url}: would create")
        else:
            created = crm.client.call("POST", "/webhooks", json=webhook_payload(crm, hook_url))
            webhook_id = str(created["webhook"]["id"])
            lines.append(f"webhook {name!r} -> {hook_url}: created (id {webhook_id})")
    elif hook.get("endpoint") != hook_url:
        if dry_run:
            lines.append(f"webhook {name!r}: would update its endpoint {hook.get('endpoint')} -> {hook_url}")
        else:
            crm.client.call("PATCH", f"/webhooks/{webhook_id}", json={"webhook": {"endpoint": hook_url}},
                            ok=(200, 204))
            lines.append(f"webhook {name!r}: updated its endpoint to {hook_url} (id {webhook_id})")
    else:
        inactive = "" if hook.get("status", "active") == "active" else "; it is inactive: activate it in Zendesk"
        lines.append(f"webhook {name!r} -> {hook_url}: exists (id {webhook_id}{inactive})")
    lines.append(_secret_line(crm, webhook_id, dry_run))
    lines.append(_trigger_line(crm, webhook_id, dry_run))
    from connectors.zendesk.automation import solved_trigger_line

    lines.append(solved_trigger_line(crm, webhook_id, dry_run))
    return lines


def _secret_line(crm: ZendeskCrm, webhook_id: str | None, dry_run: bool) -> str:
    path = secret_path(crm)
    configured = crm.config.webhook_secret
    if webhook_id is None:  # dry run, webhook still to create
        return ("signing secret: would check it against webhook_secret" if configured is not None
                else f"signing secret: would store it in {path}")
    body = crm.client.call("GET", f"/webhooks/{webhook_id}/signing_secret")
    secret = str((body.get("signing_secret") or {}).get("secret") or "")
    if not secret:
        raise PermanentError(f"Zendesk returned no signing secret for webhook {webhook_id}", code="no_secret")
    if configured is not None:
        if hmac.compare_digest(configured.get_secret_value(), secret):
            return "signing secret: exists (webhook_secret in the config matches)"
        return ("signing secret: webhook_secret in the config does NOT match the webhook's: copy it from Zendesk "
                "(Admin Center > Webhooks > Reveal secret), or remove webhook_secret and run set-up again")
    stored = signing_secret(crm)
    if stored is not None and hmac.compare_digest(stored, secret):
        return f"signing secret: exists in {path}"
    if dry_run:
        return f"signing secret: would store it in {path}"
    store_secret(path, secret)
    return f"signing secret: created {path} (mode 0600)"


def _trigger_line(crm: ZendeskCrm, webhook_id: str | None, dry_run: bool) -> str:
    title = trigger_title(crm.name)
    trigger = find_trigger(crm)
    if trigger is None:
        if dry_run or webhook_id is None:
            return f"trigger {title!r}: would create"
        created = crm.client.call("POST", "/triggers", json=trigger_payload(crm, webhook_id))
        return f"trigger {title!r}: created (id {created['trigger']['id']})"
    if webhook_id is not None and _notified_webhook(trigger) == webhook_id:
        inactive = "" if trigger.get("active", True) else "; it is inactive: activate it in Zendesk"
        return f"trigger {title!r}: exists (id {trigger['id']}{inactive})"
    if dry_run or webhook_id is None:
        return f"trigger {title!r}: would update it to notify the gateway's webhook"
    crm.client.call("PUT", f"/triggers/{trigger['id']}", json=trigger_payload(crm, webhook_id))
    return f"trigger {title!r}: updated to notify webhook {webhook_id} (id {trigger['id']})"
