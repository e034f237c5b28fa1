"""Packed layers: K replicas of one layer as one module, each replica's numbers its own.

Activations of a pack are laid out ``(B, K*C, *spatial)``: replica k's channels are the k-th
block of C, for every sample of the batch (each replica sees its own batch of B samples, put
side by side). In that layout every per-channel layer is already per replica:

- BatchNorm over K*C channels (torch's, bnexp's own with its C kernels, ghost BN) normalises each
  replica's channels with that replica's batch statistics and updates its running statistics;
- GroupNorm with K*G groups over K*C channels (layer norm: G=1) normalises each replica's groups;
- the write-up's literal BN (per feature position over the batch) is per replica as it is;
- a convolution with ``groups=K`` maps replica k's input channels to its output channels only.

A Linear layer is a batched matmul (``PackedLinear``). Layers that draw random numbers (dropout,
noisy BN) draw each replica's from its own generator, in the order and shapes the single run
draws them from the global one, so a replica draws what the single run with its seed draws.
"""

from __future__ import annotations

import torch
from torch import nn

from bnexp.norm import BatchNorm, GhostBatchNorm, NoisyBatchNorm, SeedBatchNorm


class NotPackable(Exception):
    """A layer this module has no packed form for: the runs are trained one by one."""


class PackedLinear(nn.Module):
    """K Linear layers as one batched matmul. The weight is held transposed, (K, I, O), so that
    neither the forward nor the weight gradient needs a copy (replica k's (O, I) weight is a
    transposed view of its slice). Takes (B, K*I) (replica k's features the k-th block) or
    (K, B, I); returns (B, K*O), or (K, B, O) with ``kb_out`` (the head: its logits go
    straight to the loss)."""

    def __init__(self, linears: list[nn.Linear], kb_out: bool = False) -> None:
        super().__init__()
        self.replicas, self.kb_out = len(linears), kb_out
        self.weight = nn.Parameter(torch.stack([m.weight.detach().t() for m in linears]))
        has_bias = linears[0].bias is not None
        self.bias = (nn.Parameter(torch.stack([m.bias.detach() for m in linears]))
                     if has_bias else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:  # (K, B, I): the MLP's input, stacked so
            xk = x
        else:
            xk = x.view(x.shape[0], self.replicas, -1).transpose(0, 1)  # (K, B, I), no copy
        out = (torch.bmm(xk, self.weight) if self.bias is None
               else torch.baddbmm(self.bias.unsqueeze(1), xk, self.weight))
        return out if self.kb_out else out.transpose(0, 1).reshape(xk.shape[1], -1)

    def shared(self, x: torch.Tensor) -> torch.Tensor:
        """The K layers on one input (B, I) that every replica sees: one matmul with the
        replicas' weights side by side, (B, K*O), instead of K copies of the input."""
        k, i, o = self.weight.shape
        w = self.weight.transpose(0, 1).reshape(i, k * o)
        return x @ w if self.bias is None else torch.addmm(self.bias.reshape(-1), x, w)


def packed_conv(convs: list[nn.Conv2d]) -> nn.Conv2d:
    """K convolutions as one with ``groups=K`` (weights concatenated along the output channels,
    in the single layers' memory format)."""
    c0, k = convs[0], len(convs)
    conv = nn.Conv2d(k * c0.in_channels, k * c0.out_channels, c0.kernel_size, c0.stride,
                     c0.padding, c0.dilation, groups=k * c0.groups, bias=c0.bias is not None,
                     padding_mode=c0.padding_mode, device=c0.weight.device,
                     dtype=c0.weight.dtype)
    fmt = (torch.channels_last if c0.weight.is_contiguous(memory_format=torch.channels_last)
           and not c0.weight.is_contiguous() else torch.contiguous_format)
    with torch.no_grad():
        conv.weight.data = torch.cat([m.weight.detach() for m in convs]).contiguous(
            memory_format=fmt)
        if conv.bias is not None:
            conv.bias.copy_(torch.cat([m.bias.detach() for m in convs]))
    return conv


def _uniform_like(y: torch.Tensor, k: int, gens: list[torch.Generator]) -> torch.Tensor:
    """U(0, 1) of y's shape, replica j's block of C channels drawn from ``gens[j]`` exactly as
    ``torch.rand_like`` draws a single run's (B, C, *) tensor (in its memory format)."""
    c = y.shape[1] // k
    shape = (y.shape[0], c, *y.shape[2:])
    fmt = (torch.channels_last if y.dim() == 4 and not y.is_contiguous()
           and y.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format)
    parts = [torch.empty(shape, dtype=y.dtype, device=y.device, memory_format=fmt)
             .uniform_(0, 1, generator=g) for g in gens]
    return torch.cat(parts, dim=1)


class PackedDropout(nn.Dropout):
    """Dropout on (B, K*C): replica k's mask drawn from its generator as torch's CPU dropout
    draws it (``empty_like(x).bernoulli_(1 - p)``, then scaled by 1 / (1 - p)). A Dropout, so
    what turns dropout off (``bnexp.models.batch_statistics``) turns this off too."""

    def __init__(self, p: float, gens: list[torch.Generator]) -> None:
        super().__init__(p)
        self.gens = gens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        k = len(self.gens)
        b, c = x.shape[0], x.shape[1] // k
        masks = [torch.empty((b, c), dtype=x.dtype, device=x.device)
                 .bernoulli_(1 - self.p, generator=g) for g in self.gens]
        return x * torch.stack(masks, dim=1).view(b, k * c).div_(1 - self.p)


class PackedNoisyBatchNorm(NoisyBatchNorm):
    """``NoisyBatchNorm`` over K*C channels, each replica's walk step and per-sample noise drawn
    from its own generator (bnexp.norm.NoisyBatchNorm's formulas, per replica)."""

    def __init__(self, single: NoisyBatchNorm, gens: list[torch.Generator]) -> None:
        k = len(gens)
        super().__init__(k * single.num_features, eps=single.eps, momentum=single.momentum,
                         noise_mean=single.noise_mean, noise_var=single.noise_var,
                         noise_change=single.noise_change, noise_bound=single.noise_bound)
        self.gens = gens

    def _draw(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Each replica's walk draw from its own generator; a repeat is judged per replica."""
        k, draw = len(self.gens), self.noise_draw
        c = self.num_features // k
        z = torch.cat([torch.randn((2, c), generator=g, device=draw.device, dtype=draw.dtype)
                       for g in self.gens], dim=1)
        return z, (z == draw).view(2, k, c).all(2).all(0).repeat_interleave(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and torch.is_grad_enabled()):  # only training steps run packed
            return super().forward(x)
        y = nn.modules.batchnorm._BatchNorm.forward(self, x)
        state = self._step_noise()
        k = len(self.gens)
        return self._add_noise(y, state, _uniform_like(y, k, self.gens),
                               _uniform_like(y, k, self.gens))


def packed_norm(norms: list[nn.Module], gens: list[torch.Generator]) -> nn.Module:
    """One norm layer over K*C channels that normalises each replica as its own layer does;
    its parameters and buffers are the replicas' concatenated (``bnexp.pack.model`` binds them)."""
    n0, k = norms[0], len(norms)
    if isinstance(n0, nn.Identity):
        return nn.Identity()
    if isinstance(n0, NoisyBatchNorm):
        return PackedNoisyBatchNorm(n0, gens)
    if isinstance(n0, GhostBatchNorm):
        return GhostBatchNorm(k * n0.num_features, eps=n0.eps, momentum=n0.momentum,
                              ghost_batch=n0.ghost_batch)
    if isinstance(n0, BatchNorm):
        return BatchNorm(k * n0.num_features, eps=n0.eps, momentum=n0.momentum,
                         affine=n0.affine, track_running_stats=n0.track_running_stats,
                         impl=n0.impl)
    if type(n0) in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
        return type(n0)(k * n0.num_features, eps=n0.eps, momentum=n0.momentum,
                        affine=n0.affine, track_running_stats=n0.track_running_stats)
    if isinstance(n0, SeedBatchNorm):
        return SeedBatchNorm(k * n0.num_features, eps=n0.eps)
    if type(n0) is nn.GroupNorm:
        return nn.GroupNorm(k * n0.num_groups, k * n0.num_channels, eps=n0.eps,
                            affine=n0.affine)
    raise NotPackable(f"no packed form of {type(n0).__name__}")
