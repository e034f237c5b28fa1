"""bnexp/build.py: the fused optimizers make_optimizer picks follow torch's reference
(per-parameter loop) implementation step for step; the lr schedules; glibc's malloc settings."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from bnexp.build import make_optimizer
from tests.conftest import compose


@pytest.mark.parametrize("name,extra", [("sgd", {"nesterov": True}), ("sgd", {"momentum": 0.0}),
                                        ("adam", {}), ("adamw", {"weight_decay": 0.01})])
def test_fused_optimizer_matches_the_reference_loop(name: str, extra: dict) -> None:
    cfg = OmegaConf.merge(compose(f"optim={name}").optim, {"lr": 0.01, "nesterov": False, **extra})
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
from bnexp.build import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
for _ in range(10):  # until the heap has settled: small allocations in between can make the
    torch.empty(10 << 20).fill_(1)  # first few 40 MB blocks land higher up (40 MB: past glibc's
                                    # largest automatic mmap threshold)
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


def torch_schedule_factors(make, steps: int) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched, out = make(opt), []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("schedule", ["cosine", "step"])
def test_lr_factor_matches_torch_schedulers(schedule: str) -> None:
    from bnexp.build import lr_factor

    total, per_epoch = 60, 12
    ours = [lr_factor(s, total, per_epoch, schedule, gamma=0.5, step_size=2, warmup=0.2)
            for s in range(total)]
    if schedule == "cosine":
        ref = torch_schedule_factors(
            lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=total), total)
    else:
        ref = torch_schedule_factors(
            lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=2 * per_epoch, gamma=0.5), total)
    assert ours == pytest.approx(ref, rel=1e-9, abs=1e-12)


def test_onecycle_warms_up_from_a_tenth_then_decays_to_zero() -> None:
    from bnexp.build import lr_factor

    total = 100
    f = [lr_factor(s, total, 10, "onecycle", gamma=0.1, step_size=1, warmup=0.2)
         for s in range(total + 1)]
    assert f[0] == pytest.approx(0.1) and f[20] == pytest.approx(1.0) and f[total] == 0.0
    assert all(a < b for a, b in zip(f[:20], f[1:21], strict=True))
    assert all(a > b for a, b in zip(f[20:total], f[21:], strict=True))
    assert lr_factor(37, total, 10, "constant", 0.1, 1, 0.2) == 1.0
