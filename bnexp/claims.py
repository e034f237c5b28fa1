"""``bnexp claims``: run the experiment presets, then write claims.md with a verdict per claim.

Claims, budgets and decision rules are declared in ``configs/claims/claims.yaml`` before any
run; this module only runs the sweeps and evaluates the declared rules. A rule that cannot be
evaluated (too few seeds for an interval, missing runs or metrics) yields "inconclusive" with
the reason. Sweeps live in ``<out>/sweeps/<claim id>/``, so a second call reuses completed runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bnexp.errors import BnexpError
from bnexp.report import Group, Run, ci95, find_runs, fmt, group_runs
from bnexp.sweep import read_manifest

SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "supported", "not supported", "inconclusive"


def load_claims() -> list[dict[str, Any]]:
    from bnexp.hydra_app import config_dir

    return yaml.safe_load((config_dir() / "claims" / "claims.yaml").read_text())["claims"]


@dataclass
class Verdict:
    verdict: str
    effect: str  # the measured effect, with intervals
    reason: str  # why this verdict (the rule applied to the numbers)


def _value(run: Run, key: str) -> Any:
    return run.overrides.get(key, run.config.get(key))


def _select(runs: list[Run], where: dict[str, str]) -> tuple[list[Run], str]:
    """Keep runs at the min/max of each ``where`` key (e.g. the deepest network)."""
    notes = []
    for key, which in where.items():
        values = [float(v) for r in runs if (v := _value(r, key)) is not None]
        if not values:
            continue
        target = max(values) if which == "max" else min(values)
        runs = [r for r in runs if _value(r, key) is not None and float(_value(r, key)) == target]
        notes.append(f"{key}={target:g}")
    return runs, ", ".join(notes)


def _variant(runs: list[Run], factor: str, value: str) -> list[Run]:
    return [r for r in runs if str(_value(r, factor)) == str(value)]


def _values(runs: list[Run], metric: str) -> list[float]:
    return [v for r in runs if r.status == "completed"
            if (v := r.metric(metric)) is not None and math.isfinite(v)]


def _overlap(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return not (a["hi"] < b["lo"] or b["hi"] < a["lo"])


def rule_compare(runs: list[Run], factor: str, rule: dict[str, Any]) -> Verdict:
    metric, a, b = rule["metric"], rule["a"], rule["b"]
    sa = ci95(_values(_variant(runs, factor, a), metric))
    sb = ci95(_values(_variant(runs, factor, b), metric))
    effect = f"{metric}: {factor}={a} {fmt(sa, 1, 4)} vs {factor}={b} {fmt(sb, 1, 4)}"
    if sa["n"] < 2 or sb["n"] < 2:
        return Verdict(INCONCLUSIVE, effect, f"fewer than 2 completed runs with {metric} in a "
                       f"variant (n={sa['n']} vs n={sb['n']}): no 95% interval")
    a_side = (sa["mean"] < sb["mean"]) if rule["expect"] == "lower" else (sa["mean"] > sb["mean"])
    if _overlap(sa, sb):
        return Verdict(INCONCLUSIVE, effect, "the 95% intervals overlap")
    if a_side:
        return Verdict(SUPPORTED, effect, f"{factor}={a} is {rule['expect']} than {factor}={b} "
                       "and the 95% intervals do not overlap")
    return Verdict(NOT_SUPPORTED, effect, f"{factor}={a} is not {rule['expect']} than "
                   f"{factor}={b}, and the 95% intervals do not overlap")


def _max_stable_lr(runs: list[Run], min_acc: float) -> tuple[float | None, float]:
    by_lr: dict[float, list[Run]] = {}
    for r in runs:
        by_lr.setdefault(float(r.config["optim.lr"]), []).append(r)
    stable = [lr for lr, rs in by_lr.items()
              if all(r.status == "completed" and (r.metric("test/acc") or 0) >= min_acc for r in rs)]
    return (max(stable) if stable else None), max(by_lr) if by_lr else math.nan


def rule_max_stable_lr(runs: list[Run], factor: str, rule: dict[str, Any]) -> Verdict:
    a, b, min_acc = rule["a"], rule["b"], rule["min_acc"]
    ra, rb = _variant(runs, factor, a), _variant(runs, factor, b)
    if not ra or not rb:
        return Verdict(INCONCLUSIVE, "-", f"no runs for {factor}={a if not ra else b}")
    la, top = _max_stable_lr(ra, min_acc)
    lb, _ = _max_stable_lr(rb, min_acc)
    diverged = {v: sorted({float(r.config['optim.lr']) for r in rs if r.status == 'diverged'})
                for v, rs in ((a, ra), (b, rb))}
    effect = (f"highest stable lr (all seeds completed, test acc >= {min_acc:.0%}): "
              f"{factor}={a}: {la}, {factor}={b}: {lb}; diverged at lr {diverged[a] or 'none'} "
              f"({a}) and {diverged[b] or 'none'} ({b})")
    if la is not None and lb is not None and la == lb == top:
        return Verdict(INCONCLUSIVE, effect, f"both are stable up to the largest lr tested ({top})")
    if la is not None and (lb is None or la > lb):
        return Verdict(SUPPORTED, effect, f"{factor}={a} trains stably at a higher lr")
    return Verdict(NOT_SUPPORTED, effect, f"{factor}={a} does not train stably at a higher lr")


def rule_equivalent(runs: list[Run], factor: str, rule: dict[str, Any]) -> Verdict:
    a, b, tol = rule["a"], rule["b"], rule["tolerance"]
    sa = ci95(_values(_variant(runs, factor, a), rule["metric_a"]))
    sb = ci95(_values(_variant(runs, factor, b), rule["metric_b"]))
    effect = (f"{factor}={a} {rule['metric_a']} {fmt(sa, 100)} % vs {factor}={b} "
              f"{rule['metric_b']} {fmt(sb, 100)} %")
    if sa["n"] < 2 or sb["n"] < 2:
        return Verdict(INCONCLUSIVE, effect, f"fewer than 2 completed runs per variant "
                       f"(n={sa['n']} vs n={sb['n']}): no 95% interval")
    diff = sa["mean"] - sb["mean"]
    if abs(diff) <= tol:
        return Verdict(SUPPORTED, effect, f"the means differ by {100 * diff:+.2f} points, within "
                       f"the ±{100 * tol:g}-point tolerance")
    if not _overlap(sa, sb):
        return Verdict(NOT_SUPPORTED, effect, f"the means differ by {100 * diff:+.2f} points "
                       f"(tolerance ±{100 * tol:g}) and the 95% intervals do not overlap")
    return Verdict(INCONCLUSIVE, effect, f"the means differ by {100 * diff:+.2f} points but the "
                   "95% intervals overlap")


RULES = {"compare": rule_compare, "max_stable_lr": rule_max_stable_lr,
         "equivalent": rule_equivalent}


def evaluate(claim: dict[str, Any], runs: list[Run]) -> tuple[Verdict, str]:
    """Apply the claim's declared rule; returns the verdict and a note on the runs used."""
    runs, where = _select(runs, claim.get("where", {}))
    factor, rule = claim["factor"], claim["rule"]
    if not runs:
        return Verdict(INCONCLUSIVE, "-", "no runs to evaluate"), where
    try:
        return RULES[rule["type"]](runs, factor, rule), where
    except (KeyError, TypeError, ValueError) as exc:
        return Verdict(INCONCLUSIVE, "-", f"the rule could not be evaluated: {exc!r}"), where


def run_claims(budget: str, out: Path, overrides: list[str], only: list[str] | None = None,
               echo: Any = print) -> Path:
    """Run every claim's sweep (reusing completed runs) and write ``<out>/claims.md``."""
    from bnexp import figures
    from bnexp.sweep import run_sweep

    if any(o.lstrip("+~").split("=", 1)[0] == "output_dir" for o in overrides):
        raise BnexpError("bnexp claims keeps its sweeps, figures and claims.md together under "
                         f"--out (now {out}), so output_dir= would have no effect: pass "
                         "--out DIR instead.")
    claims = [c for c in load_claims() if not only or c["id"] in only]
    if only and len(claims) != len(only):
        known = ", ".join(c["id"] for c in load_claims())
        raise BnexpError(f"Unknown claim in --only {','.join(only)}. Known claims: {known}.")
    for claim in claims:
        if budget not in claim["budgets"]:
            raise BnexpError(f"--budget {budget} is not declared for claim {claim['id']} "
                             f"(declared: {', '.join(claim['budgets'])}).")
    out.mkdir(parents=True, exist_ok=True)
    sections = []
    for claim in claims:
        sweep_dir = out / "sweeps" / f"{claim['id']}-{budget}"
        args = [f"experiment={claim['preset']}", *claim["budgets"][budget], *overrides]
        echo(f"[{claim['id']}] {' '.join(args)} -> {sweep_dir}")
        run_sweep(args, ["bnexp", "claims", "--budget", budget], sweep_dir=sweep_dir)
        grid = read_manifest(sweep_dir).get("grid", {})
        runs, problems = find_runs([sweep_dir])
        verdict, where = evaluate(claim, runs)
        keys, groups = group_runs(runs)
        fig_dir = out / "figures" / claim["id"]
        made = figures.all_figures(groups, fig_dir) if runs else {}
        sections.append(_section(claim, budget, args, grid, runs, groups, keys, verdict, where,
                                 made, problems, out))
        echo(f"[{claim['id']}] {verdict.verdict}: {verdict.reason}")
    header = [
        "# What does Batch Normalization actually do? — bnexp claims", "",
        f"Budget: **{budget}**. Every verdict below comes from the decision rule declared in "
        "`configs/claims/claims.yaml` before the runs, applied by `bnexp/claims.py` to the runs "
        "listed; none is written by hand. Intervals are 95% Student-t intervals over seeds.", "",
        "| claim | verdict |", "|---|---|",
        *[f"| {s['title']} | **{s['verdict']}** |" for s in sections], "",
    ]
    if budget != "full":
        header += [f"The `{budget}` budget uses fewer seeds and shorter training than `full` "
                   "(stated per claim below): treat its verdicts as a preview.", ""]
    path = out / "claims.md"
    path.write_text("\n".join(header + [s["text"] for s in sections]) + "\n")
    return path


def _section(claim: dict[str, Any], budget: str, args: list[str], grid: dict[str, list[str]],
             runs: list[Run], groups: list[Group], keys: list[str], verdict: Verdict, where: str,
             made: dict[str, Path], problems: list, out: Path) -> dict[str, str]:
    seeds = sorted({r.summary.get("seed") for r in runs if r.summary.get("seed") is not None})
    grid_text = "; ".join(f"{k} in {{{', '.join(v)}}}" for k, v in grid.items())
    lines = [f"## {claim['title']}", "",
             f"**Verdict: {verdict.verdict}.** {verdict.reason}.", "",
             f"- Experiment: preset `{claim['preset']}` (`configs/experiment/{claim['preset']}"
             f".yaml`), budget `{budget}`: `bnexp train -m {' '.join(args)}`",
             f"- Grid: {grid_text or '-'}; "
             f"seeds {seeds}; {len(runs)} runs"
             + (f"; the rule looks at {where}" if where else ""),
             f"- Decision rule (declared before the runs): {claim['decision']}",
             f"- Measured: {verdict.effect}", ""]
    metrics = claim.get("report", [])
    lines += ["| " + " | ".join(["group", "runs (status)", *metrics]) + " |",
              "|" + "---|" * (2 + len(metrics))]
    for g in groups:
        status = ", ".join(f"{v} {k}" for k, v in sorted(g.statuses().items()))
        cells = [fmt(g.stat(m), 100 if m.endswith("acc") else 1, 2 if m.endswith("acc") else 4)
                 for m in metrics]
        lines.append(f"| {g.label} | {len(g.runs)} ({status}) | " + " | ".join(cells) + " |")
    for r in runs:
        if r.status != "completed":
            lines.append(f"\n- `{r.dir.name}`: {r.status} {r.summary.get('error', '')}".rstrip())
    for p, reason in problems:
        lines.append(f"\n- skipped unreadable `{p}`: {reason}")
    lines.append("")
    for title, path in made.items():
        lines += [f"![{title}]({path.relative_to(out)})", ""]
    return {"title": claim["title"], "verdict": verdict.verdict, "text": "\n".join(lines)}
