"""Probes: what a run measures about its network while it trains, on a schedule, computed in
torch on the device, and never changing training (same losses with probes on or off).

One probe kind per module, each a small ``Probe`` subclass (bnexp/probes/base.py) with its config
switch, its tags and its brute-force test; ``registry.PROBES`` lists the kinds, and
``schedule.Probes`` runs the enabled ones around the training step:

    act.py             ActivationStats          enabled     act/<layer>/<stage>/...
    hist.py            Histograms               hist_every  hist/act/..., hist/grad/...
    units.py           PerUnit                  per_unit    "units", "units_next" records
    ics.py             InternalCovariateShift   ics         ics/<layer>/{l2,rel,cos}
    loss_landscape.py  LossLandscape            landscape   landscape/...
    grad.py            GradNorms                enabled     grad/<layer>/..., grad/global, ...
    update.py          UpdateRatios             enabled     update/<layer>

Activation statistics come from a forward pass over a fixed probe batch (drawn once from the
training split with the run's seed, so every norm variant of a seed sees the same images) in
which BN layers use batch statistics as in training, dropout is off, BN running statistics are
restored afterwards and no random numbers are drawn. Gradient quantities are read off the
training step itself. ``tensors.py`` holds the statistics the kinds share.
"""

from bnexp.probes.base import (
    Context,
    Probe,
    Replicas,
    hidden_blocks,
    layer_bias,
    probed_layers,
)
from bnexp.probes.registry import PROBES
from bnexp.probes.schedule import ProbedStep, Probes, probe_layout
from bnexp.probes.tensors import (
    batched_percentiles,
    replica_stats,
    unit_percentiles,
)

__all__ = ["PROBES", "Context", "Probe", "ProbedStep", "Probes", "Replicas",
           "batched_percentiles", "hidden_blocks", "layer_bias", "probe_layout",
           "probed_layers", "replica_stats", "unit_percentiles"]
