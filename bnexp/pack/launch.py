"""Hydra's basic sweeper and launcher, minus the compositions that a packed job never uses.

Hydra composes every job's config twice in the sweep's process: the sweeper checks that each
job composes (``validate_batch_is_legal``), then the launcher composes it again to run it,
~0.1 s each on 2 CPU cores. A job that a pack's leader trains (bnexp.pack.job) uses neither:
the leader builds its config from its own at the job's seed, and bnexp's plan has already
checked every swept value (``bnexp.sweep.plan_sweep``). That is ~0.2 s per packed job, ~400 of
them at the standard claims budget. So, for this call's packs (sweep.json ``packing``):

- the sweeper checks one job per pack (its first) instead of every job;
- the launcher gives a job that its pack's leader already trained in this call its result
  (``packed``) at once, as the job itself would return, without composing it.

Every other job goes through Hydra's own code unchanged. configs/config.yaml selects these
(``hydra/launcher: bnexp_basic``, ``hydra/sweeper: bnexp_basic``; the classes Hydra
instantiates are in hydra_plugins/bnexp_basic).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.utils import (
    JobReturn,
    JobStatus,
    configure_log,
    filter_overrides,
    run_job,
    setup_globals,
)
from omegaconf import open_dict

from bnexp.manifest import read_manifest
from bnexp.pack.plan import PACKED

log = logging.getLogger("hydra._internal.core_plugins.basic_launcher")  # Hydra's own lines


def _followers(sweep_dir: Path) -> list[set[str]]:
    """The planned overrides of every job of this call's packs but the first."""
    manifest = read_manifest(sweep_dir)
    jobs = manifest.get("jobs", {})
    return [set(jobs[str(n)]["overrides"]) for pack in (manifest.get("packing") or {})
            .get("packs", []) for n in pack[1:] if str(n) in jobs]


class PackSweeper(BasicSweeper):
    """Hydra's BasicSweeper that checks one job per pack."""

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        assert self.config is not None
        followers = _followers(Path(str(self.config.hydra.sweep.dir)))
        super().validate_batch_is_legal(
            [o for o in batch if not any(f <= set(o) for f in followers)])


class PackLauncher(BasicLauncher):
    """Hydra's BasicLauncher (its ``launch``, line for line) that answers for the jobs a
    pack's leader trained instead of composing and running them."""

    def launch(self, job_overrides: Sequence[Sequence[str]],
               initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        assert self.hydra_context is not None
        assert self.config is not None
        assert self.task_function is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info(f"Launching {len(job_overrides)} jobs locally")
        runs: list[JobReturn] = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            lst = " ".join(filter_overrides(overrides))
            if _trained_by_pack(sweep_dir, idx):
                log.info(f"\t#{idx} : {lst} (trained in its pack)")
                runs.append(JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED,
                                      _return_value=PACKED))
                continue
            log.info(f"\t#{idx} : {lst}")
            sweep_config = self.hydra_context.config_loader.load_sweep_config(
                self.config, list(overrides))
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = idx
                sweep_config.hydra.job.num = idx
            runs.append(run_job(hydra_context=self.hydra_context,
                                task_function=self.task_function, config=sweep_config,
                                job_dir_key="hydra.sweep.dir",
                                job_subdir_key="hydra.sweep.subdir"))
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return runs


def _trained_by_pack(sweep_dir: Path, num: int) -> bool:
    """Whether job ``num`` was trained (or kept) by its pack's leader in this call, as
    ``bnexp.pack.job.run_packed`` marks it."""
    manifest: dict[str, Any] = read_manifest(sweep_dir)
    plan = manifest.get("packing") or {}
    job = manifest.get("jobs", {}).get(str(num), {})
    return bool(plan.get("call")) and job.get("pack_call") == plan["call"]
