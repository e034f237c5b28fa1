"""bnexp/runlock.py: a job claimed by a live process is not taken; a dead holder's claim is
taken over (kill -9 included); a claim is freed when its block or its process ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bnexp.runlock import claimed, held_locks, holder, lock_path, try_claim, wait_for_others

HOLD = """
import sys, time
from pathlib import Path
from bnexp.runlock import try_claim
lock = try_claim(Path(sys.argv[1]))
print("held" if lock else "busy", flush=True)
time.sleep(float(sys.argv[2]))
"""


def hold_in_child(path: Path, seconds: float = 60) -> subprocess.Popen:
    """Another process that claims ``path`` and keeps it for ``seconds``."""
    child = subprocess.Popen([sys.executable, "-c", HOLD, str(path), str(seconds)],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "held"
    return child


def test_a_live_holder_keeps_its_claim_and_a_dead_ones_is_taken_over(tmp_path) -> None:
    path = lock_path(tmp_path, "0_seed=0")
    child = hold_in_child(path)
    try:
        assert try_claim(path) is None  # held by a live process: not taken
        who = holder(path)
        assert who is not None and who["pid"] == child.pid and who["host"]
        assert list(held_locks(tmp_path)) == [path]
    finally:
        child.send_signal(signal.SIGKILL)  # dies without releasing anything
        child.wait()
    lock = try_claim(path)  # stale: taken over
    assert lock is not None
    assert holder(path)["pid"] == os.getpid()  # the file names the new holder
    lock.release()
    assert holder(path) is None and held_locks(tmp_path) == {}


def _pid_in(path: Path) -> int:
    import json

    return json.loads(path.read_text())["pid"]


def test_a_claim_is_freed_when_its_block_or_process_ends(tmp_path) -> None:
    path = lock_path(tmp_path, "seed=3")
    with claimed(path) as lock:
        assert lock is not None and _pid_in(path) == os.getpid()
        with claimed(path) as second:  # one holder, even within one process
            assert second is None
    assert holder(path) is None
    child = hold_in_child(path, seconds=0)  # claims, then exits normally
    child.wait()
    with claimed(path) as lock:
        assert lock is not None


def test_wait_for_others_returns_when_the_holder_ends(tmp_path) -> None:
    path = lock_path(tmp_path, "1_seed=1")
    child = hold_in_child(path, seconds=1.5)
    said: list[str] = []
    t0 = time.monotonic()
    wait_for_others(tmp_path, said.append, poll_s=0.1)
    assert time.monotonic() - t0 > 0.5 and child.wait() == 0
    assert said == [f"waiting for 1_seed=1: run by pid {child.pid} on {os.uname().nodename}"]
    wait_for_others(tmp_path / "no-locks-here", said.append)  # nothing held: returns at once
