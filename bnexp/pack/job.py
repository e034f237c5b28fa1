"""A sweep job that trains its whole pack (bnexp/sweep.py's ``run_job`` asks ``run_packed``
first).

The first job of a pack that a launcher runs leads it: it claims the other jobs of its pack
(each job's lock, as a job claims its own: bnexp.runlock), keeps their finished runs (resume),
and trains the rest as one packed model (bnexp.pack.loop), each replica into the directory its
own job would have trained in (``<num>_<overrides>``, the name Hydra gives it), with the
config Hydra composes for it (the leader's, at the replica's seed). The jobs it trained are
marked in sweep.json with this call's token; when the launcher runs them, they return at once.
A group that does not gain from packing (``not_packable``) is left to its jobs, one by one;
under bnexp's SLURM launcher (``one_task`` in the plan: each pack is one task, bnexp.slurm_pack)
its other jobs have no task of their own, so the leader trains them one after another.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import open_dict

from bnexp.config import validate
from bnexp.errors import BnexpError
from bnexp.hydra_app import parse_overrides
from bnexp.manifest import merge_job, read_manifest, update_manifest
from bnexp.metrics import FAILED, FINISHED, INTERRUPTED, RUNNING
from bnexp.pack.plan import PACKED
from bnexp.reuse import code_stamp
from bnexp.rundir import job_dirname, set_aside_previous_attempt, summary_so_far, write_summary
from bnexp.runlock import lock_path, try_claim
from bnexp.signals import SchedulerSignal, scheduler_signals

# On the CPU a CNN's convolutions are compute-bound at ordinary batches: 8 replicas of the
# default CNN as grouped convolutions trained 1.05x the samples/s of the runs one after another
# at batch 64 (wall 1.04x), but 1.76x at batch 16 and 2.86x at batch 4 (wall 0.87x, 0.73x), where
# one run leaves the cores idle (scripts/bench_pack.py, 2 cores, 300 steps). So CNNs are packed
# on the CPU up to this batch size; on CUDA always.
CNN_CPU_MAX_BATCH = 16


@dataclass
class Member:
    num: int
    cfg: Any
    overrides: list[str]
    job_dir: Path
    entry: dict[str, Any] = field(default_factory=dict)  # its sweep.json entry (as run_job's)

    def __post_init__(self) -> None:
        self.entry.update(num=self.num, overrides=self.overrides, dir=self.job_dir.name)


def not_packable(cfg: Any, device: str | None = None) -> str | None:
    """Why this group of runs is trained one by one, or None when packing gains. ``device``:
    the device type the runs will have ("cpu", "cuda"); default: trainer.device resolved here
    (the SLURM launcher names the task's, which it decides before submission)."""
    if cfg.trainer.compile:
        return "trainer.compile: the packed model is not compiled"
    if cfg.model.arch == "cnn":
        if device is None:
            from bnexp.build import resolve_device

            device = resolve_device(cfg.trainer.device).type
        if device == "cpu" and cfg.trainer.batch_size > CNN_CPU_MAX_BATCH:
            return (f"a CNN on the CPU at batch > {CNN_CPU_MAX_BATCH}: grouped convolutions "
                    "train no faster there than one run after another")
    return None


def _member(hc: Any, cfg: Any, num: int, seed: str) -> Member:
    """Job ``num`` of the leader's pack: the leader's config and task overrides at ``seed``,
    and the directory Hydra names for it (its override_dirname, as Hydra computes it)."""
    task = [o if o.split("=", 1)[0] != "seed" else f"seed={seed}" for o in hc.overrides.task]
    od = hc.job.config.override_dirname
    exclude = set(od.exclude_keys)
    lines = sorted(o.input_line for o in parse_overrides(task) if o.key_or_group not in exclude)
    name = od.item_sep.join(lines).replace("=", od.kv_sep)
    member_cfg = cfg.copy()
    with open_dict(member_cfg):
        member_cfg.seed = int(seed)
    return Member(num, member_cfg, task, Path(hc.sweep.dir) / f"{num}_{job_dirname(name)}")


def run_packed(cfg: Any, hc: Any, keep_finished: Callable[..., str | None],
               share_cores: Callable[[Any, Any], None]) -> str | None:
    """Run job ``hc.job.num`` as part of its pack: PACKED if its pack's leader took it in this
    call, the leader's own status if it leads, None when the job is to run on its own."""
    sweep_dir, num = Path(hc.sweep.dir), int(hc.job.num)
    manifest = read_manifest(sweep_dir)
    plan, jobs = manifest.get("packing") or {}, manifest.get("jobs", {})
    pack = next((p for p in plan.get("packs", []) if num in p), None)
    if pack is None:
        return None
    if jobs.get(str(num), {}).get("pack_call") == plan["call"]:
        return PACKED
    why = not_packable(cfg)
    if why is not None and not plan.get("one_task"):
        update_manifest(sweep_dir, jobs={str(num): {**jobs.get(str(num), {}), "unpacked": why,
                                                    "unpacked_call": plan["call"]}})
        return None
    seeds = {n: next(o.split("=", 1)[1] for o in jobs[str(n)]["overrides"]
                     if o.startswith("seed=")) for n in pack}
    members = [_member(hc, cfg, n, seeds[n]) for n in pack
               if n == num or jobs.get(str(n), {}).get("pack_call") != plan["call"]]
    # Only jobs that are what the plan says (their recorded overrides, planned or as Hydra
    # ran them, within the leader's at their seed): where a swept key is also given fixed,
    # Hydra runs fewer, renumbered jobs than the plan, and a pack from the plan would be wrong.
    members = [m for m in members
               if set(jobs.get(str(m.num), {}).get("overrides", [])) <= set(m.overrides)]
    if not any(m.num == num for m in members):
        return None
    with ExitStack() as stack:
        mine = []
        for m in members:
            lock = try_claim(lock_path(sweep_dir, m.job_dir.name))
            if lock is not None:
                stack.callback(lock.release)
                mine.append(m)
        if not any(m.num == num for m in mine):
            return None  # another process holds this job: the ordinary path says so
        kept = {m.num: keep_finished(m.cfg, m.entry, m.job_dir, sweep_dir) for m in mine}
        for n, status in kept.items():
            if status is not None:  # decided in this call: its job returns at once
                merge_job(sweep_dir, n, pack_call=plan["call"])
        todo = [m for m in mine if kept[m.num] is None]
        marks: dict[str, Any] = {"pack_call": plan["call"]}
        marks.update({"packed_in": plan["call"], "packed_by": num} if why is None else
                     {"unpacked": why, "unpacked_call": plan["call"]})
        statuses = _train_all(todo, num, sweep_dir, marks, why, hc, share_cores) if todo else {}
        return statuses.get(num) or kept.get(num) or PACKED


def _train_all(todo: list[Member], num: int, sweep_dir: Path, marks: dict[str, Any],
               why: str | None, hc: Any, share_cores: Callable[[Any, Any], None]
               ) -> dict[int, str]:
    """Train ``todo`` as one pack, or (``why`` it is not packable, in a SLURM task that was
    given them all) one after another; the scheduler's signals (time limit, scancel) end
    every run not finished with the status they mean, as they end a single job."""
    statuses: dict[int, str] = {}
    try:
        with scheduler_signals():
            if why is None:
                return _train(todo, num, sweep_dir, marks, hc, share_cores)
            print(f"[job {num}] training jobs {', '.join(str(m.num) for m in todo)} one after "
                  f"another, not packed ({why})", flush=True)
            for m in todo:
                statuses.update(_train([m], num, sweep_dir, marks, hc, share_cores))
            return statuses
    except SchedulerSignal as sig:  # the launcher adds the scheduler's final state
        for m in todo:
            summary = summary_so_far(m.job_dir)
            if summary.get("status") not in FINISHED:
                summary.update(status=sig.status, run_dir=str(m.job_dir), error=str(sig))
                write_summary(m.job_dir, summary)
            statuses[m.num] = summary["status"]
        update_manifest(sweep_dir, jobs={str(m.num): {**m.entry, **marks,
                                                      "status": statuses[m.num]} for m in todo})
        print(f"[job {num}] {sig.status}: {sig}", flush=True)
        return statuses


def _train(todo: list[Member], num: int, sweep_dir: Path, marks: dict[str, Any], hc: Any,
           share_cores: Callable[[Any, Any], None]) -> dict[int, str]:
    """Train ``todo`` (claimed, none finished) as one pack led by job ``num``, each recorded in
    its summary.json and sweep.json (with ``marks``) whatever happens; their statuses by job
    number."""
    from bnexp.startup import import_trainer

    for m in todo:
        set_aside_previous_attempt(m.job_dir)
        share_cores(m.cfg, hc.launcher)
    update_manifest(sweep_dir, jobs={str(m.num): {**m.entry, **marks, "status": RUNNING}
                                     for m in todo})
    try:
        for m in todo:
            validate(m.cfg)
        if len(todo) == 1:
            import_trainer().train(todo[0].cfg, todo[0].overrides, run_dir=todo[0].job_dir)
        else:
            from bnexp.pack.loop import train_pack

            print(f"[job {num}] training jobs {', '.join(str(m.num) for m in todo)} as one "
                  f"packed model ({len(todo)} seeds)", flush=True)
            train_pack([m.cfg for m in todo], [m.overrides for m in todo],
                       [m.job_dir for m in todo], todo[0].job_dir.name)
    except KeyboardInterrupt:  # Ctrl-C: every replica is interrupted, the sweep stops
        update_manifest(sweep_dir, jobs={str(m.num): {**m.entry, **marks, "status": INTERRUPTED}
                                         for m in todo})
        raise
    except Exception as exc:  # the sweep goes on; each run's summary says what happened
        for m in todo:
            if not summary_so_far(m.job_dir):
                write_summary(m.job_dir, {"status": FAILED, "run_dir": str(m.job_dir),
                                          "error": f"{type(exc).__name__}: {exc}",
                                          "user_error": isinstance(exc, BnexpError),
                                          **code_stamp()})
        message = str(exc) if isinstance(exc, BnexpError) else traceback.format_exc()
        print(f"[job {num}] pack failed: {message}", flush=True)
    statuses = {m.num: summary_so_far(m.job_dir).get("status", FAILED) for m in todo}
    update_manifest(sweep_dir, jobs={str(m.num): {**m.entry, **marks, "status": statuses[m.num]}
                                     for m in todo})
    return statuses
