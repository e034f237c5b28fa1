"""``bnexp claims``: check the call, run the sweeps the chosen claims need (reusing finished
runs), decide every claim with one Holm family, and write claims.md and claims.json.

Sweeps live in ``<out>/sweeps/<sweep>-<budget>-<dataset>/``, so a second call reuses completed
runs, and two calls on one ``--out`` split the jobs between them (bnexp.sweep claims each job).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bnexp.claims.adaptive import final_verdict, sequential
from bnexp.claims.decide import decide_all
from bnexp.claims.family import family_size
from bnexp.claims.measure import measure
from bnexp.claims.render import PREVIEW_BUDGETS, SweepRuns, write_claims
from bnexp.claims.rules import SPECS
from bnexp.claims.spec import (
    ADAPTIVE,
    BUDGETS,
    Claim,
    Spec,
    Sweep,
    load,
    parse_claim,
    shipped_path,
)
from bnexp.claims.sweeps import run_one_sweep
from bnexp.errors import BnexpError
from bnexp.rundir import new_run_dir
from bnexp.runs import code_versions, find_runs


def load_spec(path: Path | None = None) -> Spec:
    """A claims file, validated completely (bnexp's own by default)."""
    return load(path or shipped_path(), SPECS)


def claim_from_dict(data: dict[str, Any]) -> Claim:
    """A claim declared in Python (as one entry of claims.yaml), validated the same way."""
    return parse_claim(data, SPECS)


@dataclass
class Plan:
    spec: Spec
    claims: list[Claim]  # to run, in the file's order
    skipped: list[Claim]  # their sweep does not support the dataset
    dataset: str
    budget: str


def _dataset(overrides: list[str]) -> str:
    names = [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0] in ("data", "data.name")]
    return names[-1] if names else "mnist"


def plan(budget: str, overrides: list[str], only: list[str] | None,
         spec_path: Path | None = None) -> Plan:
    """Check the call before anything runs (the whole claims file included)."""
    if any(o.lstrip("+~").split("=", 1)[0] == "output_dir" for o in overrides):
        raise BnexpError("bnexp claims keeps its sweeps, figures and claims.md together under "
                         "--out, so output_dir= would have no effect: pass --out DIR instead.")
    if budget not in (*BUDGETS, ADAPTIVE):
        raise BnexpError(f"--budget {budget} is not a budget. Use one of: "
                         f"{', '.join((*BUDGETS, ADAPTIVE))} (e.g. --budget quick).")
    spec = load_spec(spec_path)
    if only and set(only) - set(spec.ids):
        raise BnexpError(f"Unknown claim in --only {','.join(only)}. Known claims: "
                         f"{', '.join(spec.ids)}.")
    dataset = _dataset(overrides)
    chosen = [cid for cid in spec.ids if not only or cid in only]
    run = [c for c in spec.claims(dataset) if c.id in chosen]
    ran = {c.id for c in run}
    skipped = list({c.id: c for d in spec.by_dataset for c in spec.claims(d)
                    if c.id in chosen and c.id not in ran}.values())  # one per claim
    declared = spec.adaptive.base if budget == ADAPTIVE else budget
    for c in run:
        if declared not in spec.sweeps[c.sweep].budgets:
            raise BnexpError(f"--budget {budget} is not declared for claim {c.id} (its sweep "
                             f"{c.sweep} has {', '.join(spec.sweeps[c.sweep].budgets)}).")
    if not run:
        raise BnexpError(f"No selected claim supports data={dataset} (see `datasets:` in "
                         f"{spec.path}); pick another dataset or other claims.")
    return Plan(spec, run, skipped, dataset, budget)


def _run_sweep(name: str, sweep: Sweep, p: Plan, overrides: list[str], out: Path,
               echo: Any, display: Any = None) -> SweepRuns:
    """One sweep of the call's budget into its shared directory; its runs read back.
    ``display``: the call's progress display (bnexp/sweep_progress.py), which counts the
    sweep's runs and takes its output into the sweep's log files."""
    sweep_dir = new_run_dir(out, f"{name}-{p.budget}-{p.dataset}", "sweeps", unique=False)
    with display.stage(name, sweep_dir) if display is not None else nullcontext():
        args = run_one_sweep(name, sweep, sweep.budgets[p.budget], overrides, sweep_dir, echo,
                             ["bnexp", "claims", "--budget", p.budget])
    runs, problems = find_runs([sweep_dir])
    return runs, problems, sweep_dir, args


def run_claims(budget: str, out: Path, overrides: list[str], only: list[str] | None = None,
               echo: Any = print, spec_path: Path | None = None,
               max_minutes: float | None = None,
               watch: Callable[[Plan], Any] | None = None) -> Path:
    """Run the sweeps the chosen claims need, decide, and write ``<out>/claims.md`` and
    ``<out>/claims.json`` atomically. ``watch(plan)``: the call's progress display (a context
    manager with ``stage(name, sweep_dir)``, bnexp/claims/watch.py), or None."""
    p = plan(budget, overrides, only, spec_path)
    started = _stamp_start()
    if budget == ADAPTIVE:
        return _run_adaptive(p, out, overrides, echo, max_minutes, started)
    if max_minutes is not None:
        raise BnexpError("--max-minutes bounds an adaptive call; use it with --budget adaptive "
                         f"(a {budget} call runs its declared sweeps whole).")
    out.mkdir(parents=True, exist_ok=True)
    display = watch(p) if watch is not None else None
    with display if display is not None else nullcontext():
        sweep_runs = {name: _run_sweep(name, p.spec.sweeps[name], p, overrides, out, echo,
                                       display)
                      for name in dict.fromkeys(c.sweep for c in p.claims)}
    outcomes, wheres = {}, {}
    for claim in p.claims:
        outcomes[claim.id], wheres[claim.id] = measure(claim, sweep_runs[claim.sweep][0])
    verdicts = decide_all(outcomes, p.spec.alpha, p.spec.max_seeds,
                          family_size(p.spec, p.dataset, budget),
                          ns=tuple(sorted({*p.spec.adaptive.looks, 5, 10})))
    for claim in p.claims:
        v = verdicts[claim.id]
        word = f"preliminarily {v.verdict}" if budget in PREVIEW_BUDGETS else v.verdict
        echo(f"[{claim.id}] {word}: {v.reason}")
    provenance = _provenance(started, p, overrides, sweep_runs)
    return write_claims(out, budget, p.spec, p.claims, p.skipped, verdicts, wheres, sweep_runs,
                        provenance)


def _run_adaptive(p: Plan, out: Path, overrides: list[str], echo: Any,
                  max_minutes: float | None, started: dict[str, Any]) -> Path:
    """The looks (bnexp/claims/adaptive.py), then claims.md and claims.json of the verdicts
    at each claim's last look."""
    from bnexp.claims.looks import Looks

    ad = p.spec.adaptive
    out.mkdir(parents=True, exist_ok=True)
    looks = Looks(p.spec.sweeps, ad.base, ad.looks, out, p.dataset, overrides, echo)
    states, record = sequential(p.claims, ad.looks, p.spec.alpha, p.spec.max_seeds,
                                family_size(p.spec, p.dataset, ad.base), looks.provide,
                                looks.chooser(max_minutes), echo)
    verdicts, claims, sweeps, sweep_runs, wheres = {}, [], dict(p.spec.sweeps), {}, {}
    for s in states.values():
        if s.verdict is None:  # its sweep never got a look (no time)
            continue
        key = f"{s.claim.sweep}@{s.claim.id}"  # its own runs: the seeds of its last look
        sweeps[key] = p.spec.sweeps[s.claim.sweep]
        claims.append(dataclasses.replace(s.claim, sweep=key))
        verdicts[s.claim.id] = final_verdict(s, ad.looks, p.spec.alpha)
        wheres[s.claim.id] = s.where
        sweep_runs[key] = (looks.runs(s.claim.sweep, s.look), [], looks.root(s.claim.sweep),
                           looks.args.get(s.claim.sweep, []))
        word = verdicts[s.claim.id].verdict
        echo(f"[{s.claim.id}] {word}: {verdicts[s.claim.id].reason}")
    provenance = {**_provenance(started, p, overrides, sweep_runs),
                  "adaptive": {"looks": ad.looks, "base": ad.base, "spending": "bonferroni",
                               "alpha_per_look": p.spec.alpha / len(ad.looks),
                               "max_minutes": max_minutes, "record": record,
                               "seeds": {cid: s.seeds for cid, s in states.items()},
                               "stop": {cid: s.stop for cid, s in states.items()}}}
    spec = dataclasses.replace(p.spec, sweeps=sweeps)
    return write_claims(out, ADAPTIVE, spec, claims, p.skipped, verdicts, wheres, sweep_runs,
                        provenance)


def _stamp_start() -> dict[str, Any]:
    return {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "t0": time.time(),
            "load_start": list(os.getloadavg())}


def _provenance(started: dict[str, Any], p: Plan, overrides: list[str],
                sweep_runs: dict[str, SweepRuns]) -> dict[str, Any]:
    """What produced the verdicts: versions, code, the rules' hash, the machine and its load."""
    from importlib.metadata import version

    import bnexp
    from bnexp.runlog import git_sha

    summaries = [r.summary for runs, *_ in sweep_runs.values() for r in runs]
    return {
        "bnexp": bnexp.__version__, "git_sha": git_sha(), "torch": version("torch"),
        "claims_yaml_sha256": hashlib.sha256(p.spec.path.read_bytes()).hexdigest(),
        "dataset": p.dataset, "budget": p.budget, "overrides": overrides,
        "threads": sorted({s["threads"] for s in summaries if "threads" in s}),
        "code_versions": code_versions([r for runs, *_ in sweep_runs.values() for r in runs]),
        "devices": sorted({s["device"] for s in summaries if "device" in s}),
        "cpu_count": os.cpu_count(), "started": started["started"],
        "wall_time_s": round(time.time() - started["t0"], 1),
        "load_average_start": started["load_start"], "load_average_end": list(os.getloadavg()),
    }
