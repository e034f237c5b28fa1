"""Claim rules on synthetic runs: every rule type reaches each of its three outcomes, including
the edge cases a referee would try (diverged runs, n = 1, zero variance, both variants unstable,
censored steps-to-target, a counterexample at one level, Holm across claims), and the derived
metrics as rules read them (each against a direct computation: tests/test_metrics.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from bnexp import claims as C
from bnexp import metrics
from bnexp.errors import BnexpError
from bnexp.runs import Run
from tests.conftest import TINY


def run(norm: str, seed: int, final: dict | None = None, status: str = "completed",
        records: list | None = None, **config) -> Run:
    cfg = {"norm.kind": norm, "seed": seed, **config}
    overrides = {"norm": norm, "seed": str(seed), **{k: str(v) for k, v in config.items()}}
    summary = {"status": status, "seed": seed, "final": final or {}, "total_steps": 1000}
    return Run(Path(f"/x/{norm}-{seed}-{sorted(config.items())}"), summary, cfg, overrides,
               records or [])


def compare_runs(a: list[float], b: list[float], metric: str = "m", **kw) -> list[Run]:
    return ([run("torch", s, {metric: v}, **kw) for s, v in enumerate(a)]
            + [run("none", s, {metric: v}, **kw) for s, v in enumerate(b)])


def claim_of(rule: dict, **claim) -> C.Claim:
    """A claim as claims.yaml would declare it (validated by the same parser)."""
    return C.claim_from_dict({"id": "c", "title": "c", "sweep": "s", "decision": "d",
                              "factor": "norm", "rule": rule, **claim})


def verdict(rule: dict, runs: list[Run], **claim) -> C.Verdict:
    return C.evaluate(claim_of(rule, **claim), runs)[0]


HIGHER = {"type": "compare", "metric": "m", "a": "torch", "b": "none", "expect": "higher",
          "threshold": 0.01, "paired": True}


# ---------------------------------------------------------------------------------------------
# compare
# ---------------------------------------------------------------------------------------------

def test_compare_reaches_all_three_outcomes() -> None:
    base = [0.90, 0.91, 0.92, 0.905, 0.915]
    up = [b + 0.05 + 0.001 * i for i, b in enumerate(base)]
    assert verdict(HIGHER, compare_runs(up, base)).verdict == C.SUPPORTED
    down = [b - 0.05 + 0.001 * i for i, b in enumerate(base)]
    v = verdict(HIGHER, compare_runs(down, base))
    assert v.verdict == C.NOT_SUPPORTED and "not to reach the declared threshold" in v.reason
    noisy = [b + d for b, d in zip(base, [0.05, -0.04, 0.03, -0.05, 0.02], strict=True)]
    v = verdict(HIGHER, compare_runs(noisy, base))
    assert v.verdict == C.INCONCLUSIVE and "neither side is shown" in v.reason


def test_compare_needs_the_declared_effect_size() -> None:
    """A significant but tiny effect is not 'supported'; shown below the threshold it is
    'not supported'; in between it is inconclusive."""
    base = [0.90, 0.91, 0.92, 0.905, 0.915]
    tiny = [b + 0.002 + 0.0001 * i for i, b in enumerate(base)]  # +0.2 points, tight
    v = verdict(HIGHER, compare_runs(tiny, base))
    assert v.verdict == C.NOT_SUPPORTED
    wobbly = [b + d for b, d in zip(base, [0.009, 0.004, 0.012, 0.003, 0.008], strict=True)]
    v = verdict(HIGHER, compare_runs(wobbly, base))
    assert v.verdict == C.INCONCLUSIVE and "below the declared threshold" in v.reason


def test_compare_lower_on_a_log_scale_reports_ratios() -> None:
    rule = {**HIGHER, "expect": "lower", "scale": "log", "threshold": 1.25}
    a, b = [1.0, 1.1, 0.9, 1.05], [2.0, 2.3, 1.9, 2.1]
    v = verdict(rule, compare_runs(a, b))
    assert v.verdict == C.SUPPORTED and "ratio 0.4" in v.effect
    level = v.numbers["levels"]["all"]
    assert 0 < level["interval"][0] < level["effect"] < level["interval"][1]  # ratios stay > 0
    assert level["effect"] == pytest.approx(math.exp(np.mean(np.log(a) - np.log(b))))
    v = verdict(rule, compare_runs([0.0, 1.0, 1.0, 1.0], b))
    assert v.verdict == C.INCONCLUSIVE and "positive" in v.reason


def test_compare_with_one_seed_or_unpaired_seeds_is_inconclusive() -> None:
    v = verdict(HIGHER, compare_runs([0.99], [0.5]))
    assert v.verdict == C.INCONCLUSIVE and "too few runs" in v.reason
    runs = compare_runs([0.99, 0.98], [0.5, 0.6])
    runs[-1].summary["seed"] = 7
    v = verdict(HIGHER, runs)
    assert v.verdict == C.INCONCLUSIVE and "do not pair" in v.reason
    v = verdict({**HIGHER, "paired": False}, runs)  # Welch does not need pairs
    assert v.numbers["levels"]["all"]["test"] == "Welch t"


def test_zero_variance_differences_decide() -> None:
    """Deterministic runs: every paired difference exactly +0.05 -> p = 0 by the convention."""
    base = [0.90, 0.91, 0.92]
    assert verdict(HIGHER, compare_runs([b + 0.05 for b in base], base)).verdict == C.SUPPORTED
    assert verdict(HIGHER, compare_runs(base, base)).verdict == C.NOT_SUPPORTED


def test_diverged_runs_are_never_dropped_silently() -> None:
    base = [0.90, 0.91, 0.92, 0.905]
    runs = compare_runs([b + 0.05 for b in base], base)
    runs[0].summary["status"] = "diverged"  # its final metrics do not exist
    v = verdict(HIGHER, runs)
    assert v.verdict == C.INCONCLUSIVE and "diverged" in v.reason and "bias" in v.reason
    v = verdict({**HIGHER, "worst": 0.0}, runs)  # a declared worst value takes its place
    assert v.verdict != C.SUPPORTED and v.numbers["levels"]["all"]["n"] == [4, 4]


def test_each_level_must_hold_and_one_counterexample_refutes() -> None:
    rule = {**HIGHER, "each": "model.init_gain"}
    base = [0.90, 0.91, 0.92, 0.905]
    runs = (compare_runs([b + 0.05 for b in base], base, **{"model.init_gain": 1.5})
            + compare_runs([b + 0.04 for b in base], base, **{"model.init_gain": 2.0}))
    assert verdict(rule, runs).verdict == C.SUPPORTED
    runs += compare_runs([b - 0.05 for b in base], base, **{"model.init_gain": 1.1})
    v = verdict(rule, runs)
    assert v.verdict == C.NOT_SUPPORTED and "model.init_gain=1.1" in v.reason


def test_a_level_where_the_baseline_lacks_the_effect_tests_nothing() -> None:
    """b_above: a 'mitigates explosion' comparison against a baseline that does not explode
    cannot count either way."""
    rule = {**HIGHER, "expect": "lower", "scale": "log", "threshold": 1.05, "b_above": 1.05,
            "each": "model.init_gain"}
    bn = [1.21, 1.22, 1.2, 1.21]
    runs = (compare_runs(bn, [1.5, 1.49, 1.51, 1.5], **{"model.init_gain": 1.5})
            + compare_runs(bn, [1.0, 1.01, 0.99, 1.0], **{"model.init_gain": 1.0}))
    v = verdict(rule, runs)
    assert v.verdict == C.INCONCLUSIVE and "tests nothing" in v.reason
    assert "model.init_gain=1.5: supported" in v.reason


def test_holm_across_claims_can_turn_a_verdict() -> None:
    """p ~ 0.007 (the effect exceeds its threshold) survives Holm over its own two tests, not
    over a dozen claims' tests."""
    base = [0.90, 0.91, 0.92, 0.905, 0.915]
    a = [b + d for b, d in zip(base, [0.035, 0.02, 0.03, 0.045, 0.02], strict=True)]
    runs = compare_runs(a, base)
    outcome, _ = C.measure(claim_of(HIGHER), runs)
    assert 0.005 < outcome.tests["|for"] < 0.01
    assert C.decide_all({"c": outcome}, 0.05)["c"].verdict == C.SUPPORTED
    many = {f"x{i}": C.Outcome("-", {"|for": 0.5}, lambda adj, alpha, notes: (C.INCONCLUSIVE, ""))
            for i in range(10)}
    assert C.decide_all({"c": outcome, **many}, 0.05)["c"].verdict == C.INCONCLUSIVE


def test_a_significant_effect_below_its_threshold_is_not_supported_evidence() -> None:
    """Supported needs the whole declared effect shown: +1.5 points with an interval reaching
    below the 1-point threshold is significant against zero, yet inconclusive."""
    base = [0.90, 0.91, 0.92, 0.905, 0.915]
    a = [b + d for b, d in zip(base, [0.02, 0.008, 0.018, 0.012, 0.017], strict=True)]
    v = verdict(HIGHER, compare_runs(a, base))
    assert v.numbers["levels"]["all"]["p"] < 0.01  # different from zero...
    assert v.verdict == C.INCONCLUSIVE and "above the declared threshold" in v.reason


# ---------------------------------------------------------------------------------------------
# tuning, censoring
# ---------------------------------------------------------------------------------------------

def tuned_runs() -> list[Run]:
    runs = []
    for norm, best in (("torch", 0.3), ("none", 0.1)):
        for lr in (0.03, 0.1, 0.3):
            for s in range(4):
                val = 0.95 if lr == best else 0.90
                gap = (0.02 if norm == "torch" else 0.05) + 0.001 * s + (0.0 if lr == best else 0.2)
                runs.append(run(norm, s, {"val/acc": val + 0.001 * s, "m": gap},
                                **{"optim.lr": lr}))
    runs.append(run("none", 9, status="diverged", **{"optim.lr": 1.0}))  # counts as the worst
    return runs


def test_each_variant_is_compared_at_its_own_best_lr() -> None:
    rule = {**HIGHER, "expect": "lower"}
    tune = {"by": "optim.lr", "metric": "val/acc", "best": "max"}
    v = verdict(rule, tuned_runs(), tune=tune)
    assert {k: c["value"] for k, c in v.numbers["tuned"].items()} == {"torch": 0.3, "none": 0.1}
    assert v.numbers["tuned"]["torch"]["edge"] and not v.numbers["tuned"]["none"]["edge"]
    assert v.verdict == C.SUPPORTED  # 2 vs 5 points at the winners
    assert len(v.numbers["same_setting"]) == 3  # reported at every shared lr


def steps_run(norm: str, seed: int, reached_at: int | None, total: int = 1000) -> Run:
    records = [{"step": s, "kind": "val", "val/acc": 0.99 if reached_at and s >= reached_at else 0.5}
               for s in range(100, total + 1, 100)]
    r = run(norm, seed, {}, records=records)
    r.summary["total_steps"] = total
    return r


def test_steps_to_target_and_censoring() -> None:
    rule = {"type": "compare", "metric": "steps_to:val/acc>=0.95", "a": "torch", "b": "none",
            "expect": "lower", "scale": "log", "threshold": 1.25, "paired": True}
    r = steps_run("torch", 0, 300)
    assert r.metric(rule["metric"]) == 300 and not metrics.censored({}, r.records, rule["metric"])
    never = steps_run("none", 0, None)
    assert never.metric(rule["metric"]) == 1000  # the whole budget: the worst outcome
    fast = [steps_run("torch", s, 200 + 100 * (s % 2)) for s in range(4)]
    slow = [steps_run("none", s, 700 + 100 * (s % 2)) for s in range(4)]
    assert verdict(rule, fast + slow).verdict == C.SUPPORTED
    slow_censored = [steps_run("none", s, None if s == 0 else 800) for s in range(4)]
    assert verdict(rule, fast + slow_censored).verdict == C.SUPPORTED  # censoring favours b
    # a's censored run (budget 1000) would still look 4x faster than b's 4000 steps: a bound
    # that flatters a may not make the claim 'supported'.
    fast_censored = [steps_run("torch", s, None if s == 0 else 200) for s in range(4)]
    slower = [steps_run("none", s, 4000 + 100 * s, total=5000) for s in range(4)]
    v = verdict(rule, fast_censored + slower)
    assert v.verdict == C.INCONCLUSIVE and "never reached" in v.reason
    v = verdict(rule, [steps_run("torch", s, None) for s in range(3)]
                + [steps_run("none", s, None) for s in range(3)])
    assert v.verdict == C.INCONCLUSIVE and "no run of either variant" in v.reason
    assert "target (steps_to:val/acc>=0.95) is out of reach" in v.reason
    assert "not a finding about BN" in v.reason


# ---------------------------------------------------------------------------------------------
# equivalent, growth_at_init, max_stable_lr
# ---------------------------------------------------------------------------------------------

EQUIV = {"type": "equivalent", "metric_a": "m", "metric_b": "m", "a": "torch", "b": "none",
         "margin": 0.01, "paired": True}


def test_equivalence_by_tost() -> None:
    base = [0.90, 0.91, 0.92, 0.905, 0.915]
    close = [b + d for b, d in zip(base, [0.001, -0.002, 0.0, 0.002, -0.001], strict=True)]
    assert verdict(EQUIV, compare_runs(close, base)).verdict == C.SUPPORTED
    far = [b - 0.05 + 0.001 * i for i, b in enumerate(base)]
    assert verdict(EQUIV, compare_runs(far, base)).verdict == C.NOT_SUPPORTED
    wide = [b + d for b, d in zip(base, [0.02, -0.02, 0.01, -0.015, 0.0], strict=True)]
    assert verdict(EQUIV, compare_runs(wide, base)).verdict == C.INCONCLUSIVE


def growth_records(rate: float, step_last_rate: float, depth: int = 8) -> list[dict]:
    """Weight-gradient norms that grow by ``rate`` per layer toward the input (fc2..fc8)."""
    def probe(step: int, r: float) -> dict:
        rec = {"step": step, "kind": "probe", "grad/fc1/weight": 123.0, "grad/head/weight": 0.1}
        rec.update({f"grad/fc{i}/weight": r ** (depth - i) for i in range(2, depth + 1)})
        return rec
    return [probe(0, rate), probe(20, step_last_rate)]


def test_growth_rate_is_the_signed_per_layer_factor() -> None:
    assert metrics.growth_rate([8.0, 4.0, 2.0, 1.0]) == pytest.approx(2.0)  # explodes toward input
    assert metrics.growth_rate([1.0, 2.0, 4.0]) == pytest.approx(0.5)  # vanishes toward input
    assert metrics.growth_rate([1.0, 1.0]) is None  # too few layers for a slope
    r = run("torch", 0, records=growth_records(1.21, 1.05))
    assert r.metric("growth:grad/weight@0") == pytest.approx(1.21)  # fc1 and the head left out
    assert r.metric("growth:grad/weight@last") == pytest.approx(1.05)


GROWTH = {"type": "growth_at_init", "metric": "growth:grad/weight@0", "a": "torch", "b": "none",
          "threshold": 1.05, "theory": 1.2112, "paired": True}


def growth_runs(bn: list[float], plain: list[float]) -> list[Run]:
    return ([run("torch", s, records=growth_records(g, 1.0)) for s, g in enumerate(bn)]
            + [run("none", s, records=growth_records(g, 1.0)) for s, g in enumerate(plain)])


def test_growth_at_init_outcomes() -> None:
    v = verdict(GROWTH, growth_runs([1.21, 1.22, 1.20, 1.23], [1.0, 1.01, 0.99, 1.0]))
    assert v.verdict == C.SUPPORTED and "theory 1.2112" in v.effect
    assert abs(v.numbers["relative_error_vs_theory"]) < 0.02
    v = verdict(GROWTH, growth_runs([1.0, 1.01, 0.99, 1.0], [1.0, 1.01, 0.99, 1.0]))
    assert v.verdict == C.NOT_SUPPORTED  # BN does not explode
    v = verdict(GROWTH, growth_runs([1.21, 1.22, 1.20, 1.23], [1.21, 1.2, 1.22, 1.21]))
    assert v.verdict == C.NOT_SUPPORTED  # the plain net explodes as much: not BN's doing
    v = verdict(GROWTH, growth_runs([1.5, 0.9, 1.3, 0.95], [1.0, 1.01, 0.99, 1.0]))
    assert v.verdict == C.INCONCLUSIVE


def test_a_level_outside_the_declared_scope_is_shown_not_tested() -> None:
    """Claim 4 at lr 1.0: the plain net at chance. That level is shown, left out of the
    verdict, and named in the reason; with no level inside, the claim is inconclusive."""
    rule = {**HIGHER, "expect": "lower", "scale": "log", "threshold": 1.25, "each": "optim.lr",
            "scope": {"metric": "test/acc", "at_least": 0.2, "why": "it does not train"}}
    runs = [run(norm, s, {"m": m * (1 + 0.01 * s), "test/acc": acc}, **{"optim.lr": lr})
            for lr, accs, ms in ((0.1, (0.95, 0.96), (1.0, 2.0)), (1.0, (0.96, 0.1), (1.0, 100.0)))
            for norm, acc, m in zip(("torch", "none"), accs, ms, strict=True)
            for s in range(6)]
    v = verdict(rule, runs)
    assert v.verdict == C.SUPPORTED and "outside the declared scope" in v.reason
    assert "norm=none's mean test/acc is 0.1 < 0.2: it does not train" in v.reason
    assert list(v.numbers["levels"]) == ["optim.lr=0.1"]
    assert "optim.lr=1.0" in v.numbers["out_of_scope"]
    v = verdict(rule, [r for r in runs if r.config["optim.lr"] == 1.0])
    assert v.verdict == C.INCONCLUSIVE and "no level is within the claim's declared scope" in v.reason


LR_RULE = {"type": "max_stable_lr", "a": "torch", "b": "none", "min_acc": 0.9, "threshold": 1,
           "paired": True}


def lr_runs(max_stable: dict[str, list[float | None]], grid=(0.01, 0.03, 0.1, 0.3, 1.0)) -> list[Run]:
    """Runs stable (completed, 95%) up to each seed's max lr, diverged above it."""
    runs = []
    for norm, per_seed in max_stable.items():
        for s, top in enumerate(per_seed):
            for lr in grid:
                ok = top is not None and lr <= top
                runs.append(run(norm, s, {"test/acc": 0.95 if ok else 0.1},
                                status="completed" if ok else "diverged", **{"optim.lr": lr}))
    return runs


def test_max_stable_lr_outcomes() -> None:
    """Exact sign tests: ten seeds that agree decide; three cannot (1/8 at best)."""
    v = verdict(LR_RULE, lr_runs({"torch": [1.0] * 8 + [0.3] * 2, "none": [0.1] * 8 + [0.03] * 2}))
    assert v.verdict == C.SUPPORTED and "grid steps" in v.effect and "sign tests" in v.effect
    v = verdict(LR_RULE, lr_runs({"torch": [1.0, 1.0, 0.3], "none": [0.1, 0.1, 0.03]}))
    assert v.verdict == C.INCONCLUSIVE  # unanimous, but three seeds are too few
    v = verdict(LR_RULE, lr_runs({"torch": [0.1] * 10, "none": [0.3] * 10}))
    assert v.verdict == C.NOT_SUPPORTED
    v = verdict(LR_RULE, lr_runs({"torch": [None, None], "none": [None, None]}))
    assert v.verdict == C.INCONCLUSIVE and "out of reach for these runs" in v.reason
    assert "not a finding about BN" in v.reason and "best: 0.00%" in v.reason
    v = verdict(LR_RULE, lr_runs({"torch": [1.0, 1.0], "none": [1.0, 1.0]}))
    assert v.verdict == C.INCONCLUSIVE and "cannot tell them apart" in v.reason
    v = verdict(LR_RULE, lr_runs({"torch": [0.3], "none": [None]}))
    assert v.verdict == C.INCONCLUSIVE and "too few" in v.reason  # n = 1
    v = verdict(LR_RULE, lr_runs({"torch": [0.01] * 10, "none": [None] * 10}))
    assert v.verdict == C.SUPPORTED  # stable nowhere counts one grid step below the grid


# ---------------------------------------------------------------------------------------------
# derived metrics through Run.metric (each one against a direct computation: test_metrics.py)
# ---------------------------------------------------------------------------------------------

def test_final_metrics_of_runs_that_did_not_complete_do_not_exist() -> None:
    r = run("torch", 0, {"test/acc": 0.9}, status="diverged",
            records=[{"step": 0, "kind": "probe", "grad/global": 2.0}])
    assert r.metric("test/acc") is None and r.metric("grad/global@0") == 2.0
    assert r.metric("abslog10:grad/global@0") == pytest.approx(math.log10(2.0))


def test_an_accuracy_floor_out_of_reach_is_said_so_with_the_best_run() -> None:
    """CIFAR-10's MLP never reaching MNIST's 90%: the reason names the floor and the best
    run, and claims.json records it, instead of a finding about either variant."""
    runs = [run(norm, s, {"test/acc": acc}, **{"optim.lr": lr})
            for norm, acc in (("torch", 0.41), ("none", 0.38)) for s in range(3)
            for lr in (0.01, 0.1, 1.0)]
    v = verdict(LR_RULE, runs)
    assert v.verdict == C.INCONCLUSIVE and "min_acc = 0.9 is out of reach" in v.reason
    assert "best: 41.00%" in v.reason
    assert v.numbers["out_of_reach"] == {"min_acc": 0.9, "best_test_acc": 0.41}
    v = verdict({**LR_RULE, "min_acc": 0.3}, runs)  # the CIFAR-10 floor: both stable
    assert "out_of_reach" not in v.numbers and "cannot tell them apart" in v.reason


def test_dataset_placeholders() -> None:
    spec = C.load_spec()
    assert spec.claim("learning_rate", "cifar10").rule.min_acc == 0.3  # typed, not "0.3"
    assert spec.claim("learning_rate", "mnist").rule.min_acc == 0.9
    assert "test accuracy of 0.8 " in spec.claim("learning_rate", "fashion_mnist").decision
    assert spec.claim("speeds_training", "cifar10").rule.metric == "steps_to:test/acc>=0.4"
    assert spec.claim("speeds_training", "mnist").rule.metric == "steps_to:test/acc>=0.95"
    assert spec.claim("speeds_training", "mnist").tune.metric == "steps_to:val/acc>=0.95"


def test_declared_claims_are_complete() -> None:
    spec = C.load_spec()
    assert {"overfitting", "vanishing", "exploding", "explosion_at_init", "stability",
            "learning_rate", "cost", "literal_inference", "speeds_training", "ics_explains",
            "ics_reduced", "smoother_landscape", "batch_noise_regularises"} == set(spec.ids)
    for c in spec.claims():
        sweep = spec.sweeps[c.sweep]
        assert set(C.BUDGETS) <= set(sweep.budgets), c.id
        assert c.rule.type in C.RULES and c.decision and c.if_not_supported
        standard = sweep.budgets["standard"]
        if sweep.timing:
            assert len(standard.seeds) >= 5
            continue
        seeds = [o for o in standard if o.startswith("seed=")]
        assert seeds and len(seeds[0].split("=")[1].split(",")) >= 5, c.id


@pytest.mark.slow  # every claim's sweep end to end: `pytest -m slow`
def test_claims_end_to_end_on_generated_data(cli, mnist_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "claims"
    args = ["claims", "--budget", "test", "--out", str(out), f"data.root={mnist_root}",
            "data.train_size=null",  # presets' subsets (2,000-10,000): more than tiny data has
            *[o for o in TINY if not o.startswith("trainer.epochs")]]
    result = cli(*args)
    assert result.exit_code == 0, result.output
    text = (out / "claims.md").read_text()
    assert "Preview" in text and "Preliminary verdict" in text  # the test budget is a preview
    data = json.loads((out / "claims.json").read_text())
    prov = data["provenance"]
    assert {"bnexp", "git_sha", "torch", "claims_yaml_sha256", "threads", "devices", "dataset",
            "load_average_start", "load_average_end"} <= set(prov) and prov["dataset"] == "mnist"
    assert [c["id"] for c in data["claims"]] == C.load_spec().ids
    for c in data["claims"]:
        assert c["verdict"] in ("supported", "not supported", "inconclusive") and c["reason"]
        assert {"effect", "numbers", "runs", "statuses", "not_completed", "code_versions"} <= set(c)
        assert sum(c["code_versions"].values()) == c["runs"]  # one code made them all here
        assert len(c["code_versions"]) == 1
    for c in C.load_spec().claims():
        section = text.split(f"## {c.title}")[1].split("\n## ")[0]
        assert "**Preliminary verdict: " in section
        assert "Decision rule (declared before the runs)" in section
        verdict = section.split("**Preliminary verdict: ")[1].split(".**")[0]
        assert verdict in ("supported", "not supported", "inconclusive")
        if verdict == "inconclusive":
            assert section.split(".**", 1)[1].strip()  # with its reason
    # A second call reuses every completed run.
    before = {p: p.stat().st_mtime_ns for p in out.rglob("summary.json")}
    result = cli(*args)
    assert result.exit_code == 0, result.output
    after = {p: p.stat().st_mtime_ns for p in out.rglob("summary.json")}
    assert before == after


def test_claims_rejects_output_dir_and_writes_nothing(cli, tmp_path: Path) -> None:
    out = tmp_path / "claims"
    result = cli("claims", "--budget", "test", "--out", str(out), f"output_dir={tmp_path / 'x'}")
    assert result.exit_code == 2 and "pass --out DIR instead" in result.output
    assert "Traceback" not in result.output
    assert not out.exists() and not (tmp_path / "x").exists()


@pytest.mark.slow  # every claim's sweep end to end: `pytest -m slow`
def test_claims_on_cifar_layout(cli, cifar_root: Path, tmp_path: Path) -> None:
    """data=cifar10 runs the claims whose sweep supports it, on files in the official layout:
    the MLP claims on flattened 3x32x32 images, the CNN claims on the images."""
    out = tmp_path / "claims"
    tiny = [o for o in TINY if not o.startswith(("trainer.epochs", "data.val_size"))]
    result = cli("claims", "--budget", "test", "--out", str(out), "--only",
                 "cost,literal_inference", "data=cifar10", f"data.root={cifar_root}",
                 "data.val_size=20", "data.train_size=null", *tiny)  # presets' subsets > 180
    assert result.exit_code == 0, result.output
    data = json.loads((out / "claims.json").read_text())
    assert data["provenance"]["dataset"] == "cifar10"
    assert [c["id"] for c in data["claims"]] == ["cost", "literal_inference"]
    assert sorted(p.name for p in (out / "sweeps").iterdir()) == ["cost-test-cifar10",
                                                                  "small_batch-test-cifar10"]
    config = yaml.safe_load(next((out / "sweeps" / "cost-test-cifar10").rglob("config.yaml"))
                            .read_text())
    assert config["data"]["name"] == "cifar10" and config["model"]["arch"] == "cnn"


def test_a_precondition_that_fails_makes_the_verdict_inconclusive() -> None:
    """`requires:` gates the comparison: the claim is tested only where the variants show
    what it presupposes (e.g. noisy BN less stable than no BN); it never decides a verdict."""
    base = [0.90, 0.91, 0.92, 0.905, 0.915]
    up = [b + 0.05 + 0.001 * i for i, b in enumerate(base)]
    runs = compare_runs(up, base) + [run("noisy", s, {"m": 0.5, "d": 2.0}) for s in range(5)]
    for r in runs[:10]:
        r.summary["final"]["d"] = 1.0
    holds = {"metric": "d", "a": "noisy", "b": "none", "expect": "higher", "why": "noisier"}
    v = verdict({**HIGHER, "requires": [holds]}, runs)
    assert v.verdict == C.SUPPORTED and "precondition met" in v.effect
    fails = {**holds, "expect": "lower"}
    v = verdict({**HIGHER, "requires": [fails]}, runs)
    assert v.verdict == C.INCONCLUSIVE and "precondition not met" in v.reason


def test_a_precondition_can_guard_one_verdict_only() -> None:
    """`blocks: supported`: a control that must hold before a positive result counts (claim 10:
    the same noise held still must do better, or BN's lead is the noise's, not the
    instability's). It leaves the other verdicts alone and never makes one."""
    base = [0.90, 0.91, 0.92, 0.905, 0.915]
    up = [b + 0.05 + 0.001 * i for i, b in enumerate(base)]
    same = [b + 0.001 * ((-1) ** i) for i, b in enumerate(base)]
    control = [run("noisy_static", s, {"m": 0.5}) for s in range(5)]
    fails = {"metric": "m", "a": "noisy_static", "b": "none", "expect": "higher",
             "why": "control", "blocks": "supported"}
    v = verdict({**HIGHER, "requires": [fails]}, compare_runs(up, base) + control)
    assert v.verdict == C.INCONCLUSIVE
    assert "guards a 'supported' verdict" in v.effect and "in that direction" in v.reason
    v = verdict({**HIGHER, "requires": [fails]}, compare_runs(same, base) + control)
    assert v.verdict == C.NOT_SUPPORTED, "a guard of 'supported' blocked another verdict"
    holds = {**fails, "expect": "lower"}
    v = verdict({**HIGHER, "requires": [holds]}, compare_runs(up, base) + control)
    assert v.verdict == C.SUPPORTED and "precondition (guards a 'supported' verdict) met" in v.effect


def test_a_precondition_margin_and_a_bad_guard() -> None:
    """`margin:` lets a fall short of b by that much (claim 10: the static-noise control within
    the 1-point threshold of BN); a `blocks:` that is not a verdict is a config error."""
    base = [0.90, 0.91, 0.92, 0.905, 0.915]
    up = [b + 0.05 + 0.001 * i for i, b in enumerate(base)]
    control = [run("noisy_static", s, {"m": u - 0.008}) for s, u in enumerate(up)]
    near = {"metric": "m", "a": "noisy_static", "b": "torch", "expect": "higher",
            "margin": 0.01, "why": "control", "blocks": "supported"}
    v = verdict({**HIGHER, "requires": [near]}, compare_runs(up, base) + control)
    assert v.verdict == C.SUPPORTED and "(within 0.01)" in v.effect
    v = verdict({**HIGHER, "requires": [{**near, "margin": 0.005}]},
                compare_runs(up, base) + control)
    assert v.verdict == C.INCONCLUSIVE
    with pytest.raises(BnexpError, match="`not_supported` is not one of .*`not supported`"):
        verdict({**HIGHER, "requires": [{**near, "blocks": "not_supported"}]},
                compare_runs(up, base) + control)


def test_preconditions_hold_or_fail_per_level() -> None:
    """`requires:` is checked at every `each:` level on that level's runs (claim 13: LayerNorm's
    gap against BN's at each batch size), and its line names the level. Over all runs the
    means would mix the levels (here: met, 0.0525 > 0.05), hiding that it fails at batch 32."""
    base = [0.05, 0.051, 0.049, 0.0505, 0.0495]
    rule = {**HIGHER, "expect": "lower", "threshold": 0.005, "each": "trainer.batch_size",
            "requires": [{"metric": "m", "a": "layer", "b": "torch", "expect": "higher",
                          "why": "LayerNorm does not show BN's gap"}]}
    runs = []
    for batch, layer_shift in ((32, -0.005), (128, 0.01)):
        at = {"trainer.batch_size": batch}
        runs += [run("ghost", s, {"m": g - 0.02}, **at) for s, g in enumerate(base)]
        runs += [run("torch", s, {"m": g}, **at) for s, g in enumerate(base)]
        runs += [run("layer", s, {"m": g + layer_shift}, **at) for s, g in enumerate(base)]
    rule["a"], rule["b"] = "ghost", "torch"
    v = verdict(rule, runs)
    assert "at trainer.batch_size=32: precondition NOT met" in v.effect
    assert "at trainer.batch_size=128: precondition met" in v.effect
    assert v.verdict == C.INCONCLUSIVE
    assert "trainer.batch_size=32: inconclusive (precondition not met" in v.reason
    assert "trainer.batch_size=128: supported" in v.reason


def test_two_runs_with_one_seed_in_a_group_are_an_error_naming_both() -> None:
    """Never a silent overwrite: a claim that leaves a swept key unaccounted for (here the lr)
    would otherwise keep whichever run came last for each seed."""
    base = [0.90, 0.91, 0.92]
    runs = (compare_runs([b + 0.05 for b in base], base, **{"optim.lr": 0.1})
            + compare_runs([b - 0.05 for b in base], base, **{"optim.lr": 0.3}))
    with pytest.raises(BnexpError, match="Two runs with seed 0 in one group") as err:
        verdict(HIGHER, runs)
    assert str(runs[0].dir) in str(err.value) and str(runs[6].dir) in str(err.value)
    assert verdict(HIGHER, runs, where={"optim.lr": [0.1]}).verdict == C.SUPPORTED


def test_a_bug_in_a_rule_stays_a_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a data problem (Undecidable) becomes 'inconclusive'; a KeyError or TypeError in a
    rule is a bug and must not be reported as a verdict."""
    def broken(runs, factor, rule):
        raise KeyError("oops")

    monkeypatch.setattr(C.RULES["compare"], "measure", broken)
    with pytest.raises(KeyError, match="oops"):
        verdict(HIGHER, compare_runs([0.9, 0.91], [0.9, 0.91]))


@pytest.mark.slow  # two `bnexp claims` processes at once: `pytest -m slow`
def test_two_claims_calls_on_one_out_write_every_run_once(mnist_root: Path, tmp_path: Path) -> None:
    """Two `bnexp claims --only exploding` on one --out, started together, used to train the
    same jobs twice into the same directories (metrics.jsonl records doubled, two event files
    per run). Now each job is claimed by one call, the other skips it and waits, and both
    write the verdicts."""
    import subprocess
    import sys
    import time

    out = tmp_path / "claims"
    bnexp = Path(sys.executable).parent / "bnexp"
    args = [str(bnexp), "claims", "--budget", "test", "--only", "exploding", "--out", str(out),
            f"data.root={mnist_root}", "sweep.pack=false",  # job by job: the calls meet
            *[o for o in TINY if not o.startswith("trainer.epochs")]]
    calls = []
    for _ in range(2):
        calls.append(subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
        time.sleep(0.5)  # both import torch (seconds) before their first job: they overlap
    outputs = [c.communicate(timeout=600)[0] for c in calls]
    assert [c.returncode for c in calls] == [0, 0], outputs
    logs = "".join(p.read_text() for p in (out / "sweeps").rglob("sweep.log"))  # job notes
    assert "(another bnexp call on this sweep)" in "".join(outputs) + logs, outputs  # they met
    jobs = [p.parent for p in (out / "sweeps").rglob("summary.json")]
    assert len(jobs) == 8  # 2 norms x 2 gains x 2 seeds, each once
    lines = {len((j / "metrics.jsonl").read_text().splitlines()) for j in jobs}
    assert len(lines) == 1, lines  # every run's records written once (same config, same length)
    for j in jobs:
        assert json.loads((j / "summary.json").read_text())["status"] in ("completed", "diverged")
        assert len(list((j / "tb").glob("events.out.tfevents.*"))) == 1, j
        assert not (j / ".previous").exists(), j
    assert json.loads((out / "claims.json").read_text())["claims"][0]["runs"] == 8


def test_crossfit_tuning_never_lets_a_seed_choose_its_own_run() -> None:
    """Seed 0's lucky validation score at lr 0.03 would choose lr 0.03 for every seed if one lr
    were chosen on all seeds (pooled); cross-fitted, seed 0 gets the lr best on seeds 1-3."""
    runs = []
    for s in range(4):
        for lr, val in ((0.03, 1.0 if s == 0 else 0.9), (0.1, 0.5 if s == 0 else 0.92)):
            runs.append(run("torch", s, {"val/acc": val, "m": lr}, **{"optim.lr": lr}))
            runs.append(run("none", s, {"val/acc": val, "m": 0.0}, **{"optim.lr": lr}))
    crossfit = {"by": "optim.lr", "metric": "val/acc", "best": "max"}
    _, chosen = C.tune(runs, "norm", ["torch"], claim_of(HIGHER, tune=crossfit).tune)
    assert chosen["torch"]["per_seed"] == {"0": 0.1, "1": 0.03, "2": 0.03, "3": 0.03}
    _, pooled = C.tune(runs, "norm", ["torch"],
                       claim_of(HIGHER, tune={**crossfit, "select": "pooled"}).tune)
    assert set(pooled["torch"]["per_seed"].values()) == {0.03}
    _, where = C.measure(claim_of(HIGHER, tune=crossfit), runs)
    assert "optim.lr=0.03/0.1 by seed (0: 0.1, 1: 0.03, 2: 0.03, 3: 0.03)" in where
