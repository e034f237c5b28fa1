"""Which tasks a packed SLURM sweep submits: one per pack, one per other job.

A pack (bnexp.pack.plan) is trained by one process, its leader (bnexp.pack.job), so through
SLURM it is one array task: the pack's first job still to run, which trains the whole pack in
its task (the sweep directory is on a shared filesystem) while its other jobs, the followers,
get no task. The launcher decides this before submission, in the sweep's parent process:

- only the jobs that are to run now make a pack (resume: the finished ones are not trained
  again, and a pack left with one job is that job's own task);
- a group that does not gain from packing (``not_packable``: a CNN on the CPU at batch > 16)
  is submitted one task per job, as without packing; the device is the task's, not this
  machine's: CUDA when the launcher requests GPUs and trainer.device is auto or cuda;
- the plan in sweep.json is rewritten to the packs submitted, with ``one_task``: a leader
  that still finds its group unpackable in its task trains its followers one after another
  (they have no task of their own).

After the wait, bnexp.slurm_wait records each follower with its leader's task.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bnexp.manifest import merge_job, read_manifest, update_manifest
from bnexp.pack.job import not_packable

Job = tuple[int, list[str]]  # a job's number and overrides, as the launcher submits it


def task_device(params: dict[str, Any], cfg: Any) -> str:
    """The device type a task of this launcher will train on."""
    gpus = (params.get("gpus_per_node") or params.get("gpus_per_task")
            or "gpu" in str(params.get("gres") or ""))
    return "cuda" if gpus and str(cfg.trainer.device) in ("auto", "cuda") else "cpu"


def pack_tasks(launcher: Any, todo: list[Job], sweep_dir: Path, launched: set[int]
               ) -> tuple[list[Job], dict[int, list[Job]]]:
    """The tasks to submit for ``todo`` (the jobs of this launch, numbers ``launched``, that
    are to run), and each pack leader's followers; the plan in sweep.json rewritten to match
    and the unpackable groups' jobs marked with why."""
    manifest = read_manifest(sweep_dir)
    plan, jobs = manifest.get("packing") or {}, manifest.get("jobs", {})
    if not plan.get("packs"):
        return todo, {}
    waiting = dict(todo)
    followers: dict[int, list[Job]] = {}
    submitted = []
    for pack in plan["packs"]:
        # Only jobs that are what the plan says (bnexp.pack.job checks the same in the task).
        members = [n for n in pack if n in waiting
                   and set(jobs.get(str(n), {}).get("overrides", [])) <= set(waiting[n])]
        if len(members) < 2:
            continue
        cfg = launcher.sweep_config(waiting[members[0]])
        why = not_packable(cfg, task_device(launcher.params, cfg))
        if why is not None:
            for n in members:
                merge_job(sweep_dir, n, unpacked=why, unpacked_call=plan["call"])
            continue
        submitted.append(members)
        followers[members[0]] = [(n, waiting[n]) for n in members[1:]]
    others = [p for p in plan["packs"] if not set(p) & launched]  # another launch's (batches)
    update_manifest(sweep_dir, packing={**plan, "packs": others + submitted, "one_task": True})
    behind = {n for jobs_ in followers.values() for n, _ in jobs_}
    return [job for job in todo if job[0] not in behind], followers


def describe_tasks(tasks: Sequence[Job], followers: dict[int, list[Job]]) -> str:
    """``6 tasks`` or ``3 tasks: 2 packs of 3 runs, 1 single run`` for the submission line."""
    n = len(tasks)
    head = f"{n} task{'s' if n != 1 else ''}"
    if not followers:
        return head
    sizes = Counter(len(f) + 1 for f in followers.values())
    parts = [f"{k} pack{'s' if k != 1 else ''} of {size} runs"
             for size, k in sorted(sizes.items(), reverse=True)]
    singles = n - len(followers)
    if singles:
        parts.append(f"{singles} single run{'s' if singles != 1 else ''}")
    return f"{head}: {', '.join(parts)}"
