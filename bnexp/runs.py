"""Run directories as data: find and read them (``Run``), and group them by what varies (``Group``).

The one model that report, figures and claims share; it imports none of them, so data flows one
way (runs -> figures -> report, runs -> claims). Runs are found under the given paths (any
folder holding a summary.json), grouped by the settings that vary between them (the swept
overrides, else the config keys that differ), and their seeds aggregated: mean, standard
deviation, a 95% t-interval and n. Runs that diverged, failed or were interrupted are counted and
kept; folders whose files cannot be read are reported by name and skipped.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bnexp import metrics
from bnexp.reuse import code_version
from bnexp.rundir import SUMMARY, read_summary
from bnexp.stats import mean_ci

# Keys that never define a group: they differ between runs without being an experimental factor.
IGNORED_KEYS = {"seed", "name", "output_dir", "data.root", "trainer.threads", "trainer.progress",
                "trainer.device", "data.download", "data.verify", "trainer.checkpoint",
                "sweep.stale"}


@dataclass
class Run:
    dir: Path
    summary: dict[str, Any]
    config: dict[str, Any]  # flattened "a.b": value
    overrides: dict[str, str]  # "key": "value" as given on the command line (+ prefix dropped)
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def status(self) -> str:
        return self.summary.get("status", "unknown")

    @property
    def code_version(self) -> str:
        """The code that made the run: ``bnexp 0.1.0 (git 1a2b3c4d5e6f)``, ``bnexp 0.1.0``
        outside a git checkout, ``unknown`` when its summary.json records no version."""
        return code_version(self.summary)

    def metric(self, key: str) -> float | None:
        """A final metric (``test/acc``), a summary field, or a derived metric
        (``growth:grad/weight@0``, ``drift_units:last``, ...: see ``bnexp.metrics``)."""
        return metrics.value(self.summary, self.records, key)

    def series(self, tag: str, kind: str | None = None) -> list[tuple[int, float]]:
        return [(r["step"], r[tag]) for r in self.records
                if tag in r and r[tag] is not None and (kind is None or r.get("kind") == kind)]


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: json.dumps(node) if isinstance(node, list) else node}


def load_run(run_dir: Path) -> Run:
    """Read one run directory; raises ValueError with the reason when it cannot be used."""
    summary = _read_summary(run_dir)
    config = _read_config(run_dir, summary["status"])
    return Run(run_dir, summary, config, _read_overrides(run_dir), _read_records(run_dir))


def _read_summary(run_dir: Path) -> dict[str, Any]:
    summary = read_summary(run_dir)
    if summary is None:
        raise ValueError("summary.json missing")
    return summary


def _read_config(run_dir: Path, status: str) -> dict[str, Any]:
    path = run_dir / "config.yaml"
    if not path.exists():
        # A sweep job that failed before training never wrote one; any other run needs it.
        if status != metrics.FAILED:
            raise ValueError("config.yaml missing")
        return {}
    try:
        return flatten(yaml.safe_load(path.read_text()) or {})
    except yaml.YAMLError as exc:
        raise ValueError(f"config.yaml unreadable ({exc})") from None


def _read_overrides(run_dir: Path) -> dict[str, str]:
    overrides: dict[str, str] = {}
    # A sweep job that failed before training has only Hydra's copy of its overrides.
    for path in (run_dir / "overrides.yaml", run_dir / ".hydra" / "overrides.yaml"):
        if path.exists():
            for line in yaml.safe_load(path.read_text()) or []:
                key, _, value = str(line).lstrip("+~").partition("=")
                overrides[key] = value
            break
    return overrides


def _read_records(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    records = []
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except ValueError:
            # A run killed mid-write leaves a partial last line; anything else is corrupt.
            if i != len(lines) - 1:
                raise ValueError(f"metrics.jsonl line {i + 1} is not JSON") from None
    return records


def find_runs(paths: list[Path]) -> tuple[list[Run], list[tuple[Path, str]]]:
    """All run directories under ``paths``, and (directory, reason) for those skipped."""
    runs, problems = [], []
    candidates: set[Path] = set()
    for path in paths:
        if not path.exists():
            problems.append((path, "does not exist"))
            continue
        for marker in (SUMMARY, "metrics.jsonl", "config.yaml"):
            for found in [path / marker, *path.rglob(marker)]:
                if found.exists() and found.parent.name != ".hydra" and ".previous" not in found.parts:
                    candidates.add(found.parent)
    for run_dir in sorted(candidates):
        try:
            runs.append(load_run(run_dir))
        except ValueError as exc:
            problems.append((run_dir, str(exc)))
    return runs, problems


def code_versions(runs: list[Run]) -> dict[str, int]:
    """How many of ``runs`` each code version made, most first (ties by name):
    ``{"bnexp 0.1.0 (git 1a2b3c4d5e6f)": 40, "bnexp 0.1.0 (git 0f9e8d7c6b5a)": 2}``. One key:
    every run was made by the same code."""
    counts: dict[str, int] = defaultdict(int)
    for r in runs:
        counts[r.code_version] += 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def varying_keys(runs: list[Run]) -> list[str]:
    """The factors that tell runs apart: swept overrides if the runs have them, else config."""
    def differing(values: list[dict[str, Any]]) -> list[str]:
        keys = sorted({k for v in values for k in v} - IGNORED_KEYS)
        return [k for k in keys if len({json.dumps(v.get(k), default=str) for v in values}) > 1]

    keys = differing([r.overrides for r in runs])
    return keys or differing([r.config for r in runs])


# A config group's choice, as the composed config records it (a run that used the default has
# no override, but its config says which option it got).
GROUP_KEYS = {"norm": "norm.kind", "model": "model.arch", "data": "data.name", "optim": "optim.name"}


def factor_value(run: Run, key: str) -> Any:
    """The value of a grouping factor for one run: its override, else its composed config."""
    if key in run.overrides:
        return run.overrides[key]
    return run.config.get(GROUP_KEYS.get(key, key))


def group_label(run: Run, keys: list[str]) -> str:
    if not keys:
        return "all runs"
    return " ".join(f"{k}={factor_value(run, k)}" for k in keys)


def ci95(values: list[float]) -> dict[str, float | int | None]:
    """mean, std, 95% Student-t interval and n (scipy's t quantiles: bnexp.stats.mean_ci)."""
    return mean_ci(values, 0.95)


@dataclass
class Group:
    label: str
    runs: list[Run]
    repeats: int = 0  # exact repeats of a run (same config and seed) left out

    def statuses(self) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for r in self.runs:
            counts[r.status] += 1
        return dict(counts)

    def stat(self, metric: str, statuses: tuple[str, ...] = (metrics.COMPLETED,)) -> dict[str, Any]:
        """Mean and 95% interval over the group's runs; a timing counts once per pack, since
        the replicas of a packed model share its clock (K equal values are one measurement,
        not K: their interval would be zero-width)."""
        values: dict[Any, float] = {}
        for r in self.runs:
            if r.status in statuses and (v := r.metric(metric)) is not None and math.isfinite(v):
                values.setdefault(_pack_of(r) if is_timing(metric) else id(r), v)
        return ci95(list(values.values()))


def is_timing(metric: str) -> bool:
    return metric.startswith("time/") or metric == metrics.SUMMARY_SAMPLES_PER_S


def _pack_of(run: Run) -> Any:
    """The packed model a run was trained in (its sweep and leader), or the run itself."""
    packed = run.summary.get("packed") or {}
    return (str(run.dir.parent), packed["group"]) if "group" in packed else id(run)


def group_runs(runs: list[Run]) -> tuple[list[str], list[Group]]:
    """Runs grouped by the factors that vary; exact repeats (same config, same seed) collapse
    to the newest, so they are never counted as independent seeds (``Group.repeats``)."""
    keys = varying_keys(runs)
    groups: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        groups[group_label(r, keys)].append(r)
    return keys, [_collapse(label, rs) for label, rs in sorted(groups.items(),
                                                               key=lambda kv: natural(kv[0]))]


def natural(text: str) -> list[Any]:
    """Sort key that orders numbers by value: lr=3.0 before lr=10.0, batch 4 before 16."""
    return [(0, float(t), "") if re.fullmatch(r"[-+]?\d+(\.\d+)?(e[-+]?\d+)?", t) else (1, 0.0, t)
            for t in re.split(r"([-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?)", text) if t]


def _collapse(label: str, runs: list[Run]) -> Group:
    newest: dict[str, Run] = {}
    for r in sorted(runs, key=lambda r: r.summary.get("run_dir", str(r.dir))):
        key = json.dumps({k: v for k, v in r.config.items() if k not in IGNORED_KEYS - {"seed"}},
                         sort_keys=True, default=str) if r.config else str(r.dir)
        newest[key] = r
    return Group(label, list(newest.values()), repeats=len(runs) - len(newest))
