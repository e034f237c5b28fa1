"""The probes' probe-batch looks of a pack's replicas as one packed forward.

A probed step of a single run looks at its probe batch once before the step (activation
statistics, the per-unit percentiles) and, with ``probe.per_unit``, once after it
(``bnexp.probes.base.Context.look``). In a pack, K replicas looking one by one through their
single models cost K small forwards; ``PackedLooks`` replaces each replica's ``ctx.look`` with
one forward of all K probe batches through the packed net, whose hooks keep every block's stage
outputs, and hands each replica its slice (channels k*C..(k+1)*C of the (B, K*C, ...) output)
with the whole output (``bnexp.probes.base.Replicas``: activation statistics and per-unit
percentiles measure every replica at once on the first replica's call), in the state its
single run's look would see: BN on batch statistics, dropout off, buffers restored, no
autograd (``bnexp.models.batch_statistics``). The first replica that looks after the weights
changed runs the forward; the others read what it kept.

Not packed: nets that draw random numbers in a look (norm=noisy draws its per-sample noise
from the probe's fixed stream over all K*C channels at once, not per replica as its single
runs do); their replicas keep their own looks.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch

from bnexp.metrics import STAGES
from bnexp.models import batch_statistics
from bnexp.norm import NoisyBatchNorm
from bnexp.pack.model import PackedNet, pack_inputs
from bnexp.probes.base import Measure, Replicas


def packable_look(net: PackedNet) -> bool:
    """Whether a look through ``net`` sees what its replicas' single looks see."""
    return not any(isinstance(m, NoisyBatchNorm) for m in net.modules())


class PackedLooks:
    """One packed probe-batch forward per weight state, shared by the replicas' looks."""

    def __init__(self, pack: Any) -> None:  # a bnexp.pack.loop.Pack
        self.pack = pack
        self.key: tuple[int, tuple[str, ...]] | None = None
        self.outs: dict[tuple[str, str], torch.Tensor] = {}  # (layer, stage), forward order
        self.memo: dict[Any, Any] = {}  # what kinds measured for all replicas (Replicas.memo)

    def install(self) -> None:
        """Point every replica's ``ctx.look`` here (an instance attribute over the method)."""
        for k, run in enumerate(self.pack.runs):
            run.probes.ctx.look = partial(self.look, k)

    def look(self, k: int, stages: tuple[str, ...], measure: Measure) -> None:
        """Replica k's look: its slices of the packed look's stage outputs, in forward order."""
        key = (self.pack.updates, tuple(stages))
        if key != self.key:
            self._forward(tuple(stages))
            self.key, self.memo = key, {}
        n = self.pack.net.replicas
        for (layer, stage), out in self.outs.items():
            measure(layer, stage, out.unflatten(1, (n, -1))[:, k],
                    replicas=Replicas(out, n, k, self.memo))

    def _forward(self, stages: tuple[str, ...]) -> None:
        net, runs = self.pack.net, self.pack.runs
        self.outs, handles = {}, []

        def keep(layer: str, stage: str, out: torch.Tensor) -> None:
            # A copy: a later in-place module (a ReLU after an identity norm) would overwrite
            # the tensor before the replicas measure it.
            self.outs[layer, stage] = out.detach().clone()

        for name, block in net.blocks.named_children():
            if not hasattr(block, "affine"):
                continue
            for stage, module in zip(STAGES, (block.affine, block.norm, block.act), strict=True):
                if stage in stages:
                    handles.append(module.register_forward_hook(
                        lambda _m, _i, out, n=name, s=stage: keep(n, s, out)))
        first = runs[0]
        x = pack_inputs([run.probes.ctx.probe_x for run in runs], net.is_cnn,
                        first.channels_last)
        try:
            with batch_statistics(net):  # the packed dropout is a Dropout: off too
                net(x)
        finally:
            for h in handles:
                h.remove()


def install_looks(pack: Any) -> None:
    """Pack the replicas' looks where that is exact (``packable_look``)."""
    if packable_look(pack.net):
        PackedLooks(pack).install()


def uninstall_looks(pack: Any) -> None:
    """Give every replica its own ``ctx.look`` back. The packed look refers to the pack, which
    refers to the replicas' contexts: a cycle that would keep the pack's memory (K copies of
    the training split, the packed model) until the garbage collector next runs; in a claims
    call that held ~6 GB of finished packs at once."""
    for run in pack.runs:
        run.probes.ctx.__dict__.pop("look", None)
