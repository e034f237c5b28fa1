"""bnexp/timing.py and `bnexp time`: the variants timed interleaved, each with its own norm
config, every timed step the step `bnexp train` takes."""

from __future__ import annotations

import json

import pytest
import yaml

import bnexp.timing as timing
from bnexp.timing import run_interleaved


@pytest.fixture
def timed(monkeypatch) -> list[int]:
    """The seeds run_timing_sweep times, in order (each still timed for real)."""
    seeds: list[int] = []
    real = timing.run_interleaved
    monkeypatch.setattr(timing, "run_interleaved",
                        lambda cfg, *a: seeds.append(cfg.seed) or real(cfg, *a))
    return seeds


def test_interleaved_timing_writes_one_run_per_variant(cfg, tmp_path, monkeypatch) -> None:
    steps = []
    real_step = timing.train_step
    monkeypatch.setattr(timing, "train_step", lambda *a: steps.append(1) or real_step(*a))
    out = tmp_path / "timing"
    summaries = run_interleaved(cfg("model=mlp", "norm=torch"), ["none", "torch", "seed"],
                                rounds=2, window=3, out=out, overrides=["model=mlp"])
    assert len(steps) == 3 * (2 + 1) * 3  # variants x (rounds + warm-up) x window
    for kind, summary in summaries.items():
        assert summary["status"] == "completed" and len(summary["window_ms"]) == 2
        final = summary["final"]
        assert final["time/step_ms_min"] <= final["time/step_ms_median"] <= final["time/step_ms_max"]
        run_dir = out / f"seed=0,norm={kind}"
        norm = yaml.safe_load((run_dir / "config.yaml").read_text())["norm"]
        assert norm["kind"] == kind
        assert ("eps" in norm) == (kind == "torch")  # each kind's own keys, no other kind's
        assert json.loads((run_dir / "summary.json").read_text()) == summary


def test_time_command_prints_overheads(cli, mnist_root, tmp_path) -> None:
    from tests.conftest import TINY

    result = cli("time", f"data.root={mnist_root}", *TINY, "model=mlp", "--variants", "none,torch",
                 "--rounds", "1", "--window", "2", "--out", tmp_path / "t")
    assert result.exit_code == 0, result.output
    assert "none" in result.output and "torch" in result.output
    bad = cli("time", "--variants", "none,bogus")
    assert bad.exit_code == 2 and "bogus" in bad.output


def timing_base(mnist_root) -> list[str]:
    from tests.conftest import TINY

    return [f"data.root={mnist_root}", *TINY, "model=mlp", "trainer.threads=1"]


def test_timing_sweep_keeps_timed_seeds_and_redoes_half_written_ones(mnist_root, tmp_path,
                                                                     timed) -> None:
    from bnexp.rundir import timing_run_name

    out, kinds = tmp_path / "t", ["none", "torch"]
    timing.run_timing_sweep(timing_base(mnist_root), kinds, [0, 1], 1, 2, out)
    assert timed == [0, 1]
    for seed in (0, 1):
        for k in kinds:
            summary = json.loads((out / timing_run_name(seed, k) / "summary.json").read_text())
            assert summary["status"] == "completed" and summary["seed"] == seed
    kept = (out / timing_run_name(0, "none") / "summary.json").stat().st_mtime_ns
    (out / timing_run_name(1, "torch") / "summary.json").unlink()  # killed mid-write
    timing.run_timing_sweep(timing_base(mnist_root), kinds, [0, 1], 1, 2, out)
    assert timed == [0, 1, 1]  # seed 0 kept, seed 1 timed again, both variants
    assert (out / timing_run_name(0, "none") / "summary.json").stat().st_mtime_ns == kept
    for k in kinds:  # the half-written attempt set aside, whole, in both variants
        (previous,) = (out / timing_run_name(1, k) / ".previous").iterdir()
        assert (previous / "config.yaml").exists()
        assert json.loads((out / timing_run_name(1, k) / "summary.json").read_text())["seed"] == 1


CONCURRENT = """
import sys
from pathlib import Path

import bnexp.timing as timing

real = timing.run_interleaved


def announced(cfg, *args):
    print(f"TIMED {cfg.seed}", flush=True)
    return real(cfg, *args)


timing.run_interleaved = announced
timing.run_timing_sweep(sys.argv[2:], ["none", "torch"], [0, 1, 2], 1, 2, Path(sys.argv[1]))
"""


@pytest.mark.slow  # two processes, each importing torch: ~15 s on 2 cores
def test_two_timing_calls_split_the_seeds(mnist_root, tmp_path) -> None:
    import subprocess
    import sys
    import time

    out = tmp_path / "t"
    calls = []
    for _ in range(2):
        calls.append(subprocess.Popen(
            [sys.executable, "-c", CONCURRENT, str(out), *timing_base(mnist_root)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        time.sleep(1)
    outputs = [c.communicate(timeout=300)[0] for c in calls]
    assert [c.returncode for c in calls] == [0, 0], outputs
    timed = [line.split()[1] for o in outputs for line in o.splitlines()
             if line.startswith("TIMED ")]
    assert sorted(timed) == ["0", "1", "2"], outputs  # every seed timed once, by one call
    variants = [d for d in out.iterdir() if not d.name.startswith(".")]
    assert len(variants) == 6 and not any((d / ".previous").exists() for d in variants)


def test_timing_sweep_times_stale_seeds_again(mnist_root, tmp_path, timed, capsys) -> None:
    """A seed timed by other code, or with other rounds, is timed again (sweep.stale=rerun);
    sweep.stale=reuse keeps it, sweep.stale=refuse stops with a user error and touches nothing."""
    from bnexp.errors import BnexpError
    from bnexp.reuse import git_sha
    from bnexp.rundir import timing_run_name

    out, kinds = tmp_path / "t", ["none", "torch"]
    timing.run_timing_sweep(timing_base(mnist_root), kinds, [0, 1], 1, 2, out)
    summary_path = out / timing_run_name(1, "torch") / "summary.json"
    summary = json.loads(summary_path.read_text())
    assert summary["git_sha"] == git_sha() and summary["versions"]["bnexp"]
    summary_path.write_text(json.dumps({**summary, "git_sha": "e" * 40}))
    mtime = summary_path.stat().st_mtime_ns

    with pytest.raises(BnexpError, match="seed 1 is stale"):
        timing.run_timing_sweep([*timing_base(mnist_root), "sweep.stale=refuse"], kinds, [0, 1],
                                1, 2, out)
    timing.run_timing_sweep([*timing_base(mnist_root), "sweep.stale=reuse"], kinds, [0, 1], 1, 2,
                            out)
    assert timed == [0, 1] and summary_path.stat().st_mtime_ns == mtime
    capsys.readouterr()
    timing.run_timing_sweep(timing_base(mnist_root), kinds, [0, 1], 1, 2, out)
    assert timed == [0, 1, 1]  # seed 1 by other code: timed again, both variants
    assert "reused 1 timed seeds, timed 1 again because stale (e.g. seed 1: code: made by " \
           "bnexp" in capsys.readouterr().out
    assert json.loads(summary_path.read_text())["git_sha"] == git_sha()
    assert list((out / timing_run_name(1, "none") / ".previous").iterdir())
    timing.run_timing_sweep(timing_base(mnist_root), kinds, [0], 2, 2, out)  # more rounds
    assert timed == [0, 1, 1, 0]
    timing.run_timing_sweep([*timing_base(mnist_root)[:-1], "trainer.threads=2"], kinds, [0], 2,
                            2, out)  # threads: what the step times depend on
    assert timed == [0, 1, 1, 0, 0]
