"""K single models (MLP or CNN, as ``bnexp.models.build_model`` built them, one per seed) as
one packed network, and the binding that keeps each single model a live view of its replica.

``PackedNet`` copies the replicas' initialised weights and buffers into stacked/concatenated
tensors (bnexp.pack.layers), then ``Binding`` points every parameter and buffer of single model
k at its slice of those tensors (``.data`` views): the single models never run a training step,
yet always hold their replica's current weights and BN statistics, so evaluation, probes and
checkpoints run on them with bnexp's own code, unchanged. After a packed backward, ``grads``
points their ``.grad`` at the slices of the packed gradients (the gradient probes read them);
``optimizer_views`` gives a single optimizer its replica's slice of the packed optimizer state
(the ICS probe simulates the run's optimizer). ``unbind`` gives replica k its own copies again
(its checkpoint then holds only its tensors).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bnexp.models import CNN, MLP, Block
from bnexp.pack.layers import (
    NotPackable,
    PackedDropout,
    PackedLinear,
    packed_conv,
    packed_norm,
)

Slicer = Callable[[torch.Tensor, int], torch.Tensor]  # (packed tensor, replica) -> its view


def _stacked_t(t: torch.Tensor, k: int) -> torch.Tensor:
    """Replica k's (O, I) Linear weight from the packed (K, I, O) one (a bias: its row)."""
    return t[k].t() if t.dim() == 3 else t[k]


def _blocks_of(n: int, dim: int) -> Slicer:
    """Replica k's block of ``n`` entries along ``dim``."""
    return lambda t, k: t.narrow(dim, k * n, n)


@dataclass
class Bound:
    """One packed parameter or buffer and the single models' tensors that view it."""

    owner: nn.Module  # the packed module holding it
    name: str
    singles: list[nn.Module]  # the single modules, replica order
    slicer: Slicer | None  # None: one tensor shared by every replica (num_batches_tracked)
    is_param: bool

    @property
    def packed(self) -> torch.Tensor:
        return getattr(self.owner, self.name)


class PackedBlock(nn.Module):
    """affine map (-> pool) -> norm -> nonlinearity (-> dropout), packed (bnexp.models.Block;
    a max-pool is per channel, so the block's own serves the pack)."""

    def __init__(self, affine: nn.Module, pool: nn.Module | None, norm: nn.Module,
                 act: nn.Module, drop: nn.Module) -> None:
        super().__init__()
        self.affine, self.pool = affine, pool or nn.Identity()
        self.norm, self.act, self.drop = norm, act, drop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.after_affine(self.affine(x))

    def after_affine(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.act(self.norm(self.pool(x))))


def _pack_drop(drop: nn.Module, gens: list[torch.Generator]) -> nn.Module:
    return PackedDropout(drop.p, gens) if isinstance(drop, nn.Dropout) else nn.Identity()


class PackedNet(nn.Module):
    """K replicas of one MLP or CNN. ``forward`` takes the replicas' batches together
    (``pack_inputs``) and returns their logits as (K, B, classes)."""

    def __init__(self, models: list[nn.Module], gens: list[torch.Generator]) -> None:
        super().__init__()
        m0, self.replicas = models[0], len(models)
        if not all(type(m) is type(m0) for m in models) or type(m0) not in (MLP, CNN):
            raise NotPackable(f"no packed form of {type(m0).__name__}")
        self.is_cnn = isinstance(m0, CNN)
        self.flatten = bool(getattr(m0, "flatten", False))  # a CNN's head on the whole map
        self.bound: list[Bound] = []
        self.blocks = nn.Sequential()
        for name, child in m0.blocks.named_children():
            singles = [getattr(m.blocks, name) for m in models]
            self.blocks.add_module(name, self._pack_block(singles, gens) if isinstance(child, Block)
                                   else child)
        self.drop = _pack_drop(m0.drop, gens) if self.is_cnn else nn.Identity()
        self.head = PackedLinear([m.head for m in models], kb_out=True)
        self._bind(self.head, [m.head for m in models], _stacked_t)
        self.bind_all()

    def _pack_block(self, blocks: list[Block], gens: list[torch.Generator]) -> PackedBlock:
        affines = [b.affine for b in blocks]
        if isinstance(affines[0], nn.Conv2d):
            affine: nn.Module = packed_conv(affines)
            self._bind(affine, affines, _blocks_of(affines[0].out_channels, 0))
        elif isinstance(affines[0], nn.Linear):
            affine = PackedLinear(affines)
            self._bind(affine, affines, _stacked_t)
        else:
            raise NotPackable(f"no packed form of {type(affines[0]).__name__}")
        norms = [b.norm for b in blocks]
        norm = packed_norm(norms, gens).to(affines[0].weight.device)
        self._bind_norm(norm, norms)
        return PackedBlock(affine, blocks[0]._modules.get("pool"), norm, blocks[0].act,
                           _pack_drop(blocks[0].drop, gens))

    def _bind(self, packed: nn.Module, singles: list[nn.Module], slicer: Slicer) -> None:
        for name, _ in packed.named_parameters(recurse=False):
            self.bound.append(Bound(packed, name, singles, slicer, True))

    def _bind_norm(self, packed: nn.Module, singles: list[nn.Module]) -> None:
        """Concatenate the replicas' norm parameters and buffers (channels on the last dim) into
        the packed norm's; num_batches_tracked is one counter shared by all."""
        with torch.no_grad():
            for name, p in packed.named_parameters(recurse=False):
                p.copy_(torch.cat([getattr(s, name).detach() for s in singles], dim=-1))
                n = getattr(singles[0], name).shape[-1]
                self.bound.append(Bound(packed, name, singles, _blocks_of(n, p.dim() - 1), True))
            for name, b in packed.named_buffers(recurse=False):
                if name == "num_batches_tracked":
                    self.bound.append(Bound(packed, name, singles, None, False))
                    continue
                b.copy_(torch.cat([getattr(s, name) for s in singles], dim=-1))
                n = getattr(singles[0], name).shape[-1]
                self.bound.append(Bound(packed, name, singles, _blocks_of(n, b.dim() - 1), False))

    def bind_all(self) -> None:
        """Point every single model's tensors at its replica's slices of the packed ones."""
        for k in range(self.replicas):
            bind(self, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._tail(self.blocks(x))  # (B, K*C, ...) after the first block

    def forward_shared(self, x: torch.Tensor) -> torch.Tensor:
        """The replicas' logits (K, B, classes) for one batch that all of them see (B, C, H, W)
        (an evaluation split that does not depend on the seed, such as test): the first layer
        maps it to every replica's features at once, without K copies of the batch."""
        first = self.blocks[0]
        affine = first.affine
        if isinstance(affine, PackedLinear):
            h = affine.shared(x.flatten(1))
        elif affine.padding_mode == "zeros" and affine.groups == self.replicas:
            # the K-grouped conv of K copies of x is one ungrouped conv of x
            h = F.conv2d(x, affine.weight, affine.bias, affine.stride, affine.padding,
                         affine.dilation)
        else:
            h = affine(x.repeat(1, self.replicas, 1, 1))
        return self._tail(self.blocks[1:](first.after_affine(h)))

    def _tail(self, h: torch.Tensor) -> torch.Tensor:
        if self.is_cnn:  # replica k's features stay the k-th block of (B, K*features)
            h = self.drop(h.flatten(1) if self.flatten else h.mean(dim=(2, 3)))
        return self.head(h)


def bind(net: PackedNet, k: int) -> None:
    for b in net.bound:
        single, packed = b.singles[k], b.packed
        if b.is_param:
            getattr(single, b.name).data = b.slicer(packed.data, k)
        else:
            single._buffers[b.name] = packed if b.slicer is None else b.slicer(packed, k)


def unbind(net: PackedNet, k: int) -> None:
    """Replica k's single model gets its own copies of its tensors (for its checkpoint)."""
    for b in net.bound:
        single = b.singles[k]
        if b.is_param:
            p = getattr(single, b.name)
            p.data = p.data.clone()
            if p.grad is not None:
                p.grad = p.grad.clone()
        else:
            single._buffers[b.name] = single._buffers[b.name].clone()


def grads(net: PackedNet, k: int) -> None:
    """Point replica k's parameters' ``.grad`` at their slices of the packed gradients."""
    for b in net.bound:
        if b.is_param:
            g = b.packed.grad
            getattr(b.singles[k], b.name).grad = None if g is None else b.slicer(g, k)


def optimizer_views(net: PackedNet, packed_opt: torch.optim.Optimizer,
                    single_opt: torch.optim.Optimizer, k: int, copy: bool = False) -> None:
    """Give ``single_opt`` (replica k's own optimizer) its slice of the packed optimizer's state
    and its current hyperparameters (the scheduled lr): views, or copies with ``copy``."""
    for group, packed_group in zip(single_opt.param_groups, packed_opt.param_groups, strict=True):
        group.update({key: v for key, v in packed_group.items() if key != "params"})
    for b in net.bound:
        if not b.is_param:
            continue
        packed, single = b.packed, getattr(b.singles[k], b.name)
        state = {}
        for key, v in packed_opt.state.get(packed, {}).items():
            if torch.is_tensor(v) and v.shape == packed.shape:
                v = b.slicer(v, k)
            state[key] = v.clone() if copy and torch.is_tensor(v) else v
        if state:
            single_opt.state[single] = state


def zero_replica(net: PackedNet, packed_opt: torch.optim.Optimizer, k: int) -> None:
    """Freeze replica k (it diverged): its weights, statistics and optimizer state set to
    zero (running variances to one), so its loss, masked to 0, gives zero gradients and zero
    updates, and nothing it computes is non-finite."""
    with torch.no_grad():
        for b in net.bound:
            if b.slicer is None:
                continue
            t = b.slicer(b.packed.data if b.is_param else b.packed, k)
            t.fill_(1.0 if b.name in ("running_var",) else 0.0)
            if b.is_param:
                for v in packed_opt.state.get(b.packed, {}).values():
                    if torch.is_tensor(v) and v.shape == b.packed.shape:
                        b.slicer(v, k).zero_()


def pack_inputs(xs: list[torch.Tensor], is_cnn: bool, channels_last: bool) -> torch.Tensor:
    """The replicas' batches together: side by side as (B, K*C, H, W) for a CNN (channels_last
    as the single runs' when they use it), stacked as (K, B, features) for an MLP (its first
    layer's batched matmul takes them so, without a copy)."""
    if is_cnn:
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        return torch.cat(xs, dim=1).contiguous(memory_format=fmt)
    return torch.stack([x.flatten(1) for x in xs])
