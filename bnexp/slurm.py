"""The SLURM launcher for sweeps (``hydra/launcher=submitit_slurm``): Hydra's submitit launcher,
with bnexp's own submission checks and its own wait for the jobs.

Hydra's ``SlurmLauncher`` submits one job array and then waits on each task's result with
submitit, which raises on the first task that died outside Python (scancel, ``kill -9``, the
time limit), and waits for ever on a job that pends for ever or on a scheduler without
accounting (``sacct``). This subclass submits the same array and then:

- checks the request against the partition's nodes first (``sinfo``), and turns a refused
  submission (sbatch's error) into one paragraph naming the override to change;
- waits by asking the controller (``scontrol show job``, which needs no accounting; ``sacct``
  as a fallback for jobs the controller has forgotten), printing what the tasks are doing;
- records every task as it ends: its own result when it left one, else the scheduler's state
  mapped to a bnexp status (``SCHEDULER_STATUS``) with the scheduler's state, reason and exit
  code in the job's summary.json (``scheduler``) and in sweep.json;
- gives up on a task that can make no progress (the scheduler does not answer or no longer
  knows it, or it pends for a reason only an administrator can clear) after
  ``BNEXP_SLURM_STUCK_MIN`` minutes (default 10), recording it ``interrupted``, and cancels
  the array when it pends for a reason that can never clear (an unsatisfiable request);
- cancels the array on Ctrl-C, so that a resumed sweep does not run next to the old one.

Jobs never raise into Hydra: the sweep always ends with its status table. Inside each task,
``bnexp.sweep.run_job`` turns the scheduler's signals (time limit, scancel) into a recorded
status instead of an exception that could be swallowed (see ``scheduler_signals``).
"""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra_plugins.hydra_submitit_launcher.submitit_launcher import (
    SlurmLauncher as HydraSlurmLauncher,
)

from bnexp.errors import BnexpError
from bnexp.metrics import CANCELLED, COMPLETED, DIVERGED, FAILED, FINISHED, INTERRUPTED, TIMEOUT

STUCK_ENV = "BNEXP_SLURM_STUCK_MIN"
DEFAULT_STUCK_MIN = 10.0
DEFAULT_MEM_GB = 4

# Scheduler job states -> bnexp statuses, for a task that ended without a result of its own.
SCHEDULER_STATUS = {
    "COMPLETED": FAILED,  # the process ended without writing a result
    "CANCELLED": CANCELLED,
    "TIMEOUT": TIMEOUT,
    "DEADLINE": TIMEOUT,
    "PREEMPTED": INTERRUPTED,
    "FAILED": FAILED,
    "NODE_FAIL": FAILED,
    "BOOT_FAIL": FAILED,
    "OUT_OF_MEMORY": FAILED,
    "SPECIAL_EXIT": FAILED,
    "REVOKED": CANCELLED,
}
ACTIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_FED",
          "REQUEUE_HOLD", "RESIZING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT",
          "RESV_DEL_HOLD", "UNKNOWN"}
# Pending reasons that never clear by themselves: the request cannot be met as submitted.
NEVER = {"BadConstraints", "PartitionNodeLimit", "PartitionTimeLimit", "PartitionConfig",
         "InvalidAccount", "InvalidQOS", "QOSMaxCpuPerJobLimit", "QOSMaxMemoryPerJob",
         "QOSMaxGRESPerJob", "QOSMaxWallDurationPerJobLimit", "AssocMaxWallDurationPerJobLimit",
         "AssocMaxCpuPerJobLimit", "AssocMaxMemPerJob", "InvalidReservation"}
# Pending reasons that need someone to act (a node down or drained, a partition down).
STALLED = {"ReqNodeNotAvail", "NodeDown", "PartitionDown", "PartitionInactive",
           "JobHeldAdmin", "JobHeldUser", "launch_failed_requeued_held"}
GRACE_S = 5.0  # a result file written just before the task ended may appear a moment later


def stuck_limit_s() -> float:
    """Seconds bnexp waits on a task that can make no progress (``BNEXP_SLURM_STUCK_MIN``)."""
    raw = os.environ.get(STUCK_ENV, "")
    try:
        minutes = float(raw) if raw else DEFAULT_STUCK_MIN
    except ValueError:
        raise BnexpError(f"{STUCK_ENV}={raw!r}: give minutes as a number, e.g. "
                         f"{STUCK_ENV}=10.") from None
    return max(0.0, minutes) * 60


def _run(cmd: list[str], timeout: float = 20) -> str | None:
    """A scheduler command's stdout, or None when it fails or does not answer."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


# ---------------------------------------------------------------------------------------------
# Asking the scheduler
# ---------------------------------------------------------------------------------------------

def _task_ids(spec: str) -> list[int]:
    """``ArrayTaskId`` of a pending array record: ``3``, ``2-5``, ``1,4-6``, ``0-9%2``."""
    ids: list[int] = []
    for part in spec.split("%")[0].split(","):
        lo, _, hi = part.partition("-")
        if lo.isdigit():
            ids.extend(range(int(lo), int(hi if hi.isdigit() else lo) + 1))
    return ids


def parse_scontrol(text: str) -> dict[str, dict[str, str]]:
    """``scontrol show job -o`` output as ``{"<array id>_<task>": {"state", "reason",
    "exit_code", "node"}}`` (and plain job ids for jobs that are not arrays)."""
    states: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        if "JobId" not in fields:
            continue
        info = {"state": fields.get("JobState", "UNKNOWN").split()[0],
                "reason": fields.get("Reason", "None"), "exit_code": fields.get("ExitCode", ""),
                "node": fields.get("NodeList", "")}
        array, tasks = fields.get("ArrayJobId"), fields.get("ArrayTaskId")
        if array and tasks:
            for task in _task_ids(tasks):
                states[f"{array}_{task}"] = info
        else:
            states[fields["JobId"]] = info
    return states


def parse_sacct(text: str) -> dict[str, dict[str, str]]:
    """``sacct -n -P -o JobID,State,Reason,ExitCode,NodeList`` output (array tasks only, not
    their steps) in ``parse_scontrol``'s form."""
    states: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) < 5 or "." in parts[0]:
            continue
        job_id, state, reason, exit_code, node = parts[:5]
        info = {"state": state.split()[0] if state else "UNKNOWN", "reason": reason or "None",
                "exit_code": exit_code, "node": node}
        if "_[" in job_id:  # a pending range: 12_[3-5%2]
            array, _, spec = job_id.partition("_[")
            for task in _task_ids(spec.rstrip("]")):
                states[f"{array}_{task}"] = info
        else:
            states[job_id] = info
    return states


def scheduler_states(array_id: str) -> dict[str, dict[str, str]] | None:
    """Every task of the array as the scheduler reports it, or None when it does not answer.
    The controller first (no accounting needed; it forgets finished jobs after MinJobAge),
    then ``sacct`` where accounting is configured."""
    states: dict[str, dict[str, str]] | None = None
    text = _run(["scontrol", "show", "job", "-o", array_id])
    if text is not None:
        states = parse_scontrol(text)
    if not states:
        text = _run(["sacct", "-n", "-P", "-j", array_id,
                     "-o", "JobID,State,Reason,ExitCode,NodeList"])
        if text is not None:
            states = {**(states or {}), **parse_sacct(text)}
    if states is None and _run(["scontrol", "ping"]) is not None:
        states = {}  # the controller answers and no longer knows the job
    return states


def _partition_nodes(partition: str | None) -> tuple[str, int, int] | None:
    """(partition, most CPUs of a node, most memory of a node in MB) from sinfo; None when
    sinfo does not answer."""
    text = _run(["sinfo", "-h", "-o", "%P|%c|%m"])
    if not text:
        return None
    rows = [line.split("|") for line in text.split() if line.count("|") == 2]
    if partition is None:
        rows = [r for r in rows if r[0].endswith("*")] or rows
    else:
        rows = [r for r in rows if r[0].rstrip("*") == partition]
    if not rows:
        return None

    def number(v: str) -> int:
        return int(re.sub(r"\D", "", v) or 0)

    return (rows[0][0].rstrip("*"), max(number(r[1]) for r in rows),
            max(number(r[2]) for r in rows))


# ---------------------------------------------------------------------------------------------
# The launcher
# ---------------------------------------------------------------------------------------------

class LaunchRefused(BaseException):
    """A user error in the launcher, carried past Hydra's error report (which catches every
    Exception, prints a traceback and exits 1) to bnexp's CLI (one paragraph, exit 2):
    ``bnexp.sweep`` re-raises ``error``."""

    def __init__(self, error: BnexpError) -> None:
        super().__init__(str(error))
        self.error = error


class SlurmLauncher(HydraSlurmLauncher):
    """Hydra's submitit SLURM launcher with bnexp's checks, wait and status mapping."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Any:
        try:
            return self._launch(job_overrides, initial_job_idx)
        except BnexpError as exc:
            raise LaunchRefused(exc) from None

    def _launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Any:
        import submitit
        from hydra.core.singleton import Singleton
        from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
        from omegaconf import OmegaConf

        assert self.config is not None
        params = dict(self.params)
        threads = OmegaConf.select(self.config, "trainer.threads")
        if params.get("cpus_per_task") is None:  # the run's threads (1 unless set)
            params["cpus_per_task"] = int(threads or 1)
        if params.get("mem_gb") is None and not (params.get("mem_per_cpu")
                                                 or params.get("mem_per_gpu")):
            params["mem_gb"] = DEFAULT_MEM_GB
        self.params = params  # what the tasks see (their trainer.threads follows cpus_per_task)
        _check_request(params)

        executor = submitit.AutoExecutor(cluster="slurm", folder=params["submitit_folder"],
                                         slurm_max_num_timeout=params.get("max_num_timeout", 0))
        baseparams = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{
            k if k in baseparams else f"slurm_{k}": v for k, v in params.items()
            if k not in ("submitit_folder", "max_num_timeout")})
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        # A resumed sweep submits only the jobs without a finished result: the others would
        # each take a task (and its wait in the queue) only to say "skipped".
        from hydra.core.utils import JobReturn, JobStatus

        from bnexp.sweep import finished_summary, merge_job

        results: dict[int, Any] = {}
        todo: list[tuple[int, list[str]]] = []
        for num, overrides in enumerate(job_overrides, start=initial_job_idx):
            done = finished_summary(self.job_dir(overrides, num))
            if done is None:
                todo.append((num, list(overrides)))
                continue
            merge_job(sweep_dir, num, status=done["status"], resumed="skipped")
            print(f"[job {num}] already {done['status']}, skipped", flush=True)
            results[num] = JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED,
                                     _return_value=done["status"])
        if todo:
            job_params = [(overrides, "hydra.sweep.dir", num, f"job_id_for_{num}",
                           Singleton.get_state()) for num, overrides in todo]
            try:
                jobs = executor.map_array(self, *zip(*job_params, strict=True))
            except submitit.core.utils.FailedJobError as exc:
                raise BnexpError(_refused(str(exc), params)) from None
            array_id = jobs[0].job_id.split("_")[0]
            logs = Path(str(params["submitit_folder"]).replace("%j", f"{array_id}_<task>"))
            print(f"slurm: submitted job array {array_id} ({len(jobs)} tasks, "
                  f"{params['cpus_per_task']} CPUs and {params.get('mem_gb')} GB each, "
                  f"time limit {params.get('timeout_min')} min); logs in {logs}", flush=True)
            waiter = _Waiter(self, sweep_dir, jobs, todo)
            results.update(zip([num for num, _ in todo], waiter.wait(array_id), strict=True))
        return [results[num] for num in sorted(results)]

    def job_dir(self, overrides: Sequence[str], num: int) -> Path:
        """The directory Hydra gives job ``num`` (for tasks that never started)."""
        from omegaconf import OmegaConf, open_dict

        assert self.hydra_context is not None and self.config is not None
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(cfg.hydra.job):
            cfg.hydra.job.num = num
        return Path(str(cfg.hydra.sweep.dir)) / str(OmegaConf.select(cfg, "hydra.sweep.subdir"))


def _check_request(params: dict[str, Any]) -> None:
    """Refuse a request no node of the partition can meet (a cluster without
    EnforcePartLimits would keep it pending for ever)."""
    nodes = _partition_nodes(params.get("partition"))
    if nodes is None:
        return
    partition, cpus, mem_mb = nodes
    need_cpus = int(params.get("cpus_per_task") or 1) * int(params.get("tasks_per_node") or 1)
    if need_cpus > cpus:
        raise BnexpError(
            f"The SLURM request cannot be met: {need_cpus} CPUs per task, and the nodes of "
            f"partition {partition} have at most {cpus}. Lower hydra.launcher.cpus_per_task "
            f"(e.g. hydra.launcher.cpus_per_task={cpus}), or pick another partition with "
            "hydra.launcher.partition=NAME.")
    mem_gb = params.get("mem_gb")
    if mem_gb and mem_mb and mem_gb * 1024 > mem_mb:
        raise BnexpError(
            f"The SLURM request cannot be met: {mem_gb} GB of memory per task, and the nodes "
            f"of partition {partition} have at most {mem_mb} MB. Lower hydra.launcher.mem_gb "
            f"(e.g. hydra.launcher.mem_gb={max(1, mem_mb // 1024 // 2)}), or pick another "
            "partition with hydra.launcher.partition=NAME.")


def _refused(message: str, params: dict[str, Any]) -> str:
    """sbatch's refusal as one paragraph naming the override to change."""
    lines = [ln.strip() for ln in message.splitlines() if "error" in ln.lower()]
    said = "; ".join(ln.split("error:", 1)[-1].strip() for ln in lines) or message.strip()
    low = said.lower()
    hints = [(("processor", "cpu"), "hydra.launcher.cpus_per_task"),
             (("memory",), "hydra.launcher.mem_gb"),
             (("partition",), "hydra.launcher.partition"),
             (("time limit",), "hydra.launcher.timeout_min"),
             (("account",), "hydra.launcher.account"),
             (("qos",), "hydra.launcher.qos"),
             (("gres", "gpu"), "hydra.launcher.gpus_per_node"),
             (("node configuration", "constraint", "feature"),
              "hydra.launcher.cpus_per_task, hydra.launcher.mem_gb, hydra.launcher.gpus_per_node "
              "or hydra.launcher.constraint")]
    names = [name for words, name in hints if any(w in low for w in words)]
    fix = (f"Change {' / '.join(dict.fromkeys(names))}" if names else
           "Check the hydra.launcher.* settings (partition, account, time, memory, CPUs, GPUs)")
    request = ", ".join(f"{k}={params.get(k)}" for k in
                        ("partition", "cpus_per_task", "mem_gb", "gpus_per_node", "timeout_min")
                        if params.get(k) is not None)
    return (f"SLURM refused the sweep's job array: {said}. The request was {request}. {fix} "
            "to fit the cluster (`sinfo -o '%P %c %m %G %l'` lists what its partitions offer).")


class _Waiter:
    """Waits for an array's tasks, recording each as it ends (see the module docstring)."""

    def __init__(self, launcher: SlurmLauncher, sweep_dir: Path, jobs: list[Any],
                 todo: list[tuple[int, list[str]]]) -> None:
        self.launcher, self.sweep_dir, self.jobs = launcher, sweep_dir, jobs
        self.nums = [num for num, _ in todo]  # task i runs job nums[i]
        self.overrides = [overrides for _, overrides in todo]
        self.results: dict[int, Any] = {}
        self.errors: dict[int, str] = {}  # the last line of a task's Python error
        self.stuck_s = stuck_limit_s()
        self.shown: dict[str, str] = {}
        self.since: dict[str, float] = {}  # when a task began to look stuck or ended
        self.unreachable_since: float | None = None

    def wait(self, array_id: str) -> list[Any]:
        poll, pending = 0.5, set(range(len(self.jobs)))
        try:
            while pending:
                for i in sorted(pending):  # finished in Python: no need to ask the scheduler
                    result = self._result(i)
                    if result is not None and result[1] in (COMPLETED, DIVERGED, FAILED):
                        self._finish(i, None)
                pending -= set(self.results)
                if not pending:
                    break
                states = scheduler_states(array_id)
                self._check_never(states, array_id)
                for i in sorted(pending):
                    self._step(i, states)
                pending -= set(self.results)
                if pending:
                    time.sleep(poll)
                    poll = min(2.0, poll * 1.5)  # scontrol is cheap; the tail of a sweep waits less
        except KeyboardInterrupt:
            _run(["scancel", array_id])
            print(f"slurm: cancelled job array {array_id}", flush=True)
            for i in sorted(set(range(len(self.jobs))) - set(self.results)):
                self._record(i, INTERRUPTED, None, "interrupted (Ctrl-C); the array was "
                             "cancelled", touch_summary=False)
            raise
        return [self.results[i] for i in range(len(self.jobs))]

    # -- one task -------------------------------------------------------------------------

    def _result(self, i: int) -> tuple[Any, str | None] | None:
        """The task's own result: (Hydra's JobReturn or None, the status run_job returned or
        FAILED for an error), or None when it left none."""
        from submitit.core.utils import pickle_load

        path = self.jobs[i].paths.result_pickle
        if not path.exists():
            return None
        try:
            outcome, value = pickle_load(path)
        except Exception:  # being written
            return None
        if outcome == "success":
            return value, getattr(value, "_return_value", None)
        lines = [ln for ln in str(value).strip().splitlines() if ln.strip()]
        self.errors[i] = lines[-1] if lines else "the task raised an error"
        return None, FAILED

    def _step(self, i: int, states: dict[str, dict[str, str]] | None) -> None:
        task = self.jobs[i].job_id
        now = time.monotonic()
        if states is None:  # the controller does not answer
            self._stuck(i, task, now, "the SLURM controller does not answer (scontrol)")
            return
        self.unreachable_since = None
        info = states.get(task)
        if info is None:
            self._stuck(i, task, now, "the scheduler no longer knows this task and it left "
                        "no result")
            return
        state, reason = info["state"], info["reason"]
        if state in ACTIVE:
            if state == "PENDING" and reason in STALLED:
                self._stuck(i, task, now, f"pending ({reason})")
                return
            self.since.pop(task, None)
        self._show(task, f"{state}" + (f" ({reason})" if reason not in ("None", "") else ""))
        if state in ACTIVE:
            return
        # Ended: its result, else (after a grace for the file to appear) the scheduler's state.
        result = self._result(i)
        if result is None and now - self.since.setdefault(task, now) < GRACE_S:
            return
        self._finish(i, info)

    def _stuck(self, i: int, task: str, now: float, why: str) -> None:
        if self._result(i) is not None:  # it ended with a result of its own
            self._finish(i, None)
            return
        start = self.since.setdefault(task, now)
        left = self.stuck_s - (now - start)
        self._show(task, f"{why}; bnexp gives up on it in {math.ceil(max(0, left) / 60)} min "
                   f"({STUCK_ENV}={self.stuck_s / 60:g})")
        if left <= 0:
            _run(["scancel", task])
            self._record(i, INTERRUPTED, {"state": "UNKNOWN", "reason": why},
                         f"bnexp stopped waiting after {self.stuck_s / 60:g} min: {why}")

    def _finish(self, i: int, info: dict[str, str] | None) -> None:
        """Record task ``i``: its own status when it finished with a result (completed,
        diverged, or failed in Python), unless the scheduler ended it (then the scheduler's
        state, mapped, with its reason); its own status (timeout, cancelled: from the
        scheduler's signals) when the scheduler's final state says no more."""
        result = self._result(i)
        ret, own = result if result is not None else (None, None)
        state = info["state"] if info is not None else None
        ended_by_scheduler = state in SCHEDULER_STATUS and state not in ("COMPLETED", "FAILED")
        if own is not None and not ended_by_scheduler:
            if ret is not None:
                self.results[i] = ret
            self._record(i, own, None, None, keep_status=True)
        elif ended_by_scheduler:
            assert info is not None and state is not None
            self._record(i, SCHEDULER_STATUS[state], info,
                         _explain(state, info, self.launcher.params))
        else:
            info = info or {"state": "UNKNOWN", "reason": "None", "exit_code": "", "node": ""}
            self._record(i, FAILED, info, _explain(info["state"], info, self.launcher.params))

    def _check_never(self, states: dict[str, dict[str, str]] | None, array_id: str) -> None:
        """An unsatisfiable request (pending for a reason that never clears): cancel the
        array and stop with one paragraph naming the override."""
        for info in (states or {}).values():
            if info["state"] == "PENDING" and info["reason"] in NEVER:
                _run(["scancel", array_id])
                raise BnexpError(_refused(
                    f"error: its tasks pend with reason {info['reason']}, which never clears",
                    self.launcher.params) + f" The array ({array_id}) was cancelled.")

    def _record(self, i: int, status: str, info: dict[str, str] | None, error: str | None,
                keep_status: bool = False, touch_summary: bool = True) -> None:
        from hydra.core.utils import JobReturn, JobStatus

        from bnexp.jsonio import write_json_atomic
        from bnexp.sweep import merge_job, read_json

        num = self.nums[i]
        job_dir = self.launcher.job_dir(self.overrides[i], num)
        scheduler = {"job_id": self.jobs[i].job_id, **(info or {})}
        if touch_summary:
            summary = read_json(job_dir / "summary.json")
            if keep_status or summary.get("status") in FINISHED:  # a result stays a result
                keep_status, status = True, summary.get("status", status)
            summary.update(status=status, run_dir=str(job_dir))
            if info is not None:  # ended by the scheduler: its state and reason
                summary["scheduler"] = scheduler
            if error and not keep_status:
                summary["error"] = error
            elif i in self.errors and "error" not in summary:
                summary["error"] = self.errors[i]
            job_dir.mkdir(parents=True, exist_ok=True)
            write_json_atomic(job_dir / "summary.json", summary)
        merge_job(self.sweep_dir, num, overrides=self.overrides[i], dir=job_dir.name,
                  status=status, scheduler=scheduler)
        self._show(self.jobs[i].job_id, f"recorded {status}" + (f": {error}" if error else ""))
        if i not in self.results:
            self.results[i] = JobReturn(overrides=self.overrides[i], status=JobStatus.COMPLETED,
                                        _return_value=status)

    def _show(self, task: str, text: str) -> None:
        if self.shown.get(task) != text:
            self.shown[task] = text
            print(f"slurm: {task} {text}", flush=True)


def _explain(state: str, info: dict[str, str], params: dict[str, Any]) -> str:
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
# Inside a task: the scheduler's signals as a recorded status
# ---------------------------------------------------------------------------------------------

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
