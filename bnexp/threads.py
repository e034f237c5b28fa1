"""How many CPU threads a training uses, so that trainings sharing a machine do not starve.

torch runs its CPU kernels on an OpenMP thread pool (GNU libgomp), one thread per core, whose
threads spin while they wait for each other (fast when a process has the cores to itself). Two
such processes on the same cores spin against each other's descheduled threads, and each runs
several times slower (scripts/bench_contention.py measures it). So bnexp shares the cores among
this user's bnexp trainings on this machine: each registers a file named by its pid in
``<user cache>/running/`` and uses ``cores // trainings`` threads, looked at again every log
window (``torch.set_num_threads``): a training started alone gives cores back when a second one
starts, and takes them again when it ends. bnexp's own C kernels run in torch's OpenMP runtime
(the same libgomp, tested), so they follow the same thread count.

Lowering libgomp's spin count instead (``GOMP_SPINCOUNT``) was tried and left alone: counts
low enough to help two trainings made a lone run slower, and bnexp's runs are mostly alone.
``OMP_*``/``GOMP_*`` variables the user sets still reach libgomp untouched.

``trainer.threads=N`` fixes N threads: results can depend on the thread count (reductions split
differently), so a run reproduces exactly only at the same thread count, and a run that shared
the cores records its changes in summary.json (``thread_changes``). ``BNEXP_THREADS=off`` keeps
torch's defaults and no coordination.
"""

from __future__ import annotations

import os
from pathlib import Path


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. under taskset or SLURM)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def joblib_workers(n_jobs: int) -> int:
    """The worker processes of joblib's ``n_jobs``: a negative value is one per core."""
    return (os.cpu_count() or 1) if n_jobs < 0 else max(1, n_jobs)


class ThreadShare:
    """This process's share of the cores among the running bnexp trainings."""

    def __init__(self, fixed: int | None, folder: Path | None = None) -> None:
        from bnexp import user_cache_dir

        self.fixed = fixed
        self.off = fixed is None and os.environ.get("BNEXP_THREADS") == "off"
        self.folder = folder or user_cache_dir() / "running"
        self.me = self.folder / str(os.getpid())
        self.changes: list[tuple[int, int]] = []  # (step, threads) after the first
        if not (self.fixed or self.off):
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                self.me.touch()
            except OSError:  # no writable cache: behave as if alone
                self.off = True

    def running(self) -> int:
        """Live registered trainings (this one included); stale files are removed."""
        alive = 0
        for path in self.folder.iterdir():
            try:
                os.kill(int(path.name), 0)
                alive += 1
            except (ValueError, ProcessLookupError):
                path.unlink(missing_ok=True)
            except PermissionError:  # alive, another user's (a shared cache folder)
                alive += 1
        return max(alive, 1)

    def threads(self) -> int | None:
        """The thread count to use now; None: leave torch's setting alone."""
        if self.fixed:
            return self.fixed
        if self.off:
            return None
        try:
            return max(1, available_cores() // self.running())
        except OSError:
            return None

    def apply(self, step: int | None = None) -> int:
        """Set torch's thread count to this process's share; returns the count in use."""
        import torch

        n = self.threads()
        if n is not None and n != torch.get_num_threads():
            torch.set_num_threads(n)
            if step is not None:
                self.changes.append((step, n))
        return torch.get_num_threads()

    def close(self) -> None:
        if not (self.fixed or self.off):
            self.me.unlink(missing_ok=True)
