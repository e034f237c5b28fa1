"""The report's PNG figures (matplotlib, Agg): each readable on its own, with titles, axis labels
and a legend naming the groups. A figure whose data is absent from the runs is not drawn."""

from __future__ import annotations

import math
import re
import statistics
from collections import defaultdict
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402

from bnexp import metrics  # noqa: E402
from bnexp.runs import Group, Run, factor_value, varying_keys  # noqa: E402

# The variants in the order a comparison reads them: the baseline (no normalisation) first.
NORM_ORDER = ("none", "torch", "custom", "seed", "noisy", "ghost", "layer", "group")
# One colour per variant in every figure and every report (Okabe-Ito, colour-blind safe;
# the baseline black).
NORM_COLORS = {"none": "#000000", "torch": "#0072B2", "custom": "#E69F00", "seed": "#009E73",
               "noisy": "#CC79A7", "ghost": "#56B4E9", "layer": "#D55E00", "group": "#882255"}
# Groups that coincide (custom on top of torch) stay visible: each its own dash and marker.
LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


@dataclass(frozen=True)
class Style:
    color: Any
    ls: str
    marker: str


def group_norm(g: Group) -> str | None:
    """The norm variant of every run in the group, or None when they differ or none is known."""
    kinds = {r.config.get("norm.kind") for r in g.runs}
    return kinds.pop() if len(kinds) == 1 else None


def ordered(groups: list[Group]) -> list[Group]:
    """The baseline first: groups by their norm variant in NORM_ORDER (none, torch, custom,
    ...), otherwise in the given order."""
    def rank(item: tuple[int, Group]) -> tuple[int, int]:
        norm = group_norm(item[1])
        return (NORM_ORDER.index(norm) if norm in NORM_ORDER else len(NORM_ORDER), item[0])

    return [g for _, g in sorted(enumerate(groups), key=rank)]


def _styles(groups: list[Group]) -> dict[str, Style]:
    """Per group: its variant's colour (NORM_COLORS) when every group has one variant, else one
    of tab10/tab20 in order; a line style and a marker of its own."""
    norms = [group_norm(g) for g in groups]
    by_norm = all(n in NORM_COLORS for n in norms)
    cmap = plt.get_cmap("tab10" if len(groups) <= 10 else "tab20")
    return {g.label: Style(NORM_COLORS[n] if by_norm else cmap(i % cmap.N),
                           LINESTYLES[i % len(LINESTYLES)], MARKERS[i % len(MARKERS)])
            for i, (g, n) in enumerate(zip(groups, norms, strict=True))}


def _colors(groups: list[Group]) -> dict[str, Any]:
    """One colour per group, the same in every figure of a report (``_styles``)."""
    return {label: st.color for label, st in _styles(groups).items()}


def _ns(groups: list[Group]) -> list[int]:
    return [len(g.runs) for g in groups]


def spread_text(groups: list[Group], spread: str = "mean ± sd over seeds (band)",
                ns: list[int] | None = None) -> str:
    """What a figure's bands or bars are: ``spread`` when some group has several runs (or
    values: ``ns``, one count per group), else that each group is one run (no spread, no
    interval claimed)."""
    ns = _ns(groups) if ns is None else ns
    if max(ns, default=0) <= 1:
        return "one run per group (n = 1): no spread, no interval"
    counts = f"n = {min(ns)}" if min(ns) == max(ns) else f"n = {min(ns)} to {max(ns)}"
    return f"{spread}, {counts}"


def _legend(ax: Any, n: int) -> None:
    """Inside the axes for a few entries; beside them (outside the plot) for many."""
    if n <= 4:
        ax.legend(fontsize=7)
    else:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)


# What produced the figures being drawn (date, machine, command), printed small at the bottom
# of each one: a PNG passed around on its own still says where its numbers came from.
_STAMP: ContextVar[str] = ContextVar("stamp", default="")


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    if _STAMP.get():
        fig.subplots_adjust(bottom=max(fig.subplotpars.bottom, 0.16))
        fig.text(0.995, 0.005, _STAMP.get(), ha="right", va="bottom", fontsize=6, color="0.45")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _band(runs: list[Run], tag: str, kind: str | None) -> tuple[list[int], list[float], list[float]]:
    """Mean and standard deviation across seeds of ``tag`` at each step all runs share."""
    by_step: dict[int, list[float]] = defaultdict(list)
    for r in runs:
        for step, value in r.series(tag, kind):
            if value is not None and math.isfinite(value):
                by_step[step].append(value)
    steps = sorted(s for s, v in by_step.items() if len(v) == max(map(len, by_step.values())))
    means = [statistics.fmean(by_step[s]) for s in steps]
    stds = [statistics.pstdev(by_step[s]) if len(by_step[s]) > 1 else 0.0 for s in steps]
    return steps, means, stds


def _line(ax: Any, steps: list[int], values: list[float], st: Style, label: str,
          lw: float = 1.8) -> Any:
    """One group's line: its colour, dash and marker (a few markers on long series)."""
    line, = ax.plot(steps, values, color=st.color, ls=st.ls, marker=st.marker, ms=5, lw=lw,
                    markevery=max(1, len(steps) // 8), label=label)
    return line


def learning_curves(groups: list[Group], path: Path) -> Path | None:
    """Loss and accuracy over training; the two loss panels share a y scale, as do the two
    accuracy panels."""
    panels = [(metrics.TRAIN_LOSS, metrics.KIND_STEP, "train loss (per logged step)"),
              (metrics.TEST_LOSS, metrics.KIND_EPOCH, "test loss (per epoch)"),
              (metrics.TRAIN_ACC, metrics.KIND_STEP, "train accuracy (per logged step)"),
              (metrics.TEST_ACC, metrics.KIND_EPOCH, "test accuracy (per epoch)")]
    if not any(r.series(metrics.TEST_LOSS) for g in groups for r in g.runs):
        return None
    styles = _styles(groups)
    fig, axes = plt.subplots(2, 2, figsize=(11 if len(groups) <= 4 else 14, 7), sharey="row")
    for ax, (tag, kind, title) in zip(axes.flat, panels, strict=True):
        for g in groups:
            steps, mean, std = _band(g.runs, tag, kind)
            if steps:
                _line(ax, steps, mean, styles[g.label], f"{g.label} (n={len(g.runs)})")
                if len(g.runs) > 1:
                    ax.fill_between(steps, [m - s for m, s in zip(mean, std, strict=True)],
                                    [m + s for m, s in zip(mean, std, strict=True)],
                                    color=styles[g.label].color, alpha=0.15)
        ax.set(title=title, xlabel="optimizer step", ylabel=tag)
    for ax in axes[0]:  # the loss row: a log axis needs a positive range
        lo, hi = ax.dataLim.intervaly
        if ax.has_data() and hi > lo > 0:
            ax.set_yscale("log")
    fig.suptitle(f"Learning curves: {spread_text(groups)}", fontsize=10)
    _legend(axes.flat[1], len(groups))
    return _save(fig, path)


def _bars(ax: Any, groups: list[Group], metric: str, scale: float = 1.0) -> None:
    """One horizontal bar per group (the first at the top): the mean over its completed runs,
    a 95% t-interval only where n >= 2, and each run as a dot."""
    styles = _styles(groups)
    labels = [f"{g.label} (n={g.stat(metric)['n']})" for g in groups]
    for y, g in enumerate(groups):
        stat = g.stat(metric)
        mean = (stat["mean"] or 0.0) * scale
        err = None
        if stat["hi"] is not None and stat["n"] >= 2:
            err = [[mean - stat["lo"] * scale], [stat["hi"] * scale - mean]]
        ax.barh(y, mean, xerr=err, color=styles[g.label].color, alpha=0.75, capsize=3,
                hatch="//" if y % 2 else None, edgecolor="white")
        values = [v * scale for r in g.runs if r.status == metrics.COMPLETED
                  if (v := r.metric(metric)) is not None and math.isfinite(v)]
        ax.plot(values, [y] * len(values), "o", color="0.15", ms=3.5, zorder=3)
    ax.set_yticks(range(len(groups)), labels)
    ax.invert_yaxis()


def gap_bars(groups: list[Group], path: Path) -> Path | None:
    if not any(g.stat(metrics.GAP_ACC)["n"] for g in groups):
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.5 * len(groups) + 2.5))
    for ax, metric, name, scale in ((axes[0], metrics.GAP_ACC, "train − test accuracy (pp)", 100),
                                    (axes[1], metrics.GAP_LOSS, "train − test loss", 1)):
        _bars(ax, groups, metric, scale)
        ax.set(title=name, xlabel=name)
        ax.axvline(0, color="black", lw=0.8)
    fig.suptitle("Train-test gap: bar = mean, dots = runs; "
                 + spread_text(groups, "95% t-interval where n ≥ 2"), fontsize=10)
    return _save(fig, path)


def _layers(runs: list[Run], family: str, kind: str) -> list[str]:
    """Layer names in network order (fc1, fc2, ..., head) with a ``family/<layer>/kind`` probe."""
    return metrics.layers([rec for r in runs for rec in r.records], family, kind)


def grad_norms(groups: list[Group], path: Path) -> Path | None:
    return _grad_profile_figure(groups, path, "weight")


def input_grad_norms(groups: list[Group], path: Path) -> Path | None:
    """The backpropagated signal per layer (``grad/<layer>/input``), the quantity of vanishing
    and exploding gradients (claims 2, 3 and 8): a straight line on the log axis is a constant
    growth per layer."""
    return _grad_profile_figure(groups, path, "input")


def grad_profile(groups: list[Group], kind: str
                 ) -> tuple[list[str], dict[str, dict[str, list[float]]]]:
    """The data of a gradient-profile figure: the layers that have ``grad/<layer>/<kind>`` at
    step 0, and per group the mean over its runs of that norm at each run's first ("init") and
    last ("last") probe, layer by layer (nan where no run has a positive finite value)."""
    runs = [r for g in groups for r in g.runs]
    layers = [n for n in _layers(runs, "grad", kind)
              if any(r.metric(metrics.at(metrics.grad(n, kind), 0)) is not None for r in runs)]
    return layers, {g.label: {when: [_mean_at_probe(g.runs, metrics.grad(n, kind), when)
                                     for n in layers] for when in ("init", "last")}
                    for g in groups}


def _mean_at_probe(runs: list[Run], tag: str, when: str) -> float:
    values = []
    for r in runs:
        steps = sorted({s for s, _ in r.series(tag, metrics.KIND_PROBE)})
        if not steps:
            continue
        v = r.metric(metrics.at(tag, steps[0] if when == "init" else steps[-1]))
        if v is not None and v > 0 and math.isfinite(v):
            values.append(v)
    return statistics.fmean(values) if values else float("nan")


def _grad_profile_figure(groups: list[Group], path: Path, kind: str) -> Path | None:
    layers, values = grad_profile(groups, kind)
    if not layers:
        return None
    styles = _styles(groups)
    fig, axes = plt.subplots(1, 2, figsize=(12 if len(groups) <= 4 else 15, 4.5), sharey=True)
    what = "weight-gradient norm" if kind == "weight" else "gradient w.r.t. each layer's input"
    for ax, when in ((axes[0], "init"), (axes[1], "last")):
        for g in groups:
            st = styles[g.label]
            ax.plot(layers, values[g.label][when], marker=st.marker, ls=st.ls,
                    label=f"{g.label} (n={len(g.runs)})", color=st.color)
        ax.set(yscale="log", xlabel="layer (input → output)",
               ylabel="‖∂loss/∂W‖" if kind == "weight" else "‖∂loss/∂input‖",
               title=f"{what} " + ("at initialisation (step 0)" if when == "init"
                                   else "at the last probe"))
        ax.tick_params(axis="x", rotation=45)
    fig.suptitle(f"{what} per layer: " + spread_text(groups, "mean over seeds"), fontsize=10)
    _legend(axes[1], len(groups))
    return _save(fig, path)


def figure1_percentiles(groups: list[Group], path: Path) -> Path | None:
    """The BN paper's Figure 1 view: 15/50/85th percentiles of the last hidden layer's
    nonlinearity input over training, one panel per group (first seed)."""
    # Each group's own last hidden layer: groups of different architectures (fc3 vs conv3)
    # would otherwise get a panel for a layer they do not have.
    last = {}
    for g in groups:
        hidden = [n for n in _layers(g.runs, "act", "norm/p50") if n != metrics.HEAD]
        if hidden:
            last[g.label] = hidden[-1]
    if not last:
        return None
    shown = [g for g in groups if g.label in last]
    styles = _styles(shown)
    cols = min(4, len(shown))  # a grid, not one long row, for many groups
    rows = math.ceil(len(shown) / cols)
    # One y scale for every panel: the contrast between variants is the point of the figure.
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows + 0.6), squeeze=False,
                             sharey=True)
    for ax in axes.flat[len(shown):]:
        ax.axis("off")
    for ax, g in zip(axes.flat, shown, strict=False):
        layer = last[g.label]
        for q, style in zip(metrics.PERCENTILES, ("--", "-", ":"), strict=True):
            steps, mean, _ = _band(g.runs[:1], metrics.act(layer, "norm", q), metrics.KIND_PROBE)
            ax.plot(steps, mean, style, color=styles[g.label].color, lw=1.8 if q == "p50" else 1.4,
                    marker={"p15": "v", "p50": "o", "p85": "^"}[q], ms=4,
                    markevery=max(1, len(steps) // 10), label=q)
        ax.set(title=g.label, xlabel="optimizer step", ylabel=f"{layer} nonlinearity input")
        ax.axhline(0, color="0.8", lw=0.6, zorder=0)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("15/50/85th percentiles of the last hidden layer's nonlinearity input "
                 "(BN paper, Fig. 1): one run per panel (each group's first), shared y scale")
    return _save(fig, path)


def accuracy_vs_lr(groups: list[Group], path: Path) -> Path | None:
    runs = [r for g in groups for r in g.runs]
    lrs = {r.config.get("optim.lr") for r in runs}
    if len(lrs) < 2:
        return None
    series: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    factors = [k for k in varying_keys(runs) if k not in ("optim.lr", "seed")]
    for r in runs:
        other = " ".join(f"{k}={factor_value(r, k)}" for k in factors)
        acc = r.metric(metrics.TEST_ACC)
        series[other or "runs"].append((r.config["optim.lr"], acc if acc is not None else 0.0,
                                        r.status))
    fig, ax = plt.subplots(figsize=(7 if len(series) <= 4 else 9, 4.5))
    for i, (label, points) in enumerate(sorted(series.items(), key=_baseline_first)):
        by_lr: dict[float, list[float]] = defaultdict(list)
        for lr, acc, _ in points:
            by_lr[lr].append(acc)
        xs = sorted(by_lr)  # the mean over seeds per lr; each run a dot
        line, = ax.plot(xs, [100 * statistics.fmean(by_lr[x]) for x in xs],
                        marker=MARKERS[i % len(MARKERS)], ls=LINESTYLES[i % len(LINESTYLES)],
                        color=_series_color(label, i), label=label)
        done = [p for p in points if p[2] == metrics.COMPLETED]
        ax.scatter([p[0] for p in done], [100 * p[1] for p in done], s=10,
                   color=line.get_color(), alpha=0.5)
    for status, marker, color in STATUS_MARKERS:
        bad = [p for pts in series.values() for p in pts if p[2] == status]
        ax.scatter([p[0] for p in bad], [100 * p[1] for p in bad], marker=marker, s=90,
                   color=color, zorder=3, label=f"{status} (counted as 0%)" if bad else None)
    ax.set(xscale="log", xlabel="learning rate", ylabel="final test accuracy (%)",
           title="final accuracy against learning rate: line = mean over seeds, dot = run")
    _legend(ax, len(series) + 1)
    return _save(fig, path)


def _norm_of(label: str) -> str | None:
    found = re.search(r"(?:^| )norm=([^ ]+)", label)
    return found.group(1) if found else None


def _baseline_first(item: tuple[str, Any]) -> tuple[int, str]:
    norm = _norm_of(item[0])
    return (NORM_ORDER.index(norm) if norm in NORM_ORDER else len(NORM_ORDER), item[0])


def _series_color(label: str, i: int) -> Any:
    return NORM_COLORS.get(_norm_of(label) or "", plt.get_cmap("tab10")(i % 10))


# How runs that did not complete are drawn: a diverged run is a result, an interrupted one is not.
STATUS_MARKERS = ((metrics.DIVERGED, "x", "red"), (metrics.FAILED, "x", "black"),
                  (metrics.INTERRUPTED, "s", "gray"))


INTERLEAVED = "interleaved timing"  # the summary "kind" of a `bnexp time` run


def step_time(groups: list[Group], path: Path) -> Path | None:
    """ms per training step per group. Training runs time their steps alone, one after
    another, on whatever else the machine does: the figure says so, and that `bnexp time`
    (variants interleaved in one process) is the measurement to compare speeds with."""
    # A pack's replicas share its clock: their timing counts once (Group.stat), n = packs.
    ns = [n for g in groups if (n := g.stat(metrics.STEP_MS)["n"])]
    if not ns:
        return None
    interleaved = all(r.summary.get("kind") == INTERLEAVED for g in groups for r in g.runs)
    spread = spread_text(groups, "95% t-interval where n ≥ 2", ns)
    if any((r.summary.get("packed") or {}).get("K", 1) > 1 for g in groups for r in g.runs):
        if max(ns) <= 1:  # each group's seeds were one pack, not one run
            spread = "one pack per group (n = 1): no spread, no interval"
        spread += "\nn counts packs: the replicas of a packed model share its clock"
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(groups) + 2.6))
    _bars(ax, groups, metrics.STEP_MS)
    ax.set(xlabel="ms per training step (mean over epochs of each run)")
    if interleaved:
        ax.set_title("step time per variant, interleaved timing (bnexp time): " + spread,
                     fontsize=9)
    else:
        ax.set_title("step time measured during training on one machine, variants not "
                     "interleaved:\nnoisy, not a speed comparison (use `bnexp time`)\n"
                     + spread, fontsize=9, color="#8a3b00")
    return _save(fig, path)


# Santurkar et al. 2018's quantities over training (their Figs. 4-5): each a mean over layers.
OPTIMIZATION_PANELS = (
    ("ics/*/rel", "internal covariate shift ||G - G'|| / ||G||", True),
    ("ics/*/cos", "cos(G, G') (1: no shift)", False),
    (metrics.LANDSCAPE_BETA, "effective beta-smoothness along the gradient", True),
    (metrics.LANDSCAPE_GRAD_CHANGE, "gradient change along the gradient", True),
)


def optimization_landscape(groups: list[Group], path: Path) -> Path | None:
    """ICS and loss-landscape probes over training, one band (10th-90th percentile over seeds
    around the median) per group: Santurkar et al.'s Figures 4-5 for these runs."""
    series = {(g.label, pattern): [metrics.probe_series(r.records, pattern) for r in g.runs]
              for g in groups for pattern, _, _ in OPTIMIZATION_PANELS}
    if not any(s for runs in series.values() for s in runs):
        return None
    colors = _colors(groups)
    styles = _styles(groups)
    fig, axes = plt.subplots(2, 2, figsize=(12 if len(groups) <= 6 else 15, 8))
    for ax, (pattern, title, log) in zip(axes.flat, OPTIMIZATION_PANELS, strict=True):
        for g in groups:
            by_step: dict[int, list[float]] = defaultdict(list)
            for run_series in series[(g.label, pattern)]:
                for step, value in run_series:
                    by_step[step].append(value)
            steps = sorted(by_step)
            if not steps:
                continue
            q = [statistics.quantiles(by_step[s], n=10, method="inclusive")
                 if len(by_step[s]) > 1 else [by_step[s][0]] * 9 for s in steps]
            _line(ax, steps, [statistics.median(by_step[s]) for s in steps], styles[g.label],
                  f"{g.label} (n={len(g.runs)})")
            if len(g.runs) > 1:
                ax.fill_between(steps, [x[0] for x in q], [x[-1] for x in q],
                                color=colors[g.label], alpha=0.2)
        ax.set(title=title, xlabel="optimizer step")
        lo, hi = ax.dataLim.intervaly
        if log and ax.has_data() and hi > lo > 0:
            ax.set_yscale("log")
    fig.suptitle("Santurkar et al.'s quantities over training: "
                 + spread_text(groups, "median, band 10-90% over seeds"), fontsize=10)
    _legend(axes.flat[1], len(groups))
    return _save(fig, path)


FIGURES = {
    "Learning curves": ("learning_curves.png", learning_curves),
    "Train-test gap": ("gap.png", gap_bars),
    "Gradient norms per layer": ("grad_norms.png", grad_norms),
    "Backpropagated gradient per layer": ("input_grad_norms.png", input_grad_norms),
    "Nonlinearity-input percentiles (BN paper, Figure 1)": ("figure1_percentiles.png",
                                                             figure1_percentiles),
    "Final accuracy against learning rate": ("accuracy_vs_lr.png", accuracy_vs_lr),
    "Step time": ("step_time.png", step_time),
    "Internal covariate shift and loss landscape (Santurkar et al. 2018)": (
        "optimization_landscape.png", optimization_landscape),
}


def all_figures(groups: list[Group], folder: Path, stamp: str = "") -> dict[str, Path]:
    """Every figure the runs have data for, the baseline first (``ordered``); ``stamp`` (date,
    machine, command) on each."""
    groups = ordered(groups)
    made = {}
    token = _STAMP.set(stamp)
    try:
        for title, (name, draw) in FIGURES.items():
            path = draw(groups, folder / name)
            if path is not None:
                made[title] = path
    finally:
        _STAMP.reset(token)
    return made


def stamp_text(command: str, started: str | None = None) -> str:
    """'<date> · <host>, <n> CPUs · <command>': the line ``all_figures`` prints on each figure."""
    import os
    import platform
    import time

    when = started or time.strftime("%Y-%m-%d %H:%M")
    return f"{when} · {platform.node() or 'unknown host'}, {os.cpu_count()} CPUs · {command}"


# --- The claims' forest plot: every claim level against its own declared threshold ----------

VERDICT_COLORS = {  # Okabe-Ito (colour-blind safe), and the verdict is also written at the right
    "supported": "#009E73",
    "not supported": "#D55E00",
    "inconclusive": "#7F7F7F",
}
FOREST_CLIP = 20.0  # threshold units; an interval reaching beyond is cut here and marked
FOREST_LINEAR = 2.0  # the x axis is linear within +-this (0 and 1 decide), logarithmic beyond


@dataclass(frozen=True)
class ForestRow:
    """One claim level of the forest plot. ``effect``, ``lo`` and ``hi`` (its 95% interval) and
    ``threshold`` are on the claim's own scale: ratios for ``scale="log"``, differences for
    ``"linear"``. ``threshold`` is the declared positive number (1.25, 0.01); ``expect`` gives
    its direction ("higher": effect >= threshold, "lower": effect <= -threshold or, for ratios,
    <= 1/threshold), or "within" for an equivalence margin (|effect| <= threshold)."""

    label: str
    effect: float
    lo: float
    hi: float
    threshold: float
    scale: str
    expect: str
    verdict: str


def _on_scale(value: float, scale: str) -> float:
    """A value on the scale the claim is tested on: log of a ratio (a non-positive ratio is
    -inf, drawn clipped), or the difference itself."""
    if scale == "linear" or math.isnan(value):
        return value
    if scale != "log":
        raise ValueError(f"ForestRow.scale must be 'log' or 'linear', not {scale!r}")
    return math.log(value) if value > 0 else -math.inf


def forest_x(row: ForestRow) -> tuple[float, float, float]:
    """(x, lo, hi) in threshold units: 0 = no effect, 1 = the declared threshold, right = the
    claimed direction. With f the identity (linear) or log (log scale) and t = |f(threshold)|:
    higher: f(effect) / t; lower: -f(effect) / t; within: |f(effect)| / t (the claim is left of
    1), its interval [min |f(lo..hi)|, max |f(lo..hi)|] / t, from 0 when it spans no effect."""
    t = abs(_on_scale(row.threshold, row.scale))
    if not t > 0 or not math.isfinite(t):
        raise ValueError(f"{row.label}: threshold {row.threshold} is no distance on the "
                         f"{row.scale} scale, so it cannot be the unit")
    e, lo, hi = (_on_scale(v, row.scale) / t for v in (row.effect, row.lo, row.hi))
    if row.expect == "higher":
        return e, lo, hi
    if row.expect == "lower":
        return -e, -hi, -lo
    if row.expect != "within":
        raise ValueError(f"ForestRow.expect must be higher, lower or within, not {row.expect!r}")
    spans_zero = lo <= 0 <= hi
    return abs(e), 0.0 if spans_zero else min(abs(lo), abs(hi)), max(abs(lo), abs(hi))


def forest_clip(x: float, lo: float, hi: float, limit: float = FOREST_CLIP
                ) -> tuple[float, float, float, bool, bool]:
    """(x, lo, hi) cut to [-limit, limit], with whether the interval continues left / right."""
    def cut(v: float) -> float:
        return v if math.isnan(v) else max(-limit, min(limit, v))
    return cut(x), cut(lo), cut(hi), lo < -limit or x < -limit, hi > limit or x > limit


def _forest_value_text(row: ForestRow) -> str:
    """The row's numbers on its own scale, for the column at the right."""
    if math.isnan(row.effect):
        return "no estimate"
    r = "×" if row.scale == "log" else ""
    t = max(row.threshold, 1 / row.threshold) if r else abs(row.threshold)
    thr = {"higher": f"≥ {r}{t:.3g}", "lower": f"≤ ×1/{t:.3g}" if r else f"≤ {-t:.3g}",
           "within": f"within {'×÷' if r else '±'}{t:.3g}"}[row.expect]
    return f"{r}{row.effect:.3g} [{row.lo:.3g}, {row.hi:.3g}], claim {thr}"


def _forest_row(ax: Any, y: int, row: ForestRow) -> None:
    color = VERDICT_COLORS.get(row.verdict, "black")
    x, lo, hi, left, right = forest_clip(*forest_x(row))
    marker = "D" if row.expect == "within" else "o"
    if math.isnan(x):
        ax.plot([0], [y], marker="x", color=color, ms=7, ls="none")
    else:
        if not math.isnan(lo) and not math.isnan(hi):
            ax.hlines(y, lo, hi, color=color, lw=2.2)
        ax.plot([x], [y], marker=marker, color=color, ms=7, ls="none", mec="white", mew=0.8)
    for continues, edge, arrow in ((left, -FOREST_CLIP, "<"), (right, FOREST_CLIP, ">")):
        if continues:
            ax.plot([edge], [y], marker=arrow, color=color, ms=8, ls="none", gid="clipped")
    ax.annotate(row.verdict, (1.0, y), xycoords=ax.get_yaxis_transform(), xytext=(6, 0),
                textcoords="offset points", va="center", fontsize=7.5, color=color,
                fontweight="bold")
    ax.annotate(_forest_value_text(row), (1.0, y), xycoords=ax.get_yaxis_transform(),
                xytext=(72, 0), textcoords="offset points", va="center", fontsize=7.5,
                color="0.2")


def _forest_legend(ax: Any) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=c, marker="o", lw=2.2, label=word)
               for word, c in VERDICT_COLORS.items()]
    handles += [Line2D([], [], color="0.3", marker="D", ls="none",
                       label="equivalence: |effect| / margin (claim: left of 1)"),
                Line2D([], [], color="0.3", marker=">", ls="none",
                       label=f"interval continues beyond ±{FOREST_CLIP:g}")]
    ax.legend(handles=handles, fontsize=7.5, loc="lower center", ncol=len(handles),
              bbox_to_anchor=(0.5, 1.0), frameon=False, handlelength=1.6, columnspacing=1.2)


def _forest_figure(rows: list[ForestRow]) -> Any:
    n = len(rows)
    xs = [v for row in rows for v in forest_clip(*forest_x(row))[:3] if math.isfinite(v)]
    fig, ax = plt.subplots(figsize=(12, 0.34 * n + 2.2))
    for y, row in enumerate(rows):
        if y % 2:
            ax.axhspan(y - 0.5, y + 0.5, color="0.95", zorder=0)
        _forest_row(ax, y, row)
    ax.axvline(0, color="0.3", ls="--", lw=1, label="no effect")
    ax.axvline(1, color="black", ls="--", lw=1.2, label="declared threshold")
    ax.set_xscale("symlog", linthresh=FOREST_LINEAR, linscale=1.3)
    lim = (min([-1.0, *xs]) * 1.15 - 0.1, max([2.0, *xs]) * 1.15 + 0.1)
    ticks = [t for t in (-20, -10, -5, -2, -1, 0, 1, 2, 5, 10, 20) if lim[0] <= t <= lim[1]]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.set_xlim(*lim)
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_ylim(n - 0.5, -0.5)  # the first row at the top
    ax.set_yticks(range(n), [row.label for row in rows], fontsize=8)
    for x, word in ((0, "no effect"), (1, "threshold")):
        ax.text(x, -0.5, word, ha="center", va="bottom", fontsize=7, color="0.3")
    ax.set_xlabel("effect in units of its declared threshold (1 = threshold, 0 = no effect; "
                  "right = the claimed direction;\n"
                  f"linear within ±{FOREST_LINEAR:g}, logarithmic beyond)", fontsize=8.5)
    counts = {w: sum(r.verdict == w for r in rows) for w in VERDICT_COLORS}
    ax.set_title("Every claim's effect against its declared threshold, with 95% intervals — "
                 + ", ".join(f"{k} {w}" for w, k in counts.items()), fontsize=10, pad=26)
    _forest_legend(ax)
    ax.grid(axis="x", color="0.88", lw=0.6)
    return fig


def forest_plot(rows: list[ForestRow], path: Path, stamp: str = "") -> Path | None:
    """The claims at a glance: one row per claim level (the first at the top), its effect and
    interval in threshold units (see ``forest_x``), coloured by verdict; None for no rows.
    ``stamp`` (else the one ``all_figures`` has set) is printed at the bottom."""
    if not rows:
        return None
    token = _STAMP.set(stamp or _STAMP.get())
    try:
        return _save(_forest_figure(rows), path)
    finally:
        _STAMP.reset(token)
