"""``bnexp claims``: run the declared sweeps, apply the declared rules, write claims.md/.json.

Claims, sweeps, budgets, thresholds and decision rules live in ``configs/claims/claims.yaml``
(its header documents every rule type); this module only runs the sweeps and evaluates the
rules with the tests of ``bnexp.stats`` on the metrics named in ``bnexp.metrics``. Evaluation
has two phases: each rule measures its effect and names its p-values (one test for the claim,
one against it); then all p-values of the call are Holm-adjusted together and each rule decides
from the adjusted values. A rule that cannot be evaluated yields "inconclusive" with the reason.
Sweeps live in ``<out>/sweeps/<sweep>-<budget>-<dataset>/``, so a second call reuses completed
runs.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from bnexp import metrics
from bnexp.dirnames import new_run_dir
from bnexp.errors import BnexpError
from bnexp.jsonio import staging
from bnexp.metrics import censored
from bnexp.report import fmt
from bnexp.runs import Group, Run, factor_value, find_runs, group_runs
from bnexp.stats import Estimate, InsufficientData, holm, paired, sign_test_greater, welch
from bnexp.stats import one_sample as one_sample_test

SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "supported", "not supported", "inconclusive"
BUDGETS = ("test", "quick", "standard", "full")
PREVIEW_BUDGETS = ("test", "quick")  # their verdicts are worded as preliminary


def claims_file() -> Path:
    from bnexp.hydra_app import config_dir

    return config_dir() / "claims" / "claims.yaml"


def load_spec() -> dict[str, Any]:
    return yaml.safe_load(claims_file().read_text())


def load_claims() -> list[dict[str, Any]]:
    return load_spec()["claims"]


class Undecidable(Exception):
    """The rule cannot be evaluated on these runs; the message is the reason."""


# ---------------------------------------------------------------------------------------------
# Phase 1: what a rule measured. Phase 2: the verdict from Holm-adjusted p-values.
# ---------------------------------------------------------------------------------------------

@dataclass
class Outcome:
    effect: str  # the measured effect in a sentence
    tests: dict[str, float] = field(default_factory=dict)  # raw p-values by name
    decide: Callable[[dict[str, float], float], tuple[str, str]] | None = None
    numbers: dict[str, Any] = field(default_factory=dict)  # for claims.json
    reason: str = ""  # why inconclusive, when no test could be run


@dataclass
class Verdict:
    verdict: str
    effect: str
    reason: str
    numbers: dict[str, Any] = field(default_factory=dict)


def _same(a: Any, b: Any) -> bool:
    try:
        return math.isclose(float(a), float(b))
    except (TypeError, ValueError):
        return str(a) == str(b)


def select(runs: list[Run], where: dict[str, Any]) -> tuple[list[Run], str]:
    """Keep runs at the min/max of a key, or at one of the listed values."""
    notes = []
    for key, which in where.items():
        if isinstance(which, list):
            runs = [r for r in runs if any(_same(factor_value(r, key), w) for w in which)]
            notes.append(f"{key} in {{{', '.join(map(str, which))}}}")
            continue
        values = [float(v) for r in runs if (v := factor_value(r, key)) is not None]
        if values:
            target = max(values) if which == "max" else min(values)
            runs = [r for r in runs
                    if (v := factor_value(r, key)) is not None and float(v) == target]
            notes.append(f"{key}={target:g}")
    return runs, ", ".join(notes)


def variant(runs: list[Run], factor: str, value: Any) -> list[Run]:
    return [r for r in runs if str(factor_value(r, factor)) == str(value)]


def _seed(run: Run) -> int:
    return int(run.summary.get("seed", run.config.get("seed", -1)))


def _geomean(values: Any) -> float:
    """The geometric mean: the typical value of a ratio (a growth rate)."""
    return math.exp(float(np.mean(np.log(list(values)))))


def _label(metric: str) -> tuple[float, str]:
    """Display scale and unit: accuracies in percentage points."""
    return (100.0, " point(s)") if metric.endswith("acc") else (1.0, "")


# ---------------------------------------------------------------------------------------------
# Estimates from runs
# ---------------------------------------------------------------------------------------------

def run_values(runs: list[Run], metric: str, worst: float | None = None) -> dict[int, float]:
    """The metric of every run by seed. A run without it that did not complete takes ``worst``
    if the rule declares one; otherwise the rule cannot be decided (never a silent drop)."""
    values, missing = {}, []
    for r in runs:
        v = r.metric(metric)
        if (v is None or not math.isfinite(v)) and r.status != metrics.COMPLETED and worst is not None:
            v = worst
        if v is None or not math.isfinite(v):
            missing.append(f"{r.dir.name} ({r.status})")
        else:
            values[_seed(r)] = v
    if missing:
        raise Undecidable(f"{len(missing)} run(s) have no {metric} ({', '.join(missing[:4])}"
                          f"{', ...' if len(missing) > 4 else ''}); comparing only the runs that "
                          "have it would bias the result")
    return values


def estimate(a: dict[int, float], b: dict[int, float], scale: str, is_paired: bool) -> Estimate:
    """a - b on the analysis scale (log for ratios), paired by seed or Welch."""
    def tr(values: list[float]) -> list[float]:
        if scale != "log":
            return values
        if any(v <= 0 for v in values):
            raise Undecidable("a ratio needs positive values on both sides")
        return [math.log(v) for v in values]

    try:
        if is_paired:
            seeds = sorted(set(a) & set(b))
            if len(seeds) != len(a) or len(seeds) != len(b):
                raise Undecidable(f"seeds do not pair up ({sorted(a)} vs {sorted(b)})")
            return paired(tr([a[s] for s in seeds]), tr([b[s] for s in seeds]))
        return welch(tr(list(a.values())), tr(list(b.values())))
    except InsufficientData as exc:
        raise Undecidable(f"too few runs for a test: {exc}") from None


def describe(est: Estimate, scale: str, metric: str) -> str:
    """The effect and its 95% interval in the metric's units (ratios for log scale)."""
    if scale == "log":
        return (f"ratio {math.exp(est.effect):.3f} (95% CI {math.exp(est.lo):.3f} to "
                f"{math.exp(est.hi):.3f})")
    k, unit = _label(metric)
    return (f"difference {k * est.effect:+.3g}{unit} (95% CI {k * est.lo:+.3g} to "
            f"{k * est.hi:+.3g})")


def _test_text(est: Estimate) -> str:
    n = f"{est.n_a} seeds" if est.test == "paired t" else f"n = {est.n_a} and {est.n_b}"
    if est.test == "one-sample t":
        n = f"{est.n_a} seeds"
    return f"{est.test} over {n}, df {est.df:.1f}"


def _est_json(est: Estimate, scale: str) -> dict[str, Any]:
    back = math.exp if scale == "log" else float
    return {"effect": back(est.effect), "interval": [back(est.lo), back(est.hi)], "p": est.p,
            "test": est.test, "df": est.df, "n": [est.n_a, est.n_b], "scale": scale}


# ---------------------------------------------------------------------------------------------
# Rules
# ---------------------------------------------------------------------------------------------

def _threshold(rule: dict[str, Any]) -> tuple[float, str]:
    scale = rule.get("scale", "linear")
    thr = float(rule.get("threshold", 0.0))
    return (math.log(thr) if scale == "log" else thr), scale


def _compare_level(ra: list[Run], rb: list[Run], rule: dict[str, Any]) -> tuple[Estimate, str]:
    worst = rule.get("worst")
    a = run_values(ra, rule["metric"], worst)
    b = run_values(rb, rule["metric"], worst)
    _, scale = _threshold(rule)
    if "b_above" in rule and b:
        typical = _geomean(b.values()) if scale == "log" else float(np.mean(list(b.values())))
        if not typical > float(rule["b_above"]):
            raise Undecidable(f"{rule['b']}'s {rule['metric']} is {typical:.3f}, not above "
                              f"{rule['b_above']}: the baseline does not show what the claim is "
                              "about here, so this level tests nothing")
    return estimate(a, b, scale, rule.get("paired", False)), scale


def _directional(est: Estimate, rule: dict[str, Any]) -> tuple[float, float, float]:
    """(oriented effect, p for the claim, p against it), oriented so that positive is the
    claimed direction. Both are one-sided tests against the threshold itself: for = the effect
    exceeds it (a minimum-effect test, so 'supported' means the whole claimed size is shown,
    not just a non-zero effect); against = the effect falls short of it (smaller, zero or
    reversed). At most one of the two can be significant."""
    thr, _ = _threshold(rule)
    if rule["expect"] == "higher":
        return est.effect, est.p_greater(thr), est.p_less(thr)
    return -est.effect, est.p_less(-thr), est.p_greater(-thr)


def _decide_one(oriented: float, thr: float, p_for: float, p_against: float, alpha: float,
                shown: str) -> tuple[str, str]:
    if p_for < alpha:
        return SUPPORTED, (f"the effect is shown to reach the declared threshold ({shown}; "
                           f"one-sided p = {p_for:.2g} after Holm)")
    if p_against < alpha:
        return NOT_SUPPORTED, (f"the effect is shown not to reach the declared threshold "
                               f"({shown}): it is smaller, zero or reversed (one-sided p = "
                               f"{p_against:.2g} after Holm)")
    where = "above" if oriented >= thr else "below"
    return INCONCLUSIVE, (f"the estimate lies {where} the declared threshold ({shown}) but "
                          f"neither side is shown after Holm (reaches it: p = {p_for:.2g}; falls "
                          f"short: p = {p_against:.2g}); more seeds would narrow the interval")


def _shown_threshold(rule: dict[str, Any]) -> str:
    thr, scale = _threshold(rule)
    word = rule.get("expect", "")
    if scale == "log":
        return f"{word} by a factor of at least {math.exp(thr):g}"
    k, unit = _label(rule.get("metric", rule.get("metric_a", "")))
    return f"{word} by at least {k * thr:g}{unit}"


def _levels(runs: list[Run], key: str | None) -> list[tuple[str, list[Run]]]:
    if not key:
        return [("", runs)]
    values = sorted({str(factor_value(r, key)) for r in runs}, key=lambda v: (_num(v), v))
    return [(f"{key}={v}", [r for r in runs if str(factor_value(r, key)) == v]) for v in values]


def _num(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        return math.inf


def _combine(per_level: list[tuple[str, str, str]]) -> tuple[str, str]:
    """Every level supported -> supported; any not supported -> not supported."""
    if len(per_level) == 1:
        return per_level[0][1], per_level[0][2]
    verdicts = [v for _, v, _ in per_level]
    detail = "; ".join(f"{lvl}: {v} ({why})" for lvl, v, why in per_level)
    if all(v == SUPPORTED for v in verdicts):
        return SUPPORTED, f"supported at every level: {detail}"
    if NOT_SUPPORTED in verdicts:
        bad = ", ".join(lvl for lvl, v, _ in per_level if v == NOT_SUPPORTED)
        return NOT_SUPPORTED, f"refuted at {bad}: {detail}"
    return INCONCLUSIVE, f"not decided at every level: {detail}"


def _censoring(ra: list[Run], rb: list[Run], metric: str) -> tuple[int, int]:
    """How many runs of a and b only give a lower bound (never reached a steps_to target)."""
    def count(runs: list[Run]) -> int:
        return sum(censored(r.summary, r.records, metric) for r in runs)
    ca, cb = count(ra), count(rb)
    if ra and rb and ca == len(ra) and cb == len(rb):
        raise Undecidable(f"no run of either variant reached the target ({metric}) within its "
                          "budget: the runs say nothing about which is faster")
    return ca, cb


def _censor_guard(verdict: tuple[str, str], cens: tuple[int, int], rule: dict[str, Any]
                  ) -> tuple[str, str]:
    """A censored value is a lower bound: it may not decide in the direction it flatters.
    (expect lower: censored a-runs flatter a, censored b-runs flatter b.)"""
    ca, cb = cens
    flattered = {SUPPORTED: (ca, rule["a"]), NOT_SUPPORTED: (cb, rule["b"])}
    if rule["expect"] == "higher":
        flattered = {SUPPORTED: (cb, rule["b"]), NOT_SUPPORTED: (ca, rule["a"])}
    n, who = flattered.get(verdict[0], (0, ""))
    if n:
        return INCONCLUSIVE, (f"{verdict[1]}, but {n} run(s) of {who} never reached the target, "
                              "so their value is only a bound that favours this verdict")
    return verdict


GUARDED = ("all", SUPPORTED, NOT_SUPPORTED)


def _check_requires(runs: list[Run], factor: str, rule: dict[str, Any]
                    ) -> tuple[list[str], dict[str, str]]:
    """Preconditions under which the comparison tests the claim at all (``requires:``): each
    names a metric and variants a and b and the direction a's mean must lie in (past b's mean
    less ``margin``, default 0), and optionally ``blocks:`` the one verdict it guards (a control
    that rules out another explanation of a positive result guards ``supported`` only; by
    default it guards every verdict). Returns the lines to print and, per guarded verdict
    (``all`` for every one), the reason it must become inconclusive: a precondition can never
    make a verdict; the comparison is still shown."""
    lines, failed = [], {}
    for req in rule.get("requires", []):
        guards, margin = req.get("blocks", "all"), float(req.get("margin", 0))
        if guards not in GUARDED:
            raise BnexpError(f"claims.yaml: `blocks: {guards}` in a precondition of "
                             f"{req['metric']} is not a verdict; use one of {', '.join(GUARDED)}.")
        means = []
        for v in (req["a"], req["b"]):
            vals = [x for x in run_values(variant(runs, factor, v), req["metric"]).values()
                    if math.isfinite(x)]
            means.append(float(np.mean(vals)) if vals else math.nan)
        held = (means[0] > means[1] - margin if req["expect"] == "higher"
                else means[0] < means[1] + margin)
        scope = "" if guards == "all" else f" (guards a '{guards}' verdict)"
        within = f" (within {margin:g})" if margin else ""
        text = (f"{req['metric']} of {factor}={req['a']} ({means[0]:.4g}) {req['expect']} than "
                f"{factor}={req['b']} ({means[1]:.4g}){within}: {req['why']}")
        lines.append(f"precondition{scope} {'met' if held else 'NOT met'}: {text}")
        if not held and guards not in failed:
            failed[guards] = (f"precondition not met, so the comparison does not test the claim"
                              f"{'' if guards == 'all' else ' in that direction'}: {text} does "
                              "not hold")
    return lines, failed


def rule_compare(runs: list[Run], factor: str, rule: dict[str, Any]) -> Outcome:
    preconditions, failed = _check_requires(runs, factor, rule)
    thr, scale = _threshold(rule)
    shown = _shown_threshold(rule)
    effects, tests, numbers, order = [], {}, {"threshold": rule.get("threshold"), "levels": {}}, []
    for level, lruns in _levels(runs, rule.get("each")):
        ra, rb = variant(lruns, factor, rule["a"]), variant(lruns, factor, rule["b"])
        tag = f"{level}: " if level else ""
        try:
            cens = _censoring(ra, rb, rule["metric"])
            est, _ = _compare_level(ra, rb, rule)
        except Undecidable as exc:
            effects.append(f"{tag}{rule['metric']}: not computed ({exc})")
            order.append((level, None, str(exc), (0, 0)))
            continue
        oriented, p_for, p_against = _directional(est, rule)
        tests[f"{level}|for"], tests[f"{level}|against"] = p_for, p_against
        numbers["levels"][level or "all"] = {**_est_json(est, scale), "p_against": p_against,
                                             "censored": list(cens)}
        effects.append(f"{tag}{rule['metric']} of {factor}={rule['a']} vs {factor}={rule['b']}: "
                       f"{describe(est, scale, rule['metric'])}; {_test_text(est)}, "
                       f"two-sided p = {est.p:.2g}"
                       + (f"; never reached the target: {cens[0]} and {cens[1]} runs"
                          if any(cens) else ""))
        order.append((level, oriented, "", cens))

    def decide(adj: dict[str, float], alpha: float) -> tuple[str, str]:
        if "all" in failed:
            return INCONCLUSIVE, failed["all"]
        per = []
        for level, oriented, why, cens in order:
            if oriented is None:
                per.append((level or "all", INCONCLUSIVE, why))
                continue
            verdict = _decide_one(oriented, thr, adj[f"{level}|for"], adj[f"{level}|against"],
                                  alpha, shown)
            per.append((level or "all", *_censor_guard(verdict, cens, rule)))
        combined = _combine(per)
        if combined[0] in failed:
            return INCONCLUSIVE, f"{combined[1]}, but {failed[combined[0]]}"
        return combined

    numbers["requires"] = preconditions
    return Outcome("; ".join([*effects, *preconditions]), tests, decide, numbers)


def rule_equivalent(runs: list[Run], factor: str, rule: dict[str, Any]) -> Outcome:
    margin = float(rule["margin"])
    k, unit = _label(rule["metric_a"])
    effects, tests, numbers, order = [], {}, {"margin": margin, "levels": {}}, []
    for level, lruns in _levels(runs, rule.get("each")):
        tag = f"{level}: " if level else ""
        try:
            a = run_values(variant(lruns, factor, rule["a"]), rule["metric_a"])
            b = run_values(variant(lruns, factor, rule["b"]), rule["metric_b"])
            est = estimate(a, b, "linear", rule.get("paired", False))
        except Undecidable as exc:
            effects.append(f"{tag}not computed ({exc})")
            order.append((level, False, str(exc)))
            continue
        tests[f"{level}|for"], tests[f"{level}|against"] = est.tost(margin), est.p_beyond(margin)
        numbers["levels"][level or "all"] = {**_est_json(est, "linear"), "p_tost": est.tost(margin),
                                             "p_beyond": est.p_beyond(margin)}
        effects.append(f"{tag}{rule['metric_a']} of {factor}={rule['a']} minus {rule['metric_b']} "
                       f"of {factor}={rule['b']}: {describe(est, 'linear', rule['metric_a'])}; "
                       f"{_test_text(est)}")
        order.append((level, True, ""))

    def decide(adj: dict[str, float], alpha: float) -> tuple[str, str]:
        per = []
        for level, ok, why in order:
            name = level or "all"
            if not ok:
                per.append((name, INCONCLUSIVE, why))
            elif adj[f"{level}|for"] < alpha:
                per.append((name, SUPPORTED, f"equivalent within ±{k * margin:g}{unit} (TOST, "
                                             f"Holm p = {adj[f'{level}|for']:.2g})"))
            elif adj[f"{level}|against"] < alpha:
                per.append((name, NOT_SUPPORTED, f"the difference is shown to exceed "
                                                 f"±{k * margin:g}{unit} (Holm p = "
                                                 f"{adj[f'{level}|against']:.2g})"))
            else:
                per.append((name, INCONCLUSIVE, f"neither equivalence within ±{k * margin:g}{unit} "
                                                f"nor a larger difference is significant (TOST "
                                                f"Holm p = {adj[f'{level}|for']:.2g}, beyond: "
                                                f"{adj[f'{level}|against']:.2g})"))
        return _combine(per)

    return Outcome("; ".join(effects), tests, decide, numbers)


def rule_growth_at_init(runs: list[Run], factor: str, rule: dict[str, Any]) -> Outcome:
    thr = math.log(float(rule["threshold"]))
    a = run_values(variant(runs, factor, rule["a"]), rule["metric"])
    b = run_values(variant(runs, factor, rule["b"]), rule["metric"])
    if any(v <= 0 for v in (*a.values(), *b.values())):
        raise Undecidable("a growth rate must be positive")
    try:
        own = one_sample_test([math.log(v) for v in a.values()])
    except InsufficientData as exc:
        raise Undecidable(f"too few runs for a test: {exc}") from None
    diff = estimate(a, b, "log", rule.get("paired", False))
    rate, theory = math.exp(own.effect), float(rule.get("theory", math.nan))
    relaxed = run_values(variant(runs, factor, rule["a"]), metrics.at_step(rule["metric"], "last"))
    effect = (f"per-layer growth toward the input with {factor}={rule['a']}: {rate:.3f} "
              f"(95% CI {math.exp(own.lo):.3f} to {math.exp(own.hi):.3f}; {_test_text(own)}, "
              f"p = {own.p:.2g}); theory {theory:.4f}, measured {100 * (rate / theory - 1):+.1f}%; "
              f"with {factor}={rule['b']}: {_geomean(b.values()):.3f}; "
              f"ratio {rule['a']}/{rule['b']}: {describe(diff, 'log', '')}, p = {diff.p:.2g}; "
              f"after training (last probe) the {rule['a']} rate relaxes to "
              f"{_geomean(relaxed.values()):.3f}")
    tests = {"own|for": own.p_greater(thr), "own|against": own.p_less(thr),
             "diff|for": diff.p_greater(thr), "diff|against": diff.p_less(thr)}
    numbers = {"threshold": rule["threshold"], "theory": theory, "rate": _est_json(own, "log"),
               "ratio_to_b": _est_json(diff, "log"), "relative_error_vs_theory": rate / theory - 1,
               "rate_b": dict(b), "rate_last": relaxed}

    def decide(adj: dict[str, float], alpha: float) -> tuple[str, str]:
        shown = f"{rule['threshold']:g}x per layer"
        own_v = _decide_one(own.effect, thr, adj["own|for"], adj["own|against"], alpha, shown)
        diff_v = _decide_one(diff.effect, thr, adj["diff|for"], adj["diff|against"], alpha, shown)
        return _combine([(f"{rule['a']}'s growth > 1", *own_v),
                         (f"{rule['a']} vs {rule['b']}", *diff_v)])

    return Outcome(effect, tests, decide, numbers)


def _max_stable(runs: list[Run], min_acc: float, grid: list[float]) -> dict[int, int]:
    """Grid index of the largest stable lr per seed; stable nowhere: -1 (one step below)."""
    out: dict[int, int] = {}
    for seed in sorted({_seed(r) for r in runs}):
        stable = [grid.index(float(factor_value(r, "optim.lr"))) for r in runs if _seed(r) == seed
                  and r.status == metrics.COMPLETED and (r.metric(metrics.TEST_ACC) or 0.0) >= min_acc]
        out[seed] = max(stable) if stable else -1
    return out


def rule_max_stable_lr(runs: list[Run], factor: str, rule: dict[str, Any]) -> Outcome:
    ra, rb = variant(runs, factor, rule["a"]), variant(runs, factor, rule["b"])
    if not ra or not rb:
        raise Undecidable(f"no runs for {factor}={rule['a'] if not ra else rule['b']}")
    grid = sorted({float(factor_value(r, "optim.lr")) for r in ra + rb})
    if len(grid) < 2:
        raise Undecidable("the lr grid has fewer than 2 values")
    step = float(np.median(np.diff(np.log10(grid))))
    la, lb = (_max_stable(rs, rule["min_acc"], grid) for rs in (ra, rb))
    below, top = -1, len(grid) - 1
    best = {v: _best_acc(rs) for v, rs in ((rule["a"], ra), (rule["b"], rb))}
    diverged = {v: sorted({float(factor_value(r, "optim.lr")) for r in rs
                           if r.status == metrics.DIVERGED})
                for v, rs in ((rule["a"], ra), (rule["b"], rb))}
    effect = (f"highest stable lr per seed (completed, test acc >= {rule['min_acc']:.0%}): "
              f"{factor}={rule['a']}: {_lr_text(la, grid)}; {factor}={rule['b']}: "
              f"{_lr_text(lb, grid)}; "
              f"lrs with a diverged run: {rule['a']}: {diverged[rule['a']] or 'none'}, "
              f"{rule['b']}: {diverged[rule['b']] or 'none'}; best test acc "
              f"{rule['a']}: {best[rule['a']]}, {rule['b']}: {best[rule['b']]}")
    numbers = {"grid": grid, "grid_step_log10": step, "max_stable_index": {"a": la, "b": lb},
               "diverged_lrs": diverged, "best_test_acc": best, "threshold_steps": rule["threshold"]}
    if all(v == below for v in (*la.values(), *lb.values())):
        return Outcome(effect, numbers=numbers, reason="neither variant is stable at any lr of "
                       "the grid: the grid says nothing about which tolerates more")
    if all(v == top for v in (*la.values(), *lb.values())):
        return Outcome(effect, numbers=numbers, reason=f"both are stable up to the largest lr "
                       f"tested ({grid[-1]:g}) for every seed: the grid cannot tell them apart")
    if set(la) != set(lb) or len(la) < 2:
        raise Undecidable(f"seeds do not pair up or are too few ({sorted(la)} vs {sorted(lb)})")
    diffs = [float(la[s] - lb[s]) for s in sorted(la)]
    thr = float(rule["threshold"])
    # The outcome is a grid index, so every seed can give the same difference (a t test's
    # variance would be zero): exact one-sided sign tests against the threshold instead.
    p_for = sign_test_greater(diffs, thr - 0.5)  # at least thr steps higher
    p_against = sign_test_greater([-d for d in diffs], -thr)  # fewer than thr steps higher
    numbers.update(differences_steps=diffs, mean_difference_steps=float(np.mean(diffs)),
                   sign_test_for=p_for, sign_test_against=p_against, n=len(diffs))
    effect += (f"; {rule['a']} minus {rule['b']} per seed: {diffs} grid steps (mean "
               f"{np.mean(diffs):+.2f}); exact sign tests over {len(diffs)} seeds: at least "
               f"{thr:g} step(s) higher p = {p_for:.2g}, fewer p = {p_against:.2g}")
    tests = {"for": p_for, "against": p_against}

    def decide(adj: dict[str, float], alpha: float) -> tuple[str, str]:
        return _decide_one(float(np.mean(diffs)), thr, adj["for"], adj["against"], alpha,
                           f"{thr:g} grid step(s) higher, for most seeds")

    return Outcome(effect, tests, decide, numbers)


def _lr_text(by_seed: dict[int, int], grid: list[float]) -> str:
    return ", ".join(f"seed {s}: {grid[i]:g}" if i >= 0 else f"seed {s}: none"
                     for s, i in by_seed.items())


def _best_acc(runs: list[Run]) -> str:
    by_lr: dict[float, list[float]] = {}
    for r in runs:
        by_lr.setdefault(float(factor_value(r, "optim.lr")), []).append(
            (r.metric(metrics.TEST_ACC) or 0.0) if r.status == metrics.COMPLETED else 0.0)
    lr, accs = max(by_lr.items(), key=lambda kv: float(np.mean(kv[1])))
    return f"{100 * float(np.mean(accs)):.2f}% at lr {lr:g}"


RULES: dict[str, Callable[[list[Run], str, dict[str, Any]], Outcome]] = {
    "compare": rule_compare, "equivalent": rule_equivalent,
    "growth_at_init": rule_growth_at_init, "max_stable_lr": rule_max_stable_lr}


# ---------------------------------------------------------------------------------------------
# Tuning: each variant at its own best learning rate, chosen on the validation split
# ---------------------------------------------------------------------------------------------

def tune(runs: list[Run], factor: str, variants: list[str], spec: dict[str, Any]
         ) -> tuple[list[Run], dict[str, Any]]:
    """Keep each variant's runs at its best ``spec['by']`` value (mean of ``spec['metric']`` over
    seeds; a run without the value, e.g. diverged, counts as the worst)."""
    key, on, best = spec["by"], spec["metric"], spec.get("best", "max")
    worst = -math.inf if best == "max" else math.inf
    kept, chosen = [], {}
    for v in variants:
        vruns = variant(runs, factor, v)
        grid = sorted({float(factor_value(r, key)) for r in vruns})
        if not grid:
            continue
        scores = {}
        for x in grid:
            vals = [r.metric(on) for r in vruns if float(factor_value(r, key)) == x]
            scores[x] = float(np.mean([worst if m is None or not math.isfinite(m) else m
                                       for m in vals]))
        top = (max if best == "max" else min)(scores.values())
        tied = [x for x in grid if scores[x] == top]
        pick = max(tied)  # declared tie-break: the larger value (flagged in claims.md)
        kept += [r for r in vruns if float(factor_value(r, key)) == pick]
        chosen[v] = {"value": pick, "scores": scores, "tied": tied if len(tied) > 1 else [],
                     "edge": len(grid) > 1 and pick in (grid[0], grid[-1])}
    return kept, chosen


def _same_setting(runs: list[Run], factor: str, rule: dict[str, Any], key: str) -> list[str]:
    """The comparison at every shared value of ``key`` (descriptive: raw p, no Holm)."""
    lines = []
    shared = sorted({float(factor_value(r, key)) for r in variant(runs, factor, rule["a"])}
                    & {float(factor_value(r, key)) for r in variant(runs, factor, rule["b"])})
    for x in shared:
        at = [r for r in runs if float(factor_value(r, key)) == x]
        try:
            ra, rb = variant(at, factor, rule["a"]), variant(at, factor, rule["b"])
            _censoring(ra, rb, rule["metric"])
            est, scale = _compare_level(ra, rb, rule)
            lines.append(f"{key}={x:g}: {describe(est, scale, rule['metric'])}, p = {est.p:.2g}")
        except Undecidable as exc:
            lines.append(f"{key}={x:g}: not computed ({exc})")
    return lines


def _also(runs: list[Run], factor: str, rule: dict[str, Any]) -> list[str]:
    lines = []
    for v in rule.get("also", []):
        if not variant(runs, factor, v):
            continue
        try:
            est, scale = _compare_level(variant(runs, factor, v), variant(runs, factor, rule["b"]),
                                        rule)
            text = describe(est, scale, rule["metric"])
            if scale == "log":
                text += f" ({100 * (math.exp(est.effect) - 1):+.1f}%)"
            lines.append(f"{factor}={v} vs {factor}={rule['b']}: {text}, p = {est.p:.2g}")
        except Undecidable as exc:
            lines.append(f"{factor}={v}: not computed ({exc})")
    return lines


# ---------------------------------------------------------------------------------------------
# One claim, then all claims with Holm
# ---------------------------------------------------------------------------------------------

def with_dataset(claim: dict[str, Any], dataset: str) -> dict[str, Any]:
    """The claim with ``{name}`` placeholders filled from ``per_dataset`` for this dataset."""
    values = {k: v.get(dataset) for k, v in claim.get("per_dataset", {}).items()}
    if any(v is None for v in values.values()):
        return claim
    text = yaml.safe_dump(claim, sort_keys=False)
    for k, v in values.items():
        text = text.replace("{" + k + "}", str(v))
    return yaml.safe_load(text)


def measure(claim: dict[str, Any], runs: list[Run]) -> tuple[Outcome, str]:
    """Phase 1 for one claim: select, tune, apply the rule."""
    runs, where = select(runs, claim.get("where", {}))
    factor, rule = claim["factor"], claim["rule"]
    if not runs:
        return Outcome("-", reason="no runs to evaluate"), where
    extra: dict[str, Any] = {}
    notes: list[str] = []
    if claim.get("tune"):
        variants = [rule["a"], rule["b"], *rule.get("also", [])]
        if rule["type"] == "compare":
            extra["same_setting"] = _same_setting(runs, factor, rule, claim["tune"]["by"])
        runs, chosen = tune(runs, factor, variants, claim["tune"])
        extra["tuned"] = chosen
        notes.append("tuned " + ", ".join(
            f"{factor}={v}: {claim['tune']['by']}={c['value']:g}"
            + (" (edge of the grid)" if c["edge"] else "") for v, c in chosen.items()))
    try:
        outcome = RULES[rule["type"]](runs, factor, rule)
    except Undecidable as exc:
        outcome = Outcome("-", reason=str(exc))
    except (KeyError, TypeError, ValueError) as exc:
        outcome = Outcome("-", reason=f"the rule could not be evaluated: {exc!r}")
    if rule["type"] == "compare":
        extra["also"] = _also(runs, factor, rule)
    outcome.numbers.update(extra)
    return outcome, "; ".join(filter(None, [where, *notes]))


def decide_all(outcomes: dict[str, Outcome], alpha: float) -> dict[str, Verdict]:
    """Phase 2: Holm over every p-value of the call, then each rule's decision."""
    raw = {f"{cid}::{name}": p for cid, o in outcomes.items() for name, p in o.tests.items()}
    adjusted = holm(raw)
    verdicts = {}
    for cid, o in outcomes.items():
        if o.decide is None:
            verdicts[cid] = Verdict(INCONCLUSIVE, o.effect, o.reason or "no test could be run",
                                    o.numbers)
            continue
        adj = {name: adjusted[f"{cid}::{name}"] for name in o.tests}
        verdict, reason = o.decide(adj, alpha)
        numbers = {**o.numbers, "p_values": o.tests, "p_holm": adj, "holm_family": len(raw)}
        verdicts[cid] = Verdict(verdict, o.effect, reason, numbers)
    return verdicts


def evaluate(claim: dict[str, Any], runs: list[Run], alpha: float = 0.05) -> tuple[Verdict, str]:
    """One claim on its own (a family of one): for tests and quick looks."""
    outcome, where = measure(claim, runs)
    return decide_all({claim["id"]: outcome}, alpha)[claim["id"]], where


# ---------------------------------------------------------------------------------------------
# bnexp claims: run the sweeps, decide, write claims.md and claims.json
# ---------------------------------------------------------------------------------------------

def _dataset(overrides: list[str]) -> str:
    names = [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0] in ("data", "data.name")]
    return names[-1] if names else "mnist"


def plan(budget: str, overrides: list[str], only: list[str] | None
         ) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]], str]:
    """Check the call before anything runs: (spec, claims to run, claims skipped, dataset)."""
    if any(o.lstrip("+~").split("=", 1)[0] == "output_dir" for o in overrides):
        raise BnexpError("bnexp claims keeps its sweeps, figures and claims.md together under "
                         "--out, so output_dir= would have no effect: pass --out DIR instead.")
    if budget not in BUDGETS:
        raise BnexpError(f"--budget {budget} is not a budget. Use one of: {', '.join(BUDGETS)} "
                         "(e.g. --budget quick).")
    spec = load_spec()
    known = [c["id"] for c in spec["claims"]]
    if only and set(only) - set(known):
        raise BnexpError(f"Unknown claim in --only {','.join(only)}. Known claims: "
                         f"{', '.join(known)}.")
    dataset = _dataset(overrides)
    chosen = [c for c in spec["claims"] if not only or c["id"] in only]
    run, skipped = [], []
    for c in chosen:
        sweep = spec["sweeps"][c["sweep"]]
        if budget not in sweep["budgets"]:
            raise BnexpError(f"--budget {budget} is not declared for claim {c['id']}.")
        (run if dataset in sweep["datasets"] else skipped).append(c)
    if not run:
        raise BnexpError(f"No selected claim supports data={dataset} (see `datasets:` in "
                         f"{claims_file()}); pick another dataset or other claims.")
    return spec, run, skipped, dataset


def run_claims(budget: str, out: Path, overrides: list[str], only: list[str] | None = None,
               echo: Any = print) -> Path:
    """Run the sweeps the chosen claims need (reusing completed runs), decide every claim with
    one Holm family, and write ``<out>/claims.md`` and ``<out>/claims.json`` atomically."""
    from bnexp.sweep import run_sweep

    spec, claims, skipped, dataset = plan(budget, overrides, only)
    started = _stamp_start()
    out.mkdir(parents=True, exist_ok=True)
    sweep_runs: dict[str, tuple[list[Run], list, Path, list[str]]] = {}
    for name in dict.fromkeys(c["sweep"] for c in claims):
        sweep = spec["sweeps"][name]
        sweep_dir = new_run_dir(out, f"{name}-{budget}-{dataset}", "sweeps", unique=False)
        if "timing" in sweep:
            args = run_timing(sweep, budget, overrides, sweep_dir, echo)
        else:
            args = [f"experiment={sweep['preset']}", *sweep["budgets"][budget], *overrides]
            echo(f"[{name}] bnexp train -m {' '.join(args)} -> {sweep_dir}")
            run_sweep(args, ["bnexp", "claims", "--budget", budget], sweep_dir=sweep_dir)
        runs, problems = find_runs([sweep_dir])
        sweep_runs[name] = (runs, problems, sweep_dir, args)
    outcomes, wheres = {}, {}
    claims = [with_dataset(c, dataset) for c in claims]
    for claim in claims:
        outcomes[claim["id"]], wheres[claim["id"]] = measure(claim, sweep_runs[claim["sweep"]][0])
    verdicts = decide_all(outcomes, float(spec.get("alpha", 0.05)))
    for claim in claims:
        v = verdicts[claim["id"]]
        echo(f"[{claim['id']}] {v.verdict}: {v.reason}")
    provenance = _provenance(started, dataset, budget, overrides, sweep_runs)
    return write_claims(out, budget, spec, claims, skipped, verdicts, wheres, sweep_runs,
                        provenance)


def run_timing(sweep: dict[str, Any], budget: str, overrides: list[str], sweep_dir: Path,
               echo: Any) -> list[str]:
    """A timing sweep: per seed, every variant timed interleaved in one process
    (bnexp.timing); seeds whose variants all have a summary.json are kept."""
    from bnexp.hydra_app import compose_config
    from bnexp.timing import run_interleaved

    b, kinds = sweep["budgets"][budget], list(sweep["timing"]["variants"])
    base = [f"experiment={sweep['preset']}", *overrides]
    command = ["bnexp", "time", *base, f"--variants={','.join(kinds)}", f"--rounds={b['rounds']}",
               f"--window={b['window']}", f"--seeds={','.join(map(str, b['seeds']))}"]
    echo(f"[timing] {' '.join(command)} -> {sweep_dir}")
    for seed in b["seeds"]:
        done = [sweep_dir / f"seed={seed},norm={k}" / "summary.json" for k in kinds]
        if all(p.exists() for p in done):
            continue
        cfg = compose_config([*base, f"seed={seed}"])
        run_interleaved(cfg, kinds, b["rounds"], b["window"], sweep_dir, base)
    return command[2:]


def _stamp_start() -> dict[str, Any]:
    return {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "t0": time.time(),
            "load_start": list(os.getloadavg())}


def _provenance(started: dict[str, Any], dataset: str, budget: str, overrides: list[str],
                sweep_runs: dict[str, Any]) -> dict[str, Any]:
    """What produced the verdicts: versions, code, the rules' hash, the machine and its load."""
    from importlib.metadata import version

    import bnexp
    from bnexp.runlog import git_sha

    summaries = [r.summary for runs, *_ in sweep_runs.values() for r in runs]
    return {
        "bnexp": bnexp.__version__, "git_sha": git_sha(), "torch": version("torch"),
        "claims_yaml_sha256": hashlib.sha256(claims_file().read_bytes()).hexdigest(),
        "dataset": dataset, "budget": budget, "overrides": overrides,
        "threads": sorted({s["threads"] for s in summaries if "threads" in s}),
        "devices": sorted({s["device"] for s in summaries if "device" in s}),
        "cpu_count": os.cpu_count(), "started": started["started"],
        "wall_time_s": round(time.time() - started["t0"], 1),
        "load_average_start": started["load_start"], "load_average_end": list(os.getloadavg()),
    }


def write_claims(out: Path, budget: str, spec: dict[str, Any], claims: list[dict[str, Any]],
                 skipped: list[dict[str, Any]], verdicts: dict[str, Verdict],
                 wheres: dict[str, str], sweep_runs: dict[str, Any],
                 provenance: dict[str, Any]) -> Path:
    """claims.md, figures/ and claims.json, built in a temporary folder and moved into place
    only when complete: a failure leaves the previous results as they were."""
    from bnexp import figures
    from bnexp.jsonio import write_json_atomic

    with staging(out, ("figures", "claims.md", "claims.json")) as tmp:
        sections = []
        for claim in claims:
            runs, problems, sweep_dir, args = sweep_runs[claim["sweep"]]
            keys, groups = group_runs(runs)
            shown, _ = select(runs, claim.get("where", {}))  # figures: the runs the rule uses
            made = (figures.all_figures(group_runs(shown)[1], tmp / "figures" / claim["id"])
                    if shown else {})
            made = {t: out / p.relative_to(tmp) for t, p in made.items()}
            sections.append(_section(claim, budget, args, runs, groups, verdicts[claim["id"]],
                                     wheres[claim["id"]], made, problems, out, spec))
        text = _header(budget, spec, claims, skipped, verdicts, provenance) + "\n".join(sections)
        (tmp / "claims.md").write_text(text + "\n")
        write_json_atomic(tmp / "claims.json", {
            "provenance": provenance, "alpha": spec.get("alpha", 0.05),
            "claims": [_claim_json(c, verdicts[c["id"]], sweep_runs[c["sweep"]]) for c in claims],
            "not_run": [{"id": c["id"], "reason": f"its sweep does not support data="
                         f"{provenance['dataset']}"} for c in skipped]})
    return out / "claims.md"


def _claim_json(claim: dict[str, Any], v: Verdict, sweep: tuple) -> dict[str, Any]:
    runs, problems, sweep_dir, args = sweep
    statuses: dict[str, int] = {}
    for r in runs:
        statuses[r.status] = statuses.get(r.status, 0) + 1
    return {"id": claim["id"], "title": claim["title"], "verdict": v.verdict, "reason": v.reason,
            "effect": v.effect, "rule": claim["rule"], "numbers": v.numbers,
            "sweep": str(sweep_dir), "args": args,
            "runs": len(runs), "statuses": statuses,
            "not_completed": [{"dir": r.dir.name, "status": r.status,
                               "why": r.summary.get("error") or r.summary.get("diverged_step")}
                              for r in runs if r.status != metrics.COMPLETED],
            "unreadable": [{"dir": str(p), "why": why} for p, why in problems]}


def _header(budget: str, spec: dict[str, Any], claims: list[dict[str, Any]],
            skipped: list[dict[str, Any]], verdicts: dict[str, Verdict],
            prov: dict[str, Any]) -> str:
    word = "Preliminary verdict" if budget in PREVIEW_BUDGETS else "Verdict"
    lines = ["# What does Batch Normalization actually do? — bnexp claims", ""]
    if budget in PREVIEW_BUDGETS:
        lines += [f"> **Preview.** The `{budget}` budget runs few seeds and short training to "
                  "give a first look in minutes; its verdicts are preliminary. The verdicts we "
                  "stand behind come from `bnexp claims --budget standard` (>= 5 seeds).", ""]
    lines += [
        f"Budget **{budget}**, dataset **{prov['dataset']}**. Each verdict comes from the rule "
        "declared in `configs/claims/claims.yaml` before the runs, applied by "
        "`bnexp/claims.py`; none is written by hand. Every claim has an effect-size threshold "
        "and two one-sided tests against it: that the effect reaches it (for) and that it "
        "falls short (against); all "
        f"{sum(len(v.numbers.get('p_values', {})) for v in verdicts.values())} p-values of "
        f"this call are Holm-adjusted together at alpha = {spec.get('alpha', 0.05)}. "
        "'Supported' means the whole declared effect is shown, 'not supported' that the effect "
        "is shown to be smaller (or zero, or reversed); anything else is 'inconclusive', with "
        "the reason.", "",
        f"| claim | {word.lower()} |", "|---|---|",
        *[f"| {c['title']} | **{verdicts[c['id']].verdict}** |" for c in claims], "",
        f"Produced by bnexp {prov['bnexp']} (git {prov['git_sha'] or 'unknown'}), torch "
        f"{prov['torch']}, claims.yaml sha256 {prov['claims_yaml_sha256'][:12]}, threads "
        f"{prov['threads']}, devices {prov['devices']}, {prov['cpu_count']} CPUs; started "
        f"{prov['started']}, {prov['wall_time_s']:.0f} s; load average "
        f"{prov['load_average_start'][0]:.2f} at the start, {prov['load_average_end'][0]:.2f} at "
        "the end. Machine-readable: `claims.json`.", ""]
    if skipped:
        lines += ["Not run on this dataset: " + ", ".join(c["id"] for c in skipped) + ".", ""]
    return "\n".join(lines) + "\n"


NAMES = {"torch": "BN", "bn": "BN", "none": "no normalisation", "custom": "bnexp's BN",
         "seed": "the write-up's literal BN", "dropout": "dropout", "weight_decay": "weight decay",
         "bn_dropout": "BN with dropout", "noisy": "noisy BN", "ghost": "ghost BN",
         "layer": "LayerNorm", "group": "GroupNorm"}


def plain(claim: dict[str, Any], v: Verdict) -> str:
    """The verdict in one or two sentences a student can follow: effect, interval, test,
    threshold, conclusion."""
    rule, numbers = claim["rule"], v.numbers
    a, b = NAMES.get(str(rule["a"]), rule["a"]), NAMES.get(str(rule["b"]), rule["b"])
    what = claim.get("say", "the measured quantity")
    holm_p = numbers.get("p_holm", {})
    parts = []
    for level, est in numbers.get("levels", {}).items():
        where = "" if level == "all" else f"at {level}, "
        lo, hi = est["interval"]
        if est["scale"] == "log":
            parts.append(f"{where}{what} with {a} was {est['effect']:.3g}x that with {b} "
                         f"(95% CI {lo:.3g} to {hi:.3g}")
        else:
            k, unit = _label(rule.get("metric", rule.get("metric_a", "")))
            parts.append(f"{where}{what} with {a} minus that with {b} was "
                         f"{k * est['effect']:+.2f}{unit} (95% CI {k * lo:+.2f} to {k * hi:+.2f}")
        key = "" if level == "all" else level
        p_for, p_against = holm_p.get(f"{key}|for"), holm_p.get(f"{key}|against")
        parts[-1] += f"; {est['test']} over {est['n'][0]} seeds"
        if p_for is None:
            parts[-1] += ")"
        elif "margin" in rule:
            parts[-1] += (f"; Holm-adjusted p that they agree within the margin {p_for:.2g}, "
                          f"that they differ by more {p_against:.2g})")
        else:
            parts[-1] += (f"; Holm-adjusted p that it reaches the threshold {p_for:.2g}, that "
                          f"it falls short {p_against:.2g})")
    if "rate" in numbers:  # growth_at_init
        r, d = numbers["rate"], numbers["ratio_to_b"]
        parts.append(f"With {a} the gradient norm grew {r['effect']:.3f}x per layer toward the "
                     f"input (95% CI {r['interval'][0]:.3f} to {r['interval'][1]:.3f}; mean-field "
                     f"theory {numbers['theory']:.4f}), {d['effect']:.3f}x the rate with {b} "
                     f"(95% CI {d['interval'][0]:.3f} to {d['interval'][1]:.3f}), over "
                     f"{r['n'][0]} seeds (Holm-adjusted p that each reaches the threshold: "
                     f"{holm_p.get('own|for', math.nan):.2g} and "
                     f"{holm_p.get('diff|for', math.nan):.2g})")
    if "differences_steps" in numbers:  # max_stable_lr
        diffs = numbers["differences_steps"]
        parts.append(f"The highest stable learning rate with {a} was {diffs} grid steps (of "
                     f"{numbers['grid_step_log10']:.2f} decades) above {b}'s, seed by seed "
                     f"(exact sign tests over {len(diffs)} seeds; Holm-adjusted p that it is "
                     f"at least the threshold {holm_p.get('for', math.nan):.2g}, that it is "
                     f"less {holm_p.get('against', math.nan):.2g})")
    if not parts:
        return ""
    bound = (f"±{rule['margin'] * 100:g} points" if "margin" in rule
             else f"{rule['threshold']:g} grid step(s)" if rule["type"] == "max_stable_lr"
             else f"{rule['threshold']:g}x per layer" if rule["type"] == "growth_at_init"
             else _shown_threshold(rule))
    text = "; ".join(parts)
    return (f"In plain words: {text[0].upper() + text[1:]}. The claim needed {bound}, with a "
            f"significant test; so it is **{v.verdict}**.")


def _section(claim: dict[str, Any], budget: str, args: list[str], runs: list[Run],
             groups: list[Group], v: Verdict, where: str, made: dict[str, Path],
             problems: list, out: Path, spec: dict[str, Any]) -> str:
    word = "Preliminary verdict" if budget in PREVIEW_BUDGETS else "Verdict"
    verb = "time" if "timing" in spec["sweeps"][claim["sweep"]] else "train -m"
    seeds = sorted({_seed(r) for r in runs})
    reason = v.reason[:1].upper() + v.reason[1:]
    lines = [f"## {claim['title']}", "", f"**{word}: {v.verdict}.** {reason}.", ""]
    if plain(claim, v):
        lines += [plain(claim, v), ""]
    if v.verdict == NOT_SUPPORTED and claim.get("if_not_supported"):
        lines += [f"**Where the write-up is wrong:** {claim['if_not_supported'].strip()}", ""]
    tuned = v.numbers.get("tuned", {})
    if tuned:
        by = claim["tune"]["by"]
        lines.append(f"**Each variant at its own best {by}** (chosen on the validation split by "
                     f"{claim['tune']['metric']}): " + ", ".join(
                         f"{claim['factor']}={k}: {c['value']:g}"
                         + (" (at the edge of the grid: the best may lie beyond it)"
                            if c["edge"] else "")
                         + (f" (tied with {', '.join(f'{x:g}' for x in c['tied'] if x != c['value'])}"
                            ": the larger wins, as declared)" if c.get("tied") else "")
                         for k, c in tuned.items()) + ".")
        lines.append("")
    lines += [f"- Measured: {v.effect}.",
              f"- Decision rule (declared before the runs): {claim['decision']}",
              f"- Experiment: `bnexp {verb} {' '.join(args)}` "
              f"(`configs/experiment/{spec['sweeps'][claim['sweep']]['preset']}.yaml`); "
              f"{len(runs)} runs, seeds {seeds}" + (f"; the rule uses {where}" if where else "")]
    for line in v.numbers.get("same_setting", []):
        lines.append(f"- Same learning rate for both (descriptive, no Holm): {line}")
    for line in v.numbers.get("also", []):
        lines.append(f"- Also measured (not part of the verdict): {line}")
    reported = claim.get("report", [])
    lines += ["", "| " + " | ".join(["group", "runs (status)", *reported]) + " |",
              "|" + "---|" * (2 + len(reported))]
    for g in groups:
        status = ", ".join(f"{n} {k}" for k, n in sorted(g.statuses().items()))
        cells = [fmt(g.stat(m, statuses=metrics.FINISHED),
                     100 if m.endswith("acc") else 1, 2 if m.endswith("acc") else 4)
                 for m in reported]
        lines.append(f"| {g.label} | {len(g.runs)} ({status}) | " + " | ".join(cells) + " |")
    not_done = [r for r in runs if r.status != metrics.COMPLETED]
    if not_done:
        lines += ["", f"Runs that did not complete ({len(not_done)}, counted above): "
                  + ", ".join(f"`{r.dir.name}` {r.status}" for r in not_done[:12])
                  + (" ..." if len(not_done) > 12 else "")]
    for p, reason in problems:
        lines.append(f"\n- skipped unreadable `{p}`: {reason}")
    lines.append("")
    for title, path in made.items():
        lines += [f"![{title}]({path.relative_to(out)})", ""]
    return "\n".join(lines)
