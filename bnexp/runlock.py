"""One writer per run directory: a job is claimed before it is trained, and a second bnexp call
on the same sweep skips the jobs a live process holds and waits for them at the end.

A claim is an exclusive ``flock`` on ``<sweep dir>/.locks/<name>.lock`` (``<name>``: the job's
directory name, or ``seed=<seed>`` for a timing sweep's seed). The kernel holds it for the open
file and frees it when the holder's process ends, however it ends (``kill -9`` included), so a
dead holder's lock is stale by construction and the next claim takes it over; no pid has to be
checked and no crash leaves a lock behind. The holder writes its pid, host, start time (and
SLURM task id, inside a task) into the file, for the messages of those who wait. The files are
never deleted (deleting a lock file while another process opens it would let two holders in).
Across machines (SLURM tasks on a shared filesystem) this relies on the filesystem's locks:
NFS (v4, or v3 with lockd) has them.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOCKS = ".locks"
# What run_job (and the SLURM launcher) returns for a job another live process holds: not a
# run status, it never reaches a summary.json; the caller waits for that process instead.
HELD = "held"


def lock_path(sweep_dir: Path, name: str) -> Path:
    """The lock of the job (or timing seed) ``name`` in ``sweep_dir``."""
    return sweep_dir / LOCKS / f"{name}.lock"


@dataclass
class RunLock:
    """A claim held by this process; ``release`` (or process exit) frees it."""

    path: Path
    fd: int

    def release(self) -> None:
        if self.fd >= 0:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = -1


def try_claim(path: Path) -> RunLock | None:
    """Claim ``path`` now, or None when a live process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    who = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
    env = os.environ
    if "SLURM_ARRAY_TASK_ID" in env:  # the launcher tells its own tasks from other calls'
        who["slurm_task"] = f"{env.get('SLURM_ARRAY_JOB_ID')}_{env['SLURM_ARRAY_TASK_ID']}"
    os.write(fd, json.dumps(who).encode())
    return RunLock(path, fd)


@contextmanager
def claimed(path: Path) -> Iterator[RunLock | None]:
    """``try_claim`` for the length of a block: yields None when another process holds it."""
    lock = try_claim(path)
    try:
        yield lock
    finally:
        if lock is not None:
            lock.release()


def holder(path: Path) -> dict[str, Any] | None:
    """Who holds ``path`` (pid, host, since), or None when nobody does."""
    if not path.exists():
        return None
    probe = try_claim_quietly(path)
    if probe:
        return None
    try:
        who = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):  # the holder is writing it
        who = {}
    return who if isinstance(who, dict) else {}


def try_claim_quietly(path: Path) -> bool:
    """True when ``path`` is free (checked by taking and dropping it, without writing)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # closing drops the lock, if taken
    return True


def describe(who: dict[str, Any] | None) -> str:
    """'pid 123 on host' for messages."""
    if not who:
        return "another process"
    return f"pid {who.get('pid', '?')} on {who.get('host', '?')}"


def held_locks(sweep_dir: Path) -> dict[Path, dict[str, Any]]:
    """Every lock in ``sweep_dir`` that a live process holds now, with its holder."""
    held = {}
    for path in sorted((sweep_dir / LOCKS).glob("*.lock")):
        who = holder(path)
        if who is not None:
            held[path] = who
    return held


def wait_for_others(sweep_dir: Path, echo: Callable[[str], Any] = print,
                    poll_s: float = 1.0) -> None:
    """Return once no live process holds a lock in ``sweep_dir``: the end of a call that
    skipped jobs another call was running, so that both end with every result on disk."""
    said: set[Path] = set()
    while held := held_locks(sweep_dir):
        for path, who in held.items():
            if path not in said:
                said.add(path)
                echo(f"waiting for {path.stem}: run by {describe(who)}")
        time.sleep(poll_s)
