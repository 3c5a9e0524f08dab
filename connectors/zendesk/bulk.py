"""Zendesk's batch endpoints, for when many conversations wait at once.

Users go through ``users/create_or_update_many``, new tickets through ``tickets/create_many`` and comments through
``tickets/update_many``, 100 per call; each returns a job status, and the jobs are polled together with
``job_statuses/show_many``. A group retried after an uncertain attempt, and a ticket the batch could not update
(closed, say), take the careful one-conversation path instead.
https://developer.zendesk.com/api-reference/ticketing/ticket-management/job_statuses/
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from connectors.zendesk.client import ENDED
from gateway.errors import DeliveryError, PermanentError, RetryableError
from gateway.plugins import DeliveryItem, DeliveryResult, LinkStore

if TYPE_CHECKING:
    from connectors.zendesk.connector import Outcomes, ZendeskCrm

log = logging.getLogger(__name__)
CHUNK = 100


def _chunks(values: list[Any]) -> list[list[Any]]:
    return [values[start:start + CHUNK] for start in range(0, len(values), CHUNK)]


def result_for(results: list[dict[str, Any]], index: int) -> dict[str, Any] | None:
    """A job's result for the index-th object sent; results carry ``index`` for creations, else keep order."""
    for result in results:
        if result.get("index") == index:
            return result
    return results[index] if index < len(results) and "index" not in results[index] else None


def _failure(result: dict[str, Any] | None, what: str) -> DeliveryError:
    if result is None:
        return RetryableError(f"Zendesk batch job gave no result for this {what}", code="job_result_missing")
    detail = f"{result.get('error') or 'failed'}: {result.get('details') or ''}".strip(": ")
    return PermanentError(f"Zendesk could not write this {what}: {detail}", code=str(result.get("error") or "Failed"))


def _ok(result: dict[str, Any] | None) -> bool:
    return result is not None and result.get("id") is not None and result.get("success", True) is not False \
        and not result.get("error")


def _ensure_users(crm: ZendeskCrm, groups: list[list[DeliveryItem]], links: LinkStore,
                  outcomes: Outcomes) -> dict[str, str]:
    """Zendesk user id per customer; customers that failed get an outcome on their groups' first item."""
    users: dict[str, str] = {}
    waiting: dict[str, DeliveryItem] = {}
    for items in groups:
        customer = items[0].customer.id
        link = links.get("customer", customer)
        adopted = link[0] if link is not None else crm.adopt_user(items[0], links)
        if adopted is not None:
            users[customer] = adopted
        else:
            waiting.setdefault(customer, items[0])
    failed: dict[str, DeliveryError] = {}
    jobs: dict[str, list[DeliveryItem]] = {}
    for chunk in _chunks(list(waiting.values())):
        try:
            body = crm.client.call("POST", "/users/create_or_update_many",
                                   json={"users": [crm.user_payload(item) for item in chunk]})
        except PermanentError as exc:
            # bulk user imports are off unless the account owner asks Zendesk to enable them (403): one by one
            log.info("create_or_update_many refused (%s); creating users one at a time", exc.code)
            for item in chunk:
                try:
                    users[item.customer.id] = crm.ensure_user(item, links)
                except DeliveryError as error:
                    failed[item.customer.id] = error
            continue
        jobs[body["job_status"]["id"]] = chunk
    for job_id, status in crm.client.wait_for_jobs(list(jobs)).items():
        results = status.get("results") or []
        for index, item in enumerate(jobs[job_id]):
            result = result_for(results, index) if status.get("status") == "completed" else None
            if _ok(result):
                users[item.customer.id] = str(result["id"])  # type: ignore[index]
                links.put("customer", item.customer.id, str(result["id"]))  # type: ignore[index]
            else:
                failed[item.customer.id] = _failure(result, "user")
    for items in groups:
        error = failed.get(items[0].customer.id)
        if error is not None:
            outcomes[items[0].outbox_id] = error
    return users


def stamp(links: LinkStore, conversation_id: str) -> dict[str, Any]:
    """``safe_update`` with our last write's stamp: a ticket changed since then fails and takes the careful path."""
    link = links.get("conversation", conversation_id)
    updated_at = link[1].get("updated_at") if link else None
    return {"safe_update": True, "updated_stamp": updated_at} if updated_at else {}


def deliver_bulk(crm: ZendeskCrm, groups: list[list[DeliveryItem]], links: LinkStore) -> Outcomes:
    outcomes: Outcomes = {}
    careful = [items for items in groups if any(item.attempt > 1 for item in items)]
    fresh = [items for items in groups if all(item.attempt <= 1 for item in items)]
    for items in careful:
        outcomes.update(crm.deliver_conversation(items, links))
    try:
        users = _ensure_users(crm, fresh, links, outcomes)
    except DeliveryError as exc:
        for items in fresh:
            outcomes[items[0].outbox_id] = exc
        return outcomes
    creates: list[list[DeliveryItem]] = []
    updates: list[tuple[str, list[DeliveryItem]]] = []
    for items in fresh:
        if items[0].customer.id not in users:
            continue
        link = links.get("conversation", items[0].conversation.id)
        if link is None:
            creates.append(items)
        elif link[1].get("status") in ENDED:
            outcomes.update(crm.deliver_conversation(items, links))  # a follow-up ticket: the careful path
        else:
            updates.append((link[0], items))
    jobs: dict[str, tuple[str, list[Any]]] = {}
    try:
        for chunk in _chunks(creates):
            tickets = [crm.ticket_payload(items, users[items[0].customer.id]) for items in chunk]
            body = crm.client.call("POST", "/tickets/create_many", json={"tickets": tickets})
            job_id = body["job_status"]["id"]
            jobs[job_id] = ("create", chunk)
            for index, items in enumerate(chunk):
                # if this process dies before the job is read, a retry asks the job instead of creating again
                links.put("ticket_job", items[0].conversation.id, job_id, {"index": index})
        for update_chunk in _chunks(updates):
            tickets = [{"id": int(ticket_id), **crm.update_payload(items, users[items[0].customer.id]),
                        **stamp(links, items[0].conversation.id)} for ticket_id, items in update_chunk]
            body = crm.client.call("PUT", "/tickets/update_many", json={"tickets": tickets})
            jobs[body["job_status"]["id"]] = ("update", update_chunk)
        finished = crm.client.wait_for_jobs(list(jobs))
    except DeliveryError as exc:
        # jobs already queued may still land: the retry (attempt > 1) checks before writing again
        for items in creates + [items for _, items in updates]:
            outcomes.setdefault(items[0].outbox_id, exc)
        return outcomes
    for job_id, (kind, chunk) in jobs.items():
        status = finished[job_id]
        results = status.get("results") or []
        for index, entry in enumerate(chunk):
            if kind == "create":
                items, result = entry, result_for(results, index)
                if status.get("status") == "completed" and _ok(result):
                    ticket_id = str(result["id"])  # type: ignore[index]
                    links.put("conversation", items[0].conversation.id, ticket_id, {"status": "new"})
                    for item in items:
                        outcomes[item.outbox_id] = DeliveryResult("ticket_created", ticket_id, detail="batch")
                else:
                    outcomes[items[0].outbox_id] = _failure(result, "ticket")
                continue
            ticket_id, items = entry
            result = next((r for r in results if str(r.get("id")) == ticket_id), None)
            if _ok(result):
                for item in items:
                    outcomes[item.outbox_id] = DeliveryResult("comment_added", ticket_id, detail="batch")
            elif result is None:
                # no word on this ticket: the comment may have landed, so the retry checks the audits first
                error = RetryableError(f"Zendesk batch job {job_id} gave no result for ticket {ticket_id}",
                                       code="job_result_missing")
                for item in items:
                    outcomes[item.outbox_id] = error
            else:
                # refused (closed ticket, collision, ...): nothing landed; the one-conversation path continues
                if "closed" in f"{result.get('error')} {result.get('details')}".lower():
                    links.put("conversation", items[0].conversation.id, ticket_id, {"status": "closed"})
                outcomes.update(crm.deliver_conversation(items, links))
    return outcomes
