"""``equivalent``: metric_a of variant a within ±margin of metric_b of variant b (TOST); not
supported when the difference is shown to lie beyond the margin. ``each:`` as for compare."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar

from bnexp.claims.decide import combine
from bnexp.claims.estimates import (
    describe,
    describe_test,
    est_json,
    estimate,
    label,
    levels,
    run_values,
    variant,
)
from bnexp.claims.outcome import INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED, Decision, Outcome, Undecidable
from bnexp.claims.power import Note, tost_outlook
from bnexp.claims.spec import RuleSpec
from bnexp.claims.typed import MetricName
from bnexp.claims.words import level_forest, level_sentences, name
from bnexp.runs import Run


@dataclass(frozen=True, kw_only=True)
class Spec(RuleSpec):
    TYPE: ClassVar[str] = "equivalent"
    NAME: ClassVar[str] = "an equivalent rule's"
    metric_a: MetricName
    metric_b: MetricName
    margin: float
    each: str | None = None

    def problem(self) -> str | None:
        return None if self.margin > 0 else f"`margin: {self.margin}` must be > 0"


def _decide_level(level: str, adj: dict[str, float], alpha: float, rule: Spec,
                  note: Note) -> Decision:
    k, unit = label(rule.metric_a)
    m = f"±{k * rule.margin:g}{unit}"
    p_for, p_against = adj[f"{level}|for"], adj[f"{level}|against"]
    if p_for < alpha:
        return SUPPORTED, f"equivalent within {m} (TOST, Holm p = {p_for:.2g})"
    if p_against < alpha:
        return NOT_SUPPORTED, f"the difference is shown to exceed {m} (Holm p = {p_against:.2g})"
    if not note.decidable:
        return INCONCLUSIVE, note.text
    return INCONCLUSIVE, (f"neither equivalence within {m} nor a larger difference is "
                          f"significant (TOST Holm p = {p_for:.2g}, beyond: {p_against:.2g}); "
                          f"{note.text}")


def measure(runs: list[Run], factor: str, rule: Spec) -> Outcome:
    margin = float(rule.margin)
    effects, tests, numbers, order = [], {}, {"margin": margin, "levels": {}}, []
    outlooks: dict = {}
    for level, lruns in levels(runs, rule.each):
        tag = f"{level}: " if level else ""
        try:
            a = run_values(variant(lruns, factor, rule.a), rule.metric_a)
            b = run_values(variant(lruns, factor, rule.b), rule.metric_b)
            est = estimate(a, b, "linear", rule.paired)
        except Undecidable as exc:
            effects.append(f"{tag}not computed ({exc})")
            order.append((level, str(exc)))
            continue
        tests[f"{level}|for"], tests[f"{level}|against"] = est.tost(margin), est.p_beyond(margin)
        outlooks[level] = partial(tost_outlook, est, margin)
        numbers["levels"][level or "all"] = {**est_json(est, "linear"), "p_tost": est.tost(margin),
                                             "p_beyond": est.p_beyond(margin)}
        effects.append(f"{tag}{rule.metric_a} of {factor}={rule.a} minus {rule.metric_b} "
                       f"of {factor}={rule.b}: {describe(est, 'linear', rule.metric_a)}; "
                       f"{describe_test(est)}")
        order.append((level, ""))

    def decide(adj: dict[str, float], alpha: float, notes: dict[str, Note]) -> Decision:
        return combine([(level or "all", INCONCLUSIVE, why) if why
                        else (level or "all", *_decide_level(level, adj, alpha, rule,
                                                             notes[level]))
                        for level, why in order])

    return Outcome("; ".join(effects), tests, decide, numbers, outlooks=outlooks)


def forest(rule: Spec, numbers: dict[str, Any]) -> list[dict[str, Any]]:
    """Each level's difference and its interval against the margin, for the forest plot."""
    return level_forest(numbers, rule.margin, "within")


def plain(rule: Spec, numbers: dict[str, Any], say: str) -> tuple[list[str], str]:
    parts = level_sentences(numbers, say, name(rule.a), name(rule.b), rule.metric_a, margin=True)
    return parts, f"±{rule.margin * 100:g} points"
