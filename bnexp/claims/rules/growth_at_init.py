"""``growth_at_init``: the per-layer gradient growth rate of variant a at initialisation must
exceed ``threshold`` (one-sample t on the log) and exceed b's by that factor (paired t); the
mean-field ``theory`` is printed beside the measured rate (Yang et al. 2019)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar

from bnexp import metrics
from bnexp.claims.decide import combine, decide_one
from bnexp.claims.estimates import describe, describe_test, est_json, estimate, geomean, run_values, variant
from bnexp.claims.outcome import Decision, Outcome, Undecidable
from bnexp.claims.power import Note, t_outlook
from bnexp.claims.spec import RuleSpec
from bnexp.claims.typed import MetricName
from bnexp.claims.words import name
from bnexp.runs import Run
from bnexp.stats import InsufficientData, one_sample


@dataclass(frozen=True, kw_only=True)
class Spec(RuleSpec):
    TYPE: ClassVar[str] = "growth_at_init"
    NAME: ClassVar[str] = "a growth_at_init rule's"
    TESTS_PER_LEVEL: ClassVar[int] = 4  # its own rate and the ratio to b, each for and against
    metric: MetricName
    threshold: float
    theory: float = math.nan

    def problem(self) -> str | None:
        if not self.metric.startswith("growth:"):
            return f"`metric: {self.metric}` must be a growth rate (growth:...)"
        return None if self.threshold > 0 else "`threshold` is a ratio per layer and must be > 0"


def measure(runs: list[Run], factor: str, rule: Spec) -> Outcome:
    thr = math.log(float(rule.threshold))
    a = run_values(variant(runs, factor, rule.a), rule.metric)
    b = run_values(variant(runs, factor, rule.b), rule.metric)
    if any(v <= 0 for v in (*a.values(), *b.values())):
        raise Undecidable("a growth rate must be positive")
    try:
        own = one_sample([math.log(v) for v in a.values()])
    except InsufficientData as exc:
        raise Undecidable(f"too few runs for a test: {exc}") from None
    diff = estimate(a, b, "log", rule.paired)
    rate, theory = math.exp(own.effect), float(rule.theory)
    relaxed = run_values(variant(runs, factor, rule.a), metrics.at_step(rule.metric, "last"))
    effect = (f"per-layer growth toward the input with {factor}={rule.a}: {rate:.3f} "
              f"(95% CI {math.exp(own.lo):.3f} to {math.exp(own.hi):.3f}; {describe_test(own)}, "
              f"one-sided p that it exceeds {rule.threshold:g} = {own.p_greater(thr):.2g}); "
              f"theory {theory:.4f}, measured {100 * (rate / theory - 1):+.1f}%; "
              f"with {factor}={rule.b}: {geomean(b.values()):.3f}; "
              f"ratio {rule.a}/{rule.b}: {describe(diff, 'log', '')}, one-sided p that it "
              f"exceeds {rule.threshold:g} = {diff.p_greater(thr):.2g}; "
              f"after training (last probe) the {rule.a} rate relaxes to "
              f"{geomean(relaxed.values()):.3f}")
    tests = {"own|for": own.p_greater(thr), "own|against": own.p_less(thr),
             "diff|for": diff.p_greater(thr), "diff|against": diff.p_less(thr)}
    numbers = {"threshold": rule.threshold, "theory": theory, "rate": est_json(own, "log"),
               "ratio_to_b": est_json(diff, "log"), "relative_error_vs_theory": rate / theory - 1,
               "rate_b": dict(b), "rate_last": relaxed}

    def decide(adj: dict[str, float], alpha: float, notes: dict[str, Note]) -> Decision:
        shown = f"{rule.threshold:g}x per layer"
        own_v = decide_one(own.effect, thr, adj["own|for"], adj["own|against"], alpha, shown,
                           notes["own"])
        diff_v = decide_one(diff.effect, thr, adj["diff|for"], adj["diff|against"], alpha, shown,
                            notes["diff"])
        return combine([(f"{rule.a}'s growth > {rule.threshold:g}", *own_v),
                        (f"{rule.a} vs {rule.b}", *diff_v)])

    outlooks = {"own": partial(t_outlook, own, own.effect - thr),
                "diff": partial(t_outlook, diff, diff.effect - thr)}
    return Outcome(effect, tests, decide, numbers, outlooks=outlooks)


def forest(rule: Spec, numbers: dict[str, Any]) -> list[dict[str, Any]]:
    """Its own rate and its ratio to b, each against the threshold, for the forest plot."""
    return [{"level": level, "effect": numbers[key]["effect"], "lo": numbers[key]["interval"][0],
             "hi": numbers[key]["interval"][1], "threshold": rule.threshold, "scale": "log",
             "expect": "higher"}
            for key, level in (("rate", f"{rule.a}'s growth > {rule.threshold:g}"),
                               ("ratio_to_b", f"{rule.a} vs {rule.b}"))
            if key in numbers]


def plain(rule: Spec, numbers: dict[str, Any], say: str) -> tuple[list[str], str]:
    if "rate" not in numbers:
        return [], ""
    r, d, holm_p = numbers["rate"], numbers["ratio_to_b"], numbers.get("p_holm", {})
    return [f"With {name(rule.a)} the gradient norm grew {r['effect']:.3f}x per layer toward the "
            f"input (95% CI {r['interval'][0]:.3f} to {r['interval'][1]:.3f}; mean-field "
            f"theory {numbers['theory']:.4f}), {d['effect']:.3f}x the rate with {name(rule.b)} "
            f"(95% CI {d['interval'][0]:.3f} to {d['interval'][1]:.3f}), over "
            f"{r['n'][0]} seeds (Holm-adjusted p that each reaches the threshold: "
            f"{holm_p.get('own|for', math.nan):.2g} and "
            f"{holm_p.get('diff|for', math.nan):.2g})"], f"{rule.threshold:g}x per layer"
