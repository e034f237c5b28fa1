"""``max_stable_lr``: per seed, the largest learning rate of the grid at which a variant's run
completes and reaches ``min_acc`` test accuracy; the per-seed difference in grid steps is
tested with exact one-sided sign tests against ``threshold`` steps (a grid index can make every
seed's difference equal, where a t test's variance would be zero)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar

import numpy as np

from bnexp import metrics
from bnexp.claims.decide import decide_one
from bnexp.claims.estimates import seed_of, variant
from bnexp.claims.outcome import Decision, Outcome, Undecidable
from bnexp.claims.power import Note, sign_outlook
from bnexp.claims.spec import RuleSpec
from bnexp.claims.words import name
from bnexp.runs import Run, factor_value
from bnexp.stats import sign_test_greater

LR = "optim.lr"


@dataclass(frozen=True, kw_only=True)
class Spec(RuleSpec):
    TYPE: ClassVar[str] = "max_stable_lr"
    NAME: ClassVar[str] = "a max_stable_lr rule's"
    min_acc: float
    threshold: float

    def problem(self) -> str | None:
        if not self.paired:
            return "`paired: false`: max_stable_lr compares each seed's two variants, so it is paired"
        return None if 0 <= self.min_acc <= 1 else f"`min_acc: {self.min_acc}` is not an accuracy"


def _max_stable(runs: list[Run], min_acc: float, grid: list[float]) -> dict[int, int]:
    """Grid index of the largest stable lr per seed; stable nowhere: -1 (one step below)."""
    out: dict[int, int] = {}
    for seed in sorted({seed_of(r) for r in runs}):
        stable = [grid.index(float(factor_value(r, LR))) for r in runs if seed_of(r) == seed
                  and r.status == metrics.COMPLETED and (r.metric(metrics.TEST_ACC) or 0.0) >= min_acc]
        out[seed] = max(stable) if stable else -1
    return out


def _lr_text(by_seed: dict[int, int], grid: list[float]) -> str:
    return ", ".join(f"seed {s}: {grid[i]:g}" if i >= 0 else f"seed {s}: none"
                     for s, i in by_seed.items())


def _best_acc(runs: list[Run]) -> str:
    by_lr: dict[float, list[float]] = {}
    for r in runs:
        by_lr.setdefault(float(factor_value(r, LR)), []).append(
            (r.metric(metrics.TEST_ACC) or 0.0) if r.status == metrics.COMPLETED else 0.0)
    lr, accs = max(by_lr.items(), key=lambda kv: float(np.mean(kv[1])))
    return f"{100 * float(np.mean(accs)):.2f}% at lr {lr:g}"


def best_any(runs: list[Run]) -> float:
    """The best test accuracy of any completed run (0 when none completed)."""
    return max(((r.metric(metrics.TEST_ACC) or 0.0) for r in runs
                if r.status == metrics.COMPLETED), default=0.0)


def _describe(ra: list[Run], rb: list[Run], factor: str, rule: Spec
              ) -> tuple[str, dict[str, Any], dict[int, int], dict[int, int]]:
    grid = sorted({float(factor_value(r, LR)) for r in ra + rb})
    if len(grid) < 2:
        raise Undecidable("the lr grid has fewer than 2 values")
    la, lb = (_max_stable(rs, rule.min_acc, grid) for rs in (ra, rb))
    best = {v: _best_acc(rs) for v, rs in ((rule.a, ra), (rule.b, rb))}
    diverged = {v: sorted({float(factor_value(r, LR)) for r in rs if r.status == metrics.DIVERGED})
                for v, rs in ((rule.a, ra), (rule.b, rb))}
    effect = (f"highest stable lr per seed (completed, test acc >= {rule.min_acc:.0%}, the "
              f"floor declared for this dataset): "
              f"{factor}={rule.a}: {_lr_text(la, grid)}; {factor}={rule.b}: "
              f"{_lr_text(lb, grid)}; "
              f"lrs with a diverged run: {rule.a}: {diverged[rule.a] or 'none'}, "
              f"{rule.b}: {diverged[rule.b] or 'none'}; best test acc "
              f"{rule.a}: {best[rule.a]}, {rule.b}: {best[rule.b]}")
    numbers = {"grid": grid, "grid_step_log10": float(np.median(np.diff(np.log10(grid)))),
               "max_stable_index": {"a": la, "b": lb}, "diverged_lrs": diverged,
               "best_test_acc": best, "threshold_steps": rule.threshold}
    return effect, numbers, la, lb


def measure(runs: list[Run], factor: str, rule: Spec) -> Outcome:
    ra, rb = variant(runs, factor, rule.a), variant(runs, factor, rule.b)
    if not ra or not rb:
        raise Undecidable(f"no runs for {factor}={rule.a if not ra else rule.b}")
    effect, numbers, la, lb = _describe(ra, rb, factor, rule)
    grid = numbers["grid"]
    if all(v == -1 for v in (*la.values(), *lb.values())):
        numbers["out_of_reach"] = {"min_acc": rule.min_acc, "best_test_acc": best_any(ra + rb)}
        return Outcome(effect, numbers=numbers, reason=(
            f"the accuracy floor min_acc = {rule.min_acc:g} is out of reach for these runs: no "
            f"run of either variant at any lr reached it (best: "
            f"{100 * numbers['out_of_reach']['best_test_acc']:.2f}%), so no run counts as "
            "stable. This is a limit of the constant for this dataset and budget, not a finding "
            "about BN: set a lower per-dataset `min_acc` (claims.yaml, with its justification) "
            "or train longer"))
    if all(v == len(grid) - 1 for v in (*la.values(), *lb.values())):
        return Outcome(effect, numbers=numbers, reason=f"both are stable up to the largest lr "
                       f"tested ({grid[-1]:g}) for every seed: the grid cannot tell them apart")
    if set(la) != set(lb) or len(la) < 2:
        raise Undecidable(f"seeds do not pair up or are too few ({sorted(la)} vs {sorted(lb)})")
    diffs = [float(la[s] - lb[s]) for s in sorted(la)]
    thr = float(rule.threshold)
    p_for = sign_test_greater(diffs, thr - 0.5)  # at least thr steps higher
    p_against = sign_test_greater([-d for d in diffs], -thr)  # fewer than thr steps higher
    numbers.update(differences_steps=diffs, mean_difference_steps=float(np.mean(diffs)),
                   sign_test_for=p_for, sign_test_against=p_against, n=len(diffs))
    effect += (f"; {rule.a} minus {rule.b} per seed: {diffs} grid steps (mean "
               f"{np.mean(diffs):+.2f}); exact sign tests over {len(diffs)} seeds: at least "
               f"{thr:g} step(s) higher p = {p_for:.2g}, fewer p = {p_against:.2g}")

    def decide(adj: dict[str, float], alpha: float, notes: dict[str, Note]) -> Decision:
        return decide_one(float(np.mean(diffs)), thr, adj["for"], adj["against"], alpha,
                          f"{thr:g} grid step(s) higher, for most seeds", notes[""])

    agree_for, agree_against = sum(d >= thr for d in diffs), sum(d < thr for d in diffs)
    return Outcome(effect, {"for": p_for, "against": p_against}, decide, numbers,
                   outlooks={"": partial(sign_outlook, agree_for, agree_against, len(diffs))})


def plain(rule: Spec, numbers: dict[str, Any], say: str) -> tuple[list[str], str]:
    if "differences_steps" not in numbers:
        return [], ""
    diffs, holm_p = numbers["differences_steps"], numbers.get("p_holm", {})
    return [f"The highest stable learning rate with {name(rule.a)} was {diffs} grid steps (of "
            f"{numbers['grid_step_log10']:.2f} decades) above {name(rule.b)}'s, seed by seed "
            f"(exact sign tests over {len(diffs)} seeds; Holm-adjusted p that it is "
            f"at least the threshold {holm_p.get('for', math.nan):.2g}, that it is "
            f"less {holm_p.get('against', math.nan):.2g})"], f"{rule.threshold:g} grid step(s)"
