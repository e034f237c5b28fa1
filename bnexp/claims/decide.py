"""Phase 2: from Holm-adjusted p-values to verdicts.

All p-values of one ``bnexp claims`` call form one family (Holm); a rule's two one-sided tests
per level decide it (``decide_one``); levels combine so that a general claim needs every level
and one counterexample refutes it (``combine``); and a value that is only a bound (a run that
never reached its steps-to target) may not decide in the direction it flatters
(``censor_guard``).
"""

from __future__ import annotations

import math

from bnexp.claims.outcome import (
    INCONCLUSIVE,
    NOT_SUPPORTED,
    SUPPORTED,
    Decision,
    Outcome,
    Undecidable,
    Verdict,
)
from bnexp.claims.power import Note, words
from bnexp.metrics import censored
from bnexp.runs import Run
from bnexp.stats import holm

MORE_SEEDS = Note("more seeds would narrow the interval")


def decide_one(oriented: float, thr: float, p_for: float, p_against: float, alpha: float,
               shown: str, outlook: Note = MORE_SEEDS) -> Decision:
    if p_for < alpha:
        return SUPPORTED, (f"the effect is shown to reach the declared threshold ({shown}; "
                           f"one-sided p = {p_for:.2g} after Holm)")
    if p_against < alpha:
        return NOT_SUPPORTED, (f"the effect is shown not to reach the declared threshold "
                               f"({shown}): it is smaller, zero or reversed (one-sided p = "
                               f"{p_against:.2g} after Holm)")
    where = "above" if oriented >= thr else "below"
    if not outlook.decidable:
        return INCONCLUSIVE, (f"{outlook.text} (the estimate lies {where} the declared "
                              f"threshold, {shown})")
    return INCONCLUSIVE, (f"the estimate lies {where} the declared threshold ({shown}) but "
                          f"neither side is shown after Holm (reaches it: p = {p_for:.2g}; falls "
                          f"short: p = {p_against:.2g}); {outlook.text}")


def combine(per_level: list[tuple[str, str, str]]) -> Decision:
    """Every level supported -> supported; any not supported -> not supported. The third item
    is each level's own verdict (for the forest plot)."""
    levels = {lvl: v for lvl, v, _ in per_level}
    return (*_combined(per_level), levels)  # type: ignore[return-value]


def _combined(per_level: list[tuple[str, str, str]]) -> tuple[str, str]:
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


def censoring(ra: list[Run], rb: list[Run], metric: str) -> tuple[int, int]:
    """How many runs of a and b only give a lower bound (never reached a steps_to target)."""
    def count(runs: list[Run]) -> int:
        return sum(censored(r.summary, r.records, metric) for r in runs)
    ca, cb = count(ra), count(rb)
    if ra and rb and ca == len(ra) and cb == len(rb):
        raise Undecidable(f"the target ({metric}) is out of reach for these runs: no run of "
                          "either variant reached it within its budget, so they say nothing "
                          "about which is faster. This is a limit of the constant for this "
                          "dataset and budget, not a finding about BN: set a lower per-dataset "
                          "target (claims.yaml, with its justification) or train longer")
    return ca, cb


def censor_guard(verdict: Decision, cens: tuple[int, int], expect: str, a: str, b: str
                 ) -> Decision:
    """A censored value is a lower bound: it may not decide in the direction it flatters.
    (expect lower: censored a-runs flatter a, censored b-runs flatter b.)"""
    ca, cb = cens
    flattered = {SUPPORTED: (ca, a), NOT_SUPPORTED: (cb, b)}
    if expect == "higher":
        flattered = {SUPPORTED: (cb, b), NOT_SUPPORTED: (ca, a)}
    n, who = flattered.get(verdict[0], (0, ""))
    if n:
        return INCONCLUSIVE, (f"{verdict[1]}, but {n} run(s) of {who} never reached the target, "
                              "so their value is only a bound that favours this verdict")
    return verdict


def decide_all(outcomes: dict[str, Outcome], alpha: float, cap: int = 40,
               family: int = 0, ns: tuple[int, ...] = ()) -> dict[str, Verdict]:
    """Holm over every p-value of the call, then each rule's decision, with what deciding an
    undecided level would take (bnexp/claims/power.py; ``cap``: the most seeds a claim may
    be given, declared in the claims file). ``family``: the claims file's declared number of
    tests (bnexp/claims/family.py); those this call did not compute count with p = 1. ``ns``:
    seed counts at which claims.json also states each level's projected chance of a decision
    (the adaptive budget's looks)."""
    raw = {f"{cid}::{name}": p for cid, o in outcomes.items() for name, p in o.tests.items()}
    computed = sum(not math.isnan(p) for p in raw.values())
    untested = {f"::untested::{i}": 1.0 for i in range(max(0, family - computed))}
    adjusted = holm({**raw, **untested})
    m = max(1, computed + len(untested))
    verdicts = {}
    for cid, o in outcomes.items():
        if o.decide is None:
            verdicts[cid] = Verdict(INCONCLUSIVE, o.effect, o.reason or "no test could be run",
                                    o.numbers)
            continue
        adj = {name: adjusted[f"{cid}::{name}"] for name in o.tests}
        outlooks = {level: f(alpha / m) for level, f in o.outlooks.items()}
        notes = {level: words(ol, cap, alpha, m) for level, ol in outlooks.items()}
        verdict, reason, *levels = o.decide(adj, alpha, notes)
        numbers = {**o.numbers, "p_values": o.tests, "p_holm": adj, "holm_family": m,
                   "holm_computed": computed,
                   "power": {level or "all": {**ol.as_json(ns), "cap": cap, "level": alpha / m}
                             for level, ol in outlooks.items()},
                   "level_verdicts": levels[0] if levels else {"all": verdict}}
        verdicts[cid] = Verdict(verdict, o.effect, reason, numbers)
    return verdicts
