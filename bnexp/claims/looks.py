"""Running the adaptive budget's looks on real sweeps (bnexp/claims/adaptive.py decides).

Look k of a sweep trains only the new seeds, ``looks[k-1]`` to ``looks[k] - 1``, at the base
budget's settings, into ``<out>/sweeps/<sweep>-adaptive-<dataset>/look<k>/`` (one ``bnexp train
-m``, so one SLURM array through ``hydra/launcher=submitit_slurm``); a claim's runs are those of
every look up to its own. A second call reuses every finished run. ``--max-minutes`` is spent
by estimating each sweep's next look from the wall time of its runs so far.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bnexp.claims.adaptive import State, chance_at
from bnexp.claims.spec import Sweep, TimingBudget
from bnexp.claims.sweeps import run_one_sweep
from bnexp.rundir import new_run_dir
from bnexp.runs import Run, find_runs


def look_budget(sweep: Sweep, base: str, lo: int, hi: int) -> list[str] | TimingBudget:
    """The base budget with its seeds replaced by ``lo .. hi - 1``."""
    budget = sweep.budgets[base]
    if isinstance(budget, TimingBudget):
        return dataclasses.replace(budget, seeds=list(range(lo, hi)))
    kept = [o for o in budget if o.lstrip("+~").partition("=")[0] != "seed"]
    return [*kept, f"seed={','.join(map(str, range(lo, hi)))}"]


class Looks:
    """The sweeps of one adaptive call: which looks each has run, and what the next costs."""

    def __init__(self, sweeps: dict[str, Sweep], base: str, looks: list[int], out: Path,
                 dataset: str, overrides: list[str], echo: Callable[[str], Any]) -> None:
        self.sweeps, self.base, self.looks = sweeps, base, looks
        self.out, self.dataset, self.overrides, self.echo = out, dataset, overrides, echo
        self.done: dict[str, int] = {}  # sweep -> looks run
        self.args: dict[str, list[str]] = {}
        self.t0 = time.time()

    def root(self, name: str) -> Path:
        return new_run_dir(self.out, f"{name}-adaptive-{self.dataset}", "sweeps", unique=False)

    def _run_look(self, name: str, k: int) -> None:
        lo = self.looks[k - 1] if k else 0
        budget = look_budget(self.sweeps[name], self.base, lo, self.looks[k])
        self.args[name] = run_one_sweep(name, self.sweeps[name], budget, self.overrides,
                                        self.root(name) / f"look{k + 1}", self.echo,
                                        ["bnexp", "claims", "--budget", "adaptive"])

    def provide(self, want: dict[str, int]) -> dict[str, list[Run]]:
        """Each wanted sweep trained up to its seeds; its runs of every look so far."""
        runs = {}
        for name, n in want.items():
            k = self.looks.index(n)
            for j in range(self.done.get(name, 0), k + 1):
                self._run_look(name, j)
            self.done[name] = max(self.done.get(name, 0), k + 1)
            runs[name] = self.runs(name, k + 1)
        return runs

    def runs(self, name: str, upto: int) -> list[Run]:
        found, _ = find_runs([self.root(name) / f"look{j + 1}" for j in range(upto)])
        return found

    def minutes(self, name: str, n: int) -> float:
        """The estimated minutes of a sweep's look at ``n`` seeds, from its runs so far."""
        runs = self.runs(name, self.done.get(name, 0))
        seeds = self.looks[self.done[name] - 1] if self.done.get(name) else 0
        if not runs or not seeds:
            return 0.0
        walls = [float(r.summary.get("wall_time_s", 0.0)) for r in runs]
        per_seed = (sum(walls) / len(walls) if self.sweeps[name].timing
                    else sum(walls) / seeds)
        return 1.15 * per_seed * (n - seeds) / 60  # + start-up and evaluation, measured ~15%

    def chooser(self, max_minutes: float | None) -> Callable[[int, dict[str, int],
                                                              dict[str, State]], set[str]]:
        """The sweeps whose next look fits the time left, most expected decisions per minute
        first (``max_minutes`` None: every one)."""
        def choose(n: int, want: dict[str, int], states: dict[str, State]) -> set[str]:
            if max_minutes is None:
                return set(want)
            left = max_minutes - (time.time() - self.t0) / 60 - 1.0  # a minute to decide, write
            value = {w: sum(chance_at(s.verdict, n) for s in states.values()
                            if s.active and s.claim.sweep == w and s.verdict) for w in want}
            cost = {w: self.minutes(w, n) for w in want}
            chosen = set()
            for w in sorted(want, key=lambda w: -value[w] / max(cost[w], 1e-3)):
                if cost[w] <= left:
                    chosen.add(w)
                    left -= cost[w]
            self.echo(f"[adaptive] next look ({n} seeds): " + ", ".join(
                f"{w} ~{cost[w]:.1f} min{'' if w in chosen else ' (no time)'}" for w in want))
            return chosen

        return choose
