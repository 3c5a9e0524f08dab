"""``gateway run`` stopping its children: SIGTERM to all of them at once, then one drain deadline for all together,
then SIGKILL for the ones still running. Waiting for each child in turn with a deadline of its own took up to one
deadline per child (30 minutes with three children of a 10-minute drain)."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from gateway.server import stop_children


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class ScriptedChild:
    """A child process on a controlled clock: exits ``exits_after`` seconds after its SIGTERM, or (None) ignores
    SIGTERM and goes only when killed. ``events`` records what each child was sent and waited for, in order."""

    def __init__(self, name: str, clock: Clock, events: list[str], exits_after: float | None) -> None:
        self.name, self.clock, self.events, self.exits_after = name, clock, events, exits_after
        self.exit_at: float | None = None
        self.killed = False
        self.returncode: int | None = None

    def send_signal(self, sig: int) -> None:
        self.events.append(f"{signal.Signals(sig).name} {self.name}")
        if self.exits_after is not None:
            self.exit_at = self.clock.now + self.exits_after

    def kill(self) -> None:
        self.events.append(f"SIGKILL {self.name}")
        self.killed = True
        self.exit_at = self.clock.now

    def poll(self) -> int | None:
        if self.returncode is None and self.exit_at is not None and self.exit_at <= self.clock.now:
            self.returncode = -signal.SIGKILL if self.killed else 0
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        self.events.append(f"wait {self.name}")
        assert timeout is not None, "a wait without a timeout could last for ever"
        if self.exit_at is not None and self.exit_at <= self.clock.now + timeout:
            self.clock.now = max(self.clock.now, self.exit_at)
            code = self.poll()
            assert code is not None
            return code
        self.clock.now += timeout
        raise subprocess.TimeoutExpired("child", timeout)


def scripted(clock: Clock, events: list[str], **exits_after: float | None) -> dict[str, ScriptedChild]:
    return {name: ScriptedChild(name, clock, events, after) for name, after in exits_after.items()}


def test_three_children_ignoring_sigterm_take_one_drain_deadline_in_all_then_are_killed(
        caplog: pytest.LogCaptureFixture) -> None:
    clock, events = Clock(), []
    children = scripted(clock, events, serve=None, pipeline=None, delivery=None)
    with caplog.at_level(logging.INFO, logger="gateway.server"):
        killed = stop_children(children, drain_seconds=600, clock=clock)
    assert clock.now == 600, "one deadline for all the children, not one each"
    assert killed == ["serve", "pipeline", "delivery"]
    assert [child.returncode for child in children.values()] == [-signal.SIGKILL] * 3
    assert events[:3] == ["SIGTERM serve", "SIGTERM pipeline", "SIGTERM delivery"], "every child told at once"
    assert "serve, pipeline, delivery still running 600 s after SIGTERM: killed (SIGKILL)" in caplog.text


def test_children_that_finish_within_the_deadline_are_not_killed_and_the_late_one_is() -> None:
    clock, events = Clock(), []
    children = scripted(clock, events, serve=2.0, pipeline=None, delivery=550.0)
    assert stop_children(children, drain_seconds=600, clock=clock) == ["pipeline"]
    assert clock.now == 600
    assert [child.returncode for child in children.values()] == [0, -signal.SIGKILL, 0]
    assert "SIGKILL serve" not in events and "SIGKILL delivery" not in events


def test_children_that_all_finish_early_end_the_wait_at_the_last_one() -> None:
    clock, events = Clock(), []
    children = scripted(clock, events, serve=1.0, pipeline=30.0, delivery=5.0)
    assert stop_children(children, drain_seconds=600, clock=clock) == []
    assert clock.now == 30
    assert not [event for event in events if event.startswith("SIGKILL")]


def test_a_child_already_gone_is_neither_signalled_nor_waited_for() -> None:
    clock, events = Clock(), []
    children = scripted(clock, events, serve=None, pipeline=1.0)
    children["serve"].returncode = 1
    assert stop_children(children, drain_seconds=600, clock=clock) == []
    assert events == ["SIGTERM pipeline", "wait pipeline"]


IGNORES_SIGTERM = ("import signal, sys; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "
                   "sys.stdin.read()")


@pytest.fixture
def stubborn_children() -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    """Three real processes that ignore SIGTERM, each known to have set that up (it said so) before it is used."""
    procs = {name: subprocess.Popen([sys.executable, "-c", IGNORES_SIGTERM], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE) for name in ("serve", "work pipeline", "work delivery")}
    try:
        for proc in procs.values():
            assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        yield procs
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()


def test_real_children_ignoring_sigterm_are_killed_after_one_deadline_not_three(
        stubborn_children: dict[str, subprocess.Popen[bytes]]) -> None:
    drain = 1.0
    started = time.monotonic()
    killed = stop_children(stubborn_children, drain_seconds=drain)
    elapsed = time.monotonic() - started
    assert killed == ["serve", "work pipeline", "work delivery"]
    assert [proc.returncode for proc in stubborn_children.values()] == [-signal.SIGKILL] * 3
    assert drain <= elapsed < 2 * drain, f"{elapsed:.2f} s: one deadline is {drain} s, one each would be {3 * drain} s"
