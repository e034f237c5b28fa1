"""What every probe kind shares: the run it looks at (``Context``) and the points of a probed
step where it may act (``Probe``'s hooks, each a no-op unless a kind overrides it), so that a
kind is one small class and the schedule (bnexp/probes/schedule.py) never names one."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from bnexp.metrics import STAGES
from bnexp.models import Block, batch_statistics

Scalars = dict[str, torch.Tensor]  # tag -> 0-d device tensor, read back once per record
Charts = dict[str, dict[str, list]]  # custom-scalars category -> chart title -> chart
Measure = Callable[..., None]  # (layer, stage, tensor, replicas: Replicas | None = None)


@dataclass
class Replicas:
    """In a pack's look (bnexp.pack.look), the stage output of all K replicas, (B, K*C, ...),
    of which the measuring replica's tensor is the k-th block of C channels: a kind that can
    measure every replica at once does so on the first replica's call (``once``: ``memo`` is
    one per forward, shared by the replicas) and takes its row."""

    out: torch.Tensor
    count: int
    k: int
    memo: dict[Any, Any]

    def once(self, key: Any, compute: Callable[[], Any]) -> Any:
        """``compute()`` for the first replica that asks for ``key`` in this forward, the same
        result for the others."""
        if key not in self.memo:
            self.memo[key] = compute()
        return self.memo[key]


def hidden_blocks(model: nn.Module) -> dict[str, Block]:
    return {name: m for name, m in model.blocks.named_children() if isinstance(m, Block)}


def probed_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every layer with weights, by its stable name: the hidden blocks' affine maps and the head."""
    layers: dict[str, nn.Module] = {n: b.affine for n, b in hidden_blocks(model).items()}
    layers["head"] = model.head
    return layers


def layer_bias(model: nn.Module, name: str) -> torch.Tensor | None:
    """The layer's effective bias: the affine map's, or the norm's beta when the map has none."""
    if name == "head":
        return model.head.bias
    block = hidden_blocks(model)[name]
    if block.affine.bias is not None:
        return block.affine.bias
    return getattr(block.norm, "bias", None)


@dataclass
class Context:
    """The run being probed, as every kind may read it: the model and its probed layers, the
    fixed probe batch, the run log, and the optimizer (ICS and landscape simulate its step)."""

    model: nn.Module
    activation: str  # the nonlinearity: which of saturated / dead applies
    probe_x: torch.Tensor
    log: Any  # bnexp.runlog.RunLog, or a stand-in with scalars(), record() and tb
    optimizer: torch.optim.Optimizer | None = None
    blocks: dict[str, Block] = field(init=False)
    layers: dict[str, nn.Module] = field(init=False)

    def __post_init__(self) -> None:
        self.blocks = hidden_blocks(self.model)
        self.layers = probed_layers(self.model)

    def look(self, stages: tuple[str, ...], measure: Measure) -> None:
        """One forward of the probe batch (bnexp.models.batch_statistics: training is left as
        it was) with ``measure(layer, stage, tensor)`` called on each block's ``stages`` inside
        the forward hooks, before the next module runs: an in-place ReLU would otherwise
        overwrite the norm's output, and only what is kept needs copying. A pack's look
        (bnexp.pack.look) also passes ``replicas=``: a ``measure`` takes that keyword
        (``Probe.look_at`` does)."""
        handles = []
        for name, block in self.blocks.items():
            for stage, module in zip(STAGES, (block.affine, block.norm, block.act), strict=True):
                if stage in stages:
                    handles.append(module.register_forward_hook(
                        lambda _m, _i, out, n=name, s=stage: measure(n, s, out.detach())))
        try:
            with batch_statistics(self.model):
                self.model(self.probe_x)
        finally:
            for h in handles:
                h.remove()


class Probe:
    """One probe kind. A probed step calls these hooks on every enabled kind, in registry order:

    1. ``measure`` on each of the kind's ``stages`` in the one probe-batch forward;
    2. ``looked``: the kind's scalars from that forward (all kinds' go into one record);
    3. ``before``: before the training step, on its batch (``y`` may be None);
    4. ``release``: after the step, even if it raised (remove hooks);
    5. ``after``: the kind's scalars of the step (all kinds' go into a second record);
    6. ``finish``: after that record is written (records that must follow it).

    Scalars stay device tensors until the schedule reads each record with one host copy."""

    switch: ClassVar[str] = "enabled"  # the ProbeConfig key that turns the kind on
    cadence: ClassVar[str] = "every"  # the ProbeConfig key: steps between the kind's probes
    stages: ClassVar[tuple[str, ...]] = ()  # block stages it measures in the probe forward

    def __init__(self, ctx: Context, cfg: Any) -> None:
        """``cfg`` is the run's ``probe`` config; a kind copies what it needs into plain
        attributes (reading a DictConfig on a probed step is slow)."""
        self.ctx = ctx

    @classmethod
    def wanted(cls, cfg: Any) -> bool:
        """Whether the kind runs (probe.enabled being true): its switch is on."""
        return bool(getattr(cfg, cls.switch))

    @classmethod
    def charts(cls, model: nn.Module) -> Charts:
        """Its custom-scalars charts (every run has them, whether the kind is on or not)."""
        return {}

    def measure(self, step: int, layer: str, stage: str, t: torch.Tensor) -> None:
        """One of ``stages`` of one block, in the probe-batch forward."""

    def look_at(self, step: int, layer: str, stage: str, t: torch.Tensor,
                replicas: Replicas | None = None) -> None:
        """What a look calls (a ``Measure`` with ``step`` bound): ``measure``, or in a pack's
        look ``measure_in_pack``."""
        if replicas is None:
            self.measure(step, layer, stage, t)
        else:
            self.measure_in_pack(step, layer, stage, t, replicas)

    def measure_in_pack(self, step: int, layer: str, stage: str, t: torch.Tensor,
                        replicas: Replicas) -> None:
        """``measure`` in a pack's look, where ``replicas`` lets a kind measure all the pack's
        replicas at once; by default each measures its own ``t``."""
        self.measure(step, layer, stage, t)

    def looked(self, step: int) -> Scalars:
        return {}

    def before(self, step: int, x: torch.Tensor, y: torch.Tensor | None) -> None:
        """Before the training step on ``(x, y)``."""

    def release(self) -> None:
        """After the training step, whatever happened in it."""

    def after(self, step: int) -> Scalars:
        return {}

    def finish(self, step: int) -> None:
        """After the step's record is written."""
