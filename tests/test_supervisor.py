"""``gateway run`` keeps the web side answering when its worker child dies, and starts the worker again.

The worker died (SIGBUS on a read-only file) and ``gateway run`` stopped the whole gateway: every provider's webhook
was refused until someone restarted it. Now a dead child is started again after a back-off that grows while it keeps
dying, up to a bound, and the web server answers all the while.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import requests

from gateway.server import RestartBackoff
from tests.helpers import (
    TWILIO_SID,
    TWILIO_TOKEN,
    GatewayProcess,
    free_port,
    message_sid,
    send_twilio,
    twilio_params,
    wait_for,
    wait_ready,
    write_gateway_config,
)


def children(pid: int) -> dict[str, int]:
    """The process's children by what they run (``serve``, ``work``, ``work pipeline``, ``work delivery``)."""
    found = {}
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        try:
            args = Path(f"/proc/{child}/cmdline").read_bytes().decode().split("\0")
        except FileNotFoundError:
            continue
        if "serve" in args:
            found["serve"] = int(child)
        elif "work" in args:
            found[f"work {args[args.index('--stage') + 1]}" if "--stage" in args else "work"] = int(child)
    return found


def crm_lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_killed_worker_is_started_again_while_the_web_side_and_the_other_stage_keep_running(
        tmp_path: Path) -> None:
    port = free_port()
    config = write_gateway_config(tmp_path, storage_url=f"sqlite:///{tmp_path / 'gateway.db'}", port=port,
                                  crms="{trial: {type: jsonl, path: out/crm.jsonl}}",
                                  routes="[{from: [sms-main], to: trial}]")  # a process per stage: the default
    base_url = f"http://127.0.0.1:{port}"
    proc = GatewayProcess(["run", "-c", str(config)], tmp_path / "run.log")
    answers: list[int] = []
    done = threading.Event()

    def probe() -> None:  # /healthz, over and over, for as long as the worker is down and back
        while not done.is_set():
            try:
                answers.append(requests.get(f"{base_url}/healthz", timeout=10).status_code)
            except requests.RequestException:
                answers.append(0)
            done.wait(0.05)

    try:
        wait_ready(base_url, proc)
        started = wait_for(lambda: len(children(proc.pid)) == 3 and children(proc.pid), 30, "the three children")
        assert set(started) == {"serve", "work pipeline", "work delivery"}
        first = started["work pipeline"]
        prober = threading.Thread(target=probe)
        prober.start()
        os.kill(first, signal.SIGKILL)
        second = wait_for(lambda: (children(proc.pid).get("work pipeline") or first) != first
                          and children(proc.pid)["work pipeline"], 30, "a new pipeline child")
        params = twilio_params(message_sid(1), "+14155550100", "sent after the restart", TWILIO_SID)
        assert send_twilio(base_url, base_url, "sms-main", TWILIO_TOKEN, params).status_code == 200
        lines = wait_for(lambda: crm_lines(tmp_path / "out" / "crm.jsonl"), 30, "the new worker to deliver it")
        done.set()
        prober.join(10)
        assert [line["message"]["text"] for line in lines] == ["sent after the restart"]  # type: ignore[index]
        assert proc.alive() and children(proc.pid) == {**started, "work pipeline": second}
        assert answers and set(answers) == {200}, answers
        assert "work pipeline exited (killed by SIGKILL)" in proc.output()
    finally:
        done.set()
        assert proc.stop() == 0, proc.output()[-3000:]


def test_restart_back_off_grows_while_a_child_keeps_dying_and_is_bounded() -> None:
    now = [0.0]
    backoff = RestartBackoff(initial=1.0, maximum=60.0, stable=60.0, clock=lambda: now[0])
    delays = []
    for _ in range(9):
        backoff.started()
        now[0] += 0.5  # dies half a second after each start
        delays.append(backoff.died())
        now[0] += delays[-1]
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    backoff.started()
    now[0] += 61  # a run long enough to count as recovered
    assert backoff.died() == 1
