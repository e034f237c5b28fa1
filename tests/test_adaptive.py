"""The adaptive budget: its error rates by simulation with the real decision code (Bonferroni
over 3 looks at alpha 0.05, Holm within each), its stopping rules, and a real call end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from bnexp import claims as C
from bnexp.claims import adaptive
from bnexp.claims.spec import shipped_path
from tests import sim_adaptive as sim
from tests.conftest import TINY


def test_wrong_verdicts_at_the_threshold_stay_below_alpha() -> None:
    """An effect exactly at the threshold: 'supported' and 'not supported' are both wrong.
    Measured: 2.6% of 1,000 calls (scripts/sim_adaptive.py; Monte-Carlo standard error 0.7
    points near 5%)."""
    r = sim.rates(sim.THRESHOLD, 0.01, 1500, seed=1)
    wrong = r["supported"] + r["not supported"]
    assert wrong <= 0.05, r
    assert r["supported"] <= 0.025 + 2 * r["mc_se"] and r["not supported"] <= 0.025 + 2 * r["mc_se"]


def test_no_false_support_at_zero_effect() -> None:
    r = sim.rates(0.0, 0.01, 300, seed=2)
    assert r["supported"] <= 0.05, r  # measured 0 of 300 (and of 500)
    assert r["not supported"] > 0.3  # and it does refute: the effect is shown below 1 point


@pytest.mark.slow  # 200 simulated calls: `pytest -m slow`
def test_a_clear_effect_is_decided_early() -> None:
    """Three times the threshold: supported nearly always (99%), at ~6.5 seeds on average, where
    a fixed design reaching the same power needs 8 (scripts/sim_adaptive.py prints both)."""
    r = sim.rates(3 * sim.THRESHOLD, 0.01, 200, seed=3)
    assert r["supported"] > 0.9 and r["mean_seeds"] < 8, r


def test_futility_stops_a_claim_whose_decision_is_out_of_reach() -> None:
    """A tiny effect with a large spread: no undecided level can reach 80% within 20 seeds."""
    rng = np.random.default_rng(4)
    out = sim.one(sim.THRESHOLD * 1.05, 0.05, rng)
    assert out.stop == "futility" and out.seeds == 5 and out.verdict == "inconclusive"


def test_out_of_time_stops_the_sweeps_not_chosen() -> None:
    rng = np.random.default_rng(5)
    base, diff = rng.normal(0.9, 0.01, 20), rng.normal(0.0125, 0.01, 20)

    def provide(want: dict[str, int]) -> dict[str, list]:
        n = want["s"]
        return {"s": [sim._run("torch", s, base[s] + diff[s]) for s in range(n)]
                + [sim._run("none", s, base[s]) for s in range(n)]}

    states, record = adaptive.sequential([sim.CLAIM], sim.LOOKS, 0.05, 40, 0, provide,
                                         choose=lambda n, want, st: set(), echo=lambda _: None)
    s = states["sim"]
    assert s.stop in ("out of time", "decided", "futility") and len(record) == 1
    if s.stop == "out of time":
        v = adaptive.final_verdict(s, sim.LOOKS, 0.05)
        assert "--max-minutes left no time" in v.reason and v.numbers["adaptive"]["stop"] == s.stop


def small_adaptive_spec(tmp_path: Path) -> Path:
    """bnexp's claims file with the adaptive budget on the test settings and looks of 2 and 3
    seeds (the test budget runs on tiny generated data)."""
    data = yaml.safe_load(shipped_path().read_text())
    data["adaptive"] = {"base": "test", "looks": [2, 3]}
    path = tmp_path / "claims.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.slow  # two claims' sweeps look by look on generated data: `pytest -m slow`
def test_adaptive_end_to_end(cli, mnist_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "claims"
    args = ["claims", "--budget", "adaptive", "--spec", small_adaptive_spec(tmp_path),
            "--only", "vanishing,explosion_at_init", "--out", out, f"data.root={mnist_root}",
            *[o for o in TINY if not o.startswith("trainer.epochs")]]
    result = cli(*args)
    assert result.exit_code == 0, result.output
    planned = cli(*args[:3], "--plan", *args[3:])  # after the call: every run measured, reused
    assert planned.exit_code == 0 and "nothing is run" in planned.output, planned.output
    assert "total: 0 runs to run" in planned.output, planned.output
    data = json.loads((out / "claims.json").read_text())
    ad = data["provenance"]["adaptive"]
    assert ad["looks"] == [2, 3] and ad["spending"] == "bonferroni"
    assert ad["alpha_per_look"] == pytest.approx(0.025) and ad["record"][0]["seeds"] == 2
    for c in data["claims"]:
        assert c["reason"].startswith("adaptive: look ")
        assert c["numbers"]["adaptive"]["stop"] in ("decided", "futility", "last look")
    look1 = out / "sweeps" / "deep_sigmoid-adaptive-mnist" / "look1"
    assert look1.is_dir() and len([p for p in look1.iterdir() if (p / "summary.json").exists()]) == 4
    # a second call reuses every finished run
    before = {p: p.stat().st_mtime_ns for p in out.rglob("summary.json")}
    assert cli(*args).exit_code == 0
    assert before == {p: p.stat().st_mtime_ns for p in out.rglob("summary.json")}


def test_max_minutes_needs_the_adaptive_budget(cli, tmp_path: Path) -> None:
    result = cli("claims", "--budget", "quick", "--max-minutes", "5", "--out", tmp_path / "o")
    assert result.exit_code == 2 and "--budget adaptive" in result.output


def test_the_adaptive_section_is_validated(tmp_path: Path) -> None:
    data = yaml.safe_load(shipped_path().read_text())
    data["adaptive"] = {"base": "standrd", "looks": [3, 5]}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(C.SpecError, match="did you mean `standard`"):
        C.load_spec(path)
    data["adaptive"] = {"looks": [5, 3]}
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(C.SpecError, match="increasing"):
        C.load_spec(path)


def test_plan_counts_the_grid_of_every_sweep() -> None:
    """--plan's runs per sweep, from the budget's swept overrides and the preset's grid."""
    from bnexp.claims.forecast import planned_runs

    spec = C.load_spec()
    counts = {name: planned_runs(s, "quick") for name, s in spec.sweeps.items()}
    assert counts["overfit"] == 2 * 3 * 4 and counts["santurkar"] == 2 * 4 * 3 * 3
    assert counts["lr_range"] == 2 * 8 * 3 and counts["cost"] == 3 * 4
    assert planned_runs(spec.sweeps["overfit"], "standard", seeds=5) == 5 * 5 * 4
