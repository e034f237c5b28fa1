"""Metric names in one place: the tag scheme, run statuses, and the derived metrics.

Training writes tags (TensorBoard scalars and the same keys in metrics.jsonl); report, figures
and ``configs/claims/claims.yaml`` read them back by name. Building and parsing every name here
means a renamed tag cannot quietly leave a figure or a claim without data. Torch-free on purpose:
reading run directories (report, claims and their tests) must not need torch.

Tags::

    <split>/<stat>                   train/loss, train/acc, train_eval/..., val/..., test/...,
                                     test_batchstats/..., test_single/{acc,nonfinite}
    gap/loss, gap/acc                train (eval mode, train images) minus test
    opt/lr, time/step_ms, time/step_ms_median, time/samples_per_s, time/epoch_s
    act/<layer>/<stage>/<stat>       stage pre|norm|post; stat mean|std|saturated|dead|p15|p50|p85,
                                     unit_p15|unit_p50|unit_p85 (one unit); act/<layer>/norm/units
                                     is a per-unit record (kind "units", metrics.jsonl only)
    grad/<layer>/{weight,bias,input} gradient norms; grad/global, grad/first_last_ratio
    update/<layer>                   update-to-weight ratio
    ics/<layer>/{l2,cos}             internal covariate shift (Santurkar et al. 2018, Def. 2.1):
                                     the layer's weight gradient before vs after the preceding
                                     layers take this step's update (bnexp/landscape.py)
    landscape/{loss_range,grad_change,beta}
                                     loss and gradient along the gradient direction (Santurkar
                                     et al. 2018, Fig. 4; bnexp/landscape.py)
    hist/<tag>                       histograms

Metric names (what ``value`` reads for one run; ``parse`` turns one into a ``Query``)::

    test/acc, samples_per_s        a final metric (completed runs only) or a summary field
    time/step_ms                   mean over epochs of the steady step time
    TAG@STEP, TAG@last             a probe value at a step (recorded before any divergence)
    abslog10:M                     |log10| of metric M
    drift:last, drift_units:last   how far the last hidden layer's nonlinearity-input
                                   percentiles move between probes: pooled over the layer, or
                                   per unit and averaged over units (probe.per_unit); a layer
                                   name instead of ``last`` picks that layer
    step_drift_units:last          the same per unit, across one training step (each probed
                                   step's update), averaged over the probed steps
    growth:grad/input@STEP         per-layer growth toward the input of the gradient w.r.t. each
                                   layer's input (grad/weight@STEP: of the weight gradients)
    mean:TAG                       mean over the run's probes of a probe tag; one '*' stands
                                   for the layer (averaged per probe): mean:ics/*/rel
    steps_to:TAG>=X                first step at which TAG reached X (censored at the run's
                                   total steps when it never did: the worst outcome)
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

# ---------------------------------------------------------------------------------------------
# Run status (summary.json "status") and metrics.jsonl record kinds
# ---------------------------------------------------------------------------------------------

COMPLETED, DIVERGED, FAILED, INTERRUPTED, RUNNING = (
    "completed", "diverged", "failed", "interrupted", "running")
# A sweep job that a cluster scheduler ended (scancel; its time limit): set by bnexp/slurm.py
# from the scheduler's job state, whose reason goes in the summary's "scheduler" field.
CANCELLED, TIMEOUT = "cancelled", "timeout"
STATUSES = (COMPLETED, DIVERGED, FAILED, INTERRUPTED, RUNNING, CANCELLED, TIMEOUT)
# A finished run is a result: a diverged run would diverge again, so a sweep resume keeps it;
# failed and interrupted runs are not results and are re-run.
FINISHED = (COMPLETED, DIVERGED)
# A sweep job not started yet: a sweep manifest's status, never a summary.json's.
PLANNED = "planned"

KIND_STEP, KIND_EPOCH, KIND_VAL, KIND_PROBE, KIND_UNITS = "step", "epoch", "val", "probe", "units"
# The per-unit percentiles again right after a probed step's update (same probe batch, same
# probe noise): the pair measures how far one training step moves each unit (step_drift_units).
KIND_UNITS_NEXT = "units_next"

# ---------------------------------------------------------------------------------------------
# Tags
# ---------------------------------------------------------------------------------------------

SPLITS = ("train", "train_eval", "val", "test", "test_batchstats", "test_single")


def split_tag(split: str, stat: str) -> str:
    """``<split>/<stat>``: ``split_tag("val", "acc") == "val/acc"``."""
    return f"{split}/{stat}"


TRAIN_LOSS, TRAIN_ACC = "train/loss", "train/acc"
TRAIN_EVAL_LOSS, TRAIN_EVAL_ACC = "train_eval/loss", "train_eval/acc"
VAL_LOSS, VAL_ACC = "val/loss", "val/acc"
TEST_LOSS, TEST_ACC = "test/loss", "test/acc"
TEST_BATCHSTATS_LOSS, TEST_BATCHSTATS_ACC = "test_batchstats/loss", "test_batchstats/acc"
TEST_SINGLE_ACC, TEST_SINGLE_NONFINITE = "test_single/acc", "test_single/nonfinite"
GAP_LOSS, GAP_ACC = "gap/loss", "gap/acc"
OPT_LR = "opt/lr"
STEP_MS, STEP_MS_MEDIAN = "time/step_ms", "time/step_ms_median"
STEP_MS_MIN, STEP_MS_MAX = "time/step_ms_min", "time/step_ms_max"
SAMPLES_PER_S, EPOCH_S = "time/samples_per_s", "time/epoch_s"
SUMMARY_SAMPLES_PER_S = "samples_per_s"  # a summary.json field (whole run), not a tag

STAGES = ("pre", "norm", "post")  # a block's affine output, norm output, activation output
ACT_STATS = ("mean", "std", "saturated", "dead")
PERCENTILES = ("p15", "p50", "p85")
UNIT_PREFIX = "unit_"  # act/<layer>/<stage>/unit_p50: the percentiles of one probed unit
GRAD_KINDS = ("weight", "bias", "input")
GRAD_GLOBAL, GRAD_FIRST_LAST = "grad/global", "grad/first_last_ratio"
HEAD = "head"  # the output layer; hidden layers are fc1, fc2, ... or conv1, conv2, ...


def act(layer: str, stage: str, stat: str) -> str:
    """``act/<layer>/<stage>/<stat>``, e.g. ``act/fc2/norm/p50``."""
    return f"act/{layer}/{stage}/{stat}"


def act_units(layer: str, stage: str = "norm") -> str:
    """The key of a layer's per-unit percentiles in a ``units`` record."""
    return f"act/{layer}/{stage}/units"


def grad(layer: str, kind: str) -> str:
    """``grad/<layer>/<kind>``, kind one of weight, bias, input."""
    return f"grad/{layer}/{kind}"


def update(layer: str) -> str:
    return f"update/{layer}"


ICS_STATS = ("l2", "rel", "cos")  # ||G - G'||, that over ||G||, cos(G, G')
LANDSCAPE_LOSS_RANGE = "landscape/loss_range"
LANDSCAPE_GRAD_CHANGE = "landscape/grad_change"
LANDSCAPE_BETA = "landscape/beta"


def ics(layer: str, stat: str) -> str:
    """``ics/<layer>/<stat>``, stat one of ICS_STATS: ``ics("fc2", "l2") == "ics/fc2/l2"``."""
    return f"ics/{layer}/{stat}"


def hist(tag: str) -> str:
    """The histogram of what ``tag`` names: ``hist/act/fc1/post``, ``hist/grad/fc1/weight``."""
    return f"hist/{tag}"


def at(tag: str, step: int | str) -> str:
    """The metric name of ``tag`` in the probe at ``step`` (an int or ``last``)."""
    return f"{tag}@{step}"


def any_layer(build: Callable[..., str], *args: str) -> str:
    """A regex for ``build(<any layer>, *args)``, for custom-scalars charts that overlay every
    layer: ``any_layer(grad, "input") == "grad/[^/]+/input$"``. ``args`` may be regexes."""
    return build("\0", *args).replace("\0", "[^/]+") + "$"


def layer_order(name: str) -> tuple[int, int]:
    """Sort key for network order: by the layer's number (fc1, fc2, ..., conv3), head last."""
    digits = re.sub(r"\D", "", name)
    return (1, 0) if name == HEAD else (0, int(digits) if digits else 0)


def layers(records: list[dict], family: str, kind: str) -> list[str]:
    """The layers with a ``<family>/<layer>/<kind>`` value in the probe records, in network
    order: ``layers(records, "grad", "input")``."""
    pattern = re.compile(rf"{re.escape(family)}/([^/]+)/{re.escape(kind)}$")
    names = {m.group(1) for rec in records if rec.get("kind") == KIND_PROBE
             for k in rec if (m := pattern.match(k))}
    return sorted(names, key=layer_order)


def hidden_layers(records: list[dict], prefix: str) -> list[str]:
    """Hidden layer names (fc1, fc2, ... or conv1, ...) seen in tags ``<prefix><layer>/...``,
    in network order."""
    names = {k[len(prefix):].split("/")[0] for r in records for k in r if k.startswith(prefix)}
    names = {n for n in names if n.rstrip("0123456789") in ("fc", "conv") and n[-1:].isdigit()}
    return sorted(names, key=lambda n: int(n.lstrip("fconv")))


# The HParams dashboard's metrics (each run's final value: the last point of its curve) and the
# run's custom-scalars charts (runlog writes both; bnexp/tbview.py lists the metrics for HParams).
HPARAM_METRICS = (TEST_ACC, VAL_ACC, GAP_ACC, GAP_LOSS, TEST_LOSS)
# The splits charted one per chart, in reading order; train_eval is the training split scored
# as the test split is (eval mode), which the gap compares.
CHART_SPLITS = (("train", "train (per logged step)"), ("val", "val"), ("test", "test"),
                ("train_eval", "train, eval mode"))


def run_layout() -> dict[str, dict[str, list]]:
    """Custom-scalars charts of every run, in the order a student reads them: loss, accuracy
    and the train-test gap, one chart per split (each run one line, named in the run list) and
    one quantity per chart (no chart mixes units); then speed."""
    def per_split(stat: str, what: str) -> dict[str, list]:
        return {f"{what}: {label}": ["Multiline", [f"^{split_tag(split, stat)}$"]]
                for split, label in CHART_SPLITS}

    return {
        "loss": per_split("loss", "loss"),
        "accuracy": per_split("acc", "accuracy"),
        "train-test gap": {
            "accuracy gap (train - test)": ["Multiline", [f"^{GAP_ACC}$"]],
            "loss gap (train - test)": ["Multiline", [f"^{GAP_LOSS}$"]],
        },
        "speed": {
            "samples/s": ["Multiline", [f"^{SAMPLES_PER_S}$"]],
            "step ms": ["Multiline", [f"^{STEP_MS}$"]],
        },
    }


# ---------------------------------------------------------------------------------------------
# Metric names: parsing
# ---------------------------------------------------------------------------------------------

# Step time is logged per epoch and the first epoch's includes one-off costs, so the metric is
# the mean over epochs, which also exists for runs that did not complete.
EPOCH_MEAN = (STEP_MS,)


@dataclass(frozen=True)
class Query:
    """A parsed metric name. ``op`` is ``final``, ``epoch_mean``, ``probe`` or a derived
    operation (``abslog10``, ``growth``, ``drift``, ``drift_units``, ``step_drift_units``,
    ``steps_to``)."""

    op: str
    tag: str = ""  # the tag read; growth: the gradient kind; drift: a layer or "last"
    step: str = ""  # probe and growth: the probe step, digits or "last"
    target: float | None = None  # steps_to: the value to reach
    inner: Query | None = None  # abslog10: the metric whose |log10| is taken

    def __str__(self) -> str:
        if self.op in ("final", "epoch_mean"):
            return self.tag
        if self.op == "probe":
            return at(self.tag, self.step)
        if self.op == "abslog10":
            return f"abslog10:{self.inner}"
        if self.op == "growth":
            return f"growth:grad/{self.tag}@{self.step}"
        if self.op == "steps_to":
            return f"steps_to:{self.tag}>={self.target!r}"
        return f"{self.op}:{self.tag}"


def _step(text: str, key: str) -> str:
    if text == "last":
        return text
    try:
        return str(int(text))
    except ValueError:
        raise ValueError(f"metric {key!r}: the step after '@' must be an integer or 'last', "
                         f"got {text!r}") from None


def _parse_growth(arg: str, key: str) -> Query:
    stat, _, step = arg.partition("@")
    family, _, kind = stat.partition("/")
    if family != "grad" or kind not in GRAD_KINDS:
        raise ValueError(f"metric {key!r}: growth needs grad/<{'|'.join(GRAD_KINDS)}>@STEP")
    return Query("growth", kind, _step(step or "0", key))


def _parse_steps_to(arg: str, key: str) -> Query:
    tag, sep, target = arg.partition(">=")
    try:
        value = float(target)
    except ValueError:
        value = math.nan
    if not sep or not tag or math.isnan(value):
        raise ValueError(f"metric {key!r}: steps_to needs TAG>=NUMBER, e.g. steps_to:val/acc>=0.9")
    return Query("steps_to", tag, target=value)


def _parse_mean(arg: str, key: str) -> Query:
    if arg.count("*") > 1 or "@" in arg:
        raise ValueError(f"metric {key!r}: mean needs a probe tag, with at most one '*' for the "
                         "layer, e.g. mean:ics/*/rel or mean:landscape/beta")
    return Query("mean", arg)


_PARSERS: dict[str, Callable[[str, str], Query]] = {
    "mean": _parse_mean,
    "abslog10": lambda arg, _key: Query("abslog10", inner=parse(arg)),
    "growth": _parse_growth,
    "drift": lambda arg, _key: Query("drift", arg),
    "drift_units": lambda arg, _key: Query("drift_units", arg),
    "step_drift_units": lambda arg, _key: Query("step_drift_units", arg),
    "steps_to": _parse_steps_to,
}
DERIVED = tuple(_PARSERS)


@functools.lru_cache(maxsize=1024)
def parse(key: str) -> Query:
    """The ``Query`` a metric name stands for (see the module's table); ValueError says what is
    wrong with a malformed one, so a typo in claims.yaml is not read as a missing value."""
    op, sep, arg = key.partition(":")
    if sep:
        if op not in _PARSERS or not arg:
            raise ValueError(f"metric {key!r}: unknown derived metric {op!r} (known: "
                             f"{', '.join(DERIVED)})")
        return _PARSERS[op](arg, key)
    if "@" in key:
        tag, step = key.rsplit("@", 1)
        return Query("probe", tag, _step(step, key))
    return Query("epoch_mean" if key in EPOCH_MEAN else "final", key)


def at_step(key: str, step: int | str) -> str:
    """The same probe-step metric at another step: ``growth:grad/input@0`` -> ``...@last``."""
    q = parse(key)
    if q.op not in ("probe", "growth"):
        raise ValueError(f"metric {key!r} is not read at a probe step")
    return str(dataclasses.replace(q, step=_step(str(step), key)))


# ---------------------------------------------------------------------------------------------
# Metric values: each takes a run's summary.json (a dict) and its metrics.jsonl records (a list
# of dicts) and returns a float, or None when the run does not have what the metric needs.
# ---------------------------------------------------------------------------------------------

def value(summary: dict, records: list[dict], key: str) -> float | None:
    """The value of metric ``key`` for one run (see the module's table)."""
    return evaluate(parse(key), summary, records)


def evaluate(q: Query, summary: dict, records: list[dict]) -> float | None:
    return _EVALUATORS[q.op](q, summary, records)


def final_value(summary: dict, key: str) -> float | None:
    """A final metric or summary field; a run that did not complete has no final metrics."""
    if summary.get("status") != COMPLETED:
        return None
    found = summary.get("final", {}).get(key, summary.get(key))
    return float(found) if isinstance(found, (int, float)) else None


def epoch_mean(records: list[dict], tag: str) -> float | None:
    values = [r[tag] for r in records if r.get("kind") == KIND_EPOCH and r.get(tag) is not None]
    return float(np.mean(values)) if values else None


def probe_value(records: list[dict], tag: str, step: str) -> float | None:
    """``tag`` in the probe record at ``step`` (an int as text, or ``last`` for the last probe)."""
    probes = [r for r in records if r.get("kind") == KIND_PROBE and r.get(tag) is not None]
    if not probes:
        return None
    if step == "last":
        return float(probes[-1][tag])
    for r in probes:
        if r["step"] == int(step):
            return float(r[tag])
    return None


def abslog10(x: float | None) -> float | None:
    """|log10 x|: how many decades a ratio is from 1 either way; None unless x > 0."""
    return abs(math.log10(x)) if x is not None and x > 0 else None


def growth_rate(norms: list[float]) -> float | None:
    """Per-layer growth factor of a norm toward the input: ``exp(-slope)`` of the least-squares
    line through ``log(norm)`` against layer index (input first). >1: gradients explode toward
    the input; <1: they vanish. Signed on purpose: |log| would let a vanishing net look like a
    cure for an exploding one."""
    if len(norms) < 3 or any(not (v > 0 and math.isfinite(v)) for v in norms):
        return None
    slope = np.polyfit(np.arange(len(norms)), np.log(norms), 1)[0]
    return float(math.exp(-slope))


def growth(records: list[dict], kind: str, step: str = "0") -> float | None:
    """Growth of ``grad/<layer>/<kind>`` over the equal-width hidden layers of an MLP (fc2..fcN;
    fc1 sees the image and the head has its own shape, so they would bend the line). The input
    gradient is the backpropagated signal: in a plain net whose weights are scaled up, forward
    norms grow as fast as backward ones shrink toward the output, so the weight-gradient norms
    stay flat while the backward signal explodes."""
    names = [n for n in hidden_layers(records, "grad/") if n.startswith("fc")][1:]
    norms = [probe_value(records, grad(n, kind), step) for n in names]
    return None if any(v is None for v in norms) else growth_rate(norms)  # type: ignore[arg-type]


def drift(points: list[tuple[float, float, float]]) -> float | None:
    """Mean absolute change of (p15, p50, p85) between successive probes, relative to the mean
    15-85 spread, so that layers and runs with differently scaled activations compare."""
    if len(points) < 2:
        return None
    changes = [abs(b[i] - a[i]) for a, b in zip(points, points[1:], strict=False) for i in range(3)]
    spread = float(np.mean([p[2] - p[0] for p in points]))
    return float(np.mean(changes)) / spread if spread > 0 else None


def drift_pooled(records: list[dict], layer: str = "last") -> float | None:
    """``drift`` of a hidden layer's nonlinearity-input percentiles pooled over the layer."""
    probes = [r for r in records if r.get("kind") == KIND_PROBE]
    names = hidden_layers(probes, "act/")
    if not names:
        return None
    name = names[-1] if layer == "last" else layer
    tags = [act(name, "norm", q) for q in PERCENTILES]
    points = [tuple(r[t] for t in tags) for r in probes if all(r.get(t) is not None for t in tags)]
    return drift(points)  # type: ignore[arg-type]


def drift_units(records: list[dict], layer: str = "last") -> float | None:
    """Per unit (the BN paper's Figure 1 tracks single units), averaged over the layer's units:
    pooled percentiles of a BN layer can only move through gamma/beta averaged over units."""
    units = [r for r in records if r.get("kind") == KIND_UNITS]
    names = hidden_layers(units, "act/")
    if not names:
        return None
    tag = act_units(names[-1] if layer == "last" else layer)
    series = [r[tag] for r in units if tag in r]
    if len(series) < 2:
        return None
    finite = [d for d in _unit_drifts(series) if d is not None]
    return float(np.mean(finite)) if finite else None


def _unit_drifts(series: list[dict]) -> list[float | None]:
    """``drift`` of each unit over a series of one layer's per-unit percentile records."""
    return [drift([tuple(s[q][j] for q in ("p15", "p50", "p85")) for s in series])
            for j in range(len(series[0]["p50"]))]


def step_drift_units(records: list[dict], layer: str = "last") -> float | None:
    """``drift_units`` across single training steps: each probed step's per-unit percentiles
    paired with the same unit's right after that step's update (``units_next``), each pair's
    ``drift``, averaged over pairs and units. Noise whose distribution changes every step
    (norm=noisy) moves a unit at every step; learning moves it steadily, so over the probes'
    spacing it can add up to as much: this sees the per-step change a layer learns against."""
    pairs: dict[int, dict[str, dict]] = defaultdict(dict)
    for r in records:
        if r.get("kind") in (KIND_UNITS, KIND_UNITS_NEXT):
            pairs[r["step"]][r["kind"]] = r
    complete = [(p[KIND_UNITS], p[KIND_UNITS_NEXT]) for _, p in sorted(pairs.items())
                if len(p) == 2]
    names = hidden_layers([a for a, _ in complete], "act/")
    if not names:
        return None
    tag = act_units(names[-1] if layer == "last" else layer)
    drifts = [d for a, b in complete if tag in a and tag in b for d in _unit_drifts([a[tag], b[tag]])]
    finite = [d for d in drifts if d is not None]
    return float(np.mean(finite)) if finite else None


def _reached(records: list[dict], tag: str, target: float) -> list[int]:
    return [r["step"] for r in records if r.get(tag) is not None and r[tag] >= target]


def steps_to(summary: dict, records: list[dict], tag: str, target: float) -> float | None:
    """The first step at which ``tag`` (e.g. val/acc, from trainer.val_every_steps and the epoch
    evaluations) reached ``target``. A run that never did, diverged or not, counts as taking its
    whole budget (``total_steps``): censored at the worst outcome, never dropped. A run that
    reached the target and diverged later counts its steps to the target (declared, not an
    accident): the question is how soon a net gets there, and it did; its divergence is counted
    in every table and is what the learning-rate claim (5) is about."""
    hits = _reached(records, tag, target)
    if hits:
        return float(min(hits))
    total = summary.get("total_steps")
    return float(total) if summary.get("status") in FINISHED and total else None


def censored(summary: dict, records: list[dict], key: str) -> bool:
    """Whether ``key`` (a ``steps_to:`` metric) is censored for this run: the target was never
    reached, so the recorded value (the whole budget) is only a lower bound."""
    q = parse(key)
    return q.op == "steps_to" and not _reached(records, q.tag, q.target)  # type: ignore[arg-type]


def probe_series(records: list[dict], pattern: str) -> list[tuple[int, float]]:
    """(step, value) of a probe tag at every probe; one ``*`` in ``pattern`` stands for the
    layer, and the layers' values at a probe are averaged: ``probe_series(r, "ics/*/rel")``."""
    regex = re.compile(re.escape(pattern).replace(r"\*", "[^/]+") + "$")
    out = []
    for r in records:
        if r.get("kind") != KIND_PROBE:
            continue
        values = [v for k, v in r.items() if regex.match(k) and v is not None and math.isfinite(v)]
        if values:
            out.append((r["step"], float(np.mean(values))))
    return out


def probe_mean(records: list[dict], pattern: str) -> float | None:
    """The mean over every probe of the run of ``probe_series``: a quantity "over training",
    e.g. ``mean:ics/*/rel``; each probe weighs the same."""
    series = probe_series(records, pattern)
    return float(np.mean([v for _, v in series])) if series else None


_EVALUATORS: dict[str, Callable[[Query, dict, list[dict]], Any]] = {
    "mean": lambda q, s, r: probe_mean(r, q.tag),
    "final": lambda q, s, r: final_value(s, q.tag),
    "epoch_mean": lambda q, s, r: epoch_mean(r, q.tag),
    "probe": lambda q, s, r: probe_value(r, q.tag, q.step),
    "abslog10": lambda q, s, r: abslog10(evaluate(q.inner, s, r)),  # type: ignore[arg-type]
    "growth": lambda q, s, r: growth(r, q.tag, q.step),
    "drift": lambda q, s, r: drift_pooled(r, q.tag),
    "drift_units": lambda q, s, r: drift_units(r, q.tag),
    "step_drift_units": lambda q, s, r: step_drift_units(r, q.tag),
    "steps_to": lambda q, s, r: steps_to(s, r, q.tag, q.target),  # type: ignore[arg-type]
}
