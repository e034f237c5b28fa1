"""From run directories to report.md, results.csv and figures/.

Runs are read and grouped by ``bnexp.runs`` (the settings that vary between them; seeds
aggregated as mean, standard deviation, a 95% t-interval and n); this module writes the tables
and draws the figures of ``bnexp.figures``. Runs that diverged, failed or were interrupted are
counted and shown, never dropped; folders whose files cannot be read are reported by name.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from bnexp import figures
from bnexp import metrics as m
from bnexp.errors import BnexpError
from bnexp.jsonio import staging
from bnexp.rundir import new_run_dir
from bnexp.runs import Group, Run, find_runs, group_runs

FINAL_METRICS = (m.TEST_ACC, m.TEST_LOSS, m.TRAIN_LOSS, m.TRAIN_ACC, m.TRAIN_EVAL_ACC, m.GAP_ACC,
                 m.GAP_LOSS, m.VAL_ACC, m.TEST_BATCHSTATS_ACC)
SUMMARY_METRICS = (m.SUMMARY_SAMPLES_PER_S,)


def fmt(stat: dict[str, Any], scale: float = 1.0, digits: int = 2) -> str:
    if stat["mean"] is None:
        return "-"
    # Tiny values (a first-to-last gradient ratio of 1e-9) would print as 0.0000.
    small = 0 < abs(stat["mean"] * scale) < 10 ** -digits
    form = f".{digits}e" if small else f".{digits}f"
    text = f"{stat['mean'] * scale:{form}}"
    if stat["lo"] is not None:
        text += f" [{stat['lo'] * scale:{form}}, {stat['hi'] * scale:{form}}]"
    return f"{text} (n={stat['n']})"


def results_rows(groups: list[Group]) -> list[dict[str, Any]]:
    rows = []
    for g in groups:
        row: dict[str, Any] = {"group": g.label, "runs": len(g.runs)}
        row.update({f"status_{k}": v for k, v in g.statuses().items()})
        for metric in (*FINAL_METRICS, *SUMMARY_METRICS, m.STEP_MS):
            s = g.stat(metric)
            if s["n"]:
                for k in ("mean", "std", "lo", "hi", "n"):
                    row[f"{metric}:{k}"] = s[k]
        rows.append(row)
    return rows


def new_report_dir(output_dir: str | Path = "outputs") -> Path:
    """``<output_dir>/reports/<YYYY-MM-DD_HH-MM-SS>_report_<uid>/``: each report its own folder,
    so a second report never overwrites the first."""
    return new_run_dir(output_dir, "report", "reports")


def write_report(paths: list[Path], out: Path | None = None) -> dict[str, Any]:
    """Aggregate the runs under ``paths`` into ``out`` (report.md, results.csv, figures/; by
    default a new folder, ``new_report_dir``); returns what was found, for the CLI to print."""
    runs, problems = find_runs(paths)
    if not runs:
        raise BnexpError(f"No runs found under {', '.join(map(str, paths))}: a run directory "
                         "holds summary.json (made by `bnexp train`). Pass run or sweep "
                         "directories, e.g. outputs/sweeps/<dir>. "
                         + (f"Nothing in {out} was changed." if out else "No report was made."))
    out = out if out is not None else new_report_dir()
    keys, groups = group_runs(runs)
    groups = figures.ordered(groups)  # the baseline first, in the tables as in the figures
    with staging(out, ("report.md", "results.csv", "figures")) as tmp:
        made = _write_report_files(paths, tmp, runs, problems, keys, groups)
    made = {title: out / path.relative_to(tmp) for title, path in made.items()}
    return {"runs": runs, "groups": groups, "keys": keys, "problems": problems,
            "figures": made, "out": out}


def _write_report_files(paths: list[Path], out: Path, runs: list[Run], problems: list,
                        keys: list[str], groups: list[Group]) -> dict[str, Path]:
    _write_csv(out / "results.csv", results_rows(groups))
    made = figures.all_figures(groups, out / "figures", figures.stamp_text(
        "bnexp report " + " ".join(map(str, paths))))
    lines = ["# bnexp report", "", f"{len(runs)} runs from {', '.join(map(str, paths))}; "
             f"grouped by: {', '.join(keys) or '(nothing varies)'}.", "",
             "Values: mean [95% t-interval] (n seeds) over completed runs; a group of one run "
             "(n=1) has its value only, no interval.", "",
             *_group_table(groups), *_not_completed(runs)]
    if problems:
        lines += ["", "## Skipped (unreadable)", ""]
        lines += [f"- `{p}`: {reason}" for p, reason in problems]
    if made:
        lines += ["", "## Figures", ""]
        for title, path in made.items():
            lines += [f"### {title}", "", f"![{title}]({path.relative_to(out)})", ""]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return made


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    columns = sorted({c for r in rows for c in r}, key=lambda c: (c not in ("group", "runs"), c))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def _group_table(groups: list[Group]) -> list[str]:
    lines = ["| group | runs (status) | test acc % | test loss | train-test gap (acc, pp) | "
             "step ms | samples/s |", "|---|---|---|---|---|---|---|"]
    for g in groups:
        status = ", ".join(f"{v} {k}" for k, v in sorted(g.statuses().items()))
        if g.repeats:
            status += f"; {g.repeats} exact repeats not counted"
        lines.append(f"| {g.label} | {len(g.runs)} ({status}) | {fmt(g.stat(m.TEST_ACC), 100)} | "
                     f"{fmt(g.stat(m.TEST_LOSS), 1, 4)} | {fmt(g.stat(m.GAP_ACC), 100)} | "
                     f"{fmt(g.stat(m.STEP_MS))} | {fmt(g.stat(m.SUMMARY_SAMPLES_PER_S), 1, 0)} |")
    return lines


def _not_completed(runs: list[Run]) -> list[str]:
    not_completed = [r for r in runs if r.status != m.COMPLETED]
    if not not_completed:
        return []
    lines = ["", "## Runs that did not complete", ""]
    for r in not_completed:
        detail = r.summary.get("error") or (f"at step {r.summary['diverged_step']}"
                                            if "diverged_step" in r.summary else "")
        lines.append(f"- `{r.dir}`: **{r.status}** {detail}".rstrip())
    return lines
