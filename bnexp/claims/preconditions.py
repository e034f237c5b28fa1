"""``requires:``: preconditions under which a comparison tests the claim at all, checked at
every level (``each:``) on that level's runs only.

Each names a metric, variants a and b and the direction a's mean must lie in (past b's mean
less ``margin``, default 0), and optionally ``blocks:`` the one verdict it guards (a control
that rules out another explanation of a positive result guards ``supported`` only; by default
it guards every verdict). A precondition can never make a verdict: one that fails turns the
guarded verdict inconclusive, and the comparison is still shown.
"""

from __future__ import annotations

import math

import numpy as np

from bnexp.claims.estimates import run_values, variant
from bnexp.claims.spec import Precondition
from bnexp.runs import Run


def check(runs: list[Run], factor: str, requires: list[Precondition], level: str = ""
          ) -> tuple[list[str], dict[str, str]]:
    """The lines to print and, per guarded verdict (``all`` for every one), the reason it must
    become inconclusive. ``level`` names the runs' level in the lines ("" for all runs)."""
    lines, failed = [], {}
    at = f"at {level}: " if level else ""
    for req in requires:
        means = []
        for v in (req.a, req.b):
            vals = [x for x in run_values(variant(runs, factor, v), req.metric).values()
                    if math.isfinite(x)]
            means.append(float(np.mean(vals)) if vals else math.nan)
        held = (means[0] > means[1] - req.margin if req.expect == "higher"
                else means[0] < means[1] + req.margin)
        scope = "" if req.blocks == "all" else f" (guards a '{req.blocks}' verdict)"
        within = f" (within {req.margin:g})" if req.margin else ""
        text = (f"{req.metric} of {factor}={req.a} ({means[0]:.4g}) {req.expect} than "
                f"{factor}={req.b} ({means[1]:.4g}){within}: {req.why}")
        lines.append(f"{at}precondition{scope} {'met' if held else 'NOT met'}: {text}")
        if not held and req.blocks not in failed:
            failed[req.blocks] = (f"precondition not met, so the comparison does not test the "
                                  f"claim{'' if req.blocks == 'all' else ' in that direction'}: "
                                  f"{text} does not hold")
    return lines, failed
