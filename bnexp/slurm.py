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
- cancels the array on Ctrl-C, so that a resumed sweep does not run next to the old one;
- submits no task for a job that already has a finished result (resume) or that another bnexp
  call on the same sweep runs now (its lock, ``bnexp.runlock``); the sweep waits for those at
  its end. A task that still meets a held job returns ``held`` without training;
- submits one task per pack of seeds (``sweep.pack``, bnexp.slurm_pack): its leader trains the
  pack, and the pack's other jobs are recorded with the leader's task as it ends.

Jobs never raise into Hydra: the sweep always ends with its status table. Inside each task,
``bnexp.sweep.run_job`` turns the scheduler's signals (time limit, scancel) into a recorded
status instead of an exception that could be swallowed (``bnexp.signals``).

Modules: this one submits (the launcher, the request checks); ``bnexp.slurm_scheduler`` asks
the scheduler and parses its answers; ``bnexp.slurm_wait`` decides each task's status from them
(a state machine tested on recorded output) and records it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra_plugins.hydra_submitit_launcher.submitit_launcher import (
    SlurmLauncher as HydraSlurmLauncher,
)

from bnexp.errors import BnexpError
from bnexp.manifest import merge_job
from bnexp.rundir import finished_summary
from bnexp.runlock import HELD, describe, holder, lock_path
from bnexp.slurm_pack import describe_tasks, pack_tasks
from bnexp.slurm_scheduler import partition_nodes, refused_message
from bnexp.slurm_wait import STUCK_ENV, Waiter

__all__ = ["STUCK_ENV", "LaunchRefused", "SlurmLauncher", "check_configured"]
DEFAULT_MEM_GB = 4
# Where SLURM's commands look for slurm.conf when SLURM_CONF is unset: the packages' and a
# source build's default, and the copy a configless cluster's daemons cache.
CONF_PATHS = ("/etc/slurm/slurm.conf", "/etc/slurm-llnl/slurm.conf", "/usr/local/etc/slurm.conf",
              "/run/slurm/conf/slurm.conf", "/var/spool/slurmd/conf-cache/slurm.conf")
NO_CONFIG = ("configuration source", "fetch_config", "dns srv")  # what sinfo/sbatch then say
LOCAL = ('for the single-node cluster of scripts/slurm_local.sh: `bash scripts/slurm_local.sh '
         'start`, then `eval "$(bash scripts/slurm_local.sh env)"`')


# ---------------------------------------------------------------------------------------------
# Is there a SLURM to submit to?
# ---------------------------------------------------------------------------------------------

def check_configured() -> None:
    """Refuse a SLURM sweep, before anything is written, on a machine where SLURM cannot work:
    no ``sbatch``, a ``SLURM_CONF`` that names no file, or no configuration at all (no
    slurm.conf where SLURM looks, and no configless controller answering ``sinfo``). Without
    this, sbatch's DNS errors came back as advice to change the hydra.launcher settings."""
    if shutil.which("sbatch") is None:
        raise BnexpError(
            "hydra/launcher=submitit_slurm needs SLURM's commands (sbatch, squeue, scontrol), "
            "and sbatch is not on PATH: this machine is no SLURM client. Run the sweep on the "
            f"cluster's login node, drop the hydra/launcher override, or try the path {LOCAL}.")
    conf = os.environ.get("SLURM_CONF")
    if conf:
        if not Path(conf).is_file():
            raise BnexpError(
                f"SLURM_CONF={conf} names no file, so SLURM has no configuration. Point it at "
                f"the cluster's slurm.conf (`export SLURM_CONF=/path/to/slurm.conf`); {LOCAL}.")
        return
    if any(Path(p).is_file() for p in CONF_PATHS):
        return
    said = _sinfo_error()
    if said is not None and any(words in said.lower() for words in NO_CONFIG):
        raise BnexpError(no_configuration(said))


def no_configuration(said: str) -> str:
    """The paragraph for a machine whose SLURM commands found no configuration."""
    said = " ".join(said.split())
    return (f"No SLURM configuration found: SLURM_CONF is not set, there is no slurm.conf in "
            f"{', '.join(str(Path(p).parent) for p in CONF_PATHS)}, and no configless controller "
            f"answered ({said}). Point SLURM at the cluster's configuration with "
            f"`export SLURM_CONF=/path/to/slurm.conf`; {LOCAL}. Nothing was submitted.")


def _sinfo_error() -> str | None:
    """sinfo's error output when it fails; None when it answers (or cannot be asked)."""
    try:
        proc = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True,
                              timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return None if proc.returncode == 0 else (proc.stderr.strip() or proc.stdout.strip())


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

    # bnexp.sweep asks a launcher this before it writes anything (``_check_launcher``).
    check_environment = staticmethod(check_configured)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Any:
        try:
            return self._launch(job_overrides, initial_job_idx)
        except BnexpError as exc:
            raise LaunchRefused(exc) from None

    def _launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Any:
        assert self.config is not None
        self.params = _sized(self.params, self.config)  # what the tasks see
        _check_request(self.params)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        results, todo = self._skip_settled(job_overrides, initial_job_idx, sweep_dir)
        if todo:
            launched = set(range(initial_job_idx, initial_job_idx + len(job_overrides)))
            tasks, followers = pack_tasks(self, todo, sweep_dir, launched)  # one per pack
            jobs = self._submit(tasks, followers)
            waiter = Waiter(self, sweep_dir, jobs, tasks, followers)
            waiter.wait(jobs[0].job_id.split("_")[0])
            results.update(waiter.returns())
        return [results[num] for num in sorted(results)]

    def _skip_settled(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int,
                      sweep_dir: Path) -> tuple[dict[int, Any], list[tuple[int, list[str]]]]:
        """Jobs not to submit, with their JobReturns, and the jobs to submit. A resumed sweep
        submits only the jobs without a finished result (the others would each take a task,
        and its wait in the queue, only to say "skipped"), and none that another bnexp call
        on this sweep runs now (its tasks would only say "held")."""
        from hydra.core.utils import JobReturn, JobStatus

        results: dict[int, Any] = {}
        todo: list[tuple[int, list[str]]] = []
        for num, overrides in enumerate(job_overrides, start=initial_job_idx):
            job_dir = self.job_dir(overrides, num)
            done = finished_summary(job_dir)
            who = holder(lock_path(sweep_dir, job_dir.name)) if done is None else None
            if done is None and who is None:
                todo.append((num, list(overrides)))
                continue
            if done is not None:
                merge_job(sweep_dir, num, status=done["status"], resumed="skipped")
                print(f"[job {num}] already {done['status']}, skipped", flush=True)
            else:
                print(f"[job {num}] run by {describe(who)} (another bnexp call on this "
                      "sweep): waited for at the end", flush=True)
            status = done["status"] if done is not None else HELD
            results[num] = JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED,
                                     _return_value=status)
        return results, todo

    def _submit(self, todo: list[tuple[int, list[str]]],
                followers: dict[int, list[tuple[int, list[str]]]]) -> list[Any]:
        """Submit ``todo`` as one job array (a pack's leader trains its ``followers`` in its
        task); submitit's jobs, one per task."""
        import submitit
        from hydra.core.singleton import Singleton
        from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
        from omegaconf import OmegaConf

        params = self.params
        executor = submitit.AutoExecutor(cluster="slurm", folder=params["submitit_folder"],
                                         slurm_max_num_timeout=params.get("max_num_timeout", 0))
        baseparams = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{
            k if k in baseparams else f"slurm_{k}": v for k, v in params.items()
            if k not in ("submitit_folder", "max_num_timeout")})
        job_params = [(overrides, "hydra.sweep.dir", num, f"job_id_for_{num}",
                       Singleton.get_state()) for num, overrides in todo]
        try:
            jobs = executor.map_array(self, *zip(*job_params, strict=True))
        except submitit.core.utils.FailedJobError as exc:
            if any(words in str(exc).lower() for words in NO_CONFIG):
                raise BnexpError(no_configuration(str(exc).strip().splitlines()[-1])) from None
            raise BnexpError(refused_message(str(exc), params)) from None
        array_id = jobs[0].job_id.split("_")[0]
        logs = Path(str(params["submitit_folder"]).replace("%j", f"{array_id}_<task>"))
        tasks = describe_tasks(todo, followers)
        print(f"slurm: submitted job array {array_id} ({tasks}{'; ' if followers else ', '}"
              f"{params['cpus_per_task']} CPUs and {params.get('mem_gb')} GB each, "
              f"time limit {params.get('timeout_min')} min); logs in {logs}", flush=True)
        return jobs

    def sweep_config(self, overrides: Sequence[str]) -> Any:
        """The config Hydra composes for the job with ``overrides`` (as in its task)."""
        assert self.hydra_context is not None and self.config is not None
        return self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))

    def job_dir(self, overrides: Sequence[str], num: int) -> Path:
        """The directory Hydra gives job ``num`` (for tasks that never started)."""
        from omegaconf import OmegaConf, open_dict

        cfg = self.sweep_config(overrides)
        with open_dict(cfg.hydra.job):
            cfg.hydra.job.num = num
        return Path(str(cfg.hydra.sweep.dir)) / str(OmegaConf.select(cfg, "hydra.sweep.subdir"))


def _check_request(params: dict[str, Any]) -> None:
    """Refuse a request no node of the partition can meet (a cluster without
    EnforcePartLimits would keep it pending for ever)."""
    nodes = partition_nodes(params.get("partition"))
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


def _sized(params: Any, config: Any) -> dict[str, Any]:
    """The launcher's settings with the request sized from the run: CPUs per task follow
    ``trainer.threads`` (1 unless set; the tasks' threads follow them), memory a default."""
    from omegaconf import OmegaConf

    params = dict(params)
    if params.get("cpus_per_task") is None:
        params["cpus_per_task"] = int(OmegaConf.select(config, "trainer.threads") or 1)
    if params.get("mem_gb") is None and not (params.get("mem_per_cpu")
                                             or params.get("mem_per_gpu")):
        params["mem_gb"] = DEFAULT_MEM_GB
    return params
