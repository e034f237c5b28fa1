"""The probe kinds, in the one order a probed step runs them: the order of their hooks and of
their tags in a metrics.jsonl record. ICS and the landscape come before GradNorms: their extra
passes must run before it watches the step's inputs.

Adding a probe: a ``Probe`` subclass in its own module here, its entry below, its switch in
``ProbeConfig`` (bnexp/config.py) and configs/probe/default.yaml, and a test against a
brute-force computation."""

from __future__ import annotations

from bnexp.probes.act import ActivationStats
from bnexp.probes.base import Probe
from bnexp.probes.grad import GradNorms
from bnexp.probes.hist import Histograms
from bnexp.probes.ics import InternalCovariateShift
from bnexp.probes.loss_landscape import LossLandscape
from bnexp.probes.units import PerUnit
from bnexp.probes.update import UpdateRatios

PROBES: tuple[type[Probe], ...] = (
    ActivationStats,         # enabled     act/<layer>/<stage>/...
    Histograms,              # hist_every  hist/act/..., hist/grad/<layer>/weight
    PerUnit,                 # per_unit    "units" and "units_next" records
    InternalCovariateShift,  # ics         ics/<layer>/{l2,rel,cos}
    LossLandscape,           # landscape   landscape/{loss_range,grad_change,beta}
    GradNorms,               # enabled     grad/<layer>/{weight,bias,input}, grad/global, ...
    UpdateRatios,            # enabled     update/<layer>
)
