"""Phase 1 for one claim: select its runs (``where:``), tune each variant at its own best
setting (``tune:``), and apply its rule. A data problem (a missing value, too few seeds) is an
``Undecidable`` turned into "inconclusive" with its reason; a bug keeps its traceback."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from bnexp.claims.decide import decide_all
from bnexp.claims.estimates import seed_of, select, variant
from bnexp.claims.outcome import Outcome, Undecidable, Verdict
from bnexp.claims.rules import RULES
from bnexp.claims.spec import Claim, Tuning
from bnexp.runs import Run, factor_value


def _scores(runs: list[Run], spec: Tuning, grid: list[float]) -> dict[float, float]:
    """Mean of ``spec.metric`` over the runs at each setting; a run without the value (e.g.
    diverged) counts as the worst."""
    worst = -math.inf if spec.best == "max" else math.inf
    scores = {}
    for x in grid:
        vals = [r.metric(spec.metric) for r in runs if float(factor_value(r, spec.by)) == x]
        scores[x] = float(np.mean([worst if m is None or not math.isfinite(m) else m
                                   for m in vals])) if vals else worst
    return scores


def _pick(scores: dict[float, float], best: str) -> tuple[float, list[float]]:
    """The best setting and the settings tied with it; declared tie-break: the larger value."""
    top = (max if best == "max" else min)(scores.values())
    tied = [x for x, s in scores.items() if s == top]
    return max(tied), tied


def _tune_variant(vruns: list[Run], spec: Tuning) -> tuple[list[Run], dict[str, Any]]:
    grid = sorted({float(factor_value(r, spec.by)) for r in vruns})
    scores = _scores(vruns, spec, grid)
    pick, tied = _pick(scores, spec.best)
    seeds = sorted({seed_of(r) for r in vruns})
    if spec.select == "pooled" or len(seeds) < 2:
        per_seed = {s: pick for s in seeds}
    else:  # cross-fitted: seed s at the setting best on the other seeds
        per_seed = {s: _pick(_scores([r for r in vruns if seed_of(r) != s], spec, grid),
                             spec.best)[0] for s in seeds}
    kept = [r for r in vruns if float(factor_value(r, spec.by)) == per_seed[seed_of(r)]]
    values = sorted(set(per_seed.values()))
    return kept, {"value": pick, "scores": scores,
                  "tied": tied if len(tied) > 1 else [],
                  "edge": len(grid) > 1 and any(v in (grid[0], grid[-1]) for v in values),
                  "select": spec.select if len(seeds) > 1 else "pooled",
                  "per_seed": {str(s): v for s, v in per_seed.items()}}


def tune(runs: list[Run], factor: str, variants: list[str], spec: Tuning
         ) -> tuple[list[Run], dict[str, Any]]:
    """Keep each variant's runs at its best ``spec.by`` value by ``spec.metric``: per seed, the
    best on the other seeds (``select: crossfit``, the default), or one for all (pooled)."""
    kept, chosen = [], {}
    for v in variants:
        vruns = variant(runs, factor, v)
        if vruns:
            runs_v, chosen[v] = _tune_variant(vruns, spec)
            kept += runs_v
    return kept, chosen


def chosen_words(c: dict[str, Any]) -> str:
    """The chosen setting in words: one value, or each seed's when cross-fitting differs."""
    values = set(c["per_seed"].values())
    if len(values) <= 1:
        return f"{c['value']:g}"
    return "/".join(f"{v:g}" for v in sorted(values)) + " by seed (" + ", ".join(
        f"{s}: {v:g}" for s, v in c["per_seed"].items()) + ")"


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
            f"{factor}={v}: {claim.tune.by}={chosen_words(c)}"
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
