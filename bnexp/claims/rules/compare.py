"""``compare``: a metric of variant a against b, in the claimed direction, against an
effect-size threshold; optionally at every level of a key (``each:``), under preconditions
(``requires:``), with further variants reported beside it (``also:``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from typing import Any, ClassVar, Literal

import numpy as np

from bnexp.claims import preconditions
from bnexp.claims.decide import censor_guard, censoring, combine, decide_one
from bnexp.claims.estimates import (
    describe,
    describe_test,
    est_json,
    estimate,
    geomean,
    label,
    levels,
    run_values,
    variant,
)
from bnexp.claims.outcome import INCONCLUSIVE, Decision, Outcome, Undecidable
from bnexp.claims.power import Note, t_outlook
from bnexp.claims.spec import Precondition, RuleSpec, Scope
from bnexp.claims.typed import MetricName
from bnexp.claims.words import level_forest, level_sentences, name
from bnexp.runs import Run, factor_value
from bnexp.stats import Estimate


@dataclass(frozen=True, kw_only=True)
class Spec(RuleSpec):
    TYPE: ClassVar[str] = "compare"
    NAME: ClassVar[str] = "a compare rule's"
    metric: MetricName
    expect: Literal["higher", "lower"]
    threshold: float
    scale: Literal["linear", "log"] = "linear"
    each: str | None = None
    also: list[str] = field(default_factory=list)
    b_above: float | None = None
    requires: list[Precondition] = field(default_factory=list)
    worst: float | None = None
    scope: Scope | None = None

    def problem(self) -> str | None:
        if self.scale == "log" and not self.threshold > 0:
            return f"`threshold: {self.threshold}` on the log scale is a ratio and must be > 0"
        return None

    def variants(self) -> list[str]:
        return [self.a, self.b, *self.also]

    def threshold_on_scale(self) -> float:
        return math.log(self.threshold) if self.scale == "log" else float(self.threshold)

    def shown(self) -> str:
        if self.scale == "log":
            return f"{self.expect} by a factor of at least {self.threshold:g}"
        k, unit = label(self.metric)
        return f"{self.expect} by at least {k * self.threshold:g}{unit}"


def compare_level(ra: list[Run], rb: list[Run], rule: Spec) -> Estimate:
    a = run_values(ra, rule.metric, rule.worst)
    b = run_values(rb, rule.metric, rule.worst)
    if rule.b_above is not None and b:
        typical = geomean(b.values()) if rule.scale == "log" else float(np.mean(list(b.values())))
        if not typical > rule.b_above:
            raise Undecidable(f"{rule.b}'s {rule.metric} is {typical:.3f}, not above "
                              f"{rule.b_above}: the baseline does not show what the claim is "
                              "about here, so this level tests nothing")
    return estimate(a, b, rule.scale, rule.paired)


def _directional(est: Estimate, rule: Spec) -> tuple[float, float, float]:
    """(oriented effect, p for the claim, p against it), oriented so that positive is the
    claimed direction. Both are one-sided tests against the threshold itself: for = the effect
    exceeds it (a minimum-effect test, so 'supported' means the whole claimed size is shown,
    not just a non-zero effect); against = the effect falls short of it (smaller, zero or
    reversed). At most one of the two can be significant."""
    thr = rule.threshold_on_scale()
    if rule.expect == "higher":
        return est.effect, est.p_greater(thr), est.p_less(thr)
    return -est.effect, est.p_less(-thr), est.p_greater(-thr)


@dataclass
class _Level:
    name: str  # "" without each:
    oriented: float | None = None  # None: not computed
    why: str = ""
    cens: tuple[int, int] = (0, 0)
    failed: dict[str, str] = field(default_factory=dict)  # preconditions not met
    outside: str = ""  # why the level is outside the claim's scope ("" inside)


def _outside(lruns: list[Run], factor: str, rule: Spec) -> str:
    """Why this level is outside the claim's declared scope, or "" if it is inside."""
    if rule.scope is None:
        return ""
    sc, low = rule.scope, []
    for v in (rule.a, rule.b):
        vals = list(run_values(variant(lruns, factor, v), sc.metric, 0.0).values())
        mean = float(np.mean(vals)) if vals else math.nan
        if not mean >= sc.at_least:
            low.append(f"{factor}={v}'s mean {sc.metric} is {mean:.3g} < {sc.at_least:g}")
    return f"{' and '.join(low)}: {sc.why}" if low else ""


def _measure_level(level: str, lruns: list[Run], factor: str, rule: Spec,
                   out: Outcome) -> _Level:
    tag = f"{level}: " if level else ""
    lines, state = [], _Level(level, outside=_outside(lruns, factor, rule))
    if state.outside:
        out.effect += f"{tag}outside the claim's scope, not tested ({state.outside})"
        out.numbers.setdefault("out_of_scope", {})[level or "all"] = state.outside
        return state
    try:
        lines, state.failed = preconditions.check(lruns, factor, rule.requires, level)
        ra, rb = variant(lruns, factor, rule.a), variant(lruns, factor, rule.b)
        state.cens = censoring(ra, rb, rule.metric)
        est = compare_level(ra, rb, rule)
    except Undecidable as exc:
        out.effect += f"{tag}{rule.metric}: not computed ({exc})"
        state.why = str(exc)
        return state
    state.oriented, p_for, p_against = _directional(est, rule)
    out.outlooks[level] = partial(t_outlook, est, state.oriented - rule.threshold_on_scale())
    out.tests[f"{level}|for"], out.tests[f"{level}|against"] = p_for, p_against
    out.numbers["levels"][level or "all"] = {**est_json(est, rule.scale), "p_against": p_against,
                                             "censored": list(state.cens)}
    out.effect += (f"{tag}{rule.metric} of {factor}={rule.a} vs {factor}={rule.b}: "
                   f"{describe(est, rule.scale, rule.metric)}; {describe_test(est)}, "
                   f"two-sided p = {est.p:.2g}"
                   + (f"; never reached the target: {state.cens[0]} and {state.cens[1]} runs"
                      if any(state.cens) else ""))
    out.numbers["requires"] += lines
    return state


def _decide_level(state: _Level, adj: dict[str, float], alpha: float, rule: Spec,
                  notes: dict[str, Note]) -> Decision:
    if "all" in state.failed:
        return INCONCLUSIVE, state.failed["all"]
    if state.oriented is None:
        return INCONCLUSIVE, state.why
    verdict = decide_one(state.oriented, rule.threshold_on_scale(), adj[f"{state.name}|for"],
                         adj[f"{state.name}|against"], alpha, rule.shown(), notes[state.name])
    verdict = censor_guard(verdict, state.cens, rule.expect, rule.a, rule.b)
    if verdict[0] in state.failed:
        return INCONCLUSIVE, f"{verdict[1]}, but {state.failed[verdict[0]]}"
    return verdict


def measure(runs: list[Run], factor: str, rule: Spec) -> Outcome:
    out = Outcome("", numbers={"threshold": rule.threshold, "levels": {}, "requires": []})
    states = []
    for i, (level, lruns) in enumerate(levels(runs, rule.each)):
        out.effect += "; " if i else ""
        states.append(_measure_level(level, lruns, factor, rule, out))
    if out.numbers["requires"]:
        out.effect += "; " + "; ".join(out.numbers["requires"])

    def decide(adj: dict[str, float], alpha: float, notes: dict[str, Note]) -> Decision:
        inside = [s for s in states if not s.outside]
        if not inside:
            return INCONCLUSIVE, ("no level is within the claim's declared scope: "
                                  + "; ".join(f"{s.name}: {s.outside}" for s in states))
        verdict, reason, *rest = combine([(s.name or "all", *_decide_level(s, adj, alpha, rule,
                                                                           notes))
                                          for s in inside])
        outside = "; ".join(f"{s.name}: {s.outside}" for s in states if s.outside)
        return (verdict, reason + (f" (outside the declared scope, so not tested: {outside})"
                                   if outside else ""), *rest)

    out.decide = decide
    return out


def plain(rule: Spec, numbers: dict[str, Any], say: str) -> tuple[list[str], str]:
    parts = level_sentences(numbers, say, name(rule.a), name(rule.b), rule.metric, margin=False)
    return parts, rule.shown()


def forest(rule: Spec, numbers: dict[str, Any]) -> list[dict[str, Any]]:
    """Each level's estimate for the forest plot."""
    return level_forest(numbers, rule.threshold, rule.expect)


# ---------------------------------------------------------------------------------------------
# Beside the verdict: the comparison at every shared setting, and the other variants
# ---------------------------------------------------------------------------------------------

def same_setting(runs: list[Run], factor: str, rule: Spec, key: str) -> list[str]:
    """The comparison at every shared value of ``key`` (descriptive: raw p, no Holm)."""
    lines = []
    shared = sorted({float(factor_value(r, key)) for r in variant(runs, factor, rule.a)}
                    & {float(factor_value(r, key)) for r in variant(runs, factor, rule.b)})
    for x in shared:
        at = [r for r in runs if float(factor_value(r, key)) == x]
        try:
            ra, rb = variant(at, factor, rule.a), variant(at, factor, rule.b)
            censoring(ra, rb, rule.metric)
            est = compare_level(ra, rb, rule)
            lines.append(f"{key}={x:g}: {describe(est, rule.scale, rule.metric)}, p = {est.p:.2g}")
        except Undecidable as exc:
            lines.append(f"{key}={x:g}: not computed ({exc})")
    return lines


def also(runs: list[Run], factor: str, rule: Spec) -> list[str]:
    lines = []
    for v in rule.also:
        if not variant(runs, factor, v):
            continue
        try:
            est = compare_level(variant(runs, factor, v), variant(runs, factor, rule.b), rule)
            text = describe(est, rule.scale, rule.metric)
            if rule.scale == "log":
                text += f" ({100 * (math.exp(est.effect) - 1):+.1f}%)"
            lines.append(f"{factor}={v} vs {factor}={rule.b}: {text}, p = {est.p:.2g}")
        except Undecidable as exc:
            lines.append(f"{factor}={v}: not computed ({exc})")
    return lines


def context(all_runs: list[Run], tuned: list[Run], factor: str, rule: Spec,
            tune_by: str | None) -> dict[str, Any]:
    """What claims.md prints beside the verdict (not part of it)."""
    extra: dict[str, Any] = {}
    if tune_by:
        extra["same_setting"] = same_setting(all_runs, factor, rule, tune_by)
    extra["also"] = also(tuned, factor, rule)
    return extra
