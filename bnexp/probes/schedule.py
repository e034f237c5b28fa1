"""The probe schedule: the enabled probe kinds (bnexp/probes/registry.py) around one training
step, with two records read off the device in one copy each. Each kind runs every ``probe.<its
cadence>`` steps (``Probe.cadence``: ``probe.every`` for most, ``probe.hist_every`` for the
histograms, whatever ``probe.every`` is) and at step 0, before any update; every other step
costs a modulo per distinct cadence."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from bnexp import metrics as m
from bnexp.metrics import STAGES
from bnexp.probes.base import Charts, Context, Probe, Replicas, Scalars
from bnexp.probes.registry import PROBES


def probe_layout(model: nn.Module) -> Charts:
    """Every kind's custom-scalars charts, merged by category in registry order."""
    layout: Charts = {}
    for kind in PROBES:
        for category, charts in kind.charts(model).items():
            layout.setdefault(category, {}).update(charts)
    return layout


class Probes:
    """Schedules and runs the probes of one run; the training loop's one entry point is
    ``with probes.at(step, x, y):`` around each training step."""

    def __init__(self, model: nn.Module, cfg: Any, activation: str, probe_x: torch.Tensor,
                 log: Any, optimizer: torch.optim.Optimizer | None = None) -> None:
        self.ctx = Context(model, activation, probe_x, log, optimizer)
        self.log, self.layers = log, self.ctx.layers
        # Plain Python values: reading a DictConfig in the hot path is slow.
        self.enabled, self.every = cfg.enabled, cfg.every
        self.kinds: list[Probe] = [kind(self.ctx, cfg) for kind in PROBES
                                   if cfg.enabled and kind.wanted(cfg)]
        self.cadence = {id(k): int(getattr(cfg, k.cadence)) for k in self.kinds}
        self.everies = sorted(set(self.cadence.values()))

    def due(self, step: int) -> bool:
        """Whether some kind runs at ``step``."""
        return any(step % every == 0 for every in self.everies)

    def kinds_at(self, step: int) -> list[Probe]:
        """The kinds that run at ``step``, in registry order."""
        return [k for k in self.kinds if step % self.cadence[id(k)] == 0]

    def activation_stats(self, step: int, kinds: list[Probe] | None = None) -> dict[str, float]:
        """The probe-batch look: one forward in which every kind (of ``kinds``, default all)
        measures its stages, then their scalars (activation statistics), read back in one copy."""
        kinds = self.kinds if kinds is None else kinds
        lookers = {s: [k for k in kinds if s in k.stages] for s in STAGES}

        def measure(layer: str, stage: str, t: torch.Tensor,
                    replicas: Replicas | None = None) -> None:
            for kind in lookers[stage]:
                kind.look_at(step, layer, stage, t, replicas)

        stages = tuple(s for s in STAGES if lookers[s])
        if stages:
            self.ctx.look(stages, measure)
        return _to_floats(_merged(kind.looked(step) for kind in kinds))

    def at(self, step: int, x: torch.Tensor, y: torch.Tensor | None = None) -> Any:
        """Wrap a training step: ``with probes.at(step, x, y): train_step(...)``. On a probed
        step, the probe-batch look (and, when enabled, ICS and landscape on the step's batch)
        come before it, gradient norms and update ratios after it; otherwise a no-op."""
        return ProbedStep(self, step, x, y) if self.due(step) else _NO_PROBE


class ProbedStep:
    """The enabled kinds' hooks around one training step (bnexp.probes.base.Probe)."""

    def __init__(self, probes: Probes, step: int, x: torch.Tensor,
                 y: torch.Tensor | None) -> None:
        self.p, self.step, self.x, self.y = probes, step, x, y
        self.kinds = probes.kinds_at(step)

    def __enter__(self) -> ProbedStep:
        self._log(self.p.activation_stats(self.step, self.kinds))
        for kind in self.kinds:
            kind.before(self.step, self.x, self.y)
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        for kind in self.kinds:
            kind.release()
        if exc_type is None:
            self._log(_to_floats(_merged(kind.after(self.step) for kind in self.kinds)))
            for kind in self.kinds:
                kind.finish(self.step)

    def _log(self, values: dict[str, float]) -> None:
        """A probe record; none when no kind measured a scalar (a step of histograms only)."""
        if values:
            self.p.log.scalars(self.step, values, kind=m.KIND_PROBE)


_NO_PROBE = nullcontext()


def _merged(parts: Any) -> Scalars:
    out: Scalars = {}
    for part in parts:
        out.update(part)
    return out


def _to_floats(values: Scalars) -> dict[str, float]:
    """One device-to-host copy for all the scalars of a probe."""
    if not values:
        return {}
    stacked = torch.stack([v.float().reshape(()) for v in values.values()]).cpu().tolist()
    return dict(zip(values, stacked, strict=True))
