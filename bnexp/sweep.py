"""Sweeps (``bnexp train -m``): plan, launch through Hydra's multirun, run each job, keep the
sweep.json manifest, resume.

The whole life of a sweep lives here; ``bnexp.hydra_app`` only composes configs (and parses
overrides) for it, and the CLI only prints. In order:

1. ``plan_sweep`` checks every swept value (from the command line and from a preset's
   ``hydra.sweeper.params``) by composing it, checks that the launcher is installed, names the
   sweep directory and returns the grid, numbered as Hydra's sweeper will number the jobs.
2. ``run_sweep`` records the plan in ``<sweep dir>/sweep.json`` and hands the command line to
   Hydra's own runner (``hydra.main`` with ``--multirun``), so sweepers and launcher plugins
   work as in any Hydra app.
3. Each job runs ``run_job`` in the launcher's process: it claims the job (``bnexp.runlock``),
   trains into Hydra's job directory (``<sweep dir>/<num>_<overrides>/``) and records itself
   in sweep.json (``bnexp.manifest``), so parallel launchers can update it as jobs finish. A
   job that fails records ``failed`` in its own summary.json and the sweep goes on.
4. ``--resume DIR`` re-plans the sweep from its sweep.json and runs only the jobs without a
   finished result; ``status_table`` reads every job's summary.json back. A finished run made
   by another code version, or whose config.yaml differs from the job's config composed now
   (a preset edited since), is stale (``bnexp.reuse``): ``sweep.stale`` says whether it is
   re-run (default; its files go to ``.previous/``), kept, or refused (nothing runs again,
   exit 2); ``run_sweep`` prints once how many runs were reused and re-run, and why.
5. Two calls on one sweep directory at once (``bnexp claims`` twice on the same ``--out``)
   split the jobs: a job another live process holds is skipped, and ``run_sweep`` waits for
   it before it returns, so both calls end with every result, each written once.
"""

from __future__ import annotations

import os
import time
import traceback
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from bnexp.config import validate
from bnexp.errors import BnexpError, one_line_warnings
from bnexp.hydra_app import compose_with_hydra, config_dir, parse_overrides
from bnexp.manifest import MANIFEST, create_manifest, read_manifest, update_manifest
from bnexp.metrics import CANCELLED, FAILED, INTERRUPTED, PLANNED, RUNNING, TIMEOUT
from bnexp.pack.job import run_packed
from bnexp.pack.plan import packing_note, record_packing
from bnexp.reuse import as_written, code_stamp, stale_reason
from bnexp.rundir import (
    PREVIOUS,
    finished_summary,
    job_dirname,
    new_run_dir,
    set_aside_previous_attempt,
    summary_or_failed,
    summary_so_far,
    sweep_name,
    write_summary,
)
from bnexp.runlock import HELD, claimed, describe, holder, lock_path, wait_for_others
from bnexp.signals import SchedulerSignal, scheduler_signals
from bnexp.sweep_progress import JOB_LOG, QUIET_ENV, SWEEP_LOG, job_output
from bnexp.threads import joblib_workers

# Launchers' worker processes import this module (for run_job) before Hydra composes there:
# they get the CLI's one-line warnings, without Hydra's launcher-schema deprecation notice.
one_line_warnings()

# Jobs that did not run to the end (not failures): a resume re-runs them, as it does failed ones.
UNFINISHED = (INTERRUPTED, PLANNED, RUNNING, CANCELLED, TIMEOUT)


# configs/config.yaml's hydra.sweep.subdir calls this resolver. Hydra resolves the job directory
# in the launcher's process (joblib and submitit workers too), where unpickling the task function
# (run_job) imports this module, so registering on import reaches every process that needs it.
OmegaConf.register_new_resolver("bnexp_dirname", job_dirname, replace=True)


# ---------------------------------------------------------------------------------------------
# Planning: every value checked, the grid in Hydra's order, the directory named
# ---------------------------------------------------------------------------------------------

def plan_sweep(overrides: list[str], sweep_dir: Path | None = None
               ) -> tuple[Path, list[str], dict[str, list[str]]]:
    """Check a sweep before anything runs; return its directory, the overrides for Hydra and
    the grid (each swept key with its values; a key without values is a sweep only Hydra can
    expand, e.g. glob()). ``sweep_dir``: an earlier sweep's directory, when resuming."""
    parsed = parse_overrides(overrides)
    fixed = [o for o in parsed if not o.is_sweep_override()]
    fixed_lines = [o.input_line for o in fixed]
    swept = {o.get_key_element(): o for o in parsed if o.is_sweep_override()}
    firsts = [v[0] for v in map(_value_lines, swept.values()) if v]
    base = compose_with_hydra(fixed_lines + firsts, shown=overrides)
    lines = {key: _value_lines(o) for key, o in _hydra_order(base, swept, fixed).items()}
    for key, key_lines in lines.items():  # each value composed with the others' first values
        others = [v[0] for k, v in lines.items() if k != key and v]
        for line in key_lines:
            validate(compose_with_hydra(fixed_lines + others + [line], shown=overrides))
    _check_launcher(base)
    if sweep_dir is None:
        named = any(line.startswith(("experiment=", "name=")) for line in fixed_lines)
        name = str(base.name) if named else sweep_name(fixed_lines, [
            k for k, values in lines.items() if len(values) != 1])  # mlp-norm-sweep
        sweep_dir = new_run_dir(base.output_dir, name, "sweeps")
    grid = {key: [line.split("=", 1)[1] for line in ls] for key, ls in lines.items()}
    # Job directories are named by the swept overrides only: the fixed ones are the same for
    # every job and would make names too long for the filesystem.
    excluded = list(OmegaConf.select(base, "hydra.job.config.override_dirname.exclude_keys") or [])
    excluded += [o.key_or_group for o in fixed]
    exclude = f"hydra.job.config.override_dirname.exclude_keys=[{','.join(excluded)}]"
    return sweep_dir, [*overrides, exclude], grid


def _value_lines(override: Any) -> list[str]:
    """``key=value`` for each value of a sweep override; empty for sweeps that need the
    option list (glob()), which only Hydra expands."""
    key = override.input_line.split("=", 1)[0]
    try:
        return [f"{key}={v}" for v in override.sweep_string_iterator()]
    except Exception:
        return []


def _hydra_order(base: DictConfig, swept: dict[str, Any], fixed: list[Any]) -> dict[str, Any]:
    """The swept keys in the order of Hydra's product (its BasicSweeper), which numbers the
    jobs: a preset's ``hydra.sweeper.params`` first (a command-line grid keeps the preset key's
    place; one command-line value replaces the preset's grid), then the command line's."""
    preset = OmegaConf.select(base, "hydra.sweeper.params") or {}
    fixed_keys = {o.get_key_element() for o in fixed}
    ordered = {}
    for o in parse_overrides([f"{k}={v}" for k, v in preset.items()]):
        key = o.get_key_element()
        if key not in fixed_keys:
            ordered[key] = swept.get(key, o)
    ordered.update({k: o for k, o in swept.items() if k not in ordered})
    return ordered


def _check_launcher(base: DictConfig) -> None:
    import importlib

    target = OmegaConf.select(base, "hydra.launcher._target_") or ""
    module, _, name = target.rpartition(".")
    try:
        launcher = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        extra = "slurm" if "submitit" in target or "slurm" in target else "parallel"
        raise BnexpError(
            f"The launcher {target} is not installed. Install it with "
            f"`pip install 'bnexp[{extra}]'` (or drop the hydra/launcher override to run the "
            "jobs one after another).") from None
    check = getattr(launcher, "check_environment", None)  # bnexp.slurm: is there a SLURM?
    if callable(check):
        check()


def planned_jobs(grid: dict[str, list[str]]) -> dict[str, dict[str, Any]]:
    """Every job of the grid, numbered as Hydra numbers them (the product in the grid's key
    order), with status ``planned``; empty when a sweep only Hydra can expand (glob)."""
    import itertools

    if not grid or any(not v for v in grid.values()):
        return {}
    combos = itertools.product(*[[f"{k}={v}" for v in vs] for k, vs in grid.items()])
    return {str(i): {"num": i, "overrides": list(c), "dir": None, "status": PLANNED}
            for i, c in enumerate(combos)}


# ---------------------------------------------------------------------------------------------
# Running a sweep, and resuming one
# ---------------------------------------------------------------------------------------------

def run_sweep(overrides: list[str], command: list[str], sweep_dir: Path | None = None,
              on_start: Any = None, resume: Path | None = None, watch: Any = None
              ) -> tuple[Path, list[dict[str, Any]], int]:
    """Plan (validate every value), record, launch through Hydra and summarise a sweep.

    ``resume``: an earlier sweep's directory; its own overrides are used (from sweep.json) and
    only jobs without a finished summary.json run. A ``sweep_dir`` that already holds a sweep
    is resumed the same way (``bnexp claims`` reuses its sweeps so). Two calls on the same
    directory at once split the jobs (each job is claimed before it runs, ``run_job``) and
    each returns once the other's jobs are over too. Returns the sweep directory, the job rows
    of ``status_table`` and the number of failed jobs.
    ``on_start(sweep_dir)`` is called once the directory is known, before any job runs.
    A stale finished run (``bnexp.reuse``) is re-run, kept or refused as ``sweep.stale`` says;
    refused ones raise BnexpError once the other jobs are over (``report_reuse``).
    ``watch(sweep_dir, jobs)``: a context manager around the launch (a progress display that
    takes the jobs' output into the sweep's log files, bnexp/sweep_progress.py), or None.
    """
    if resume is None and sweep_dir is not None and (sweep_dir / MANIFEST).exists():
        resume = sweep_dir
    if resume is not None:
        overrides, sweep_dir = resume_args(resume, overrides), resume
    with joblib_warmup(overrides):
        sweep_dir, hydra_overrides, grid = plan_sweep(overrides, sweep_dir)
        # A call on the same directory may have written sweep.json since the check above.
        if resume is not None or not create_manifest(
                sweep_dir, command=command, args=overrides, overrides=hydra_overrides,
                grid=grid, directory=str(sweep_dir), jobs=planned_jobs(grid)):
            _check_same_grid(sweep_dir, grid)
            update_manifest(sweep_dir, finished=False, resumed_with=command)
        record_packing(sweep_dir, hydra_overrides, planned_jobs(grid), grid)  # bnexp/pack/
        if on_start is not None:
            on_start(sweep_dir)
        started = time.time()
        jobs = len(read_manifest(sweep_dir).get("jobs", {}))
        with watch(sweep_dir, jobs) if watch is not None else nullcontext():
            _hydra_multirun(hydra_overrides, sweep_dir)
    wait_for_others(sweep_dir, lambda text: print(f"sweep: {text}", flush=True))
    rows, failed = status_table(sweep_dir)
    update_manifest(sweep_dir, finished=True, failed=failed)
    report_reuse(sweep_dir, started)
    note = packing_note(sweep_dir)
    if note:
        print(note, flush=True)
    return sweep_dir, rows, failed


def _hydra_multirun(overrides: list[str], sweep_dir: Path) -> None:
    """Run Hydra's multirun on ``overrides`` into ``sweep_dir``, with ``run_job`` as the task.

    ``hydra.main`` is Hydra's public entry point for sweepers and launcher plugins, and it
    reads its command line only from ``sys.argv``: that is set for the call and put back."""
    import sys

    import hydra
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()  # a previous compose or sweep in this process
    app = hydra.main(version_base="1.3", config_path=str(config_dir()),
                     config_name="config")(run_job)
    argv = sys.argv
    # Under a progress display: each job, whatever process runs it, writes to its log files.
    quiet = [f"+hydra.job.env_set.{QUIET_ENV}=1"] if os.environ.get(QUIET_ENV) else []
    sys.argv = ["bnexp", "--multirun", *overrides, *quiet, f"hydra.sweep.dir='{sweep_dir}'"]
    try:
        app()
    except BaseException as exc:  # bnexp.slurm's user errors, past Hydra's error report
        if type(exc).__name__ == "LaunchRefused":
            raise exc.error from None  # type: ignore[attr-defined]
        raise
    finally:
        sys.argv = argv


def resume_args(resume: Path, overrides: list[str]) -> list[str]:
    """The overrides of the sweep in ``resume`` (from its sweep.json). Given again, they must
    be the same: a resumed sweep is never turned into another one. ``sweep.*`` overrides
    (``sweep.stale=reuse``) are this call's own: they are neither compared nor kept."""
    per_call = [o for o in overrides if _per_call(o)]
    overrides = [o for o in overrides if not _per_call(o)]
    manifest = read_manifest(resume)
    if not manifest:
        raise BnexpError(f"--resume {resume}: no sweep.json there. Pass the directory of an "
                         "earlier sweep (outputs/sweeps/<...>), as printed when it started.")
    saved = manifest.get("args")
    command = manifest.get("command", [])
    if saved is None and command[:3] == ["bnexp", "train", "-m"]:  # an older sweep.json
        saved = [o for o in command[3:] if not o.startswith("sweep.resume=")]
    if saved is None:  # older, and not started by `bnexp train -m`: the grid check decides
        return [*overrides, *per_call]
    saved = [o for o in saved if not _per_call(o)]
    if overrides and sorted(overrides) != sorted(saved):
        raise BnexpError(f"--resume {resume}: that sweep was started with `{' '.join(saved)}`, "
                         f"not `{' '.join(overrides)}`. Resume it with no overrides (its own "
                         "are used), or start a new sweep without --resume.")
    return [*saved, *per_call]


def _per_call(override: str) -> bool:
    """How this call treats the sweep (``sweep.stale=...``), not what the sweep is."""
    return override.lstrip("+~").split("=", 1)[0].startswith("sweep.")


def _check_same_grid(sweep_dir: Path, grid: dict[str, list[str]]) -> None:
    saved = read_manifest(sweep_dir).get("grid")
    if saved is not None and saved != grid:
        raise BnexpError(f"{sweep_dir}: its sweep.json has the grid {saved}, the overrides "
                         f"now give {grid}. Use a new directory for a new grid.")


# ---------------------------------------------------------------------------------------------
# One job, in the launcher's process
# ---------------------------------------------------------------------------------------------

def run_job(cfg: Any) -> str:
    """Hydra's task function for ``bnexp train -m``: train one grid point, never raise.

    The job is claimed first (``bnexp.runlock``): one that another live process holds (a
    second bnexp call on this sweep) is left to it and returns ``held``; the sweep waits for
    it at its end. A claimed job with a finished result is kept (resume) unless it is stale
    and ``sweep.stale=rerun`` (``_keep_finished``); any other starts from a clean directory
    (an unfinished or stale attempt's files go to ``.previous/``)."""
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    job_dir, sweep_dir, num = Path(hc.runtime.output_dir), Path(hc.sweep.dir), int(hc.job.num)
    entry = {"num": num, "overrides": list(hc.overrides.task), "dir": job_dir.name}
    # Under a progress display (bnexp/sweep_progress.py) the job's lines go to the log files:
    # its notes to the sweep's, its training's to its own directory's (a pack's to the sweep's).
    with job_output(sweep_dir / SWEEP_LOG):
        packed = run_packed(cfg, hc, _keep_finished, _share_cores)  # bnexp/pack/job.py
    if packed is not None:
        return packed
    lock = lock_path(sweep_dir, job_dir.name)
    with job_output(sweep_dir / SWEEP_LOG), claimed(lock) as mine:
        if mine is None:
            print(f"[job {num}] run by {describe(holder(lock))} (another bnexp call on this "
                  "sweep): skipped here, waited for at the end", flush=True)
            return HELD
        kept = _keep_finished(cfg, entry, job_dir, sweep_dir)
        if kept is not None:
            return kept
        set_aside_previous_attempt(job_dir)
        _share_cores(cfg, hc.launcher)
        update_manifest(sweep_dir, jobs={str(num): {**entry, "status": RUNNING}})
        with job_output(job_dir / JOB_LOG, header=True):
            status = _train_job(cfg, entry, job_dir, sweep_dir)
        update_manifest(sweep_dir, jobs={str(num): {**entry, "status": status}})
        return status


def _keep_finished(cfg: Any, entry: dict[str, Any], job_dir: Path, sweep_dir: Path
                   ) -> str | None:
    """The status of the job's finished run if it is kept, recorded in sweep.json; None when the
    job is to run: no finished run, or a stale one (``bnexp.reuse``) under sweep.stale=rerun.
    Records in ``entry`` when it was decided and why the run is stale (``report_reuse``)."""
    num = entry["num"]
    entry["decided"] = time.time()
    done = finished_summary(job_dir)
    if done is None:
        return None
    mode = OmegaConf.select(cfg, "sweep.stale", default="rerun")
    reason = stale_reason(job_dir, done, as_written(OmegaConf.to_yaml(cfg, resolve=True)))
    if reason is not None:
        entry["stale"] = reason
        if mode == "rerun":
            print(f"[job {num}] stale, re-run ({reason}); the old files go to {PREVIOUS}/",
                  flush=True)
            return None
        entry["refused"] = mode == "refuse"
    update_manifest(sweep_dir, jobs={str(num): {**entry, "status": done["status"],
                                                "resumed": "skipped"}})
    print(f"[job {num}] already {done['status']}{', stale' if reason else ''}, "
          f"{'left as it is' if entry.get('refused') else 'skipped'}: {job_dir}", flush=True)
    return done["status"]


def report_reuse(sweep_dir: Path, since: float) -> None:
    """Print once what this call did with finished runs (the jobs it decided since ``since``):
    how many were reused, how many re-run because stale and why, with one example. Stale runs
    that sweep.stale=refuse left alone raise BnexpError (exit 2), everything kept."""
    jobs = [j for j in read_manifest(sweep_dir).get("jobs", {}).values()
            if j.get("decided", 0) >= since]
    kept = [j for j in jobs if j.get("resumed") == "skipped"]
    stale = sorted((j for j in jobs if j.get("stale")), key=lambda j: j["num"])
    if not kept and not stale:
        return
    rerun = [j for j in stale if j.get("resumed") != "skipped"]
    refused = [j for j in stale if j.get("refused")]
    kinds = {k: sum(j["stale"].startswith(k) for j in stale) for k in ("code", "config")}
    why = " and ".join(f"{n} by their {k}" for k, n in kinds.items() if n)
    example = f"e.g. job {stale[0]['num']}: {stale[0]['stale']}" if stale else ""
    if refused:
        raise BnexpError(
            f"{sweep_dir}: {_runs(len(refused))} stale ({why}; {example}), and "
            "sweep.stale=refuse left them as they are (nothing was re-run or removed). Re-run "
            "them with sweep.stale=rerun (their files go to .previous/), keep them with "
            "sweep.stale=reuse (the verdicts then mix code versions or configs), or use a new "
            "directory.")
    line = f"sweep: reused {_runs(len(kept), verb=False)}"
    if rerun:
        line += f", re-ran {len(rerun)} because stale ({why}; {example})"
    elif stale:
        line += f", {len(stale)} of them stale, kept by sweep.stale=reuse ({why}; {example})"
    print(line, flush=True)


def _runs(n: int, verb: bool = True) -> str:
    """``1 finished run is`` / ``2 finished runs are`` (without the verb: ``... runs``)."""
    return f"{n} finished run{'' if n == 1 else 's'}" + ((" is" if n == 1 else " are") if verb else "")


def _train_job(cfg: Any, entry: dict[str, Any], job_dir: Path, sweep_dir: Path) -> str:
    """Train the claimed job; its status, recorded in its summary.json whatever happens."""
    from bnexp.startup import import_trainer

    num = entry["num"]
    try:
        with scheduler_signals():  # under SLURM: its time limit and scancel, recorded
            validate(cfg)
            return import_trainer().train(cfg, entry["overrides"], run_dir=job_dir)["status"]
    except SchedulerSignal as sig:  # the launcher adds the scheduler's final state
        summary = summary_so_far(job_dir)  # training's own, with its metrics so far
        summary.update(status=sig.status, run_dir=str(job_dir), error=str(sig))
        write_summary(job_dir, summary)
        print(f"[job {num}] {sig.status}: {sig}", flush=True)
        return sig.status
    except KeyboardInterrupt:  # Ctrl-C: this job is interrupted, the rest of the grid not run
        update_manifest(sweep_dir, jobs={str(num): {**entry, "status": INTERRUPTED}})
        raise
    except Exception as exc:  # the sweep goes on; the job's own summary says what happened
        if not summary_so_far(job_dir):  # training never got to write one
            write_summary(job_dir, {"status": FAILED, "run_dir": str(job_dir),
                                    "error": f"{type(exc).__name__}: {exc}",
                                    "user_error": isinstance(exc, BnexpError), **code_stamp()})
        message = str(exc) if isinstance(exc, BnexpError) else traceback.format_exc()
        print(f"[job {num}] failed: {message}", flush=True)
        return FAILED


def _share_cores(cfg: Any, launcher: Any) -> None:
    """Unless trainer.threads is set: torch threads per job so that parallel jobs share the
    cores instead of oversubscribing them (joblib: cores // n_jobs; submitit: its
    cpus_per_task)."""
    from omegaconf import open_dict

    if cfg.trainer.threads is not None or not hasattr(launcher, "get"):
        return
    n_jobs, threads = launcher.get("n_jobs"), launcher.get("cpus_per_task")
    threads = threads or int(os.environ.get("SLURM_CPUS_PER_TASK", 0)) or None
    if n_jobs is not None:
        threads = max(1, (os.cpu_count() or 1) // joblib_workers(n_jobs))
    if threads:
        with open_dict(cfg):
            cfg.trainer.threads = threads


# ---------------------------------------------------------------------------------------------
# The manifest and the status table
# ---------------------------------------------------------------------------------------------

def status_table(sweep_dir: Path) -> tuple[list[dict[str, Any]], int]:
    """Jobs in number order with their status from each job's own summary.json, and the
    number of failed jobs (diverged is a result, not a failure; interrupted and planned jobs
    did not fail, they did not run to the end)."""
    manifest = read_manifest(sweep_dir)
    rows = []
    for num, job in sorted(manifest.get("jobs", {}).items(), key=lambda kv: int(kv[0])):
        summary = _job_summary(sweep_dir, job.get("dir"))
        rows.append({"num": int(num), "overrides": job["overrides"],
                     "status": summary.get("status", job.get("status", "unknown")),
                     "test_acc": summary.get("final", {}).get("test/acc"),
                     "resumed": job.get("resumed"), "stale": job.get("stale"),
                     "dir": job.get("dir"),
                     "error": summary.get("error")})
    values: dict[str, set[str]] = {}
    for r in rows:
        for o in r["overrides"]:
            key, _, value = o.partition("=")
            values.setdefault(key, set()).add(value)
    for r in rows:  # the overrides that tell the jobs apart
        r["varied"] = " ".join(o for o in r["overrides"] if len(values[o.partition("=")[0]]) > 1)
    failed = sum(r["status"] == FAILED for r in rows)
    return rows, failed


def _job_summary(sweep_dir: Path, job_dir: str | None) -> dict[str, Any]:
    """A job's summary.json; empty before the job wrote one."""
    return summary_or_failed(sweep_dir / job_dir) if job_dir else {}


# ---------------------------------------------------------------------------------------------
# The joblib launcher's workers, started early
# ---------------------------------------------------------------------------------------------

def _warm_worker() -> None:
    """Runs in each joblib worker before its first job: the imports every job needs."""
    from bnexp.startup import import_trainer

    import_trainer()


@contextmanager
def joblib_warmup(overrides: list[str]) -> Iterator[None]:
    """With ``hydra/launcher=joblib``: start the launcher's worker processes as the sweep
    begins, so that they import the training stack while this process plans the sweep and
    Hydra composes the jobs; stop them when the sweep ends instead of at interpreter exit.

    joblib keeps one worker pool per process and reuses it while a call's settings are the
    same, so the settings are read as the launcher reads them (with the plugin's own
    ``process_joblib_cfg``, the one internal used): the jobs then run in these workers.
    Closing the warm-up's unread result generator makes joblib stop the pool at once, instead
    of the graceful shutdown at interpreter exit that waits for each worker. Anything
    unexpected only skips the head start: bad settings are for Hydra's launcher to report.

    Worth its internals because the time it saves comes once per sweep, before the first job,
    where parallel workers cannot divide it: a fixed head start, largest in relative terms for
    short jobs. ``python scripts/bench_sweep.py --warmup`` measures it (its docstring quotes
    the figures).
    """
    warm = None
    try:
        if "hydra/launcher=joblib" in overrides:
            from hydra_plugins.hydra_joblib_launcher._core import process_joblib_cfg
            from joblib import Parallel, delayed

            launcher = [o for o in overrides if o.startswith(("hydra/launcher=", "hydra.launcher."))]
            settings = OmegaConf.to_container(compose_with_hydra(launcher).hydra.launcher)
            joblib_cfg = {k: v for k, v in settings.items() if k != "_target_"}
            joblib_cfg["backend"] = "loky"  # as the launcher does
            process_joblib_cfg(joblib_cfg)
            n_workers = joblib_workers(joblib_cfg["n_jobs"])
            if n_workers > 1:  # one job at a time: joblib runs it in this process, no workers
                warm = Parallel(**joblib_cfg, return_as="generator_unordered")(
                    delayed(_warm_worker)() for _ in range(n_workers))
    except Exception:
        warm = None
    try:
        yield
    finally:
        if warm is not None:
            with warnings.catch_warnings():  # joblib warns that the results were not read
                warnings.simplefilter("ignore")
                warm.close()
