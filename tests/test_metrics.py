"""bnexp.metrics: the tag builders against the documented scheme, the metric-name parser, and
every derived metric against a direct computation on hand-made records."""

from __future__ import annotations

import math
import re
import subprocess
import sys

import numpy as np
import pytest

from bnexp import claims as C
from bnexp import metrics as M


def probe(step: int, **values: float) -> dict:
    return {"step": step, "kind": "probe", **values}


# ---------------------------------------------------------------------------------------------
# tag scheme
# ---------------------------------------------------------------------------------------------

def test_tag_builders_spell_the_documented_scheme() -> None:
    assert M.split_tag("val", "acc") == M.VAL_ACC == "val/acc"
    assert (M.TRAIN_LOSS, M.TRAIN_ACC, M.TEST_LOSS, M.TEST_ACC) == (
        "train/loss", "train/acc", "test/loss", "test/acc")
    assert (M.GAP_LOSS, M.GAP_ACC, M.OPT_LR) == ("gap/loss", "gap/acc", "opt/lr")
    assert (M.STEP_MS, M.SAMPLES_PER_S) == ("time/step_ms", "time/samples_per_s")
    assert M.act("fc2", "norm", "p50") == "act/fc2/norm/p50"
    assert M.act("conv1", "post", M.UNIT_PREFIX + "p15") == "act/conv1/post/unit_p15"
    assert M.act_units("fc3") == "act/fc3/norm/units"
    assert [M.grad("fc1", k) for k in M.GRAD_KINDS] == [
        "grad/fc1/weight", "grad/fc1/bias", "grad/fc1/input"]
    assert M.update("head") == "update/head"
    assert M.hist(M.grad("fc1", "weight")) == "hist/grad/fc1/weight"
    assert M.at(M.GRAD_GLOBAL, 0) == "grad/global@0" and M.at("x", "last") == "x@last"


def test_any_layer_regex_overlays_every_layer_and_nothing_else() -> None:
    pattern = M.any_layer(M.grad, "input")
    assert pattern == "grad/[^/]+/input$"
    assert re.match(pattern, "grad/fc12/input") and re.match(pattern, "grad/head/input")
    assert not re.match(pattern, "grad/fc1/weight") and not re.match(pattern, "grad/global")
    assert M.any_layer(M.update) == "update/[^/]+$"
    post = M.any_layer(M.act, "post", "(saturated|dead)")
    assert re.match(post, "act/conv2/post/dead") and not re.match(post, "act/conv2/norm/dead")


def test_statuses_are_one_list() -> None:
    assert M.STATUSES == ("completed", "diverged", "failed", "interrupted", "running",
                          "cancelled", "timeout")
    assert set(M.FINISHED) == {M.COMPLETED, M.DIVERGED} and M.PLANNED not in M.STATUSES


def test_run_layout_and_hparam_metrics_use_the_scheme() -> None:
    """Loss, accuracy, gap, in that order; one split per chart; no chart mixes two quantities."""
    import re

    layout = M.run_layout()
    assert list(layout) == ["loss", "accuracy", "train-test gap", "speed"]
    assert [c[1] for c in layout["loss"].values()] == [
        ["^train/loss$"], ["^val/loss$"], ["^test/loss$"], ["^train_eval/loss$"]]
    assert [c[1] for c in layout["train-test gap"].values()] == [["^gap/acc$"], ["^gap/loss$"]]
    assert layout["speed"]["step ms"] == ["Multiline", ["^time/step_ms$"]]
    for charts in layout.values():
        for _, tags in charts.values():
            assert len(tags) == 1 and not re.search(tags[0], "train_eval/loss" if
                                                     tags[0] == "^train/loss$" else "x")
    assert M.HPARAM_METRICS == ("test/acc", "val/acc", "gap/acc", "gap/loss", "test/loss")


def test_layers_come_in_network_order() -> None:
    records = [probe(0, **{M.grad(n, "input"): 1.0 for n in ("head", "fc10", "fc2", "fc1")}),
               probe(0, **{M.grad("fc3", "weight"): 1.0}),
               {"step": 0, "kind": "epoch", M.grad("fc9", "input"): 1.0}]  # not a probe
    assert M.layers(records, "grad", "input") == ["fc1", "fc2", "fc10", "head"]
    assert M.layers(records, "grad", "weight") == ["fc3"]
    assert M.hidden_layers(records, "grad/") == ["fc1", "fc2", "fc3", "fc9", "fc10"]


def test_metrics_module_does_not_import_torch() -> None:
    """Report and claims read run directories without torch (a fresh interpreter shows it)."""
    code = "import sys, bnexp.metrics; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------------------------
# metric names
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("key,query", [
    ("test/acc", M.Query("final", "test/acc")),
    ("time/step_ms", M.Query("epoch_mean", "time/step_ms")),
    ("grad/fc2/input@0", M.Query("probe", "grad/fc2/input", "0")),
    ("grad/global@last", M.Query("probe", "grad/global", "last")),
    ("abslog10:grad/first_last_ratio@0",
     M.Query("abslog10", inner=M.Query("probe", "grad/first_last_ratio", "0"))),
    ("growth:grad/input@0", M.Query("growth", "input", "0")),
    ("growth:grad/weight", M.Query("growth", "weight", "0")),  # step 0 unless given
    ("drift:last", M.Query("drift", "last")),
    ("drift_units:fc2", M.Query("drift_units", "fc2")),
    ("steps_to:val/acc>=0.9", M.Query("steps_to", "val/acc", target=0.9)),
])
def test_parse_each_form(key: str, query: M.Query) -> None:
    assert M.parse(key) == query
    assert M.parse(str(query)) == query  # the canonical text parses back


@pytest.mark.parametrize("key", ["nope:test/acc", "drift:", "grad/fc1/input@first",
                                 "growth:grad/output@0", "growth:act/fc1@0", "steps_to:val/acc",
                                 "steps_to:val/acc>=high", "abslog10:grad/x@y"])
def test_malformed_names_are_errors_not_missing_values(key: str) -> None:
    with pytest.raises(ValueError, match="metric"):
        M.parse(key)


def test_at_step_moves_a_probe_metric_to_another_step() -> None:
    assert M.at_step("growth:grad/input@0", "last") == "growth:grad/input@last"
    assert M.at_step("grad/fc1/weight@last", 20) == "grad/fc1/weight@20"
    with pytest.raises(ValueError):
        M.at_step("test/acc", "last")


def claim_metric_names() -> set[str]:
    """Every metric claims.yaml names (rules, tuning, report tables), for every dataset its
    sweep runs on, with the ``{target}``-style placeholders filled in as ``bnexp claims`` does."""
    spec = C.load_spec()
    names = set()
    for claims in spec.by_dataset.values():
        for claim in claims:
            found = [getattr(claim.rule, k, None) for k in ("metric", "metric_a", "metric_b")]
            found += [claim.tune and claim.tune.metric, *claim.report]
            names.update(filter(None, found))
    return names


def test_every_metric_claims_yaml_names_parses() -> None:
    names = claim_metric_names()
    assert {"growth:grad/input@0", "drift_units:last", "gap/acc"} <= names
    for name in names:
        M.parse(name)  # raises on a typo


# ---------------------------------------------------------------------------------------------
# metric values, one derived metric per test
# ---------------------------------------------------------------------------------------------

def test_final_metric_exists_only_for_completed_runs() -> None:
    done = {"status": "completed", "final": {"test/acc": 0.9, "note": "x"}, "samples_per_s": 5}
    assert M.value(done, [], "test/acc") == 0.9
    assert M.value(done, [], "samples_per_s") == 5.0  # a summary field
    assert M.value(done, [], "note") is None and M.value(done, [], "val/acc") is None
    for status in ("diverged", "failed", "interrupted", "running"):
        assert M.value({**done, "status": status}, [], "test/acc") is None


def test_step_time_is_the_mean_over_epochs_even_for_unfinished_runs() -> None:
    records = [{"step": 10, "kind": "epoch", "time/step_ms": 2.0},
               {"step": 20, "kind": "epoch", "time/step_ms": 4.0},
               {"step": 5, "kind": "step", "time/step_ms": 100.0}]  # not an epoch record
    assert M.value({"status": "diverged"}, records, "time/step_ms") == pytest.approx(3.0)
    assert M.value({"status": "completed"}, [], "time/step_ms") is None


def test_probe_value_at_a_step_or_the_last_probe() -> None:
    records = [probe(0, **{"grad/global": 2.0}), {"step": 5, "kind": "step", "grad/global": 9.0},
               probe(10, **{"grad/global": 3.0}), probe(20, other=1.0)]
    summary = {"status": "diverged"}  # recorded before the divergence: still a value
    assert M.value(summary, records, "grad/global@0") == 2.0
    assert M.value(summary, records, "grad/global@10") == 3.0
    assert M.value(summary, records, "grad/global@last") == 3.0  # the last probe that has it
    assert M.value(summary, records, "grad/global@5") is None  # no probe at step 5
    assert M.value(summary, records, "grad/missing@0") is None


def test_abslog10_is_decades_from_one_either_way() -> None:
    for ratio, decades in ((100.0, 2.0), (0.01, 2.0), (1.0, 0.0)):
        records = [probe(0, **{"grad/first_last_ratio": ratio})]
        assert M.value({}, records, "abslog10:grad/first_last_ratio@0") == pytest.approx(decades)
    assert M.value({}, [probe(0, r=-1.0)], "abslog10:r@0") is None  # no log of a non-positive
    assert M.value({}, [], "abslog10:r@0") is None


def test_growth_rate_is_exp_of_minus_the_log_slope() -> None:
    norms = [5.0, 2.0, 1.5, 0.3]
    slope = np.polyfit([0, 1, 2, 3], np.log(norms), 1)[0]
    assert M.growth_rate(norms) == pytest.approx(math.exp(-slope))
    assert M.growth_rate([8.0, 4.0, 2.0, 1.0]) == pytest.approx(2.0)  # explodes toward input
    assert M.growth_rate([1.0, 2.0]) is None  # too few layers for a slope
    assert M.growth_rate([1.0, 0.0, 2.0]) is None and M.growth_rate([1.0, math.inf, 2.0]) is None


def test_growth_uses_the_hidden_layers_after_the_first() -> None:
    """growth:grad/<kind>@STEP fits fc2..fcN (fc1 and the head left out) of that kind."""
    def rec(step: int, rate: float) -> dict:
        values = {M.grad(f"fc{i}", "input"): rate ** (6 - i) for i in range(2, 7)}
        values.update({M.grad("fc1", "input"): 1e6, M.grad("head", "input"): 1e-6,
                       M.grad("fc3", "weight"): 1.0})
        return probe(step, **values)
    records = [rec(0, 1.3), rec(50, 0.8)]
    assert M.value({}, records, "growth:grad/input@0") == pytest.approx(1.3)
    assert M.value({}, records, "growth:grad/input") == pytest.approx(1.3)
    assert M.value({}, records, "growth:grad/input@last") == pytest.approx(0.8)
    assert M.value({}, records, "growth:grad/input@7") is None  # no probe there
    assert M.value({}, records, "growth:grad/weight@0") is None  # weight norms of fc2.. missing


def drift_by_hand(points: np.ndarray) -> float:
    """points[probe, (p15, p50, p85)]."""
    return float(np.abs(np.diff(points, axis=0)).mean() / (points[:, 2] - points[:, 0]).mean())


def test_pooled_drift_against_a_direct_computation() -> None:
    rng = np.random.default_rng(1)
    pts = {n: np.sort(rng.normal(size=(4, 3)), axis=1) for n in ("fc1", "fc2")}
    records = [probe(10 * i, **{M.act(n, "norm", q): float(pts[n][i, j]) for n in pts
                                for j, q in enumerate(M.PERCENTILES)}) for i in range(4)]
    assert M.value({}, records, "drift:last") == pytest.approx(drift_by_hand(pts["fc2"]))
    assert M.value({}, records, "drift:fc1") == pytest.approx(drift_by_hand(pts["fc1"]))
    assert M.value({}, records[:1], "drift:last") is None  # one probe: nothing moved yet
    flat = [probe(i, **{M.act("fc1", "norm", q): 1.0 for q in M.PERCENTILES}) for i in range(3)]
    assert M.value({}, flat, "drift:last") is None  # zero spread: no scale to measure against


def test_per_unit_drift_against_a_direct_computation() -> None:
    rng = np.random.default_rng(0)
    series = [np.sort(rng.normal(size=(3, 4)), axis=0) for _ in range(5)]  # [q, unit] per probe
    records = [{"step": 10 * i, "kind": "units",
                M.act_units("fc3"): {q: s[j].tolist() for j, q in enumerate(M.PERCENTILES)}}
               for i, s in enumerate(series)]
    expected = [drift_by_hand(np.array([s[:, u] for s in series])) for u in range(4)]
    assert M.value({}, records, "drift_units:last") == pytest.approx(float(np.mean(expected)))
    assert M.value({}, records[:1], "drift_units:last") is None
    assert M.value({}, [], "drift_units:last") is None


def test_step_drift_against_a_direct_computation() -> None:
    """Each probe's units paired with the units_next of the same step; an unpaired record (a
    run cut after its probe) is left out."""
    rng = np.random.default_rng(1)

    def rec(step: int, kind: str, s: np.ndarray) -> dict:
        return {"step": step, "kind": kind,
                M.act_units("fc2"): {q: s[j].tolist() for j, q in enumerate(M.PERCENTILES)}}

    before = [np.sort(rng.normal(size=(3, 4)), axis=0) for _ in range(3)]
    after = [np.sort(rng.normal(size=(3, 4)), axis=0) for _ in range(2)]
    records = [rec(0, "units", before[0]), rec(0, "units_next", after[0]),
               rec(50, "units", before[1]), rec(50, "units_next", after[1]),
               rec(100, "units", before[2])]
    expected = [drift_by_hand(np.array([b[:, u], a[:, u]]))
                for b, a in zip(before, after, strict=False) for u in range(4)]
    assert M.value({}, records, "step_drift_units:last") == pytest.approx(np.mean(expected))
    assert M.value({}, records, "drift_units:last") == M.value(
        {}, [r for r in records if r["kind"] == "units"], "drift_units:last"), \
        "units_next records leaked into the between-probes drift"
    assert M.value({}, records[-1:], "step_drift_units:last") is None


def test_steps_to_target_and_its_censoring() -> None:
    records = [{"step": 10, "kind": "val", "val/acc": 0.5}, {"step": 20, "kind": "val",
                                                            "val/acc": 0.91},
               {"step": 30, "kind": "epoch", "val/acc": 0.95}]
    done = {"status": "completed", "total_steps": 100}
    assert M.value(done, records, "steps_to:val/acc>=0.9") == 20.0
    assert not M.censored(done, records, "steps_to:val/acc>=0.9")
    # Never reached: the whole budget, a lower bound; for a diverged run too (its worst case).
    assert M.value(done, records, "steps_to:val/acc>=0.99") == 100.0
    assert M.value({**done, "status": "diverged"}, records, "steps_to:val/acc>=0.99") == 100.0
    assert M.censored(done, records, "steps_to:val/acc>=0.99")
    assert M.value({**done, "status": "failed"}, records, "steps_to:val/acc>=0.99") is None
    assert not M.censored(done, records, "val/acc")  # only steps_to can be censored


def test_mean_over_probes_averages_layers_first() -> None:
    from bnexp.metrics import value

    records = [
        {"kind": "probe", "step": 0, "ics/fc1/rel": 0.0, "ics/fc2/rel": 0.4, "ics/head/rel": 0.2},
        {"kind": "step", "step": 5, "train/loss": 1.0, "ics/fc2/rel": 99.0},  # not a probe
        {"kind": "probe", "step": 10, "ics/fc1/rel": 0.0, "ics/fc2/rel": 0.8, "ics/head/rel": 0.4,
         "ics/fc2/cos": 0.5},
        {"kind": "probe", "step": 20, "landscape/beta": 3.0},  # no ics at this probe
    ]
    assert value({}, records, "mean:ics/*/rel") == pytest.approx((0.2 + 0.4) / 2)
    assert value({}, records, "mean:landscape/beta") == 3.0
    assert value({}, records, "mean:ics/fc2/cos") == 0.5
    assert value({}, records, "mean:ics/*/l2") is None
    with pytest.raises(ValueError, match="at most one"):
        value({}, records, "mean:ics/*/*")


def test_steps_to_credits_a_run_that_reached_the_target_and_then_diverged() -> None:
    """Declared in metrics.steps_to: reaching the target counts, whatever happened after."""
    records = [{"step": s, "kind": "val", "val/acc": a}
               for s, a in ((100, 0.5), (200, 0.96), (300, 0.97))]
    diverged = {"status": "diverged", "total_steps": 1000, "diverged_step": 350}
    assert M.value(diverged, records, "steps_to:val/acc>=0.95") == 200
    assert not M.censored(diverged, records, "steps_to:val/acc>=0.95")
    never = [{"step": 100, "kind": "val", "val/acc": 0.5}]
    assert M.value(diverged, never, "steps_to:val/acc>=0.95") == 1000  # the whole budget
    assert M.censored(diverged, never, "steps_to:val/acc>=0.95")
