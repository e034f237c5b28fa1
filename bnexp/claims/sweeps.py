"""Running one sweep of a claims call: a training sweep through ``bnexp train -m`` (Hydra's
launcher, so SLURM works too) or a timing sweep through ``bnexp time``'s interleaving."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bnexp.claims.spec import Sweep, TimingBudget


def run_one_sweep(name: str, sweep: Sweep, budget: list[str] | TimingBudget,
                  overrides: list[str], sweep_dir: Path, echo: Any, command: list[str]
                  ) -> list[str]:
    """One sweep (training or timing) into ``sweep_dir``; the arguments that reproduce it."""
    from bnexp.sweep import run_sweep
    from bnexp.timing import run_timing_sweep

    base = [*([f"experiment={sweep.preset}"] if sweep.preset else []), *overrides]
    if isinstance(budget, TimingBudget):
        kinds = list(sweep.timing.variants) if sweep.timing else []
        args = [*base, f"--variants={','.join(kinds)}", f"--rounds={budget.rounds}",
                f"--window={budget.window}", f"--seeds={','.join(map(str, budget.seeds))}"]
        echo(f"[timing] bnexp time {' '.join(args)} -> {sweep_dir}")
        run_timing_sweep(base, kinds, budget.seeds, budget.rounds, budget.window, sweep_dir)
    else:
        args = [*base[:1 if sweep.preset else 0], *budget, *overrides]
        echo(f"[{name}] bnexp train -m {' '.join(args)} -> {sweep_dir}")
        run_sweep(args, command, sweep_dir=sweep_dir)
    return args
