"""bnexp/timing.py and `bnexp time`: the variants timed interleaved, each with its own norm
config, every timed step the step `bnexp train` takes."""

from __future__ import annotations

import json

import yaml

import bnexp.timing as timing
from bnexp.timing import run_interleaved


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
