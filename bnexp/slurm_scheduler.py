"""Asking SLURM: its commands (``scontrol``, ``sacct``, ``sinfo``) and their output parsed into
plain dicts, plus what its job states and pending reasons mean for bnexp. No waiting and no
decisions here (``bnexp.slurm_wait``), no submission (``bnexp.slurm``): the parsers are pure
functions of the commands' text, so tests drive them with recorded output.
"""

from __future__ import annotations

import re
import subprocess
from typing import Any

from bnexp.metrics import CANCELLED, FAILED, INTERRUPTED, TIMEOUT

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


def run(cmd: list[str], timeout: float = 20) -> str | None:
    """A scheduler command's stdout, or None when it fails or does not answer."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


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
    text = run(["scontrol", "show", "job", "-o", array_id])
    if text is not None:
        states = parse_scontrol(text)
    if not states:
        text = run(["sacct", "-n", "-P", "-j", array_id,
                     "-o", "JobID,State,Reason,ExitCode,NodeList"])
        if text is not None:
            states = {**(states or {}), **parse_sacct(text)}
    if states is None and run(["scontrol", "ping"]) is not None:
        states = {}  # the controller answers and no longer knows the job
    return states


def partition_nodes(partition: str | None) -> tuple[str, int, int] | None:
    """(partition, most CPUs of a node, most memory of a node in MB) from sinfo; None when
    sinfo does not answer."""
    text = run(["sinfo", "-h", "-o", "%P|%c|%m"])
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


def refused_message(message: str, params: dict[str, Any]) -> str:
    """sbatch's refusal as one paragraph naming the override to change."""
    lines = [ln.strip() for ln in message.splitlines() if "error" in ln.lower()]
    said = "; ".join(ln.split("error:", 1)[-1].strip() for ln in lines) or message.strip()
    low = said.lower()
    hints = [(("processor", "cpu"), "hydra.launcher.cpus_per_task"),
             (("memory",), "hydra.launcher.mem_gb"),
             (("partition",), "hydra.launcher.partition"),
             (("time limit", "timelimit", "wallduration"), "hydra.launcher.timeout_min"),
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
