"""Internal covariate shift (Santurkar et al. 2018, Definition 2.1), per layer."""

from __future__ import annotations

import torch

from bnexp.landscape import measure_ics
from bnexp.probes.base import Probe, Scalars


class InternalCovariateShift(Probe):
    """``ics/<layer>/{l2,rel,cos}``: how far each layer's weight gradient moves when every
    earlier layer takes this step's update (bnexp.landscape.measure_ics), on the training batch
    before its step. Opt-in (``probe.ics``): one forward+backward plus one per later layer."""

    switch = "ics"
    values: Scalars  # measured before the step, logged with the step's record

    def before(self, step: int, x: torch.Tensor, y: torch.Tensor | None) -> None:
        c = self.ctx
        self.values = {} if y is None else measure_ics(c.model, c.optimizer, x, y, c.layers)

    def after(self, step: int) -> Scalars:
        values, self.values = self.values, {}
        return values
