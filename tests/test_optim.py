"""make_optimizer: the fused optimizers it picks on CPU follow torch's reference (per-parameter
loop) implementation step for step."""

from __future__ import annotations

import subprocess
import sys

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


FAULTS = """
import resource, sys, torch
from bnexp.train import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
for _ in range(3):
    torch.empty(10 << 20).fill_(1)  # 40 MB: past glibc's largest automatic mmap threshold
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    torch.empty(10 << 20).fill_(1)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_stops_the_page_faults_of_reused_buffers() -> None:
    """trainer.keep_memory: a buffer freed and allocated again is not faulted in again."""
    faults = {mode: int(subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True,
                                       text=True, check=True).stdout)
              for mode in ("default", "keep")}
    pages = (40 << 20) // 4096  # 10,240: glibc maps 40 MB afresh, so 10 allocations fault ~10x
    assert faults["default"] > 8 * pages
    assert faults["keep"] < 2 * pages  # at most the heap's first growth; then reused
