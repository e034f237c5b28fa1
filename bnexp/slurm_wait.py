"""Waiting for a SLURM job array's tasks, and what each one ended as.

Two halves, so that the decisions can be tested on recorded scheduler output alone:

- ``TaskWatch.observe(Seen) -> Verdict`` decides, for one task and one poll, from the
  scheduler's record of the task (``parse_scontrol``/``parse_sacct``'s dict, or None when it no
  longer knows it), whether the scheduler answered at all, the status the task left itself
  (its result file) and the clock. The verdict is "still waiting" (with the line to print) or
  the task's final status with the scheduler's record and the reason. Which status wins:
  the task's own result (completed, diverged, failed in Python) unless the scheduler ended it
  (cancelled, timeout, preempted, node failure, out of memory: the scheduler's state, mapped by
  ``SCHEDULER_STATUS``); a task that ended without a result is failed. A task that can make no
  progress (no answer, forgotten, pending for a reason only an administrator clears) is given
  up after ``BNEXP_SLURM_STUCK_MIN`` minutes: interrupted, and cancelled.
- ``Waiter`` is the loop: it polls the scheduler, reads the tasks' result files, prints state
  changes, and records each task as it ends in its summary.json and in sweep.json. Every task
  is keyed by its SLURM id (``<array>_<index>``). A task that leads a pack (bnexp.slurm_pack)
  also settles its followers, the pack's jobs that have no task: each keeps the result the
  leader wrote for it, and where the task ended without one (the scheduler ended it, or it
  never trained that job) gets the task's status, with the scheduler's record.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bnexp.errors import BnexpError
from bnexp.manifest import merge_job
from bnexp.metrics import COMPLETED, DIVERGED, FAILED, FINISHED, INTERRUPTED, RUNNING
from bnexp.rundir import summary_so_far, write_summary
from bnexp.runlock import HELD, claimed, holder, lock_path
from bnexp.slurm_scheduler import (
    ACTIVE,
    NEVER,
    SCHEDULER_STATUS,
    STALLED,
    refused_message,
    run,
    scheduler_states,
)

STUCK_ENV = "BNEXP_SLURM_STUCK_MIN"
DEFAULT_STUCK_MIN = 10.0
GRACE_S = 5.0  # a result file written just before the task ended may appear a moment later
# Statuses a task's own result settles without the scheduler (HELD: another bnexp call on the
# same sweep runs that job; it is waited for at the end of the sweep).
OWN_FINAL = (COMPLETED, DIVERGED, FAILED, HELD)
UNKNOWN = {"state": "UNKNOWN", "reason": "None", "exit_code": "", "node": ""}


def stuck_limit_s() -> float:
    """Seconds bnexp waits on a task that can make no progress (``BNEXP_SLURM_STUCK_MIN``)."""
    raw = os.environ.get(STUCK_ENV, "")
    try:
        minutes = float(raw) if raw else DEFAULT_STUCK_MIN
    except ValueError:
        raise BnexpError(f"{STUCK_ENV}={raw!r}: give minutes as a number, e.g. "
                         f"{STUCK_ENV}=10.") from None
    return max(0.0, minutes) * 60


# ---------------------------------------------------------------------------------------------
# The decisions: scheduler state in, task status out
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Seen:
    """What one poll knows about one task."""

    answered: bool  # the scheduler answered (scontrol, sacct, or at least a ping)
    info: dict[str, str] | None  # its record of the task; None: it does not know the task
    own: str | None  # the status the task returned itself; None: no result file (yet)
    now: float  # time.monotonic()


@dataclass(frozen=True)
class Verdict:
    """One poll's outcome: ``status`` None while the task goes on."""

    show: str  # the task's state in words ("" : nothing new to say)
    status: str | None = None  # the final bnexp status
    scheduler: dict[str, str] | None = None  # the scheduler's record, when it ended the task
    error: str | None = None  # why, for summary.json
    own: bool = False  # the task's own status: a result it wrote stays its result
    cancel: bool = False  # scancel the task first (bnexp gave up on it)


def final(own: str | None, info: dict[str, str] | None, params: dict[str, Any],
          show: str = "") -> Verdict:
    """The status of a task that is over: its own, unless the scheduler ended it; failed when
    it left no result and the scheduler gives no other reason."""
    state = info["state"] if info is not None else None
    by_scheduler = state in SCHEDULER_STATUS and state not in ("COMPLETED", "FAILED")
    if own is not None and not by_scheduler:
        return Verdict(show, own, own=True)
    info = info or UNKNOWN
    status = SCHEDULER_STATUS[info["state"]] if by_scheduler else FAILED
    return Verdict(show, status, info, explain(info["state"], info, params))


class TaskWatch:
    """One task's state between polls: since when it looked stuck (or ended without a
    result, for the grace period)."""

    def __init__(self, stuck_s: float, params: dict[str, Any]) -> None:
        self.stuck_s, self.params = stuck_s, params
        self.since: float | None = None

    def observe(self, seen: Seen) -> Verdict:
        if seen.own in OWN_FINAL:  # finished in Python: no need to ask the scheduler
            return final(seen.own, None, self.params)
        if not seen.answered:
            return self._stuck(seen, "the SLURM controller does not answer (scontrol)")
        if seen.info is None:
            return self._stuck(seen, "the scheduler no longer knows this task and it left "
                               "no result")
        state, reason = seen.info["state"], seen.info["reason"]
        if state == "PENDING" and reason in STALLED:
            return self._stuck(seen, f"pending ({reason})")
        show = state + (f" ({reason})" if reason not in ("None", "") else "")
        if state in ACTIVE:
            self.since = None
            return Verdict(show)
        if seen.own is None and seen.now - self._since(seen.now) < GRACE_S:
            return Verdict(show)  # ended: its result file may appear a moment later
        return final(seen.own, seen.info, self.params, show)

    def _since(self, now: float) -> float:
        if self.since is None:
            self.since = now
        return self.since

    def _stuck(self, seen: Seen, why: str) -> Verdict:
        if seen.own is not None:  # it ended with a result of its own
            return final(seen.own, None, self.params)
        left = self.stuck_s - (seen.now - self._since(seen.now))
        show = (f"{why}; bnexp gives up on it in {math.ceil(max(0, left) / 60)} min "
                f"({STUCK_ENV}={self.stuck_s / 60:g})")
        if left > 0:
            return Verdict(show)
        return Verdict(show, INTERRUPTED, {"state": "UNKNOWN", "reason": why},
                       f"bnexp stopped waiting after {self.stuck_s / 60:g} min: {why}",
                       cancel=True)


def never_clearing(states: dict[str, dict[str, str]] | None) -> str | None:
    """The pending reason that can never clear (an unsatisfiable request), if a task has one."""
    for info in (states or {}).values():
        if info["state"] == "PENDING" and info["reason"] in NEVER:
            return info["reason"]
    return None


def explain(state: str, info: dict[str, str], params: dict[str, Any]) -> str:
    """The scheduler's ending of a task in words, with the override that would avoid it."""
    reason = info.get("reason", "None")
    base = f"SLURM ended the task: {state}" + (f" ({reason})" if reason not in ("None", "")
                                                 else "")
    if info.get("exit_code"):
        base += f", exit code {info['exit_code']}"
    if state in ("TIMEOUT", "DEADLINE"):
        base += (f"; it ran past its time limit of {params.get('timeout_min')} min: raise "
                 "hydra.launcher.timeout_min")
    elif state == "OUT_OF_MEMORY":
        base += f"; it needed more than {params.get('mem_gb')} GB: raise hydra.launcher.mem_gb"
    elif state == "CANCELLED":
        base += "; cancelled (scancel, or by an administrator)"
    elif state == "NODE_FAIL":
        base += "; its node failed"
    return base + "; see the task's log in the sweep's .submitit folder"


# ---------------------------------------------------------------------------------------------
# The loop: polls, result files, records
# ---------------------------------------------------------------------------------------------

@dataclass
class Task:
    """One task of the array: the job it runs and what is known of it."""

    num: int  # the sweep's job number
    overrides: list[str]
    job: Any  # submitit's Job
    watch: TaskWatch
    error: str | None = None  # the last line of the task's Python error, if it raised
    returned: Any = None  # the JobReturn the task itself returned, if it did
    result: Any = None  # Hydra's JobReturn, once the task is over
    shown: str = field(default="", repr=False)
    # A pack's leader: the pack's other jobs (number, overrides), trained in this task, and
    # their JobReturns once it is over.
    followers: list[tuple[int, list[str]]] = field(default_factory=list)
    settled: dict[int, Any] = field(default_factory=dict)


class Waiter:
    """Waits for an array's tasks, recording each as it ends (see the module docstring)."""

    def __init__(self, launcher: Any, sweep_dir: Path, jobs: list[Any],
                 todo: list[tuple[int, list[str]]],
                 followers: dict[int, list[tuple[int, list[str]]]] | None = None) -> None:
        self.launcher, self.sweep_dir = launcher, sweep_dir
        stuck_s = stuck_limit_s()
        self.tasks = {job.job_id: Task(num, overrides, job, TaskWatch(stuck_s, launcher.params),
                                       followers=(followers or {}).get(num, []))
                      for job, (num, overrides) in zip(jobs, todo, strict=True)}

    def returns(self) -> dict[int, Any]:
        """Every job's JobReturn by job number, the followers' included (after ``wait``)."""
        out = {task.num: task.result for task in self.tasks.values()}
        for task in self.tasks.values():
            out.update(task.settled)
        return out

    def wait(self, array_id: str) -> list[Any]:
        """Hydra's JobReturns, in the order of the tasks, once every task is over."""
        poll = 0.5
        try:
            while pending := [t for t, task in self.tasks.items() if task.result is None]:
                own = {t: self._own(self.tasks[t]) for t in pending}
                states: dict[str, dict[str, str]] | None = {}
                if any(o not in OWN_FINAL for o in own.values()):
                    states = scheduler_states(array_id)
                    self._stop_if_never(states, array_id)
                now = time.monotonic()
                for t in pending:
                    seen = Seen(states is not None, (states or {}).get(t), own[t], now)
                    self._apply(t, self.tasks[t].watch.observe(seen))
                if any(task.result is None for task in self.tasks.values()):
                    time.sleep(poll)
                    poll = min(2.0, poll * 1.5)  # scontrol is cheap; the tail of a sweep waits less
        except KeyboardInterrupt:
            run(["scancel", array_id])
            print(f"slurm: cancelled job array {array_id}", flush=True)
            for t, task in self.tasks.items():
                if task.result is None:
                    self._record(t, Verdict("", INTERRUPTED, error="interrupted (Ctrl-C); the "
                                            "array was cancelled"), touch_summary=False)
            raise
        return [task.result for task in self.tasks.values()]

    def _own(self, task: Task) -> str | None:
        """The status the task returned (FAILED when it raised), or None: no result file."""
        from submitit.core.utils import pickle_load

        path = task.job.paths.result_pickle
        if not path.exists():
            return None
        try:
            outcome, value = pickle_load(path)
        except Exception:  # being written
            return None
        if outcome == "success":
            task.returned = value
            return getattr(value, "_return_value", None) or FAILED
        lines = [ln for ln in str(value).strip().splitlines() if ln.strip()]
        task.error = lines[-1] if lines else "the task raised an error"
        return FAILED

    def _stop_if_never(self, states: dict[str, dict[str, str]] | None, array_id: str) -> None:
        """An unsatisfiable request: cancel the array, stop with one paragraph."""
        reason = never_clearing(states)
        if reason is not None:
            run(["scancel", array_id])
            raise BnexpError(refused_message(
                f"error: its tasks pend with reason {reason}, which never clears",
                self.launcher.params) + f" The array ({array_id}) was cancelled.")

    def _apply(self, t: str, verdict: Verdict) -> None:
        if verdict.show:
            self._show(t, verdict.show)
        if verdict.status is None:
            return
        if verdict.cancel:
            run(["scancel", t])
        self._record(t, verdict)

    def _record(self, t: str, verdict: Verdict, touch_summary: bool = True) -> None:
        """The task's status into its summary.json (unless another bnexp call now runs that
        job: its result is that call's to write) and into sweep.json."""
        from hydra.core.utils import JobReturn, JobStatus

        task = self.tasks[t]
        status = verdict.status
        assert status is not None
        job_dir = self.launcher.job_dir(task.overrides, task.num)
        if status != HELD and touch_summary and self._exiting(t, task):
            return  # the leader's process still holds a follower: at the next poll
        if status != HELD and touch_summary:
            lock = lock_path(self.sweep_dir, job_dir.name)
            with claimed(lock) as mine:
                if mine is None and (holder(lock) or {}).get("slurm_task") == t:
                    return  # its own process is still exiting: record it at the next poll
                status = self._write_summary(task, job_dir, verdict) if mine else HELD
        if status == HELD:
            self._show(t, "held by another bnexp call on this sweep: waited for at the end")
        else:
            scheduler = {"job_id": t, **(verdict.scheduler or {})}
            merge_job(self.sweep_dir, task.num, overrides=task.overrides, dir=job_dir.name,
                      status=status, scheduler=scheduler)
            self._show(t, f"recorded {status}" + (f": {verdict.error}" if verdict.error else ""))
        if verdict.own and task.returned is not None:
            task.result = task.returned
        else:
            task.result = JobReturn(overrides=task.overrides, status=JobStatus.COMPLETED,
                                    _return_value=status)
        for num, overrides in task.followers:
            status = self._settle(t, num, overrides, verdict, touch_summary)
            task.settled[num] = JobReturn(overrides=overrides, status=JobStatus.COMPLETED,
                                          _return_value=status)

    def _exiting(self, t: str, task: Task) -> bool:
        """Whether task ``t``'s own process still holds one of its followers' locks."""
        return any((holder(lock_path(self.sweep_dir, self.launcher.job_dir(o, n).name))
                    or {}).get("slurm_task") == t for n, o in task.followers)

    def _settle(self, t: str, num: int, overrides: list[str], verdict: Verdict,
                touch_summary: bool) -> str:
        """Record follower ``num`` of task ``t``'s pack, once the task is over: the result
        the leader wrote for it, else the task's status (see the module docstring)."""
        job_dir = self.launcher.job_dir(overrides, num)
        status = str(verdict.status)
        if touch_summary:
            with claimed(lock_path(self.sweep_dir, job_dir.name)) as mine:
                if mine is None:  # another bnexp call on this sweep runs it now
                    self._show(t, f"job {num} of its pack is held by another bnexp call on "
                               "this sweep: waited for at the end")
                    return HELD
                status = self._follower_summary(t, job_dir, verdict)
        merge_job(self.sweep_dir, num, overrides=overrides, dir=job_dir.name, status=status,
                  scheduler={"job_id": t, **(verdict.scheduler or {})})
        self._show(t, f"recorded job {num} of its pack {status}")
        return status

    def _follower_summary(self, t: str, job_dir: Path, verdict: Verdict) -> str:
        """A follower's status: its own when the leader wrote one (a finished run, or any
        ending in a task that ended by itself), else the task's status, written into its
        summary.json with the scheduler's record."""
        summary = summary_so_far(job_dir)
        own = summary.get("status")
        if own in FINISHED or (verdict.scheduler is None and own not in (None, RUNNING)):
            return str(own)
        leader = self.tasks[t]
        status = str(verdict.status) if verdict.scheduler is not None else FAILED
        why = verdict.error or leader.error or "it ended without a result for this job"
        summary.update(status=status, run_dir=str(job_dir),
                       error=f"the task of its pack's leader (job {leader.num}, {t}): {why}")
        if verdict.scheduler is not None:
            summary["scheduler"] = {"job_id": t, **verdict.scheduler}
        write_summary(job_dir, summary)
        return status

    def _write_summary(self, task: Task, job_dir: Path, verdict: Verdict) -> str:
        """Add the verdict to the job's summary.json; a result it holds stays its result."""
        summary = summary_so_far(job_dir)
        keep = verdict.own or summary.get("status") in FINISHED
        status = summary.get("status", verdict.status) if keep else verdict.status
        summary.update(status=status, run_dir=str(job_dir))
        if verdict.scheduler is not None:  # ended by the scheduler: its state and reason
            summary["scheduler"] = {"job_id": task.job.job_id, **verdict.scheduler}
        if verdict.error and not keep:
            summary["error"] = verdict.error
        elif task.error and "error" not in summary:
            summary["error"] = task.error
        write_summary(job_dir, summary)
        return str(status)

    def _show(self, t: str, text: str) -> None:
        task = self.tasks[t]
        if task.shown != text:
            task.shown = text
            print(f"slurm: {t} {text}", flush=True)
