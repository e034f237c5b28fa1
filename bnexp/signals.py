"""Inside a scheduler's task: its signals (time limit, scancel) as a recorded status.

Apart from the SLURM launcher (``bnexp.slurm``), which imports the submitit plugin: every
sweep job (``bnexp.sweep.run_job``) installs these handlers, under any launcher.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from bnexp.metrics import CANCELLED, TIMEOUT


class SchedulerSignal(BaseException):
    """The scheduler is ending this task (time limit, scancel). A BaseException, like
    KeyboardInterrupt, so that no ``except Exception`` on the way (logging's handlers
    among them) can swallow it."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


@contextmanager
def scheduler_signals() -> Iterator[None]:
    """In a submitit task: the time-limit warning (USR2) and SIGTERM raise SchedulerSignal.

    submitit's own USR2 handler runs first and keeps its behaviour: it requeues the task when
    ``hydra.launcher.max_num_timeout`` allows (and exits); otherwise it raises an exception
    that, raised inside a logging call, logging swallowed, so that the task ran on until
    SLURM killed it. SIGTERM (scancel, or the time limit without a warning) is recorded the
    same way; the launcher corrects the status from the scheduler's final state."""
    prev_usr2 = signal.getsignal(signal.SIGUSR2)
    under_submitit = type(getattr(prev_usr2, "__self__", None)).__name__ == "SignalHandler"
    if not under_submitit or "SLURM_JOB_ID" not in os.environ:
        yield
        return
    prev_term = signal.getsignal(signal.SIGTERM)

    def on_usr2(signum: int, frame: Any) -> None:
        try:
            prev_usr2(signum, frame)  # type: ignore[operator]
        except Exception as exc:  # submitit's "not requeued" error
            raise SchedulerSignal(TIMEOUT, f"SLURM time limit reached ({exc})") from None

    def on_term(signum: int, frame: Any) -> None:
        raise SchedulerSignal(CANCELLED, "SLURM sent SIGTERM (scancel, preemption or the "
                              "time limit)")

    signal.signal(signal.SIGUSR2, on_usr2)
    signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGUSR2, prev_usr2)
        signal.signal(signal.SIGTERM, prev_term)
