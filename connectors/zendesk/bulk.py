"""Zendesk's batch endpoints, for when many conversations wait at once.

Users go through ``users/create_or_update_many``, new tickets through ``tickets/create_many`` and comments through
``tickets/update_many``, 100 per call; each returns a job status, and the jobs are polled together with
``job_statuses/show_many``. A group retried after an uncertain attempt, and a ticket the batch could not update
(closed, say), take the careful one-conversation path instead.
https://developer.zendesk.com/api-reference/ticketing/ticket-management/job_statuses/
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from connectors.zendesk.client import ENDED, job_failure, job_result_ok, result_for
from gateway.errors import DeliveryError, PermanentError, RetryableError
from gateway.plugins import DeliveryItem, DeliveryResult, LinkStore

if TYPE_CHECKING:
    from connectors.zendesk.connector import ZendeskCrm

log = logging.getLogger(__name__)
CHUNK = 100
Outcomes = dict[int, DeliveryResult | DeliveryError]
"""Outcome per outbox id, as ``CrmConnector.deliver_groups`` returns it (missing: not attempted)."""
Group = list[DeliveryItem]
"""One conversation's pending messages, in order."""
_T = TypeVar("_T")


def chunks(values: list[_T]) -> list[list[_T]]:
    """``values`` in slices of at most ``CHUNK``, the most one batch call takes."""
    return [values[start:start + CHUNK] for start in range(0, len(values), CHUNK)]


@dataclass
class BatchPlan:
    """Where each fresh conversation goes: a new ticket, a comment on its open ticket, or the careful path."""

    creates: list[Group] = field(default_factory=list)
    updates: list[tuple[str, Group]] = field(default_factory=list)  # (ticket id, group)
    careful: list[Group] = field(default_factory=list)  # its ticket was solved or closed: a follow-up ticket

    def batched(self) -> list[Group]:
        """The groups the batch endpoints carry."""
        return self.creates + [items for _, items in self.updates]


@dataclass
class Submitted:
    """The batch jobs queued, by job id, each with the groups it carries in the order they were sent."""

    creates: dict[str, list[Group]] = field(default_factory=dict)
    updates: dict[str, list[tuple[str, Group]]] = field(default_factory=dict)

    def job_ids(self) -> list[str]:
        """Every job queued, creations first."""
        return [*self.creates, *self.updates]


class BatchDelivery:
    """One batch of conversations through the batch endpoints: users, then plan, submit and settle the tickets.

    Groups retried after an uncertain attempt, and any a batch job refuses, go through the connector's careful
    one-conversation path (``ZendeskCrm.deliver_conversation``), which checks Zendesk before writing again.
    """

    def __init__(self, crm: ZendeskCrm, links: LinkStore) -> None:
        self.crm = crm
        self.client = crm.client
        self.links = links
        self.outcomes: Outcomes = {}

    def deliver(self, groups: list[Group]) -> Outcomes:
        """Write the groups; outcome per outbox id (missing: not attempted, behind a failure in its group)."""
        retried = [items for items in groups if any(item.attempt > 1 for item in items)]
        fresh = [items for items in groups if all(item.attempt <= 1 for item in items)]
        for items in retried:
            self.deliver_carefully(items)
        try:
            users = self.ensure_users(fresh)
        except DeliveryError as exc:
            for items in fresh:
                self.outcomes[items[0].outbox_id] = exc
            return self.outcomes
        plan = self.plan([items for items in fresh if items[0].customer.id in users])
        for items in plan.careful:
            self.deliver_carefully(items)
        try:
            submitted = self.submit(plan, users)
            finished = self.client.wait_for_jobs(submitted.job_ids())
        except DeliveryError as exc:
            # jobs already queued may still land: the retry (attempt > 1) checks before writing again
            for items in plan.batched():
                self.outcomes.setdefault(items[0].outbox_id, exc)
            return self.outcomes
        self.settle(submitted, finished)
        return self.outcomes

    def deliver_carefully(self, items: Group) -> None:
        """One conversation on the connector's one-conversation path."""
        self.outcomes.update(self.crm.deliver_conversation(items, self.links))

    # -- users -------------------------------------------------------------------------------------------------
    def ensure_users(self, groups: list[Group]) -> dict[str, str]:
        """Zendesk user id per customer; customers that failed get an outcome on their groups' first item."""
        users: dict[str, str] = {}
        waiting: dict[str, DeliveryItem] = {}
        for items in groups:
            customer = items[0].customer.id
            link = self.links.get("customer", customer)
            known = link[0] if link is not None else self.crm.adopt_user(items[0], self.links)
            if known is not None:
                users[customer] = known
            else:
                waiting.setdefault(customer, items[0])
        failed = self.import_users(list(waiting.values()), users)
        for items in groups:
            error = failed.get(items[0].customer.id)
            if error is not None:
                self.outcomes[items[0].outbox_id] = error
        return users

    def import_users(self, items: list[DeliveryItem], users: dict[str, str]) -> dict[str, DeliveryError]:
        """Create or update the items' customers as Zendesk users, adding their ids to ``users``; the failures."""
        failed: dict[str, DeliveryError] = {}
        jobs: dict[str, list[DeliveryItem]] = {}
        for chunk in chunks(items):
            try:
                body = self.client.call("POST", "/users/create_or_update_many",
                                        json={"users": [self.crm.user_payload(item) for item in chunk]})
            except PermanentError as exc:
                # bulk user imports are off unless the account owner asks Zendesk to enable them (403): one by one
                log.info("create_or_update_many refused (%s); creating users one at a time", exc.code)
                for item in chunk:
                    try:
                        users[item.customer.id] = self.crm.ensure_user(item, self.links)
                    except DeliveryError as error:
                        failed[item.customer.id] = error
                continue
            jobs[body["job_status"]["id"]] = chunk
        for job_id, status in self.client.wait_for_jobs(list(jobs)).items():
            results = status.get("results") or []
            for index, item in enumerate(jobs[job_id]):
                result = result_for(results, index) if status.get("status") == "completed" else None
                if job_result_ok(result):
                    users[item.customer.id] = str(result["id"])
                    self.links.put("customer", item.customer.id, str(result["id"]))
                else:
                    failed[item.customer.id] = job_failure(result, "user")
        return failed

    # -- tickets -----------------------------------------------------------------------------------------------
    def plan(self, groups: list[Group]) -> BatchPlan:
        """Sort groups whose customer has a user by what their conversation's ticket needs."""
        plan = BatchPlan()
        for items in groups:
            link = self.links.get("conversation", items[0].conversation.id)
            if link is None:
                plan.creates.append(items)
            elif link[1].get("status") in ENDED or self.crm.needs_priority(items, link[1]):
                plan.careful.append(items)  # ended: a follow-up ticket; priority unknown: read the ticket first
            else:
                plan.updates.append((link[0], items))
        return plan

    def submit(self, plan: BatchPlan, users: dict[str, str]) -> Submitted:
        """Queue the creations and the comments, 100 a call."""
        submitted = Submitted()
        for chunk in chunks(plan.creates):
            tickets = [self.crm.ticket_payload(items, users[items[0].customer.id]) for items in chunk]
            body = self.client.call("POST", "/tickets/create_many", json={"tickets": tickets})
            job_id = body["job_status"]["id"]
            submitted.creates[job_id] = chunk
            for index, items in enumerate(chunk):
                # if this process dies before the job is read, a retry asks the job instead of creating again
                self.links.put("ticket_job", items[0].conversation.id, job_id, {"index": index})
        for update_chunk in chunks(plan.updates):
            tickets = [{"id": int(ticket_id), **self.crm.update_payload(items, users[items[0].customer.id],
                                                                         self.known(items[0].conversation.id)),
                        **self.stamp(items[0].conversation.id)} for ticket_id, items in update_chunk]
            body = self.client.call("PUT", "/tickets/update_many", json={"tickets": tickets})
            submitted.updates[body["job_status"]["id"]] = update_chunk
        return submitted

    def known(self, conversation_id: str) -> dict[str, Any]:
        """What the link knows of the conversation's ticket."""
        link = self.links.get("conversation", conversation_id)
        return link[1] if link else {}

    def stamp(self, conversation_id: str) -> dict[str, Any]:
        """``safe_update`` with our last write's stamp: a ticket changed since then fails and takes the careful path."""
        link = self.links.get("conversation", conversation_id)
        updated_at = link[1].get("updated_at") if link else None
        return {"safe_update": True, "updated_stamp": updated_at} if updated_at else {}

    def settle(self, submitted: Submitted, finished: dict[str, dict[str, Any]]) -> None:
        """Turn the finished jobs' results into outcomes, creations first, in the order the groups were sent."""
        for job_id, groups in submitted.creates.items():
            self.settle_creations(finished[job_id], groups)
        for job_id, updates in submitted.updates.items():
            self.settle_comments(job_id, finished[job_id], updates)

    def settle_creations(self, status: dict[str, Any], groups: list[Group]) -> None:
        """A ``tickets/create_many`` job: each group's ticket, or the reason it has none."""
        results = status.get("results") or []
        for index, items in enumerate(groups):
            result = result_for(results, index)
            if status.get("status") == "completed" and job_result_ok(result):
                ticket_id = str(result["id"])
                self.links.put("conversation", items[0].conversation.id, ticket_id, {"status": "new"})
                for item in items:
                    self.outcomes[item.outbox_id] = DeliveryResult("ticket_created", ticket_id, detail="batch")
            else:
                self.outcomes[items[0].outbox_id] = job_failure(result, "ticket")

    def settle_comments(self, job_id: str, status: dict[str, Any], updates: list[tuple[str, Group]]) -> None:
        """A ``tickets/update_many`` job: results name their ticket, so a missing one leaves its comment uncertain."""
        results = status.get("results") or []
        for ticket_id, items in updates:
            result = next((r for r in results if str(r.get("id")) == ticket_id), None)
            if job_result_ok(result):
                for item in items:
                    self.outcomes[item.outbox_id] = DeliveryResult("comment_added", ticket_id, detail="batch")
            elif result is None:
                # no word on this ticket: the comment may have landed, so the retry checks the audits first
                error = RetryableError(f"Zendesk batch job {job_id} gave no result for ticket {ticket_id}",
                                       code="job_result_missing")
                for item in items:
                    self.outcomes[item.outbox_id] = error
            else:
                # refused (closed ticket, collision, ...): nothing landed; the one-conversation path continues
                if "closed" in f"{result.get('error')} {result.get('details')}".lower():
                    self.links.put("conversation", items[0].conversation.id, ticket_id, {"status": "closed"})
                self.deliver_carefully(items)
