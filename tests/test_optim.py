"""make_optimizer: the fused optimizers it picks on CPU follow torch's reference (per-parameter
loop) implementation step for step."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from bnexp.config import OptimConfig
from bnexp.train import make_optimizer


@pytest.mark.parametrize("name,extra", [("sgd", {"nesterov": True}), ("sgd", {"momentum": 0.0}),
                                        ("adam", {}), ("adamw", {"weight_decay": 0.01})])
def test_fused_optimizer_matches_the_reference_loop(name: str, extra: dict) -> None:
    cfg = OmegaConf.structured(OptimConfig(name=name, lr=0.01, **extra))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.BatchNorm1d(7), torch.nn.Linear(7, 3))
    twin = [p.detach().clone().requires_grad_() for p in model.parameters()]
    ours = make_optimizer(model.parameters(), cfg)
    assert ours.defaults["fused"] is True
    settings = {k: v for k, v in ours.defaults.items() if k != "decoupled_weight_decay"}
    ref = type(ours)(twin, **{**settings, "fused": None, "foreach": False})
    for _ in range(5):
        grads = [torch.randn_like(p) for p in twin]
        for p, q, g in zip(model.parameters(), twin, grads, strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    for p, q in zip(model.parameters(), twin, strict=True):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-6, atol=1e-7)
