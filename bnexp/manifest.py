"""sweep.json, the sweep's manifest: the one module that reads and writes it.

It holds the command, the overrides, the grid and one entry per job (overrides, directory,
status), updated as jobs start and end. Several processes write it at once (a parallel
launcher's workers, the SLURM launcher, two bnexp calls on the same sweep), so every update is
a read-merge-write under an exclusive ``flock`` on ``<sweep dir>/.sweep.lock``, written
atomically: readers without the lock see the previous or the next version, never half of one.
Torch-free (a sweep's parent process).
"""

from __future__ import annotations

import fcntl
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bnexp.jsonio import write_json_atomic

MANIFEST = "sweep.json"


@contextmanager
def _locked(sweep_dir: Path) -> Iterator[None]:
    """The manifest's writers one at a time (the lock is freed if the process dies)."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with open(sweep_dir / ".sweep.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; empty when it is missing or unreadable."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def read_manifest(sweep_dir: Path) -> dict[str, Any]:
    """The sweep's sweep.json; empty when there is none."""
    return read_json(sweep_dir / MANIFEST)


def create_manifest(sweep_dir: Path, **fields: Any) -> bool:
    """Write a new sweep.json with ``fields``, unless one exists (another call on the same
    directory was first): then leave it and return False."""
    with _locked(sweep_dir):
        if (sweep_dir / MANIFEST).exists():
            return False
        write_json_atomic(sweep_dir / MANIFEST, {"jobs": {}, **fields})
        return True


def update_manifest(sweep_dir: Path, **fields: Any) -> None:
    """Merge ``fields`` into sweep.json (``jobs`` merged by job number)."""
    with _locked(sweep_dir):
        manifest = read_manifest(sweep_dir)
        jobs = manifest.setdefault("jobs", {})
        jobs.update(fields.pop("jobs", {}))
        manifest.update(fields)
        write_json_atomic(sweep_dir / MANIFEST, manifest)


def merge_job(sweep_dir: Path, num: int, **fields: Any) -> None:
    """Merge ``fields`` into job ``num``'s entry, keeping its other fields (a launcher
    recording a job that ended outside Python)."""
    with _locked(sweep_dir):
        manifest = read_manifest(sweep_dir)
        job = manifest.setdefault("jobs", {}).setdefault(str(num), {"num": num})
        job.update(fields)
        write_json_atomic(sweep_dir / MANIFEST, manifest)
