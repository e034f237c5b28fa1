"""Sweeps end to end through the CLI on tiny data: Hydra's multirun, directory names, the
manifest, a failing job, resume, the joblib and submitit_local launchers, every preset."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from bnexp.hydra_app import compose_config, config_dir
from bnexp.sweep import plan_sweep, planned_jobs
from tests.conftest import TINY

FAST = [*TINY, "trainer.epochs=1", "model=mlp", "probe=off", "trainer.checkpoint=false"]


def sweep(cli, root: Path, out: Path, *overrides: str):
    return cli("train", "-m", f"data.root={root}", f"output_dir={out}", *FAST, *overrides)


def only_sweep(out: Path) -> Path:
    (sweep_dir,) = (out / "sweeps").iterdir()
    return sweep_dir


def job_dirs(sweep_dir: Path) -> list[Path]:
    return sorted((p for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  key=lambda p: int(p.name.split("_")[0]))


def test_grid_runs_every_job_with_manifest(cli, mnist_root, tmp_path) -> None:
    result = sweep(cli, mnist_root, tmp_path / "out", "norm=none,torch", "seed=0,1")
    assert result.exit_code == 0, result.output
    sweep_dir = only_sweep(tmp_path / "out")
    assert "_mlp-norm,seed-sweep_" in sweep_dir.name  # says what was swept
    dirs = job_dirs(sweep_dir)
    assert [d.name.split("_")[0] for d in dirs] == ["0", "1", "2", "3"]
    assert "norm=none" in dirs[0].name and "seed=1" in dirs[1].name
    assert "data.root" not in dirs[0].name  # paths are kept out of directory names
    manifest = json.loads((sweep_dir / "sweep.json").read_text())
    assert manifest["grid"] == {"norm": ["none", "torch"], "seed": ["0", "1"]}
    assert manifest["finished"] is True and manifest["failed"] == 0
    assert {j["status"] for j in manifest["jobs"].values()} == {"completed"}
    for d in dirs:
        summary = json.loads((d / "summary.json").read_text())
        assert summary["status"] == "completed" and (d / "tb").is_dir()
    seeds = {json.loads((d / "summary.json").read_text())["seed"] for d in dirs}
    assert seeds == {0, 1}
    assert "completed" in result.output and "norm=torch seed=1" in result.output


@pytest.mark.slow  # end to end through Hydra's launchers: `pytest -m slow`
def test_range_choice_and_glob_sweeps(cli, mnist_root, tmp_path) -> None:
    result = sweep(cli, mnist_root, tmp_path / "a", "seed=range(0,3)", "norm=choice(none,torch)")
    assert result.exit_code == 0, result.output
    assert len(job_dirs(only_sweep(tmp_path / "a"))) == 6
    result = sweep(cli, mnist_root, tmp_path / "b", "norm=glob(c*)")  # custom only
    assert result.exit_code == 0, result.output
    (d,) = job_dirs(only_sweep(tmp_path / "b"))
    assert "norm=custom" in d.name


def test_failing_job_is_recorded_and_resume_reruns_only_it(cli, mnist_root, tmp_path) -> None:
    out = tmp_path / "out"
    # The second grid point has no data (and may not download): it fails, the first completes.
    missing = tmp_path / "missing"
    result = sweep(cli, mnist_root, out, "data.download=false", f"data.root={mnist_root},{missing}")
    assert result.exit_code == 1, result.output
    assert "failed" in result.output and "--resume" in result.output
    sweep_dir = only_sweep(out)
    ok, bad = job_dirs(sweep_dir)
    assert json.loads((ok / "summary.json").read_text())["status"] == "completed"
    failed = json.loads((bad / "summary.json").read_text())
    assert failed["status"] == "failed" and "data.download=false" in failed["error"]
    first_mtime = (ok / "summary.json").stat().st_mtime_ns

    # Provide the missing data, resume: the completed job is skipped, the failed one re-runs.
    from tests.conftest import write_mnist
    write_mnist(missing)
    result = sweep(cli, mnist_root, out, "data.download=false", f"data.root={mnist_root},{missing}",
                   f"sweep.resume={sweep_dir}")
    assert result.exit_code == 0, result.output
    assert only_sweep(out) == sweep_dir
    assert (ok / "summary.json").stat().st_mtime_ns == first_mtime
    assert json.loads((bad / "summary.json").read_text())["status"] == "completed"
    assert list((bad / ".previous").iterdir())  # the failed attempt is kept aside
    manifest = json.loads((sweep_dir / "sweep.json").read_text())
    assert manifest["jobs"]["0"]["resumed"] == "skipped" and manifest["failed"] == 0


def test_diverged_job_is_a_result_not_a_failure(cli, mnist_root, tmp_path) -> None:
    result = sweep(cli, mnist_root, tmp_path / "out", "optim.lr=0.01,1e12",
                   "optim.schedule=constant", "norm=none")
    assert result.exit_code == 0, result.output
    statuses = [json.loads((d / "summary.json").read_text())["status"]
                for d in job_dirs(only_sweep(tmp_path / "out"))]
    assert statuses == ["completed", "diverged"]


def test_bad_value_in_a_sweep_is_caught_before_any_job(cli, mnist_root, tmp_path) -> None:
    result = sweep(cli, mnist_root, tmp_path / "out", "norm=none,batchy")
    assert result.exit_code == 2 and "norm/batchy" in result.output
    result = sweep(cli, mnist_root, tmp_path / "out", "optim.lr=0.1,-1")
    assert result.exit_code == 2 and "optim.lr" in result.output
    assert not (tmp_path / "out" / "sweeps").exists()
    if importlib.util.find_spec("hydra_plugins.hydra_joblib_launcher"):  # warm workers stopped
        result = sweep(cli, mnist_root, tmp_path / "out", "seed=0,x", "hydra/launcher=joblib")
        assert result.exit_code == 2 and "seed" in result.output
        assert "warning" not in result.output  # (not joblib's about cancelled warm-up tasks)


def test_resume_needs_a_sweep_directory(cli, mnist_root, tmp_path) -> None:
    result = sweep(cli, mnist_root, tmp_path / "out", "seed=0,1", f"sweep.resume={tmp_path}")
    assert result.exit_code == 2 and "no sweep.json" in result.output
    result = cli("train", "-m", "--resume", str(tmp_path))
    assert result.exit_code == 2 and "no sweep.json" in result.output


@pytest.mark.slow  # end to end through Hydra's launchers: `pytest -m slow`
def test_interrupt_then_resume_from_sweep_json_alone(cli, mnist_root, tmp_path, monkeypatch) -> None:
    """Ctrl-C in the second of three jobs: sweep.json lists every planned job, the interrupted
    one as `interrupted`; `bnexp train -m --resume DIR` with no grid takes the grid from
    sweep.json, runs only the unfinished jobs, and never rewrites the manifest into another
    sweep; a different grid is refused."""
    import bnexp.train

    real_train, calls = bnexp.train.train, []

    def interrupt_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_train(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(bnexp.train, "train", interrupt_second)
        # one process per job (a pack's interrupt is tests/test_pack.py's)
        result = sweep(cli, mnist_root, tmp_path / "out", "seed=0,1,2", "sweep.pack=false")
    assert result.exit_code == 130 and "--resume" in result.output
    sweep_dir = only_sweep(tmp_path / "out")
    manifest = json.loads((sweep_dir / "sweep.json").read_text())
    assert [j["status"] for _, j in sorted(manifest["jobs"].items())] == [
        "completed", "interrupted", "planned"]
    command, grid = manifest["command"], manifest["grid"]

    result = cli("train", "-m", "--resume", str(sweep_dir), "seed=0,1,2,3")
    assert result.exit_code == 2 and "started with" in result.output
    assert json.loads((sweep_dir / "sweep.json").read_text())["grid"] == grid

    result = cli("train", "-m", "--resume", str(sweep_dir))
    assert result.exit_code == 0, result.output
    manifest = json.loads((sweep_dir / "sweep.json").read_text())
    assert manifest["command"] == command and manifest["grid"] == grid == {"seed": ["0", "1", "2"]}
    assert [j["status"] for _, j in sorted(manifest["jobs"].items())] == ["completed"] * 3
    assert manifest["jobs"]["0"]["resumed"] == "skipped" and manifest["failed"] == 0
    assert len(job_dirs(sweep_dir)) == 3 and not (sweep_dir / "0_job").exists()


def test_planned_job_numbers_follow_hydras_order(cli, mnist_root, tmp_path) -> None:
    """A preset's keys come first in Hydra's product, with command-line values in their place."""
    result = sweep(cli, mnist_root, tmp_path / "out", "experiment=small_batch", "norm=torch,seed",
                   "trainer.batch_size=8,16", "seed=0", "trainer.eval_single=0",
                   "data.train_size=null")  # the preset's 10,000 images: more than tiny data has
    assert result.exit_code == 0, result.output
    sweep_dir = only_sweep(tmp_path / "out")
    manifest = json.loads((sweep_dir / "sweep.json").read_text())
    assert manifest["grid"] == {"norm": ["torch", "seed"], "trainer.batch_size": ["8", "16"]}
    planned = planned_jobs(manifest["grid"])
    assert len(planned) == len(manifest["jobs"]) == 4
    for num, job in manifest["jobs"].items():  # what ran as job N is what was planned as N
        swept = [o for o in job["overrides"] if o.split("=")[0] in manifest["grid"]]
        assert sorted(swept) == sorted(planned[num]["overrides"]), num


@pytest.mark.slow  # end to end through Hydra's launchers: `pytest -m slow`
def test_joblib_launcher_two_jobs(cli, mnist_root, tmp_path) -> None:
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    result = sweep(cli, mnist_root, tmp_path / "out", "seed=0,1", "hydra/launcher=joblib",
                   "hydra.launcher.n_jobs=2")
    assert result.exit_code == 0, result.output
    dirs = job_dirs(only_sweep(tmp_path / "out"))
    summaries = [json.loads((d / "summary.json").read_text()) for d in dirs]
    assert [s["status"] for s in summaries] == ["completed", "completed"]
    import os
    assert all(s["threads"] == max(1, (os.cpu_count() or 1) // 2) for s in summaries)


def test_bad_launcher_setting_is_a_user_error(cli, mnist_root, tmp_path) -> None:
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    result = sweep(cli, mnist_root, tmp_path / "out", "seed=0,1", "hydra/launcher=joblib",
                   "hydra.launcher.n_jobs=abc")
    assert result.exit_code == 2 and "hydra.launcher.n_jobs" in result.output
    assert "Traceback" not in result.output


def _as_the_launcher_runs(overrides: list[str]) -> dict:
    """The joblib.Parallel settings that Hydra's joblib launcher uses for these overrides."""
    from hydra_plugins.hydra_joblib_launcher._core import process_joblib_cfg
    from omegaconf import OmegaConf

    from bnexp.hydra_app import compose_with_hydra

    joblib_cfg = OmegaConf.to_container(compose_with_hydra(overrides).hydra.launcher)
    joblib_cfg.pop("_target_")
    joblib_cfg["backend"] = "loky"  # what the launcher's launch() does, then Parallel(**cfg)
    process_joblib_cfg(joblib_cfg)
    return joblib_cfg


@pytest.mark.parametrize("launcher_overrides", [[], ["hydra.launcher.n_jobs=2",
                                                      "hydra.launcher.max_nbytes=1M"]])
@pytest.mark.slow  # end to end through Hydra's launchers: `pytest -m slow`
def test_joblib_warmup_starts_the_workers_the_launcher_uses(launcher_overrides) -> None:
    """joblib keeps one worker pool per process and replaces it when a call's settings differ:
    the jobs, run as Hydra's launcher runs them, land in the pool the warm-up started (with the
    training stack imported), and the pool is stopped when the sweep ends."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    import os

    from joblib import Parallel, delayed
    from joblib.externals.loky import reusable_executor

    from bnexp.sweep import joblib_warmup

    overrides = ["hydra/launcher=joblib", *launcher_overrides]
    joblib_cfg = _as_the_launcher_runs(overrides)
    with joblib_warmup(overrides):
        warm_pool = reusable_executor._executor
        assert warm_pool is not None
        job_pids = Parallel(**joblib_cfg)(delayed(os.getpid)() for _ in range(4))
        assert reusable_executor._executor is warm_pool  # reused, not replaced
        assert set(job_pids) <= set(warm_pool._processes)
    Parallel(**joblib_cfg)(delayed(os.getpid)() for _ in range(1))
    assert reusable_executor._executor is not warm_pool  # it was stopped when the sweep ended
    reusable_executor._executor.shutdown(kill_workers=True)


def test_joblib_warmup_is_only_a_head_start() -> None:
    """Other launchers start nothing; bad launcher settings are Hydra's to report (a user
    error), not the warm-up's to raise."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    from joblib.externals.loky import reusable_executor

    from bnexp.sweep import joblib_warmup

    before = reusable_executor._executor
    with joblib_warmup(["seed=0,1"]):
        assert reusable_executor._executor is before
    with joblib_warmup(["hydra/launcher=joblib", "hydra.launcher.n_jobs=abc"]):
        assert reusable_executor._executor is before
    with joblib_warmup(["hydra/launcher=joblib", "hydra.launcher.n_jobs=1"]):  # runs in-process
        assert reusable_executor._executor is before


@pytest.mark.slow  # end to end through Hydra's launchers: `pytest -m slow`
def test_submitit_local_launcher(cli, mnist_root, tmp_path) -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    result = sweep(cli, mnist_root, tmp_path / "out", "seed=0,1",
                   "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5")
    assert result.exit_code == 0, result.output
    dirs = job_dirs(only_sweep(tmp_path / "out"))
    assert [json.loads((d / "summary.json").read_text())["status"] for d in dirs] == \
        ["completed", "completed"]
    assert (only_sweep(tmp_path / "out") / ".submitit").is_dir()


PRESETS = sorted(p.stem for p in (config_dir() / "experiment").glob("*.yaml"))


def test_the_presets_exist() -> None:
    assert set(PRESETS) >= {"ioffe_mnist", "overfit", "lr_range", "deep_sigmoid",
                            "deep_relu_init", "small_batch", "cost"}


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_composes_and_declares_its_grid(preset: str, tmp_path) -> None:
    cfg = compose_config([f"experiment={preset}"])
    assert cfg.name == preset
    text = (config_dir() / "experiment" / f"{preset}.yaml").read_text()
    assert text.startswith("# @package _global_") and "about" in text  # states its duration
    sweep_dir, _, grid = plan_sweep([f"experiment={preset}", f"output_dir={tmp_path}"])
    assert grid and all(len(v) >= 2 for v in grid.values())
    assert f"_{preset}_" in sweep_dir.name


def test_preset_grid_runs_through_multirun(cli, mnist_root, tmp_path) -> None:
    result = sweep(cli, mnist_root, tmp_path / "out", "experiment=deep_relu_init",
                   "model.depth=3", "trainer.steps=3", "model.init_gain=1.0", "seed=0")
    assert result.exit_code == 0, result.output  # the command line wins over the preset,
    dirs = job_dirs(only_sweep(tmp_path / "out"))  # a single value replaces a preset's grid
    assert len(dirs) == 2 and all("norm=" in d.name for d in dirs)
    manifest = json.loads((only_sweep(tmp_path / "out") / "sweep.json").read_text())
    assert manifest["grid"] == {"norm": ["none", "torch"]} and len(manifest["jobs"]) == 2


# Two bnexp calls on one sweep directory, as two `bnexp claims` on the same --out: each job is
# trained by exactly one of them (each training announced by a wrapper around bnexp.train.train).
CONCURRENT = """
import sys
from pathlib import Path

import bnexp.train
from bnexp.sweep import run_sweep

real = bnexp.train.train


def announced(cfg, overrides, run_dir=None):
    print(f"TRAINED {run_dir.name}", flush=True)
    return real(cfg, overrides, run_dir=run_dir)


bnexp.train.train = announced
_, rows, failed = run_sweep(sys.argv[2:], ["test"], sweep_dir=Path(sys.argv[1]))
print("STATUSES", " ".join(r["status"] for r in rows), flush=True)
sys.exit(1 if failed else 0)
"""


def trained_once_each(sweep_dir: Path, outputs: list[str], n_jobs: int, lone: Path) -> None:
    """Every job trained by exactly one call, written once: one TensorBoard event file, as many
    metrics.jsonl records as a lone run of the same config, no earlier attempt set aside."""
    trained = [line.split()[1] for out in outputs for line in out.splitlines()
               if line.startswith("TRAINED ")]
    dirs = job_dirs(sweep_dir)
    assert sorted(trained) == sorted(d.name for d in dirs) and len(dirs) == n_jobs, outputs
    lone_lines = len((lone / "metrics.jsonl").read_text().splitlines())
    for d in dirs:
        assert json.loads((d / "summary.json").read_text())["status"] == "completed"
        assert len(list((d / "tb").glob("events.out.tfevents.*"))) == 1, d
        assert len((d / "metrics.jsonl").read_text().splitlines()) == lone_lines, d
        assert not (d / ".previous").exists(), d
    manifest = json.loads((sweep_dir / "sweep.json").read_text())
    assert {j["status"] for j in manifest["jobs"].values()} == {"completed"}
    assert manifest["finished"] is True and manifest["failed"] == 0


@pytest.mark.slow  # two processes, each importing torch: ~20 s on 2 cores
def test_two_calls_on_one_sweep_split_the_jobs(mnist_root, tmp_path) -> None:
    import subprocess
    import sys
    import time

    args = [f"data.root={mnist_root}", f"output_dir={tmp_path / 'out'}", *FAST,
            "trainer.epochs=2", "sweep.pack=false", "seed=0,1,2,3"]  # jobs, not one pack
    sweep_dir = tmp_path / "out" / "sweeps" / "shared"
    calls = []
    for _ in range(2):  # the second starts while the first plans or runs its first job
        calls.append(subprocess.Popen([sys.executable, "-c", CONCURRENT, str(sweep_dir), *args],
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
        time.sleep(2)
    outputs = [c.communicate(timeout=300)[0] for c in calls]
    assert [c.returncode for c in calls] == [0, 0], outputs
    for out in outputs:  # each ends with the whole sweep, the other call's jobs included
        assert "STATUSES completed completed completed completed" in out, out

    from bnexp.sweep import run_sweep  # a lone run of the same config, for its record count

    lone_dir, _, _ = run_sweep([*args[:-1], "seed=0,1"], ["test"], sweep_dir=tmp_path / "lone")
    trained_once_each(sweep_dir, outputs, 4, job_dirs(lone_dir)[0])


def test_a_rerun_after_a_kill_starts_from_a_clean_directory(cli, mnist_root, tmp_path) -> None:
    """A job killed mid-training (its lock freed by its death) leaves tb/ events, a partial
    metrics.jsonl and no summary.json: the resumed sweep trains it again into a clean
    directory, the killed attempt's files set aside under .previous/."""
    result = sweep(cli, mnist_root, tmp_path / "out", "seed=0")
    assert result.exit_code == 0, result.output
    sweep_dir = only_sweep(tmp_path / "out")
    (job,) = job_dirs(sweep_dir)
    lone_lines = len((job / "metrics.jsonl").read_text().splitlines())
    (job / "summary.json").unlink()  # as if killed before the end
    with open(job / "metrics.jsonl", "a") as f:
        f.write('{"step": 99, "kind": "step", "train/lo')  # cut mid-record
    from bnexp.runlock import lock_path, try_claim

    lock = try_claim(lock_path(sweep_dir, job.name))  # the dead holder's claim: free
    assert lock is not None
    lock.release()
    result = cli("train", "-m", "--resume", str(sweep_dir))
    assert result.exit_code == 0, result.output
    assert len(list((job / "tb").glob("events.out.tfevents.*"))) == 1
    assert len((job / "metrics.jsonl").read_text().splitlines()) == lone_lines
    (previous,) = (job / ".previous").iterdir()
    assert (previous / "tb").is_dir() and (previous / "metrics.jsonl").exists()
    assert (job / ".hydra").is_dir()  # Hydra's files for this attempt stay
