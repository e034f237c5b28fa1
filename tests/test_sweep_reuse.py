"""A resumed sweep reuses a finished run only when the same code made it from the same config
(bnexp/reuse.py); sweep.stale re-runs (default), keeps or refuses the stale ones."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from bnexp.reuse import HARMLESS_KEYS, code_stamp, code_version, config_difference, git_sha
from bnexp.runs import Run, code_versions
from tests.test_sweep import job_dirs, only_sweep, sweep


def _mtime(job: Path) -> int:
    return (job / "summary.json").stat().st_mtime_ns


def _edit_json(path: Path, **fields) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))


def _edit_config(job: Path, section: str, key: str, value) -> None:
    config = yaml.safe_load((job / "config.yaml").read_text())
    config[section][key] = value
    (job / "config.yaml").write_text(yaml.safe_dump(config))


def test_code_version_names_version_and_sha() -> None:
    assert code_version({"versions": {"bnexp": "0.1.0"}, "git_sha": "1a2b3c4d5e6f7a8b"}) == (
        "bnexp 0.1.0 (git 1a2b3c4d5e6f)")
    assert code_version({"versions": {"bnexp": "0.1.0"}, "git_sha": None}) == "bnexp 0.1.0"
    assert code_version({"status": "completed"}) == "unknown"
    sha = git_sha()  # the tests run in a checkout
    assert sha and code_version(code_stamp()).endswith(f"(git {sha[:12]})")


def test_code_versions_counts_runs_per_version(tmp_path) -> None:
    def run(sha: str | None) -> Run:
        return Run(tmp_path, {"status": "completed", "versions": {"bnexp": "0.1.0"},
                              "git_sha": sha}, {}, {})

    runs = [run("a" * 40), run("b" * 40), run("a" * 40), run(None)]
    assert code_versions(runs) == {f"bnexp 0.1.0 (git {'a' * 12})": 2,
                                   f"bnexp 0.1.0 (git {'b' * 12})": 1, "bnexp 0.1.0": 1}
    assert list(code_versions(runs))[0] == f"bnexp 0.1.0 (git {'a' * 12})"  # most first
    assert code_versions([]) == {}


def test_config_difference_names_one_key_and_skips_harmless_ones() -> None:
    old = {"optim": {"lr": 0.1, "momentum": 0.9}, "output_dir": "a", "trainer": {"threads": 1},
           "sweep": {"stale": "rerun"}, "data": {"root": "x", "name": "mnist"}}
    new = {"optim": {"lr": 0.1, "momentum": 0.9}, "output_dir": "b", "trainer": {"threads": None},
           "data": {"root": "y", "name": "mnist"}}
    assert config_difference(old, new) is None
    new["optim"] = {"lr": 0.05, "momentum": 0.0}
    assert config_difference(old, new) == ("config: its config.yaml has optim.lr=0.1, the job "
                                           "now has optim.lr=0.05 (and 1 more keys)")
    new["optim"] = {"lr": 0.1, "momentum": 0.9, "nesterov": False}  # a key added since
    assert "no optim.nesterov" in config_difference(old, new)
    # timing runs compare the threads: their step times depend on them
    assert "trainer.threads" in config_difference(old, {**old, "trainer": {"threads": 2}},
                                                  HARMLESS_KEYS - {"trainer.threads"})


def test_identical_runs_are_reused_and_other_code_is_rerun(cli, mnist_root, tmp_path) -> None:
    out = tmp_path / "out"
    result = sweep(cli, mnist_root, out, "seed=0,1")
    assert result.exit_code == 0, result.output
    sweep_dir = only_sweep(out)
    first, second = job_dirs(sweep_dir)
    summary = json.loads((first / "summary.json").read_text())
    assert summary["git_sha"] == git_sha() and summary["versions"]["bnexp"]
    mtimes = [_mtime(first), _mtime(second)]

    # Same code, same config (keys that change no number edited): both reused, untouched.
    _edit_config(first, "trainer", "progress", "none")
    _edit_config(first, "data", "root", "/elsewhere")
    result = cli("train", "-m", "--resume", str(sweep_dir))
    assert result.exit_code == 0, result.output
    assert [_mtime(first), _mtime(second)] == mtimes
    assert "sweep: reused 2 finished runs" in result.output and "stale" not in result.output
    assert not (first / ".previous").exists()

    # The first run made by another commit: re-run, its files set aside; the second reused.
    _edit_json(first / "summary.json", git_sha="0123456789abcdef" * 2 + "01234567")
    result = cli("train", "-m", "--resume", str(sweep_dir))
    assert result.exit_code == 0, result.output
    assert ("sweep: reused 1 finished run, re-ran 1 because stale (1 by their code; e.g. job 0: "
            "code: made by bnexp") in result.output and "(git 0123456789ab)" in result.output
    assert _mtime(second) == mtimes[1] and _mtime(first) != mtimes[0]
    assert json.loads((first / "summary.json").read_text())["git_sha"] == git_sha()
    (previous,) = (first / ".previous").iterdir()
    assert json.loads((previous / "summary.json").read_text())["git_sha"].startswith("0123")
    manifest = json.loads((sweep_dir / "sweep.json").read_text())
    assert manifest["jobs"]["0"]["stale"].startswith("code:")
    assert manifest["jobs"]["1"]["resumed"] == "skipped"

    # Another bnexp version (no SHA, as from an installed wheel): stale too.
    _edit_json(second / "summary.json", versions={"bnexp": "0.0.9"}, git_sha=None)
    result = cli("train", "-m", "--resume", str(sweep_dir))
    assert result.exit_code == 0, result.output
    assert "made by bnexp 0.0.9, this is bnexp" in result.output
    assert json.loads((second / "summary.json").read_text())["versions"]["bnexp"] != "0.0.9"


def test_a_changed_config_is_refused_kept_or_rerun_as_asked(cli, mnist_root, tmp_path) -> None:
    """As if a preset had been edited since: the job's config.yaml says optim.lr=0.3."""
    out = tmp_path / "out"
    result = sweep(cli, mnist_root, out, "seed=0,1")
    assert result.exit_code == 0, result.output
    sweep_dir = only_sweep(out)
    first, second = job_dirs(sweep_dir)
    _edit_config(second, "optim", "lr", 0.3)
    mtimes = [_mtime(first), _mtime(second)]

    result = cli("train", "-m", "--resume", str(sweep_dir), "sweep.stale=refuse")
    assert result.exit_code == 2, result.output
    assert "1 finished run is stale" in result.output and "optim.lr=0.3" in result.output
    assert "sweep.stale=rerun" in result.output and "Traceback" not in result.output
    assert [_mtime(first), _mtime(second)] == mtimes and not (second / ".previous").exists()

    result = cli("train", "-m", "--resume", str(sweep_dir), "sweep.stale=reuse")
    assert result.exit_code == 0, result.output
    assert "reused 2 finished runs, 1 of them stale, kept by sweep.stale=reuse" in result.output
    assert [_mtime(first), _mtime(second)] == mtimes

    result = cli("train", "-m", "--resume", str(sweep_dir))  # sweep.stale was that call's only
    assert result.exit_code == 0, result.output
    assert "re-ran 1 because stale (1 by their config; e.g. job 1: config: its config.yaml " \
           "has optim.lr=0.3, the job now has optim.lr=" in result.output
    assert _mtime(first) == mtimes[0] and _mtime(second) != mtimes[1]
    assert yaml.safe_load((second / "config.yaml").read_text())["optim"]["lr"] != 0.3
    assert list((second / ".previous").iterdir())
    manifest = json.loads((sweep_dir / "sweep.json").read_text())
    assert "sweep.stale=refuse" not in manifest["args"]  # the first call's args stay the sweep's


def test_a_fixed_sweep_directory_resumes_with_its_own_stale_setting(mnist_root, tmp_path) -> None:
    """``bnexp claims`` calls run_sweep on a fixed directory: a later call may add
    sweep.stale=... to the same overrides without being taken for another sweep."""
    from bnexp.sweep import run_sweep
    from tests.test_sweep import FAST

    args = [f"data.root={mnist_root}", f"output_dir={tmp_path}", *FAST, "seed=0"]
    sweep_dir, rows, failed = run_sweep(args, ["test"], sweep_dir=tmp_path / "fixed")
    assert failed == 0 and rows[0]["status"] == "completed"
    (job,) = job_dirs(sweep_dir)
    _edit_json(job / "summary.json", git_sha="f" * 40)
    mtime = _mtime(job)
    _, rows, _ = run_sweep([*args, "sweep.stale=reuse"], ["test"], sweep_dir=sweep_dir)
    assert rows[0]["resumed"] == "skipped" and _mtime(job) == mtime
    _, rows, _ = run_sweep(args, ["test"], sweep_dir=sweep_dir)
    assert rows[0]["resumed"] is None and _mtime(job) != mtime
    assert rows[0]["stale"].startswith("code: made by bnexp")  # status_table says why
