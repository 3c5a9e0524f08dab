"""Zendesk's batch endpoints, for when many conversations wait at once.

Users go through ``users/create_or_update_many``, new tickets through ``tickets/create_many`` and comments through
``tickets/update_many``, 100 per call; each returns a job status, and the jobs are polled together with
``job_statuses/show_many``. A group whose earlier attempt failed for certain (a 429, a 503) is batched like any
other; after an uncertain attempt the jobs it queued are read back in bulk first, and only a group no job speaks
for, or a ticket the batch could not update (closed, say), takes the careful one-conversation path.
https://developer.zendesk.com/api-reference/ticketing/ticket-management/job_statuses/
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from connectors.zendesk.client import ENDED, job_failure, job_result_ok, result_for
from gateway.errors import DeliveryError, PermanentError, RetryableError, as_uncertain
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


def outage(outcome: DeliveryResult | DeliveryError | None) -> RetryableError | None:
    """The error when ``outcome`` says Zendesk refused the call as a whole (429, 503, unreachable), else None."""
    return outcome if isinstance(outcome, RetryableError) and outcome.outage else None


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

    def groups(self) -> list[Group]:
        """Every group in a queued job."""
        return [items for chunk in self.creates.values() for items in chunk] + \
            [items for chunk in self.updates.values() for _, items in chunk]


class BatchDelivery:
    """One batch of conversations through the batch endpoints: users, then plan, submit and settle the tickets.

    Groups retried after an uncertain attempt are first settled from the batch jobs that attempt queued; those no
    job speaks for, and any a batch job refuses, go through the connector's careful one-conversation path
    (``ZendeskCrm.deliver_conversation``), which checks Zendesk before writing again.
    """

    def __init__(self, crm: ZendeskCrm, links: LinkStore) -> None:
        self.crm = crm
        self.client = crm.client
        self.links = links
        self.outcomes: Outcomes = {}

    def deliver(self, groups: list[Group]) -> Outcomes:
        """Write the groups; outcome per outbox id (missing: not attempted, behind a failure in its group)."""
        fresh = [items for items in groups if not any(item.uncertain for item in items)]
        fresh += self.recover([items for items in groups if any(item.uncertain for item in items)])
        if not fresh:
            return self.outcomes
        try:
            users = self.ensure_users(fresh)
        except DeliveryError as exc:
            for items in fresh:
                self.outcomes.setdefault(items[0].outbox_id, exc)
            return self.outcomes
        plan = self.plan([items for items in fresh if items[0].customer.id in users])
        self.deliver_each(plan.careful)
        submitted = Submitted()
        try:
            self.submit(plan, users, submitted)
            finished = self.client.wait_for_jobs(submitted.job_ids())
        except DeliveryError as exc:
            # groups in a queued job may still land, and the retry looks first; the others were not sent
            queued, unknown = {id(items) for items in submitted.groups()}, as_uncertain(exc)
            for items in plan.batched():
                if id(items) in queued:  # each message was in the write: each is retried as uncertain
                    for item in items:
                        self.outcomes.setdefault(item.outbox_id, unknown)
                else:
                    self.outcomes.setdefault(items[0].outbox_id, exc)
            return self.outcomes
        self.settle(submitted, finished)
        return self.outcomes

    def deliver_carefully(self, items: Group) -> None:
        """One conversation on the connector's one-conversation path."""
        self.outcomes.update(self.crm.deliver_conversation(items, self.links))

    def deliver_each(self, groups: list[Group]) -> None:
        """Groups one at a time on the careful path; once Zendesk refuses as a whole, the rest wait without a call."""
        for index, items in enumerate(groups):
            self.deliver_carefully(items)
            refused = outage(self.outcomes.get(items[0].outbox_id))
            if refused is not None:
                for rest in groups[index + 1:]:
                    self.outcomes.setdefault(rest[0].outbox_id, refused)
                return

    # -- after an uncertain attempt ----------------------------------------------------------------------------
    def recover(self, groups: list[Group]) -> list[Group]:
        """Find out what uncertain attempts wrote, many conversations per request; the groups that may go out now.

        An attempt that queued a batch job left its job id and the message ids it carried in a link, so the jobs'
        statuses (100 per ``job_statuses/show_many``) tell which messages landed. The rest take the careful path,
        one conversation at a time: Zendesk has no lookup of many tickets by ``external_id`` that sees tickets
        created minutes ago (search is indexed minutes later; the incremental export leaves out the last minute).
        """
        ready: list[Group] = []
        by_job: dict[str, list[tuple[Group, str, dict[str, Any]]]] = {}
        lone: list[Group] = []
        for items in groups:
            conversation = items[0].conversation.id
            entity = "comment_job" if self.links.get("conversation", conversation) else "ticket_job"
            job = self.links.get(entity, conversation)
            if job is not None and not job[1].get("settled") and items[0].message.id in job[1].get("messages", ()):
                by_job.setdefault(job[0], []).append((items, entity, job[1]))
            else:
                lone.append(items)
        found = self.job_statuses(list(by_job)) if by_job else {}
        for job_id, entries in by_job.items():
            status = found.get(job_id)
            for items, entity, data in entries:
                resolved = self.resolve(job_id, status, items, entity, data)
                if resolved is None:
                    lone.append(items)
                elif resolved:
                    ready.append(resolved)
        self.deliver_each(lone)
        return ready

    def job_statuses(self, job_ids: list[str]) -> dict[str, dict[str, Any]]:
        """The jobs Zendesk still knows (statuses are kept for a while only), by id."""
        found: dict[str, dict[str, Any]] = {}
        for chunk in chunks(job_ids):
            body = self.client.call("GET", "/job_statuses/show_many", params={"ids": ",".join(chunk)})
            found.update({str(status["id"]): status for status in body.get("job_statuses", [])})
        return found

    def resolve(self, job_id: str, status: dict[str, Any] | None, items: Group, entity: str,
                data: dict[str, Any]) -> Group | None:
        """What a group's job wrote: the items still to write ([] when none), or None when the job cannot tell."""
        if status is not None and status.get("status") in ("queued", "working"):
            self.outcomes[items[0].outbox_id] = RetryableError(
                f"Zendesk job {job_id} is still running", code="job_pending", retry_after=10)
            return []
        if status is None or status.get("status") != "completed":
            return None
        conversation = items[0].conversation.id
        self.links.put(entity, conversation, job_id, {**data, "settled": True})  # read once: later attempts differ
        results = status.get("results") or []
        if entity == "ticket_job":
            result = result_for(results, int(data.get("index", 0)))
        else:
            result = next((r for r in results if str(r.get("id")) == data.get("ticket")), None)
        if result is None:
            return None
        if not job_result_ok(result):
            return items  # the job refused it: nothing landed
        ticket_id = str(result["id"])
        if entity == "ticket_job":
            self.links.put("conversation", conversation, ticket_id, {"status": "new"})
        written = set(data["messages"])
        for item in items:
            if item.message.id in written:
                self.outcomes[item.outbox_id] = DeliveryResult("already_written", ticket_id, calls=0)
        return [item for item in items if item.message.id not in written]

    # -- users -------------------------------------------------------------------------------------------------
    def ensure_users(self, groups: list[Group]) -> dict[str, str]:
        """Zendesk user id per customer; customers that failed get an outcome on their groups' first item."""
        users: dict[str, str] = {}
        waiting: dict[str, DeliveryItem] = {}
        looked_up: dict[str, DeliveryError] = {}
        for items in groups:
            customer = items[0].customer.id
            if customer in users or customer in waiting or customer in looked_up:
                continue
            try:
                known = self.crm.lookup_user(items[0], self.links, search=False)
            except DeliveryError as exc:
                looked_up[customer] = exc
                continue
            if known is not None:
                users[customer] = known
            else:
                waiting[customer] = items[0]
        failed = {**looked_up, **self.import_users(list(waiting.values()), users)}
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
        try:
            finished = self.client.wait_for_jobs(list(jobs))
        except DeliveryError as exc:  # the queued upserts may land all the same
            raise as_uncertain(exc) from None
        for job_id, status in finished.items():
            results = status.get("results") or []
            for index, item in enumerate(jobs[job_id]):
                result = result_for(results, index) if status.get("status") == "completed" else None
                if job_result_ok(result):
                    users[item.customer.id] = str(result["id"])
                    self.crm.link_created_user(item, str(result["id"]), self.links)
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
            elif link[1].get("status") in ENDED or self.crm.needs_reading(items, link[1]):
                plan.careful.append(items)  # ended: a follow-up ticket; priority or tags unknown: read it first
            else:
                plan.updates.append((link[0], items))
        return plan

    def submit(self, plan: BatchPlan, users: dict[str, str], submitted: Submitted) -> None:
        """Queue the creations and the comments, 100 a call, recording each job in ``submitted`` as it is queued."""
        for chunk in chunks(plan.creates):
            tickets = [self.crm.ticket_payload(items, users[items[0].customer.id]) for items in chunk]
            body = self.client.call("POST", "/tickets/create_many", json={"tickets": tickets})
            job_id = body["job_status"]["id"]
            submitted.creates[job_id] = chunk
            for index, items in enumerate(chunk):
                # if the job is not read (a crash, a failed poll), the retry asks the job instead of writing again
                self.links.put("ticket_job", items[0].conversation.id, job_id,
                               {"index": index, "messages": [item.message.id for item in items]})
        for update_chunk in chunks(plan.updates):
            tickets = [{"id": int(ticket_id), **self.crm.update_payload(items, users[items[0].customer.id],
                                                                         self.known(items[0].conversation.id)),
                        **self.stamp(items[0].conversation.id)} for ticket_id, items in update_chunk]
            body = self.client.call("PUT", "/tickets/update_many", json={"tickets": tickets})
            job_id = body["job_status"]["id"]
            submitted.updates[job_id] = update_chunk
            for ticket_id, items in update_chunk:
                self.links.put("comment_job", items[0].conversation.id, job_id,
                               {"ticket": ticket_id, "messages": [item.message.id for item in items]})

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
                # the tags it was created with: a later message of the same channel has nothing to add
                tags = self.crm.ticket_payload_tags(items)
                self.links.put("conversation", items[0].conversation.id, ticket_id,
                               {"status": "new", **({"tags": tags} if tags else {})})
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
                # refused (closed ticket, collision, ...): nothing landed; the one-conversation path continues, and
                # a retry after it must not take this job's word for what landed
                conversation = items[0].conversation.id
                self.links.put("comment_job", conversation, job_id, {"ticket": ticket_id, "settled": True})
                if "closed" in f"{result.get('error')} {result.get('details')}".lower():
                    self.links.put("conversation", conversation, ticket_id, {"status": "closed"})
                self.deliver_carefully(items)
