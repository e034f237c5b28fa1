"""bnexp/slurm_wait.py without a cluster: the per-task state machine driven by recorded
``scontrol show job -o`` and ``sacct -n -P`` output (parsed by bnexp/slurm_scheduler.py), and
the waiting loop with a fake scheduler and clock. Fast; tests/test_slurm.py runs the same paths
against real SLURM daemons (slow)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from bnexp import slurm_wait
from bnexp.errors import BnexpError
from bnexp.slurm_scheduler import parse_sacct, parse_scontrol
from bnexp.slurm_wait import GRACE_S, Seen, TaskWatch, never_clearing

PARAMS = {"timeout_min": 5, "mem_gb": 4, "partition": "debug", "cpus_per_task": 1}
STUCK_S = 600.0

# `scontrol show job -o 12` on a single-node cluster: one line per array record (a pending
# range stays one record), as slurmctld 22-23 prints them.
SCONTROL_RUNNING = (
    "JobId=13 ArrayJobId=12 ArrayTaskId=0 ArrayTaskThrottle=16 JobName=submitit "
    "UserId=root(0) GroupId=root(0) MCS_label=N/A Priority=4294901757 Nice=0 Account=(null) "
    "QOS=(null) JobState=RUNNING Reason=None Dependency=(null) Requeue=0 Restarts=0 "
    "BatchFlag=1 Reboot=0 ExitCode=0:0 RunTime=00:00:02 TimeLimit=00:05:00 TimeMin=N/A "
    "SubmitTime=2026-12-06T17:00:00 EligibleTime=2026-12-06T17:00:00 Partition=debug "
    "AllocNode:Sid=vm:4242 ReqNodeList=(null) ExcNodeList=(null) NodeList=localnode "
    "BatchHost=localnode NumNodes=1 NumCPUs=1 NumTasks=1 CPUs/Task=1 ReqB:S:C:T=0:0:*:* "
    "TRES=cpu=1,mem=4G,node=1,billing=1 MinMemoryNode=4G Features=(null) "
    "Command=/tmp/sweep/.submitit/12_0/submission.sh WorkDir=/work/main\n"
    "JobId=12 ArrayJobId=12 ArrayTaskId=1-2 ArrayTaskThrottle=16 JobName=submitit "
    "UserId=root(0) JobState=PENDING Reason=Resources Dependency=(null) ExitCode=0:0 "
    "RunTime=00:00:00 TimeLimit=00:05:00 Partition=debug NodeList=(null) NumCPUs=1\n"
)


def scontrol_line(task: int, state: str, reason: str = "None", exit_code: str = "0:0",
                  node: str = "localnode") -> str:
    return (f"JobId={13 + task} ArrayJobId=12 ArrayTaskId={task} JobName=submitit "
            f"UserId=root(0) JobState={state} Reason={reason} Dependency=(null) Requeue=0 "
            f"ExitCode={exit_code} RunTime=00:00:04 TimeLimit=00:05:00 Partition=debug "
            f"NodeList={node} BatchHost={node} NumNodes=1 NumCPUs=1\n")


# `sacct -n -P -j 12 -o JobID,State,Reason,ExitCode,NodeList` where accounting exists: tasks
# and their steps (skipped), a scancel'ed task's "CANCELLED by <uid>", a pending range.
SACCT = """12_0|COMPLETED|None|0:0|localnode
12_0.batch|COMPLETED||0:0|localnode
12_1|CANCELLED by 0|None|0:15|localnode
12_1.batch|CANCELLED||0:15|localnode
12_2|TIMEOUT|None|0:0|localnode
12_3|OUT_OF_MEMORY|None|0:125|localnode
12_4|NODE_FAIL|None|1:0|node7
12_5|PREEMPTED|None|0:15|localnode
12_6|FAILED|NonZeroExitCode|9:0|localnode
12_[7-8%2]|PENDING|JobHeldAdmin|0:0|None assigned
"""
ACCOUNTED = parse_sacct(SACCT)


def watch() -> TaskWatch:
    return TaskWatch(STUCK_S, PARAMS)


def seen(info: dict | None, own: str | None = None, now: float = 0.0,
         answered: bool = True) -> Seen:
    return Seen(answered, info, own, now)


def test_the_recorded_output_parses_per_task() -> None:
    states = parse_scontrol(SCONTROL_RUNNING)
    assert set(states) == {"12_0", "12_1", "12_2"}  # the pending range, one entry per task
    assert states["12_0"] == {"state": "RUNNING", "reason": "None", "exit_code": "0:0",
                              "node": "localnode"}
    assert states["12_2"]["state"] == "PENDING" and states["12_2"]["reason"] == "Resources"
    assert set(ACCOUNTED) == {f"12_{i}" for i in range(9)}  # steps (12_0.batch) left out
    assert ACCOUNTED["12_1"]["state"] == "CANCELLED"  # "CANCELLED by 0"
    assert ACCOUNTED["12_8"]["reason"] == "JobHeldAdmin"


def test_running_then_completed() -> None:
    w = watch()
    v = w.observe(seen(parse_scontrol(SCONTROL_RUNNING)["12_0"], now=0))
    assert v.status is None and v.show == "RUNNING"
    pending = w.observe(seen(parse_scontrol(SCONTROL_RUNNING)["12_1"], now=1))
    assert pending.status is None and pending.show == "PENDING (Resources)"
    # The task's own result: settled without the scheduler.
    v = w.observe(seen(None, own="completed", now=2))
    assert (v.status, v.own, v.scheduler) == ("completed", True, None)
    # Or the scheduler says COMPLETED first: the result file gets a grace period to appear.
    w = watch()
    done = parse_scontrol(scontrol_line(0, "COMPLETED"))["12_0"]
    assert w.observe(seen(done, now=10)).status is None
    assert w.observe(seen(done, own="completed", now=11)).status == "completed"
    # ... and a process that ended without a result is a failure, with the scheduler's word.
    w = watch()
    assert w.observe(seen(done, now=10)).status is None
    v = w.observe(seen(done, now=10 + GRACE_S))
    assert v.status == "failed" and v.scheduler == done and "COMPLETED" in v.error


def test_a_task_cancelled_by_scancel() -> None:
    info = ACCOUNTED["12_1"]
    v = watch().observe(seen(info, own="cancelled"))  # the task recorded SIGTERM itself
    assert v.status == "cancelled" and v.scheduler == info and not v.own
    assert "scancel" in v.error and "exit code 0:15" in v.error
    w = watch()  # cancelled before it wrote anything (pending, or killed at once)
    assert w.observe(seen(info, now=0)).status is None
    assert w.observe(seen(info, now=GRACE_S)).status == "cancelled"


def test_a_task_past_its_time_limit() -> None:
    v = watch().observe(seen(ACCOUNTED["12_2"], own="timeout"))
    assert v.status == "timeout" and "time limit of 5 min" in v.error
    assert "hydra.launcher.timeout_min" in v.error


@pytest.mark.parametrize("task,words", [("12_3", "hydra.launcher.mem_gb"),
                                        ("12_4", "its node failed"),
                                        ("12_6", "exit code 9:0")])
def test_out_of_memory_node_failure_and_kill_are_failed(task: str, words: str) -> None:
    w = watch()
    info = ACCOUNTED[task]
    assert w.observe(seen(info, now=0)).status is None  # grace for a late result file
    v = w.observe(seen(info, now=GRACE_S + 1))
    assert v.status == "failed" and words in v.error and v.scheduler == info


def test_a_task_that_failed_in_python_keeps_its_own_status() -> None:
    v = watch().observe(seen(ACCOUNTED["12_6"], own="failed"))
    assert (v.status, v.own, v.scheduler) == ("failed", True, None)


def test_preemption_is_interrupted() -> None:
    v = watch().observe(seen(ACCOUNTED["12_5"], own="cancelled"))  # SIGTERM seen by the task
    assert v.status == "interrupted" and v.scheduler["state"] == "PREEMPTED"


def test_a_pending_reason_that_never_clears() -> None:
    assert never_clearing(parse_scontrol(SCONTROL_RUNNING)) is None  # Resources: it will run
    unsatisfiable = parse_scontrol(scontrol_line(0, "PENDING", "BadConstraints", node="(null)"))
    assert never_clearing(unsatisfiable) == "BadConstraints"
    assert never_clearing(None) is None  # no answer: nothing to say yet


def test_a_stuck_task_is_given_up_once_the_clock_passes_the_limit() -> None:
    w = watch()
    held = ACCOUNTED["12_8"]  # pending, held by an administrator
    v = w.observe(seen(held, now=100))
    assert v.status is None and "gives up on it in 10 min" in v.show
    assert "BNEXP_SLURM_STUCK_MIN=10" in v.show
    v = w.observe(seen(held, now=100 + STUCK_S / 2))
    assert v.status is None and "in 5 min" in v.show
    v = w.observe(seen(held, now=100 + STUCK_S))
    assert v.status == "interrupted" and v.cancel and "stopped waiting after 10 min" in v.error
    # Released in time: the countdown starts again.
    w = watch()
    w.observe(seen(held, now=0))
    w.observe(seen(parse_scontrol(scontrol_line(7, "RUNNING"))["12_7"], now=STUCK_S - 1))
    assert w.observe(seen(held, now=STUCK_S + 1)).status is None


def test_no_answer_or_a_forgotten_task_counts_as_stuck() -> None:
    w = watch()
    assert "does not answer" in w.observe(seen(None, answered=False, now=0)).show
    v = w.observe(seen(None, answered=False, now=STUCK_S))
    assert v.status == "interrupted" and v.cancel
    w = watch()
    assert "no longer knows" in w.observe(seen(None, now=0)).show
    assert w.observe(seen(None, own="timeout", now=1)).status == "timeout"  # its own result


# ---------------------------------------------------------------------------------------------
# The loop, with a fake scheduler and clock
# ---------------------------------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def monotonic(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += 60.0  # each poll a minute later: the stuck limit is reached in a few polls


def test_the_waiter_records_each_task_once_keyed_by_task_id(tmp_path, monkeypatch) -> None:
    pytest.importorskip("submitit")
    from hydra.core.utils import JobReturn, JobStatus
    from submitit.core.utils import cloudpickle_dump

    from bnexp.rundir import write_summary

    monkeypatch.setenv(slurm_wait.STUCK_ENV, "3")
    sweep_dir = tmp_path / "sweep"
    jobs = [SimpleNamespace(job_id=f"12_{i}", paths=SimpleNamespace(
        result_pickle=tmp_path / f"12_{i}_result.pkl")) for i in range(3)]
    launcher = SimpleNamespace(params=PARAMS,
                               job_dir=lambda overrides, num: sweep_dir / f"{num}_seed={num}")
    # Task 0 finishes training: its summary and its result. Task 1 is scancel'ed while
    # running. Task 2 stays held. The tasks run jobs 5, 6 and 7 of the sweep.
    write_summary(sweep_dir / "5_seed=5", {"status": "completed", "final": {"test/acc": 0.9}})
    cloudpickle_dump(("success", JobReturn(overrides=["seed=5"], status=JobStatus.COMPLETED,
                                           _return_value="completed")),
                     jobs[0].paths.result_pickle)
    answers = iter([SCONTROL_RUNNING.replace("ArrayTaskId=1-2", "ArrayTaskId=2")
                    .replace("Reason=Resources", "Reason=JobHeldAdmin")
                    + scontrol_line(1, "RUNNING")]
                   + [scontrol_line(1, "CANCELLED", exit_code="0:15")
                      + scontrol_line(2, "PENDING", "JobHeldAdmin", node="(null)")] * 10)
    commands: list[list[str]] = []
    monkeypatch.setattr(slurm_wait, "scheduler_states", lambda array: parse_scontrol(next(answers)))
    monkeypatch.setattr(slurm_wait, "run", lambda cmd, timeout=20: commands.append(cmd) or "")
    monkeypatch.setattr(slurm_wait, "time", Clock())

    waiter = slurm_wait.Waiter(launcher, sweep_dir, jobs, [(5, ["seed=5"]), (6, ["seed=6"]),
                                                           (7, ["seed=7"])])
    results = waiter.wait("12")
    assert [r.return_value for r in results] == ["completed", "cancelled", "interrupted"]
    assert commands == [["scancel", "12_2"]]  # the stuck one, given up and cancelled

    def summary(num: int) -> dict:
        return json.loads((sweep_dir / f"{num}_seed={num}" / "summary.json").read_text())

    assert summary(5)["final"] == {"test/acc": 0.9} and "scheduler" not in summary(5)
    assert summary(6)["status"] == "cancelled"
    assert summary(6)["scheduler"] == {"job_id": "12_1", "state": "CANCELLED", "reason": "None",
                                       "exit_code": "0:15", "node": "localnode"}
    assert summary(7)["status"] == "interrupted" and "stopped waiting" in summary(7)["error"]
    manifest = json.loads((sweep_dir / "sweep.json").read_text())
    assert {k: j["status"] for k, j in manifest["jobs"].items()} == {
        "5": "completed", "6": "cancelled", "7": "interrupted"}
    assert manifest["jobs"]["6"]["dir"] == "6_seed=6"


def test_the_waiter_cancels_an_unsatisfiable_array(tmp_path, monkeypatch) -> None:
    commands: list[list[str]] = []
    monkeypatch.setattr(slurm_wait, "scheduler_states", lambda array: parse_scontrol(
        scontrol_line(0, "PENDING", "PartitionTimeLimit", node="(null)")))
    monkeypatch.setattr(slurm_wait, "run", lambda cmd, timeout=20: commands.append(cmd) or "")
    jobs = [SimpleNamespace(job_id="12_0", paths=SimpleNamespace(result_pickle=tmp_path / "r"))]
    launcher = SimpleNamespace(params=PARAMS, job_dir=lambda o, n: tmp_path / "0_x")
    with pytest.raises(BnexpError, match="PartitionTimeLimit.*partition / hydra.launcher.timeout_min"):
        slurm_wait.Waiter(launcher, tmp_path, jobs, [(0, ["seed=0"])]).wait("12")
    assert commands == [["scancel", "12"]]
    assert not Path(tmp_path / "0_x" / "summary.json").exists()


def test_a_job_another_call_runs_is_left_to_it(tmp_path, monkeypatch) -> None:
    """Task 0 was cancelled before it started, while another bnexp call on the same sweep
    trains that job (it holds the job's lock): its summary.json is that call's to write."""
    from bnexp.runlock import lock_path
    from tests.test_runlock import hold_in_child

    pytest.importorskip("submitit")
    sweep_dir = tmp_path / "sweep"
    child = hold_in_child(lock_path(sweep_dir, "0_seed=0"))
    try:
        monkeypatch.setattr(slurm_wait, "scheduler_states",
                            lambda array: parse_scontrol(scontrol_line(0, "CANCELLED")))
        monkeypatch.setattr(slurm_wait, "time", Clock())
        jobs = [SimpleNamespace(job_id="12_0",
                                paths=SimpleNamespace(result_pickle=tmp_path / "r"))]
        launcher = SimpleNamespace(params=PARAMS, job_dir=lambda o, n: sweep_dir / "0_seed=0")
        (result,) = slurm_wait.Waiter(launcher, sweep_dir, jobs, [(0, ["seed=0"])]).wait("12")
    finally:
        child.kill()
        child.wait()
    assert result.return_value == "held"
    assert not (sweep_dir / "0_seed=0" / "summary.json").exists()
    assert not (sweep_dir / "sweep.json").exists()
