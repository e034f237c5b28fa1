"""Sweeps: the job that Hydra's launchers run, and the sweep.json manifest.

Hydra expands the grid and launches the jobs (so its sweepers and launcher plugins work); each
job runs ``run_job`` in the launcher's process, trains into Hydra's job directory
(``<sweep dir>/<num>_<overrides>/``) and records itself in ``<sweep dir>/sweep.json`` under a
file lock, so parallel launchers can update it as jobs finish. A job that fails records
``failed`` in its own summary.json and the sweep goes on.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from bnexp.errors import BnexpError, one_line_warnings

# Launchers' worker processes import this module (for run_job) before Hydra composes there:
# they get the CLI's one-line warnings, without Hydra's launcher-schema deprecation notice.
one_line_warnings()

MANIFEST = "sweep.json"
MAX_DIRNAME = 120  # job directory names stay far below filesystem limits (255 bytes)


def safe_dirname(overrides: str) -> str:
    """A job directory name from Hydra's ``override_dirname``: no path separators (a swept
    path would nest directories), and long names cut, with a hash to keep them unique."""
    import hashlib

    name = overrides.replace("/", "_").replace("\\", "_") or "job"
    if len(name) > MAX_DIRNAME:
        digest = hashlib.md5(name.encode()).hexdigest()[:8]
        name = f"{name[:MAX_DIRNAME - 9]}-{digest}"
    return name


# Registered on import: Hydra resolves the job directory in the launcher's process (joblib and
# submitit workers too), where importing the task function imports this module.
OmegaConf.register_new_resolver("bnexp_dirname", safe_dirname, replace=True)
RESULT_FILES = ("summary.json", "metrics.jsonl", "tb", "checkpoint.pt", "config.yaml",
                "overrides.yaml")


@contextmanager
def _locked(sweep_dir: Path):
    with open(sweep_dir / ".sweep.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_manifest(sweep_dir: Path) -> dict[str, Any]:
    path = sweep_dir / MANIFEST
    return json.loads(path.read_text()) if path.exists() else {}


def update_manifest(sweep_dir: Path, **fields: Any) -> None:
    """Merge ``fields`` into sweep.json (``jobs`` merged by job number), atomically."""
    from bnexp.jsonio import write_json_atomic

    sweep_dir.mkdir(parents=True, exist_ok=True)
    with _locked(sweep_dir):
        manifest = read_manifest(sweep_dir)
        jobs = manifest.setdefault("jobs", {})
        jobs.update(fields.pop("jobs", {}))
        manifest.update(fields)
        write_json_atomic(sweep_dir / MANIFEST, manifest)


FINISHED = ("completed", "diverged")  # results; failed and interrupted jobs are re-run


def finished_summary(job_dir: Path) -> dict[str, Any] | None:
    """The job's summary if it finished with a result (completed, or diverged: re-running
    would diverge again), which ``sweep.resume`` skips; else None."""
    path = job_dir / "summary.json"
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return summary if summary.get("status") in FINISHED else None


def _threads_for_launcher(launcher: Any) -> int | None:
    """torch threads per job so parallel jobs share the cores instead of oversubscribing."""
    cores = os.cpu_count() or 1
    n_jobs = launcher.get("n_jobs") if hasattr(launcher, "get") else None
    if n_jobs is not None:  # joblib
        n_jobs = cores if n_jobs < 0 else n_jobs
        return max(1, cores // max(1, n_jobs))
    cpus = launcher.get("cpus_per_task") if hasattr(launcher, "get") else None
    return cpus or None  # submitit: what the job was given


def run_job(cfg: Any) -> str:
    """Hydra's task function for ``bnexp train -m``: train one grid point, never raise."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from bnexp.config import validate
    from bnexp.startup import import_trainer

    hc = HydraConfig.get()
    job_dir = Path(hc.runtime.output_dir)
    sweep_dir = Path(hc.sweep.dir)
    overrides = list(hc.overrides.task)
    num = int(hc.job.num)
    entry = {"num": num, "overrides": overrides, "dir": job_dir.name}

    # A fresh sweep directory is always new, so a finished job here means sweep.resume.
    done = finished_summary(job_dir)
    if done is not None:
        update_manifest(sweep_dir, jobs={str(num): {**entry, "status": done["status"],
                                                    "resumed": "skipped"}})
        print(f"[job {num}] already {done['status']}, skipped: {job_dir}", flush=True)
        return done["status"]
    _set_aside_previous_attempt(job_dir)

    threads = _threads_for_launcher(hc.launcher)
    if cfg.trainer.threads is None and threads is not None:
        with open_dict(cfg):
            cfg.trainer.threads = threads
    update_manifest(sweep_dir, jobs={str(num): {**entry, "status": "running"}})
    try:
        validate(cfg)
        summary = import_trainer().train(cfg, overrides, run_dir=job_dir)
        status = summary["status"]
    except KeyboardInterrupt:  # Ctrl-C: this job is interrupted, the rest of the grid not run
        update_manifest(sweep_dir, jobs={str(num): {**entry, "status": "interrupted"}})
        raise
    except Exception as exc:  # the sweep goes on; the job's own summary says what happened
        status = "failed"
        if not (job_dir / "summary.json").exists():
            _write_failed_summary(job_dir, exc)
        message = str(exc) if isinstance(exc, BnexpError) else traceback.format_exc()
        print(f"[job {num}] failed: {message}", flush=True)
    update_manifest(sweep_dir, jobs={str(num): {**entry, "status": status}})
    return status


def _write_failed_summary(job_dir: Path, exc: BaseException) -> None:
    from bnexp.jsonio import write_json_atomic

    job_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(job_dir / "summary.json", {
        "status": "failed", "run_dir": str(job_dir),
        "error": f"{type(exc).__name__}: {exc}",
        "user_error": isinstance(exc, BnexpError),
    })


def _set_aside_previous_attempt(job_dir: Path) -> None:
    """On resume, move an unfinished attempt's files to ``.previous/<time>/`` (kept, not mixed
    with the new attempt's metrics)."""
    existing = [job_dir / f for f in RESULT_FILES if (job_dir / f).exists()]
    if not existing:
        return
    dest = job_dir / ".previous" / time.strftime("%Y-%m-%d_%H-%M-%S")
    dest.mkdir(parents=True, exist_ok=True)
    for path in existing:
        shutil.move(str(path), dest / path.name)


def status_table(sweep_dir: Path) -> tuple[list[dict[str, Any]], int]:
    """Jobs in number order with their status from each job's own summary.json, and the
    number of failed jobs (diverged is a result, not a failure; interrupted and planned jobs
    did not fail, they did not run to the end)."""
    manifest = read_manifest(sweep_dir)
    rows = []
    for num, job in sorted(manifest.get("jobs", {}).items(), key=lambda kv: int(kv[0])):
        summary_path = sweep_dir / (job.get("dir") or "-") / "summary.json"
        summary = {}
        if job.get("dir") and summary_path.exists():
            try:
                summary = json.loads(summary_path.read_text())
            except ValueError:
                summary = {"status": "failed", "error": "unreadable summary.json"}
        status = summary.get("status", job.get("status", "unknown"))
        acc = summary.get("final", {}).get("test/acc")
        rows.append({"num": int(num), "overrides": job["overrides"], "status": status,
                     "test_acc": acc, "resumed": job.get("resumed"), "dir": job.get("dir"),
                     "error": summary.get("error")})
    values: dict[str, set[str]] = {}
    for r in rows:
        for o in r["overrides"]:
            key, _, value = o.partition("=")
            values.setdefault(key, set()).add(value)
    for r in rows:  # the overrides that tell the jobs apart
        r["varied"] = " ".join(o for o in r["overrides"] if len(values[o.partition("=")[0]]) > 1)
    failed = sum(r["status"] == "failed" for r in rows)
    return rows, failed


def _warm_worker() -> int:
    """Runs in each joblib worker before its first job: the imports every job needs."""
    from bnexp.startup import import_trainer

    import_trainer()
    return os.getpid()


def _prewarm_joblib_workers(overrides: list[str]) -> Any:
    """With ``hydra/launcher=joblib``, start the launcher's worker processes now, so that they
    import torch (~3 s a process) while this one plans the sweep and Hydra composes the jobs.

    joblib keeps one reusable pool per process and reuses it when a later ``Parallel`` has the
    same settings, so the launcher's settings are read exactly as Hydra will pass them (the
    launcher config with any ``hydra.launcher.*`` overrides); the jobs then run in these warm
    workers. Returns the warm-up's result generator, or None.
    """
    if "hydra/launcher=joblib" not in overrides:
        return None
    try:
        from hydra_plugins.hydra_joblib_launcher._core import process_joblib_cfg
        from joblib import Parallel, delayed
    except ImportError:  # not installed: Hydra reports that when it loads the launcher
        return None
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from bnexp.hydra_app import config_dir

    try:
        settings = OmegaConf.load(config_dir() / "hydra" / "launcher" / "joblib.yaml")
        launcher_overrides = [o for o in overrides if o.startswith("hydra.launcher.")]
        for parsed in OverridesParser.create().parse_overrides(launcher_overrides):
            OmegaConf.update(settings, parsed.key_or_group.removeprefix("hydra.launcher."),
                             parsed.value())
        joblib_cfg = {k: v for k, v in OmegaConf.to_container(settings).items() if k != "_target_"}
        joblib_cfg["backend"] = "loky"  # as the launcher does
        process_joblib_cfg(joblib_cfg)
        n_workers = joblib_cfg["n_jobs"] if joblib_cfg["n_jobs"] > 0 else os.cpu_count() or 1
        return Parallel(**joblib_cfg, return_as="generator_unordered")(
            delayed(_warm_worker)() for _ in range(n_workers))
    except Exception:  # only a head start: bad settings are for Hydra's launcher to report
        return None


def _release_joblib_workers() -> None:
    """Stop the joblib launcher's idle worker processes now.

    joblib (loky) keeps its workers for reuse and, when the interpreter exits, shuts each down
    gracefully and waits: with torch loaded that adds ~0.8 s to every parallel sweep. All jobs
    have returned and written their results by now, so the workers can simply be stopped.
    """
    module = sys.modules.get("joblib.externals.loky.reusable_executor")
    executor = getattr(module, "_executor", None)
    if executor is not None:
        executor.shutdown(wait=False, kill_workers=True)


def planned_jobs(grid: dict[str, list[str]]) -> dict[str, dict[str, Any]]:
    """Every job of the grid, numbered as Hydra numbers them (the product in the grid's key
    order), with status ``planned``; empty when a sweep only Hydra can expand (glob)."""
    import itertools

    if not grid or any(not v for v in grid.values()):
        return {}
    combos = itertools.product(*[[f"{k}={v}" for v in vs] for k, vs in grid.items()])
    return {str(i): {"num": i, "overrides": list(c), "dir": None, "status": "planned"}
            for i, c in enumerate(combos)}


def resume_args(resume: Path, overrides: list[str]) -> list[str]:
    """The overrides of the sweep in ``resume`` (from its sweep.json). Given again, they must
    be the same: a resumed sweep is never turned into another one."""
    manifest = read_manifest(resume)
    if not manifest:
        raise BnexpError(f"--resume {resume}: no sweep.json there. Pass the directory of an "
                         "earlier sweep (outputs/sweeps/<...>), as printed when it started.")
    saved = manifest.get("args")
    command = manifest.get("command", [])
    if saved is None and command[:3] == ["bnexp", "train", "-m"]:  # an older sweep.json
        saved = [o for o in command[3:] if not o.startswith("sweep.resume=")]
    if saved is None:  # older, and not started by `bnexp train -m`: the grid check decides
        return overrides
    if overrides and sorted(overrides) != sorted(saved):
        raise BnexpError(f"--resume {resume}: that sweep was started with `{' '.join(saved)}`, "
                         f"not `{' '.join(overrides)}`. Resume it with no overrides (its own "
                         "are used), or start a new sweep without --resume.")
    return saved


def run_sweep(overrides: list[str], command: list[str], sweep_dir: Path | None = None,
              on_start: Any = None, resume: Path | None = None
              ) -> tuple[Path, list[dict[str, Any]], int]:
    """Plan (validate every value), record, launch through Hydra and summarise a sweep.

    ``resume``: an earlier sweep's directory; its own overrides are used (from sweep.json) and
    only jobs without a finished summary.json run. A ``sweep_dir`` that already holds a sweep
    is resumed the same way (``bnexp claims`` reuses its sweeps so). Returns the sweep
    directory, the job rows of ``status_table`` and the number of failed jobs.
    ``on_start(sweep_dir)`` is called once the directory is known, before any job runs.
    """
    from bnexp.hydra_app import launch_multirun, plan_multirun

    if resume is None and sweep_dir is not None and (sweep_dir / MANIFEST).exists():
        resume = sweep_dir
    if resume is not None:
        overrides, sweep_dir = resume_args(resume, overrides), resume
    warm = _prewarm_joblib_workers(overrides)
    try:
        sweep_dir, hydra_overrides, grid = plan_multirun(overrides, sweep_dir=sweep_dir)
        if resume is None:
            update_manifest(sweep_dir, command=command, args=overrides, overrides=hydra_overrides,
                            grid=grid, directory=str(sweep_dir), jobs=planned_jobs(grid))
        else:
            saved = read_manifest(sweep_dir).get("grid")
            if saved is not None and saved != grid:
                raise BnexpError(f"{sweep_dir}: its sweep.json has the grid {saved}, the "
                                 f"overrides now give {grid}. Use a new directory for a new grid.")
            update_manifest(sweep_dir, finished=False, resumed_with=command)
        if on_start is not None:
            on_start(sweep_dir)
        launch_multirun(hydra_overrides, sweep_dir)
        if warm is not None:
            list(warm)  # long finished: the workers ran it before their first job
    finally:
        _release_joblib_workers()
    rows, failed = status_table(sweep_dir)
    update_manifest(sweep_dir, finished=True, failed=failed)
    return sweep_dir, rows, failed
