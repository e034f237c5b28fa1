"""Per-unit percentiles: how each unit's nonlinearity input moves, before and after a step."""

from __future__ import annotations

from functools import partial
from typing import Any

import torch

from bnexp import metrics as m
from bnexp.probes.base import Context, Probe, Replicas, Scalars
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

    def measure_in_pack(self, step: int, layer: str, stage: str, t: torch.Tensor,
                        replicas: Replicas) -> None:
        """The K*C units of all replicas in one sort (the first replica's call); replica k's
        are its block of C."""
        every = replicas.once((PerUnit, layer, stage),
                              lambda: unit_percentiles(replicas.out, self.max_elements))
        c = t.shape[1]
        self.units[m.act_units(layer, stage)] = {
            q: v[replicas.k * c:(replicas.k + 1) * c] for q, v in every.items()}

    def looked(self, step: int) -> Scalars:
        if self.units:
            self._record(step, m.KIND_UNITS)
        return {}

    def finish(self, step: int) -> None:
        self.ctx.look(self.stages, partial(self.look_at, step))
        self._record(step, m.KIND_UNITS_NEXT)

    def _record(self, step: int, kind: str) -> None:
        units, self.units = self.units, {}
        self.ctx.log.record(step, kind, {k: {q: v.cpu().tolist() for q, v in qs.items()}
                                         for k, qs in units.items()})
