"""Per-unit percentiles: how each unit's nonlinearity input moves, before and after a step."""

from __future__ import annotations

from typing import Any

import torch

from bnexp import metrics as m
from bnexp.probes.base import Context, Probe, Scalars
from bnexp.probes.tensors import unit_percentiles


class PerUnit(Probe):
    """Every unit's (MLP feature / CNN channel) own p15/p50/p85 of each nonlinearity input, as
    metrics.jsonl records ``{"kind": "units", "act/<layer>/norm/units": {"p15": [...], ...}}``
    (records, not scalars: one chart per unit would drown TensorBoard), and again right after
    the step's update (``"kind": "units_next"``; one more forward of the same probe batch with
    the same probe noise), so the pair is what one step moved each unit
    (metrics.step_drift_units). Pooled over a layer, BN's per-unit normalisation hides that."""

    switch = "per_unit"
    stages = ("norm",)

    def __init__(self, ctx: Context, cfg: Any) -> None:
        super().__init__(ctx, cfg)
        self.max_elements = cfg.max_elements
        self.units: dict[str, dict[str, torch.Tensor]] = {}

    def measure(self, step: int, layer: str, stage: str, t: torch.Tensor) -> None:
        self.units[m.act_units(layer, stage)] = unit_percentiles(t, self.max_elements)

    def looked(self, step: int) -> Scalars:
        if self.units:
            self._record(step, m.KIND_UNITS)
        return {}

    def finish(self, step: int) -> None:
        self.ctx.look(self.stages, lambda layer, stage, t: self.measure(step, layer, stage, t))
        self._record(step, m.KIND_UNITS_NEXT)

    def _record(self, step: int, kind: str) -> None:
        units, self.units = self.units, {}
        self.ctx.log.record(step, kind, {k: {q: v.cpu().tolist() for q, v in qs.items()}
                                         for k, qs in units.items()})
