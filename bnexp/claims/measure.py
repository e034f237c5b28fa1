"""Phase 1 for one claim: select its runs (``where:``), tune each variant at its own best
setting (``tune:``), and apply its rule. A data problem (a missing value, too few seeds) is an
``Undecidable`` turned into "inconclusive" with its reason; a bug keeps its traceback."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from bnexp.claims.decide import decide_all
from bnexp.claims.estimates import select, variant
from bnexp.claims.outcome import Outcome, Undecidable, Verdict
from bnexp.claims.rules import RULES
from bnexp.claims.spec import Claim, Tuning
from bnexp.runs import Run, factor_value


def tune(runs: list[Run], factor: str, variants: list[str], spec: Tuning
         ) -> tuple[list[Run], dict[str, Any]]:
    """Keep each variant's runs at its best ``spec.by`` value (mean of ``spec.metric`` over
    seeds; a run without the value, e.g. diverged, counts as the worst)."""
    worst = -math.inf if spec.best == "max" else math.inf
    kept, chosen = [], {}
    for v in variants:
        vruns = variant(runs, factor, v)
        grid = sorted({float(factor_value(r, spec.by)) for r in vruns})
        if not grid:
            continue
        scores = {}
        for x in grid:
            vals = [r.metric(spec.metric) for r in vruns if float(factor_value(r, spec.by)) == x]
            scores[x] = float(np.mean([worst if m is None or not math.isfinite(m) else m
                                       for m in vals]))
        top = (max if spec.best == "max" else min)(scores.values())
        tied = [x for x in grid if scores[x] == top]
        pick = max(tied)  # declared tie-break: the larger value (flagged in claims.md)
        kept += [r for r in vruns if float(factor_value(r, spec.by)) == pick]
        chosen[v] = {"value": pick, "scores": scores, "tied": tied if len(tied) > 1 else [],
                     "edge": len(grid) > 1 and pick in (grid[0], grid[-1])}
    return kept, chosen


def measure(claim: Claim, runs: list[Run]) -> tuple[Outcome, str]:
    """The claim's outcome before Holm, and which runs it used (in words)."""
    runs, where = select(runs, claim.where)
    if not runs:
        return Outcome("-", reason="no runs to evaluate"), where
    rule, factor = RULES[claim.rule.type], claim.factor
    extra: dict[str, Any] = {}
    notes: list[str] = []
    tuned = runs
    if claim.tune:
        tuned, chosen = tune(runs, factor, claim.rule.variants(), claim.tune)
        extra["tuned"] = chosen
        notes.append("tuned " + ", ".join(
            f"{factor}={v}: {claim.tune.by}={c['value']:g}"
            + (" (edge of the grid)" if c["edge"] else "") for v, c in chosen.items()))
    try:
        outcome = rule.measure(tuned, factor, claim.rule)
    except Undecidable as exc:
        outcome = Outcome("-", reason=str(exc))
    context = (rule.context(runs, tuned, factor, claim.rule, claim.tune and claim.tune.by)
               if hasattr(rule, "context") else {})
    # claims.json's order: the same-setting comparison, the tuning, then the other variants
    outcome.numbers.update({k: context[k] for k in ("same_setting",) if k in context}, **extra,
                           **{k: v for k, v in context.items() if k != "same_setting"})
    return outcome, "; ".join(filter(None, [where, *notes]))


def evaluate(claim: Claim, runs: list[Run], alpha: float = 0.05) -> tuple[Verdict, str]:
    """One claim on its own (a family of one): for tests and quick looks."""
    outcome, where = measure(claim, runs)
    return decide_all({claim.id: outcome}, alpha)[claim.id], where
