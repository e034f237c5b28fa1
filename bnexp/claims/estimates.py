"""From runs to estimates: which runs a rule looks at, their values by seed, and the t-based
estimate of a difference (bnexp.stats), with the words and numbers that describe it."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from bnexp import metrics
from bnexp.claims.outcome import Undecidable
from bnexp.errors import BnexpError
from bnexp.runs import Run, factor_value
from bnexp.stats import Estimate, InsufficientData, paired, welch


def same_value(a: Any, b: Any) -> bool:
    """A config value against a declared one: as numbers where both are (0.1 == "0.1")."""
    try:
        return math.isclose(float(a), float(b))
    except (TypeError, ValueError):
        return str(a) == str(b)


def select(runs: list[Run], where: dict[str, Any]) -> tuple[list[Run], str]:
    """Keep runs at the min/max of a key, or at one of the listed values."""
    notes = []
    for key, which in where.items():
        if isinstance(which, list):
            runs = [r for r in runs if any(same_value(factor_value(r, key), w) for w in which)]
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


def seed_of(run: Run) -> int:
    return int(run.summary.get("seed", run.config.get("seed", -1)))


def geomean(values: Any) -> float:
    """The geometric mean: the typical value of a ratio (a growth rate)."""
    return math.exp(float(np.mean(np.log(list(values)))))


def label(metric: str) -> tuple[float, str]:
    """Display scale and unit: accuracies in percentage points."""
    return (100.0, " point(s)") if metric.endswith("acc") else (1.0, "")


def levels(runs: list[Run], key: str | None) -> list[tuple[str, list[Run]]]:
    """The runs split at every value of ``key`` (``each:``), in numeric order; one level ""
    holding every run without it."""
    if not key:
        return [("", runs)]
    values = sorted({str(factor_value(r, key)) for r in runs}, key=lambda v: (_num(v), v))
    return [(f"{key}={v}", [r for r in runs if str(factor_value(r, key)) == v]) for v in values]


def _num(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        return math.inf


def run_values(runs: list[Run], metric: str, worst: float | None = None) -> dict[int, float]:
    """The metric of every run by seed. A run without it that did not complete takes ``worst``
    if the rule declares one; otherwise the rule cannot be decided (never a silent drop). Two
    runs with one seed in a group would make one of them vanish: an error naming both."""
    values, missing, dirs = {}, [], {}
    for r in runs:
        seed = seed_of(r)
        if seed in dirs:
            raise BnexpError(
                f"Two runs with seed {seed} in one group: {dirs[seed]} and {r.dir}. A claim "
                "compares one run per seed and variant, so its sweep varies a key that the claim "
                "neither selects (`where:`), tunes (`tune:`) nor splits into levels (`each:`), "
                "or one run was trained twice. Declare that key in the claim, or remove the "
                "extra run directory, and run again.")
        dirs[seed] = r.dir
        v = r.metric(metric)
        if (v is None or not math.isfinite(v)) and r.status != metrics.COMPLETED and worst is not None:
            v = worst
        if v is None or not math.isfinite(v):
            missing.append(f"{r.dir.name} ({r.status})")
        else:
            values[seed] = v
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
    k, unit = label(metric)
    return (f"difference {k * est.effect:+.3g}{unit} (95% CI {k * est.lo:+.3g} to "
            f"{k * est.hi:+.3g})")


def describe_test(est: Estimate) -> str:
    n = f"{est.n_a} seeds" if est.test == "paired t" else f"n = {est.n_a} and {est.n_b}"
    if est.test == "one-sample t":
        n = f"{est.n_a} seeds"
    return f"{est.test} over {n}, df {est.df:.1f}"


def est_json(est: Estimate, scale: str) -> dict[str, Any]:
    back = math.exp if scale == "log" else float
    return {"effect": back(est.effect), "interval": [back(est.lo), back(est.hi)], "p": est.p,
            "test": est.test, "df": est.df, "n": [est.n_a, est.n_b], "scale": scale}
