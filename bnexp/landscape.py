"""Santurkar et al. 2018 ("How Does Batch Normalization Help Optimization?") as probes: internal
covariate shift in their optimisation sense, and the loss landscape along the gradient.

Both are pure functions of the model, the training batch ``(x, y)`` and (for ICS) the optimizer,
called at a probe step before the training step by the probe kinds bnexp/probes/ics.py and
bnexp/probes/loss_landscape.py. The loss is the training step's,
``F.cross_entropy(model(x).float(), y)``, in float32 and in the model's current mode: the caller
keeps it in train mode, so BN normalises with the batch's statistics as in the step.

Nothing observable changes: parameters are never written (other points in weight space go in
through ``torch.func.functional_call``), gradients come from ``torch.autograd.grad`` (no
parameter's ``.grad`` is touched), the optimizer is simulated on copies of its state, BN running
statistics are restored after the train-mode forwards, and the random streams (CPU and the
batch's device) are forked. Every forward starts from the random state the probe found, so all
of them draw the dropout masks the training step after the probe will draw: G below is exactly
the gradient that step computes (in float32: under ``trainer.precision=bf16`` the step's own
gradient is bf16's), and the compared points differ only in the weights.

Cost, in forward+backward passes on the batch: ``measure_ics`` one, plus one per layer after the
first; ``measure_landscape`` one, plus one per step size. Everything stays on the device and
comes back as 0-d tensors, so the caller reads all of them with one host transfer. Pass the
eager model, not a ``torch.compile`` wrapper.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from bnexp import metrics as m

DEFAULT_MULTIPLES = (0.5, 1.0, 2.0, 4.0)


def measure_ics(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                y: torch.Tensor, layers: Mapping[str, nn.Module]) -> dict[str, torch.Tensor]:
    """Internal covariate shift of each layer, Santurkar et al.'s Definition 2.1.

    For layer i with weight W_i, on the batch (x, y):

    - G  = dL/dW_i at the current parameters W (the training step's gradient);
    - G' = dL/dW_i at W', where every parameter *preceding* layer i (the affine maps and the
      norms' gamma/beta of all earlier blocks) has taken the update the run's optimizer applies
      this step, and layer i and everything after it are unchanged;
    - ``ics/<layer>/l2``  = ||G - G'||_2 (Frobenius over the weight's entries);
    - ``ics/<layer>/cos`` = <G, G'> / (||G|| ||G'||).

    The update is simulated: a fresh optimizer of the same class over copies of the parameters,
    with a deep copy of the run optimizer's state and hyperparameters (momentum buffers, Adam
    moments and step counts, the scheduled lr), stepped once with the gradients at W; weight
    decay, momentum and Nesterov act exactly as in the real step. "Preceding" means registered
    before W_i in ``model.named_parameters()``, which for bnexp's MLP and CNN is network order
    (the blocks of ``model.blocks``, then the head); W_i's own bias and its block's norm are
    not preceding.

    ``layers`` maps names to modules with ``.weight`` in network order, as
    ``bnexp.probes.probed_layers`` returns. The first layer has no preceding parameters: its G'
    is G by definition, so it is reported as l2 = 0, cos = 1 without a pass (kept so that every
    layer has a value and charts overlay).
    """
    params = dict(model.named_parameters())
    order = {id(p): i for i, p in enumerate(params.values())}
    names = list(params)
    trainable = {n: p for n, p in params.items() if p.requires_grad}
    for layer, module in layers.items():
        if id(module.weight) not in order or not module.weight.requires_grad:
            raise ValueError(f"layer {layer!r}: its weight is not a trainable parameter of the model")
    out: dict[str, torch.Tensor] = {}
    with _untouched(model, x.device) as rewind, torch.enable_grad():
        loss = _loss(model, params, x, y)
        grads = _grads(loss, trainable)
        stepped = _simulated_step(optimizer, trainable, grads)
        for layer, module in layers.items():
            k = order[id(module.weight)]
            weight_name = names[k]
            g = grads[weight_name]
            if k == 0:
                out[m.ics(layer, "l2")] = torch.zeros((), device=g.device, dtype=g.dtype)
                out[m.ics(layer, "rel")] = torch.zeros((), device=g.device, dtype=g.dtype)
                out[m.ics(layer, "cos")] = torch.ones((), device=g.device, dtype=g.dtype)
                continue
            # Earlier parameters at their stepped values, the rest as they are; only W_i needs a
            # gradient, so autograd skips everything before layer i in the backward pass.
            point = {n: stepped.get(n, p).detach() if i < k else p.detach()
                     for i, (n, p) in enumerate(params.items())}
            point[weight_name] = module.weight
            rewind()
            (g_moved,) = torch.autograd.grad(_loss(model, point, x, y), module.weight)
            out[m.ics(layer, "l2")] = torch.linalg.vector_norm(g - g_moved)
            # Scale-free: a net whose gradients are 10x larger has 10x larger l2 differences,
            # so comparisons between norm variants use the change relative to ||G||.
            out[m.ics(layer, "rel")] = out[m.ics(layer, "l2")] / torch.linalg.vector_norm(g)
            out[m.ics(layer, "cos")] = F.cosine_similarity(g.flatten(), g_moved.flatten(), dim=0)
    return out


def measure_landscape(model: nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float,
                      multiples: Sequence[float] = DEFAULT_MULTIPLES) -> dict[str, torch.Tensor]:
    """The loss and its gradient along the gradient direction, Santurkar et al.'s Figure 4.

    With w all trainable parameters, g = grad L(w) on the batch and step sizes
    eta_j = lr * multiples[j]:

    - ``landscape/loss_range``  = max - min of {L(w)} u {L(w - eta_j g)}_j: the width of
      Fig. 4(a)'s shaded band ("variation in loss as we move in the gradient direction");
    - ``landscape/grad_change`` = max_j ||grad L(w - eta_j g) - g||_2: the top of Fig. 4(b)'s
      band ("gradient predictiveness": the l2 change of the gradient; lower = more predictive);
    - ``landscape/beta``        = max_j ||grad L(w - eta_j g) - g||_2 / ||eta_j g||_2: Fig. 4(c)'s
      "effective beta-smoothness", the largest change of the gradient per distance moved.

    Norms are over all parameters at once (BN's gamma/beta included). The paper moves up to
    0.4 x the gradient, i.e. its VGG learning rate 0.1 times up to 4, which is what the default
    multiples give at lr 0.1; bnexp scales the steps with the run's own lr instead, so that
    the probe looks where the optimizer steps. When g = 0, beta is 0/0 = nan.
    """
    if not multiples:
        raise ValueError("measure_landscape needs at least one step-size multiple")
    params = dict(model.named_parameters())
    trainable = {n: p for n, p in params.items() if p.requires_grad}
    with _untouched(model, x.device) as rewind, torch.enable_grad():
        loss = _loss(model, params, x, y)
        g = _grads(loss, trainable)
        g_norm = _global_norm(list(g.values()))
        losses, changes, betas = [loss.detach()], [], []
        for multiple in multiples:
            eta = lr * multiple
            # clone() keeps each weight's memory format (p - eta*g may not: a channels_last
            # conv weight with one input channel comes out contiguous, and convs then convert).
            moved = {n: p.detach().clone().add_(g[n], alpha=-eta).requires_grad_()
                     for n, p in trainable.items()}
            point = {n: moved.get(n, p.detach()) for n, p in params.items()}
            rewind()
            loss = _loss(model, point, x, y)
            g_moved = _grads(loss, moved)
            change = _global_norm([g_moved[n] - g[n] for n in trainable])
            losses.append(loss.detach())
            changes.append(change)
            betas.append(change / (eta * g_norm))
    losses_t = torch.stack(losses)
    return {
        m.LANDSCAPE_LOSS_RANGE: losses_t.max() - losses_t.min(),
        m.LANDSCAPE_GRAD_CHANGE: torch.stack(changes).max(),
        m.LANDSCAPE_BETA: torch.stack(betas).max(),
    }


def _loss(model: nn.Module, point: Mapping[str, torch.Tensor], x: torch.Tensor,
          y: torch.Tensor) -> torch.Tensor:
    """The training step's loss with the model's parameters replaced by ``point``."""
    return F.cross_entropy(functional_call(model, dict(point), (x,)).float(), y)


def _grads(loss: torch.Tensor, wrt: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """d loss / d each of ``wrt``, without touching any ``.grad``; zeros for an unused tensor."""
    found = torch.autograd.grad(loss, list(wrt.values()), allow_unused=True)
    return {n: torch.zeros_like(t) if g is None else g
            for (n, t), g in zip(wrt.items(), found, strict=True)}


def _global_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The l2 norm of all the tensors' entries together."""
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in tensors]))


def _simulated_step(optimizer: torch.optim.Optimizer, params: Mapping[str, nn.Parameter],
                    grads: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The parameters after the step ``optimizer`` would take with ``grads``, by name; the
    optimizer and the parameters are left as they are.

    A fresh optimizer of the same class, over copies of the parameters, loads a deep copy of
    the optimizer's state_dict (state and hyperparameters, e.g. the scheduled lr). Not
    ``copy.deepcopy(optimizer)``: that would also copy every parameter's stale ``.grad`` and
    carry over the run optimizer's step hooks, which would then fire for the simulated step."""
    name_of = {id(p): n for n, p in params.items()}
    copies: dict[str, torch.Tensor] = {}
    groups = []
    for group in optimizer.param_groups:
        clones = []
        for p in group["params"]:
            clone = p.detach().clone().requires_grad_(p.requires_grad)
            name = name_of.get(id(p))
            if name is not None:
                clone.grad = grads[name].detach().clone()
                copies[name] = clone
            clones.append(clone)
        groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": clones})
    twin = type(optimizer)(groups)
    twin.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    twin.step()
    return {n: c.detach() for n, c in copies.items()}


@contextmanager
def _untouched(model: nn.Module, device: torch.device) -> Iterator[Callable[[], None]]:
    """Restores the model's buffers (BN running statistics, which train-mode forwards update)
    and the CPU and ``device`` random streams on exit. Yields ``rewind``, which resets those
    streams to the state found on entry: called before each forward, every forward draws the
    same dropout masks as the training step that follows the probe."""
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    accelerated = device.type != "cpu"
    with torch.random.fork_rng(devices=[device] if accelerated else [],
                               device_type=device.type if accelerated else None):
        cpu_state = torch.get_rng_state()
        device_mod = torch.get_device_module(device.type) if accelerated else None
        device_state = device_mod.get_rng_state(device) if device_mod else None

        def rewind() -> None:
            torch.set_rng_state(cpu_state)
            if device_mod is not None:
                device_mod.set_rng_state(device_state, device)

        try:
            rewind()
            yield rewind
        finally:
            with torch.no_grad():
                for k, v in model.named_buffers():
                    v.copy_(buffers[k])
