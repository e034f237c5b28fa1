"""``bnexp claims --plan``: what a call would run and cost, and what it could decide, before
anything runs.

Runs per sweep come from its grid at the budget (the budget's swept overrides, else its preset's
sweeper params). Minutes come from measured runs of the same sweep under ``--out``: the same
budget's wall time per run where it exists, else another budget's time per training step times
this budget's steps; runs already finished by the current code count as free (the call reuses
them). The chance of a decision per claim comes from an earlier claims.json in ``--out`` for the
same dataset: each level's projected chance at the planned seeds (bnexp/claims/power.py).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from bnexp.claims.family import budget_overrides, preset_params, swept_values
from bnexp.claims.runner import Plan, plan
from bnexp.claims.spec import ADAPTIVE, Sweep, TimingBudget
from bnexp.reuse import code_stamp, code_version
from bnexp.runs import Run, find_runs

OVERHEAD = 1.10  # start-up and evaluation of each run on top of its own wall time
PER_SWEEP_S = 5.0  # Hydra's planning and the data load of a sweep (measured 3-6 s here)


def grid_keys(sweep: Sweep, budget: str) -> dict[str, int]:
    """Each swept key and its number of values (seed included): the preset's grid, with the
    budget's overrides replacing or adding swept keys."""
    keys = {k: len(v.split(",")) for k, v in preset_params(sweep.preset).items()}
    for k, v in budget_overrides(sweep, budget).items():
        if "," in v or k in keys:
            keys[k] = len(v.split(","))
    return keys


def planned_runs(sweep: Sweep, budget: str, seeds: int | None = None) -> int:
    b = sweep.budgets[budget]
    if isinstance(b, TimingBudget):
        return (seeds or len(b.seeds)) * len(sweep.timing.variants if sweep.timing else [])
    keys = grid_keys(sweep, budget)
    if seeds is not None:
        keys["seed"] = seeds
    return math.prod(keys.values()) if keys else 1


def _steps(sweep: Sweep, budget: str, like: Run) -> float:
    """Training steps of one run at ``budget``, from its overrides and a measured run."""
    overrides = budget_overrides(sweep, budget)
    if "trainer.steps" in overrides:
        return float(overrides["trainer.steps"])
    per_epoch = float(like.summary.get("steps_per_epoch") or like.summary.get("total_steps", 1))
    epochs = float(overrides.get("trainer.epochs", like.summary.get("epochs", 1)))
    return per_epoch * epochs


def seconds_per_run(name: str, sweep: Sweep, budget: str, out: Path, dataset: str,
                    here: Path) -> tuple[float | None, str, list[Run]]:
    """(seconds, basis, finished runs in ``here``, the call's own sweep directory) from what
    ``out`` holds."""
    same, _ = find_runs([here])
    walls = [float(r.summary["wall_time_s"]) for r in same if r.summary.get("wall_time_s")]
    if walls and sweep.timing:  # one process times every variant of a seed: its wall time
        walls = [w / max(1, len(sweep.timing.variants)) for w in walls]  # is in each summary
    if walls:
        return sum(walls) / len(walls), f"{len(walls)} runs of this budget", same
    others, _ = find_runs(sorted((out / "sweeps").glob(f"{name}-*-{dataset}")))
    rated = [r for r in others if r.summary.get("wall_time_s") and r.summary.get("total_steps")]
    if not rated or isinstance(sweep.budgets[budget], TimingBudget):
        return None, "no measured run of this sweep under --out", same
    per_step = sum(float(r.summary["wall_time_s"]) / float(r.summary["total_steps"])
                   for r in rated) / len(rated)
    return per_step * _steps(sweep, budget, rated[0]), f"{len(rated)} runs of other budgets, " \
        "scaled by steps", same


def _chance(claims_json: dict[str, Any] | None, cid: str, seeds: int) -> str:
    if not claims_json:
        return "-"
    claim = next((c for c in claims_json.get("claims", []) if c["id"] == cid), None)
    if claim is None or not claim["numbers"].get("power"):
        return "-"
    chances = []
    for p in claim["numbers"]["power"].values():
        at = p.get("power_at", {}).get(str(seeds))
        chances.append(at if at is not None else (p["power"] if p["n"] == seeds else None))
    known = [c for c in chances if c is not None]
    if not known:
        return "see seeds for 80% in claims.md"
    return f"{min(known):.0%}" if len(known) == 1 else f"{min(known):.0%}-{max(known):.0%}"


def forecast(p: Plan, out: Path) -> list[dict[str, Any]]:
    """One row per claim: its sweep, runs, runs to run, minutes and the chance of a decision."""
    budget = p.spec.adaptive.base if p.budget == ADAPTIVE else p.budget
    seeds = p.spec.adaptive.looks[0] if p.budget == ADAPTIVE else None
    earlier = out / "claims.json"
    old = json.loads(earlier.read_text()) if earlier.exists() else None
    if old and old.get("provenance", {}).get("dataset") != p.dataset:
        old = None
    now = code_version(code_stamp())
    rows, costed = [], set()
    for c in p.claims:
        sweep = p.spec.sweeps[c.sweep]
        runs = planned_runs(sweep, budget, seeds)
        here = (out / "sweeps" / f"{c.sweep}-adaptive-{p.dataset}" / "look1"
                if p.budget == ADAPTIVE else out / "sweeps" / f"{c.sweep}-{budget}-{p.dataset}")
        per_run, basis, finished = seconds_per_run(c.sweep, sweep, budget, out, p.dataset, here)
        fresh = sum(r.status in ("completed", "diverged") and code_version(r.summary) == now
                    for r in finished)
        todo = max(0, runs - fresh) if c.sweep not in costed else 0
        costed.add(c.sweep)
        minutes = (None if per_run is None
                   else (OVERHEAD * per_run * todo + (PER_SWEEP_S if todo else 0.0)) / 60)
        n = seeds or _seeds(sweep, budget)
        rows.append({"claim": c.id, "sweep": c.sweep, "runs": runs, "to_run": todo,
                     "minutes": minutes, "basis": basis, "seeds": n,
                     "chance": _chance(old, c.id, n)})
    return rows


def _seeds(sweep: Sweep, budget: str) -> int:
    b = sweep.budgets[budget]
    if isinstance(b, TimingBudget):
        return len(b.seeds)
    return len(swept_values(sweep, budget, "seed")) or 1


def print_plan(budget: str, out: Path, overrides: list[str], only: list[str] | None,
               spec_path: Path | None, echo: Any) -> list[dict[str, Any]]:
    p = plan(budget, overrides, only, spec_path)
    rows = forecast(p, out)
    first = " (its first look)" if budget == ADAPTIVE else ""
    echo(f"bnexp claims --budget {budget}{first}, data={p.dataset}, --out {out}: nothing is run")
    echo(f"{'claim':<26} {'sweep':<13} {'runs':>5} {'to run':>7} {'minutes':>8} {'seeds':>6} "
         f"{'chance of a decision':>21}  basis")
    for r in rows:
        minutes = "?" if r["minutes"] is None else f"{r['minutes']:.1f}"
        echo(f"{r['claim']:<26} {r['sweep']:<13} {r['runs']:>5} {r['to_run']:>7} {minutes:>8} "
             f"{r['seeds']:>6} {r['chance']:>21}  {r['basis']}")
    known = [r["minutes"] for r in rows if r["minutes"] is not None]
    unknown = sum(r["minutes"] is None and r["to_run"] > 0 for r in rows)
    echo(f"total: {sum(r['to_run'] for r in rows)} runs to run, ~{sum(known):.1f} min"
         + (f" plus {unknown} sweep(s) never measured under --out" if unknown else ""))
    return rows
