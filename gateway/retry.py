"""The retry policy, in one place.

Delivery retries are durable: a failed outbox row is rescheduled in the database rather than slept on in a
thread, so a restart keeps the schedule. The delay comes from tenacity's exponential back-off with jitter, and a
provider's ``Retry-After`` is honoured as a lower bound.
"""

from __future__ import annotations

from dataclasses import dataclass

import tenacity
from tenacity.wait import wait_base

from gateway.config import RetryConfig


class wait_retry_after(wait_base):
    """Wait at least as long as the failure's ``retry_after`` said."""

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None else None
        return float(getattr(error, "retry_after", None) or 0.0)


@dataclass(frozen=True)
class RetryPolicy:
    config: RetryConfig

    @property
    def wait(self) -> wait_base:
        backoff = tenacity.wait_exponential_jitter(
            multiplier=self.config.initial_seconds, max=self.config.max_seconds, jitter=self.config.jitter_seconds)
        return _wait_max(backoff, wait_retry_after())

    def next_delay(self, attempt: int, error: BaseException) -> float | None:
        """Seconds until the next try after failed attempt number ``attempt``; None when the budget is spent."""
        if attempt >= self.config.max_attempts:
            return None
        state = tenacity.RetryCallState(retry_object=tenacity.Retrying(), fn=None, args=(), kwargs={})
        state.attempt_number = attempt
        state.set_exception((type(error), error, error.__traceback__))
        return self.wait(state)


class _wait_max(wait_base):
    """The longest of several waits (tenacity combines by sum; Retry-After wants a floor)."""

    def __init__(self, *waits: wait_base) -> None:
        self.waits = waits

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        return max(wait(retry_state) for wait in self.waits)


def in_process_retry(attempts: int = 3, max_wait: float = 2.0) -> tenacity.Retrying:
    """Short, in-call retries for transient storage errors (database restart, lock timeout)."""
    return tenacity.Retrying(
        stop=tenacity.stop_after_attempt(attempts),
        wait=tenacity.wait_exponential_jitter(multiplier=0.05, max=max_wait),
        reraise=True,
    )
