"""Which jobs of a sweep train together as one packed model, decided in the sweep's parent
process (torch-free), and the one line the sweep prints about it.

Jobs whose overrides differ only in ``seed`` form a group; a group of more than one job is cut
into packs of at most ``sweep.pack_max`` replicas (default 16 locally, 8 per SLURM task), as
equal in size as possible (20 seeds at 16 are two packs of 10), and finer where there would be
fewer packs than the launcher runs jobs at once (joblib's workers: one group of 8 seeds on 2
workers is two packs of 4, not one pack and an idle worker). The plan goes into sweep.json
(``packing``: a token for this call and the packs); each job reads it there (bnexp.pack.job).
Packing is on by default for the launchers that run jobs in this machine's processes
(Hydra's basic launcher, bnexp's basic launcher, joblib) and for bnexp's SLURM launcher, which
submits one task per pack (bnexp.slurm_pack); ``sweep.pack=false`` turns it off. Whether a
group gains from packing (a CNN on the CPU may not) is decided by the job that leads it, where
torch and the config are at hand.
"""

from __future__ import annotations

import math
import uuid
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from bnexp.manifest import read_manifest
from bnexp.threads import joblib_workers

# The launchers that run jobs in local processes: one of them trains a whole pack.
BASIC = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"
JOBLIB = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
LOCAL_LAUNCHERS = (BASIC, JOBLIB, "hydra_plugins.bnexp_basic.BnexpBasicLauncher")
# bnexp's SLURM launcher: one task per pack, its leader trains the pack (bnexp.slurm_pack).
# Hydra's own submitit launchers start every job as its own task: not packed.
SLURM_LAUNCHERS = ("hydra_plugins.bnexp_slurm_launcher.BnexpSlurmLauncher",)
PACKED = "packed"  # what a job returns whose run another job of its pack trained
# sweep.pack_max=null: the most seeds in one pack. Locally larger packs run faster per seed
# (an lr_range group's 10 seeds as one pack: 11.3-12.1 s against 13.7-13.9 s as two packs of 5);
# a SLURM task has one run's CPUs, memory and time limit, and its array runs tasks side by side,
# so there a group is cut as before, into packs of at most 8.
LOCAL_PACK_MAX, SLURM_PACK_MAX = 16, 8


def _chunks(nums: list[int], most: int) -> list[list[int]]:
    n = math.ceil(len(nums) / most)
    size, extra = divmod(len(nums), n)
    out, i = [], 0
    for j in range(n):
        step = size + (j < extra)
        out.append(nums[i:i + step])
        i += step
    return out


def _workers(base: Any, launcher: str) -> int:
    """How many jobs the launcher runs at once: joblib's ``n_jobs`` (-1: one per core), else 1."""
    if launcher != JOBLIB:
        return 1
    return joblib_workers(int(OmegaConf.select(base, "hydra.launcher.n_jobs", default=1) or 1))


def plan_packing(base: Any, jobs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The packing of a sweep whose composed first job is ``base`` (with Hydra's node) and
    whose planned jobs are ``jobs`` (bnexp.sweep.planned_jobs): ``packs`` (job numbers) and
    ``off`` (why nothing is packed, or None)."""
    off = None
    launcher = OmegaConf.select(base, "hydra.launcher._target_") or ""
    if not OmegaConf.select(base, "sweep.pack", default=True):
        off = "sweep.pack=false"
    elif launcher not in LOCAL_LAUNCHERS + SLURM_LAUNCHERS:
        off = f"the launcher {launcher.rsplit('.', 1)[-1]} runs each job as its own task"
    groups: dict[tuple[str, ...], list[int]] = {}
    for job in jobs.values():
        rest = tuple(o for o in job["overrides"] if o.split("=", 1)[0] != "seed")
        if len(rest) < len(job["overrides"]):  # jobs without a swept seed are never packed
            groups.setdefault(rest, []).append(job["num"])
    most = OmegaConf.select(base, "sweep.pack_max", default=None)
    if most is None:
        most = SLURM_PACK_MAX if launcher in SLURM_LAUNCHERS else LOCAL_PACK_MAX
    most = max(1, int(most))
    sized = {key: nums for key, nums in groups.items() if len(nums) > 1}
    # Fewer packs than the launcher's workers would leave workers idle (joblib, 2 workers, one
    # group of 8 seeds): then each group is cut into as many packs as the workers need.
    workers = _workers(base, launcher)
    if sized and sum(math.ceil(len(nums) / most) for nums in sized.values()) < workers:
        pieces = math.ceil(workers / len(sized))
        most = min(most, max(2, *(math.ceil(len(nums) / pieces) for nums in sized.values())))
    packs = [c for nums in sized.values() for c in _chunks(sorted(nums), most) if len(c) > 1]
    return {"call": uuid.uuid4().hex, "packs": [] if off else packs, "off": off,
            "could": sum(map(len, packs))}


def packing_note(sweep_dir: Path) -> str | None:
    """One line on what this call packed, and what not and why."""
    manifest = read_manifest(sweep_dir)
    plan = manifest.get("packing") or {}
    if not plan.get("could") or plan.get("off") == "sweep.pack=false":
        return None
    if plan.get("off"):
        return f"sweep: {plan['could']} runs not packed: {plan['off']}"
    jobs = [j for j in manifest.get("jobs", {}).values() if j.get("packed_in") == plan["call"]]
    leads = {j.get("packed_by") for j in jobs}
    unpacked: dict[str, int] = {}
    for j in manifest.get("jobs", {}).values():
        if j.get("unpacked_call") == plan["call"]:
            unpacked[j["unpacked"]] = unpacked.get(j["unpacked"], 0) + 1
    parts = []
    if jobs:
        models = f"{len(leads)} packed model{'s' if len(leads) > 1 else ''}"
        parts.append(f"trained {len(jobs)} runs as {models} (seeds side by side in one "
                     "process; sweep.pack=false turns it off)")
    parts += [f"{n} runs not packed ({why})" for why, n in unpacked.items()]
    return "sweep: " + "; ".join(parts) if parts else None


def record_packing(sweep_dir: Path, overrides: list[str], jobs: dict[str, dict[str, Any]],
                   grid: dict[str, list[str]]) -> None:
    """Plan this call's packing (the sweep's first job composed once) into sweep.json."""
    from bnexp.hydra_app import compose_with_hydra, parse_overrides
    from bnexp.manifest import update_manifest

    if "seed" not in grid or not jobs:
        update_manifest(sweep_dir, packing={})
        return
    fixed = [o.input_line for o in parse_overrides(overrides) if not o.is_sweep_override()]
    base = compose_with_hydra(fixed + [f"{k}={v[0]}" for k, v in grid.items() if v])
    update_manifest(sweep_dir, packing=plan_packing(base, jobs))
