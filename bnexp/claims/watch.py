"""The progress display of a ``bnexp claims`` call (bnexp/sweep_progress.py): one stage per
sweep, in the order the call runs them, each with its planned runs and a prior cost per run.

The prior is ``bnexp claims --plan``'s (bnexp/claims/forecast.py): the wall time of the sweep's
runs already under ``--out`` (the same budget's, else another budget's scaled by steps), times
its overhead. A sweep never run under ``--out`` takes ``REFERENCE``: the seconds per run each
sweep took at the quick budget in a measured call, scaled to the budget by its steps (or, for a
timing sweep, its rounds and window). The display then scales these by how the call's own
sweeps compared with their priors, so a faster or busier machine corrects them as it goes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from bnexp.claims.family import budget_overrides
from bnexp.claims.forecast import OVERHEAD, planned_runs, seconds_per_run
from bnexp.claims.runner import Plan
from bnexp.claims.spec import ADAPTIVE, Sweep, TimingBudget
from bnexp.sweep_progress import Display, Stage

# Seconds per run of each sweep at the quick budget, job start to job start (the run's wall
# time, its process's share of start-up and evaluation), from the sweep.json of a quick call
# on real MNIST (2 cores, bnexp 0.1.0 at e569fb6, 8 min 26 s in all); cost: the timing
# process's wall time per variant. `python -m bnexp.claims.watch <out>` measures them again
# from a quick call's --out (after a change that makes runs faster or slower).
REFERENCE_BUDGET = "quick"
# After the last sweep: the verdicts, figures and claims.md (30 s in a measured quick call).
FINISH_S = 30.0
REFERENCE = {"overfit": 1.09, "deep_sigmoid": 1.05, "deep_relu": 0.88, "ioffe": 3.34,
             "lr_range": 0.93, "cost": 3.8, "small_batch": 1.55, "santurkar": 2.68,
             "batch_noise": 0.84}


def _scale(sweep: Sweep, budget: str) -> float:
    """How much longer a run of ``budget`` trains than one of the reference budget: the ratio
    of their steps (or epochs, or timing rounds x window) where both declare them, else 1."""
    this, ref = sweep.budgets.get(budget), sweep.budgets.get(REFERENCE_BUDGET)
    if isinstance(this, TimingBudget) and isinstance(ref, TimingBudget):
        return (this.rounds * this.window) / (ref.rounds * ref.window)
    mine, theirs = budget_overrides(sweep, budget), budget_overrides(sweep, REFERENCE_BUDGET)
    for key in ("trainer.steps", "trainer.epochs"):
        try:
            return float(mine[key]) / float(theirs[key])
        except (KeyError, ValueError, ZeroDivisionError):
            continue
    return 1.0


def prior_seconds(name: str, sweep: Sweep, budget: str, out: Path, dataset: str) -> float | None:
    """Seconds one run of the sweep is expected to take (None: nothing to go by)."""
    here = out / "sweeps" / f"{name}-{budget}-{dataset}"
    measured, _, _ = seconds_per_run(name, sweep, budget, out, dataset, here)
    if measured is not None:
        return OVERHEAD * measured
    if name in REFERENCE:
        return REFERENCE[name] * _scale(sweep, budget)
    return None


def stages(p: Plan, out: Path) -> list[Stage]:
    """The call's sweeps, in the order ``run_claims`` runs them, with runs and priors."""
    found = []
    for name in dict.fromkeys(c.sweep for c in p.claims):
        sweep = p.spec.sweeps[name]
        directory = out / "sweeps" / f"{name}-{p.budget}-{p.dataset}"
        found.append(Stage(name, planned_runs(sweep, p.budget), directory,
                           prior_seconds(name, sweep, p.budget, out, p.dataset)))
    return found


def claims_watch(out: Path, verbose: bool) -> Callable[[Plan], Display | None]:
    """For ``run_claims``'s ``watch``: the call's display, once its plan is known (none for an
    adaptive call, whose sweeps are chosen look by look)."""

    def watch(p: Plan) -> Display | None:
        if p.budget == ADAPTIVE:
            return None
        return Display(f"claims --budget {p.budget}", stages(p, out), verbose=verbose,
                       finish_s=FINISH_S)

    return watch


def measured_costs(out: Path, dataset: str = "mnist") -> dict[str, float]:
    """Seconds per run of each sweep of a quick call in ``out``, as ``REFERENCE`` holds them:
    from the first job's start (sweep.json's ``decided``) to the last summary.json, per run;
    a timing sweep (no sweep.json): its process's wall time per variant."""
    import json
    import statistics

    costs = {}
    for d in sorted((out / "sweeps").glob(f"*-{REFERENCE_BUDGET}-{dataset}")):
        summaries = sorted(p for p in d.rglob("summary.json")  # not .previous/ attempts
                           if not any(part.startswith(".") for part in p.relative_to(d).parts))
        if not summaries:
            continue
        manifest = d / "sweep.json"
        if manifest.exists():
            jobs = json.loads(manifest.read_text()).get("jobs", {}).values()
            start = min(j["decided"] for j in jobs if "decided" in j)
            span = max(p.stat().st_mtime for p in summaries) - start
        else:  # bnexp time: each seed's process times every variant, one summary per variant
            walls = [json.loads(p.read_text()).get("wall_time_s", 0.0) for p in summaries]
            seeds = len({p.parent.name.split(",")[0] for p in summaries}) or 1
            span = statistics.mean(walls) * seeds
        costs[d.name.rsplit(f"-{REFERENCE_BUDGET}-", 1)[0]] = round(span / len(summaries), 2)
    return costs


if __name__ == "__main__":
    import sys

    print(measured_costs(Path(sys.argv[1]), *sys.argv[2:]))
