"""A fixed set of synthetic runs for every shipped claim's sweep: the input of the golden test
(tests/test_claims_golden.py), which compares claims.md and claims.json built from them with the
checked-in files in tests/golden/. Deterministic: values come from one seeded numpy generator
per sweep, and every path is a fixed string. The effects are chosen so that the three verdicts,
tuning at the edge of a grid and with ties, diverged runs, censored steps-to-target, a level
that tests nothing and per-level preconditions all appear somewhere."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bnexp.runs import Run

SEEDS = range(5)
ROOT = Path("/golden/sweeps")


def _run(sweep: str, num: int, seed: int, cfg: dict[str, Any], final: dict[str, float],
         records: list[dict] | None = None, status: str = "completed", total: int = 1000,
         name: str | None = None) -> Run:
    overrides = {k: str(v) for k, v in cfg.items()}
    config = {{"norm": "norm.kind", "model": "model.arch"}.get(k, k): v for k, v in cfg.items()}
    label = name or f"{num}_" + ",".join(f"{k}={v}" for k, v in cfg.items() if k != "seed")
    summary: dict[str, Any] = {"status": status, "seed": seed, "final": final,
                               "total_steps": total, "threads": 1, "device": "cpu"}
    if status == "diverged":
        summary["diverged_step"] = 17
    return Run(ROOT / sweep / label, summary, config, overrides, records or [])


def _probe(step: int, **values: float) -> dict[str, Any]:
    return {"step": step, "kind": "probe", **values}


def _growth_probe(step: int, rate: float, depth: int, kind: str = "input") -> dict[str, Any]:
    rec = {f"grad/fc{i}/{kind}": rate ** (depth - i) for i in range(1, depth + 1)}
    rec["grad/head/weight"] = 0.1
    return _probe(step, **rec, **{"grad/first_last_ratio": rate ** (depth - 2),
                                  "grad/global": rate})


def overfit() -> list[Run]:
    rng, runs = np.random.default_rng(1), []
    gaps = {"none": 0.045, "bn": 0.03, "dropout": 0.037, "weight_decay": 0.044, "bn_dropout": 0.028}
    best = {"none": 0.1, "bn": 0.3, "dropout": 0.1, "weight_decay": 0.1, "bn_dropout": 0.1}
    for reg, gap in gaps.items():
        for lr in (0.01, 0.03, 0.1, 0.3):
            for s in SEEDS:
                val = 0.97 - 0.01 * abs(np.log10(lr / best[reg])) + rng.normal(0, 0.001)
                status = "diverged" if (reg, lr, s) == ("none", 0.3, 4) else "completed"
                final = {"val/acc": val, "test/acc": val - 0.002, "gap/acc": gap + rng.normal(0, 0.002),
                         "gap/loss": gap * 3 + rng.normal(0, 0.01)} if status == "completed" else {}
                runs.append(_run("overfit", len(runs), s, {"reg": reg, "optim.lr": lr, "seed": s},
                                 final, status=status))
    return runs


def deep_sigmoid() -> list[Run]:
    rng, runs = np.random.default_rng(2), []
    for norm, rate in (("none", 0.14), ("torch", 1.03)):
        for s in SEEDS:
            r = rate * float(np.exp(rng.normal(0, 0.01)))
            runs.append(_run("deep_sigmoid", len(runs), s, {"norm": norm, "seed": s},
                             {"test/acc": 0.9 + rng.normal(0, 0.01)},
                             [_growth_probe(0, r, 12), _growth_probe(300, 1.0, 12)]))
    return runs


def deep_relu() -> list[Run]:
    rng, runs = np.random.default_rng(3), []
    for gain in (1.0, 1.1, 1.25, 1.5):
        for norm in ("none", "torch"):
            for s in SEEDS:
                rate = (gain if norm == "none" else 1.21) * float(np.exp(rng.normal(0, 0.005)))
                status = "diverged" if norm == "none" and gain > 1.0 else "completed"
                runs.append(_run("deep_relu", len(runs), s,
                                 {"norm": norm, "model.init_gain": gain, "seed": s}, {},
                                 [_growth_probe(0, rate, 8), _growth_probe(20, 1.02, 8)],
                                 status=status))
    return runs


def _units(step: int, kind: str, center: float, width: int = 4) -> dict[str, Any]:
    return {"step": step, "kind": kind, "act/fc3/norm/units": {
        "p15": [center - 1 + 0.1 * j for j in range(width)],
        "p50": [center + 0.1 * j for j in range(width)],
        "p85": [center + 1 + 0.1 * j for j in range(width)]}}


def _training_records(rng: np.random.Generator, drift: float, reach: int | None,
                      total: int = 1000, ics: float = 0.0, beta: float = 0.0) -> list[dict]:
    records, center = [], 0.0
    for step in range(0, total + 1, 100):
        acc = 0.97 if reach is not None and step >= reach else 0.5 + step / 4000
        records.append({"step": step, "kind": "val", "val/acc": acc, "test/acc": acc - 0.001})
        records.append(_probe(step, **{"act/fc3/norm/p15": center - 1, "act/fc3/norm/p50": center,
                                       "act/fc3/norm/p85": center + 1, "ics/fc1/rel": ics,
                                       "ics/fc2/rel": ics * 1.1, "landscape/beta": beta}))
        records.append(_units(step, "units", center))
        records.append(_units(step, "units_next", center + drift / 3))
        center += drift * float(np.exp(rng.normal(0, 0.1)))
    return records


def ioffe() -> list[Run]:
    rng, runs = np.random.default_rng(4), []
    for norm, drift, best in (("none", 0.3, 0.3), ("torch", 0.12, 1.0)):
        for lr in (0.03, 0.1, 0.3, 1.0):
            for s in SEEDS:
                reach = None if (norm, lr, s) == ("none", 0.03, 0) else (
                    int(300 + 100 * abs(np.log10(lr / best)) * 3 + 100 * (s % 2))
                    if norm == "torch" else int(500 + 200 * abs(np.log10(lr / best)) * 3))
                val = 0.97 - 0.01 * abs(np.log10(lr / best)) + rng.normal(0, 0.001)
                records = _training_records(rng, drift * (1 + lr), reach)
                runs.append(_run("ioffe", len(runs), s, {"norm": norm, "optim.lr": lr, "seed": s},
                                 {"test/acc": val - 0.001, "val/acc": val}, records))
    return runs


def lr_range() -> list[Run]:
    grid = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)
    runs = []
    for norm, top in (("none", 0.3), ("torch", 3.0)):
        for lr in grid:
            for s in SEEDS:
                ok = lr <= (top if s != 3 else top / 3)
                runs.append(_run("lr_range", len(runs), s, {"norm": norm, "optim.lr": lr, "seed": s},
                                 {"test/acc": 0.96 if ok else 0.1},
                                 status="completed" if ok else "diverged"))
    return runs


def cost() -> list[Run]:
    rng, runs = np.random.default_rng(5), []
    for s in SEEDS:
        for norm, ms in (("none", 2.0), ("torch", 2.3), ("custom", 2.2), ("seed", 6.3)):
            med = ms * float(np.exp(rng.normal(0, 0.03)))
            runs.append(_run("cost", len(runs), s, {"norm": norm, "seed": s},
                             {"time/step_ms_median": med, "time/step_ms_min": med * 0.9,
                              "time/step_ms_max": med * 1.2}, name=f"seed={s},norm={norm}"))
    return runs


def small_batch() -> list[Run]:
    rng, runs = np.random.default_rng(6), []
    for batch, spread in ((4, 0.03), (32, 0.002), (256, 0.001)):
        for norm in ("torch", "seed"):
            for s in SEEDS:
                acc = 0.97 + rng.normal(0, spread)
                runs.append(_run("small_batch", len(runs), s,
                                 {"norm": norm, "trainer.batch_size": batch, "seed": s},
                                 {"test_batchstats/acc": acc, "test/acc": acc + 0.001,
                                  "test_single/nonfinite": 1.0 if norm == "seed" else 0.0,
                                  "test_single/acc": 0.1 if norm == "seed" else acc}))
    return runs


def santurkar() -> list[Run]:
    rng, runs = np.random.default_rng(7), []
    accs = {"none": 0.894, "torch": 0.946, "noisy": 0.917, "noisy_static": 0.944}
    drift = {"none": 0.05, "torch": 0.03, "noisy": 0.1, "noisy_static": 0.04}
    ics = {"none": 0.5, "torch": 0.3, "noisy": 0.45, "noisy_static": 0.35}
    for arch in ("mlp", "cnn"):
        for norm, acc in accs.items():
            for lr in (0.03, 0.1, 0.3):
                for s in SEEDS:
                    a = acc - 0.01 * abs(np.log10(lr / 0.03)) + rng.normal(0, 0.004)
                    scale = 1.0 if arch == "cnn" else float(np.exp(rng.normal(0, 0.3)))
                    records = _training_records(rng, drift[norm], 600, total=300,
                                                ics=ics[norm] * scale, beta=2 * ics[norm] * scale)
                    runs.append(_run("santurkar", len(runs), s,
                                     {"model": arch, "norm": norm, "optim.lr": lr, "seed": s},
                                     {"test/acc": a, "val/acc": a + 0.001}, records, total=300))
    return runs


def batch_noise() -> list[Run]:
    rng, runs = np.random.default_rng(8), []
    gaps = {"none": 0.06, "torch": 0.05, "ghost": 0.048, "layer": 0.052, "group": 0.051}
    for batch, shift in ((32, -0.004), (128, 0.004)):
        for norm, gap in gaps.items():
            for s in SEEDS:
                g = gap + (shift if norm == "layer" else 0.0) + rng.normal(0, 0.003)
                runs.append(_run("batch_noise", len(runs), s,
                                 {"norm": norm, "trainer.batch_size": batch, "seed": s},
                                 {"gap/acc": g, "test/acc": 0.95 - g / 2, "gap/loss": 3 * g}))
    return runs


SWEEPS = {"overfit": overfit, "deep_sigmoid": deep_sigmoid, "deep_relu": deep_relu,
          "ioffe": ioffe, "lr_range": lr_range, "cost": cost, "small_batch": small_batch,
          "santurkar": santurkar, "batch_noise": batch_noise}

PROVENANCE = {
    "bnexp": "0.0.golden", "git_sha": "0123456789abcdef", "torch": "2.14.1",
    "claims_yaml_sha256": "f" * 64, "dataset": "mnist", "budget": "standard", "overrides": [],
    "threads": [1], "devices": ["cpu"], "cpu_count": 2, "started": "2026-12-06 12:00:00",
    "wall_time_s": 60.0, "load_average_start": [0.5, 0.5, 0.5],
    "load_average_end": [1.0, 1.0, 1.0]}


def sweep_runs() -> dict[str, tuple[list[Run], list, Path, list[str]]]:
    """Every sweep's runs as ``bnexp claims`` hands them to the rules and the report."""
    return {name: (make(), [], ROOT / f"{name}-standard-mnist", [f"experiment={name}"])
            for name, make in SWEEPS.items()}
