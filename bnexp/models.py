"""MLP and CNN builders that take a norm factory.

Every hidden layer is a ``Block`` named ``fc1, fc2, ...`` or ``conv1, conv2, ...`` holding
``.affine`` (the Linear or Conv2d), ``.norm`` and ``.act``: the names are the same for every norm kind, so
TensorBoard charts of different variants overlay and checkpoints move between ``torch`` and
``custom``. As in the BN paper, the norm sits between the affine map and the nonlinearity, and
the affine map loses its bias when a norm follows (BN's shift makes it redundant).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from bnexp.config import Activation, Arch, Head, Init, NormKind, Pool
from bnexp.norm import make_norm

# The choices are bnexp.config's enums; keyed by their members, a misspelt name fails at import.
ACTIVATIONS: dict[Activation, Callable[[], nn.Module]] = {
    Activation.relu: lambda: nn.ReLU(inplace=True),
    Activation.sigmoid: nn.Sigmoid,
    Activation.tanh: nn.Tanh,
}

NormFactory = Callable[[int, int], nn.Module]  # (num_features, dims) -> module


def _affine(layer: nn.Module, has_norm: bool) -> nn.Module:
    """Drop the bias of an affine map that a norm follows (BN's shift makes it redundant).

    The layer is built with its bias and the bias removed afterwards, so that every norm variant
    draws the same random numbers at construction: at the same seed, ``norm=none`` and
    ``norm=torch`` start from identical weights (and see the data in the same order), which is
    what makes a comparison paired by seed a paired comparison."""
    if has_norm:
        layer.register_parameter("bias", None)
    return layer


def init_weights(model: nn.Module, init: str, gain: float) -> None:
    """Re-initialise every Linear/Conv2d weight: ``he`` draws N(0, gain^2 * 2 / fan_in), the
    init under which a plain ReLU net keeps its forward and backward norms constant with depth
    at gain 1 (He et al. 2015) and grows them by ~``gain`` per layer otherwise; biases zero.
    ``default`` keeps torch's init (Kaiming-uniform with a=sqrt(5): variance 1/(3 fan_in), which
    makes deep ReLU nets' gradients vanish)."""
    if init == Init.default:
        return
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            with torch.no_grad():
                m.weight.mul_(gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class Block(nn.Module):
    """affine map (-> pool) -> norm -> nonlinearity (-> dropout). A CNN with model.pool=early
    max-pools the affine map's output here, so that norm and nonlinearity (and their backward
    passes) run on a quarter of the values; the probes' ``pre`` stage is the unpooled output."""

    def __init__(self, affine: nn.Module, norm: nn.Module, act: nn.Module, dropout: float,
                 pool: nn.Module | None = None) -> None:
        super().__init__()
        self.affine = affine
        if pool is not None:
            self.pool = pool
        self.norm = norm
        self.act = act
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.affine(x)
        if "pool" in self._modules:
            x = self.pool(x)
        return self.drop(self.act(self.norm(x)))


class MLP(nn.Module):
    def __init__(self, in_features: int, num_classes: int, depth: int, width: int,
                 activation: str, dropout: float, norm: NormFactory, has_norm: bool) -> None:
        super().__init__()
        layers: dict[str, nn.Module] = {}
        fan_in = in_features
        for i in range(1, depth + 1):
            layers[f"fc{i}"] = Block(_affine(nn.Linear(fan_in, width), has_norm), norm(width, 1),
                                     ACTIVATIONS[activation](), dropout)
            fan_in = width
        self.blocks = nn.Sequential()
        for name, block in layers.items():
            self.blocks.add_module(name, block)
        self.head = nn.Linear(fan_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x.flatten(1)))


class CNN(nn.Module):
    """VGG-style: per stage ``convs_per_stage`` x (3x3 conv -> norm -> act), then 2x2 max-pool
    (``pool="late"``), or with the stage's last conv max-pooled before its norm and activation
    (``pool="early"``: conv -> pool -> norm -> act, 4x fewer values to normalise); then global
    average pool (``head="gap"``) or the flattened feature map (``"flatten"``) into a linear
    head."""

    def __init__(self, in_channels: int, num_classes: int, channels: list[int],
                 convs_per_stage: int, activation: str, dropout: float, norm: NormFactory,
                 has_norm: bool, pool: str = Pool.late, head: str = Head.gap,
                 size: int = 28) -> None:
        super().__init__()
        self.blocks = nn.Sequential()
        c_in, k = in_channels, 1
        for c_out in channels:
            for i in range(convs_per_stage):
                conv = _affine(nn.Conv2d(c_in, c_out, 3, padding=1), has_norm)
                early = pool == Pool.early and i == convs_per_stage - 1
                self.blocks.add_module(f"conv{k}", Block(
                    conv, norm(c_out, 2), ACTIVATIONS[activation](), 0.0,
                    nn.MaxPool2d(2) if early else None))
                c_in, k = c_out, k + 1
            if pool != Pool.early:
                self.blocks.add_module(f"pool{len(self.blocks)}", nn.MaxPool2d(2))
            size //= 2
        self.flatten = head == Head.flatten
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(c_in * size * size if self.flatten else c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.blocks(x)
        features = features.flatten(1) if self.flatten else features.mean(dim=(2, 3))
        return self.head(self.drop(features))


PROBE_SEED = 20180529  # the noise every batch_statistics look draws


@contextmanager
def batch_statistics(model: nn.Module) -> Iterator[None]:
    """Forward passes with BN on batch statistics (as in training), dropout off, BN running
    statistics (every buffer) restored afterwards, no autograd: how probes and train-mode
    evaluation look at a network without changing it. Layers that draw random numbers in
    training mode (norm=noisy's noise) draw them from a fork of the global random streams
    (CPU and the model's device), so the training that follows draws what it would have, and
    the fork is seeded with ``PROBE_SEED``: every look draws the same noise (common random
    numbers), so two looks differ by what training changed, not by a fresh noise sample."""
    was_training = model.training
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    device = next(model.parameters(), torch.empty(0)).device
    on_device = device.type != "cpu"
    model.train()
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(
                devices=[device] if on_device else [],
                device_type=device.type if on_device else None):
            torch.manual_seed(PROBE_SEED)
            yield
    finally:
        with torch.no_grad():
            for k, v in model.named_buffers():
                v.copy_(buffers[k])
        model.train(was_training)


def build_model(model_cfg: Any, norm_cfg: Any, shape: tuple[int, int, int],
                num_classes: int) -> nn.Module:
    # Each norm kind's config holds exactly the keys its layer takes (bnexp.config.NORM_SCHEMAS):
    # pass them all; a key left out keeps make_norm's default.
    settings = {k: v for k, v in norm_cfg.items() if k != "kind"}

    def norm(num_features: int, dims: int) -> nn.Module:
        return make_norm(norm_cfg.kind, num_features, dims, **settings)

    has_norm = norm_cfg.kind != NormKind.none
    model: nn.Module
    if model_cfg.arch == Arch.mlp:
        in_features = shape[0] * shape[1] * shape[2]
        model = MLP(in_features, num_classes, model_cfg.depth, model_cfg.width,
                    model_cfg.activation, model_cfg.dropout, norm, has_norm)
    else:
        model = CNN(shape[0], num_classes, list(model_cfg.channels), model_cfg.convs_per_stage,
                    model_cfg.activation, model_cfg.dropout, norm, has_norm,
                    model_cfg.pool, model_cfg.head, shape[1])
    init_weights(model, model_cfg.init, model_cfg.init_gain)
    return model
