"""Simulating the adaptive budget (bnexp/claims/adaptive.py) with the real decision code on
drawn runs: one paired compare claim, per-seed differences ~ Normal(effect, sd), looks at 5, 10
and 20 seeds (claims.yaml's adaptive section). Used by tests/test_adaptive.py and printed by
scripts/sim_adaptive.py."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bnexp.claims import adaptive
from bnexp.claims.runner import claim_from_dict
from bnexp.runs import Run

LOOKS = [5, 10, 20]
THRESHOLD = 0.01  # one accuracy point, as claims 1 and 10 declare
RULE = {"type": "compare", "metric": "m", "a": "torch", "b": "none", "expect": "higher",
        "threshold": THRESHOLD, "paired": True}
CLAIM = claim_from_dict({"id": "sim", "title": "sim", "sweep": "s", "decision": "d",
                         "factor": "norm", "rule": RULE})


def _run(norm: str, seed: int, value: float) -> Run:
    return Run(Path(f"/sim/{norm}-{seed}"), {"status": "completed", "seed": seed,
                                            "final": {"m": value}},
               {"norm.kind": norm, "seed": seed}, {"norm": norm, "seed": str(seed)}, [])


@dataclass
class Outcome:
    verdict: str
    seeds: int
    stop: str


def one(effect: float, sd: float, rng: np.random.Generator, looks: list[int] = LOOKS,
        alpha: float = 0.05) -> Outcome:
    base = rng.normal(0.9, 0.01, looks[-1])
    diff = rng.normal(effect, sd, looks[-1])

    def provide(want: dict[str, int]) -> dict[str, list[Run]]:
        n = want["s"]
        return {"s": [_run("torch", s, base[s] + diff[s]) for s in range(n)]
                + [_run("none", s, base[s]) for s in range(n)]}

    states, _ = adaptive.sequential([CLAIM], looks, alpha, 40, 0, provide, echo=lambda _: None)
    s = states["sim"]
    return Outcome(s.verdict.verdict if s.verdict else "inconclusive", s.seeds, s.stop)


def rates(effect: float, sd: float, reps: int, seed: int = 0) -> dict[str, float]:
    """Share of each verdict over ``reps`` simulated calls, the Monte-Carlo standard error of a
    share near alpha, and the mean seeds used."""
    rng = np.random.default_rng(seed)
    outs = [one(effect, sd, rng) for _ in range(reps)]
    share = {v: sum(o.verdict == v for o in outs) / reps
             for v in ("supported", "not supported", "inconclusive")}
    return {**share, "mc_se": math.sqrt(0.05 * 0.95 / reps),
            "mean_seeds": float(np.mean([o.seeds for o in outs]))}
