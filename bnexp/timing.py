"""What a training step costs per norm variant, measured so that machine load cannot decide it.

Separate runs measured one after another are at the mercy of the machine: on a shared 2-core VM
the same run's step time moves by 20-40% from one run to the next (steal time, a neighbour, CPU
frequency), more than the effect being measured. So the variants are timed *in one process,
interleaved*: every variant gets its model and optimizer (same seed, same initial weights), then
rounds of ``window`` training steps each, the variants' order rotated every round so that none
always follows the same one; the first round is a warm-up (kernel selection, allocator growth)
and is discarded. A variant's step time is the median over its windows; any load change hits
all variants within the same few seconds.

``run_interleaved`` writes one run directory per variant (summary.json with
``final["time/step_ms_median"]``, config.yaml, overrides.yaml), so reports and claims read them
like any other run.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from bnexp.build import make_optimizer, make_scheduler, resolve_device, seed_everything, use_channels_last
from bnexp.data import TensorLoader, load_splits
from bnexp.hydra_app import compose_config
from bnexp.jsonio import write_json_atomic
from bnexp.models import build_model
from bnexp.norm import prepare_kernels
from bnexp.train import train_step


def variant_norm(cfg: DictConfig, kind: str) -> DictConfig:
    """The norm config of ``kind``: its own file (configs/norm/<kind>.yaml), with the values of
    the run's norm config for the keys both kinds take (an eps the user set stays set)."""
    if cfg.norm.kind == kind:
        return cfg.norm
    norm = compose_config([f"norm={kind}"]).norm
    return OmegaConf.merge(norm, {k: v for k, v in cfg.norm.items() if k in norm and k != "kind"})


def _variant_state(cfg: DictConfig, kind: str, spec: Any, device: torch.device,
                   channels_last: bool, total_steps: int, steps_per_epoch: int) -> tuple:
    seed_everything(cfg.seed)  # every variant starts from the same weights
    model = build_model(cfg.model, variant_norm(cfg, kind), spec.shape,
                        spec.num_classes).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    prepare_kernels(model)
    optimizer = make_optimizer(model.parameters(), cfg.optim)
    return model, optimizer, make_scheduler(optimizer, cfg.optim, total_steps, steps_per_epoch)


def _window(model: torch.nn.Module, opt: torch.optim.Optimizer, scheduler: Any, batches: Any,
            steps: int, device: torch.device, precision: str) -> float:
    """ms per step over ``steps`` training steps, each exactly as ``bnexp train`` takes it."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        x, y = next(batches)
        train_step(model, opt, scheduler, x, y, precision)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - t0) / steps


def _endless(loader: TensorLoader) -> Any:
    while True:
        yield from loader


def interleaved_step_times(cfg: DictConfig, kinds: list[str], rounds: int, window: int
                           ) -> dict[str, list[float]]:
    """Per variant, the ms per step of each of ``rounds`` windows (after one warm-up round)."""
    device = resolve_device(cfg.trainer.device)
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    splits = load_splits(cfg.data, cfg.seed, device)
    channels_last = use_channels_last(cfg, device)
    loader = TensorLoader(*splits.train, cfg.trainer.batch_size, splits.spec, shuffle=True,
                          drop_last=True, generator=torch.Generator().manual_seed(cfg.seed),
                          channels_last=channels_last)
    total = (rounds + 1) * window  # each variant's steps: its schedule spans them
    states = {k: _variant_state(cfg, k, splits.spec, device, channels_last, total, len(loader))
              for k in kinds}
    batches = _endless(loader)
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for r in range(rounds + 1):
        order = kinds[r % len(kinds):] + kinds[:r % len(kinds)]
        for k in order:
            ms = _window(*states[k], batches, window, device, cfg.trainer.precision)
            if r > 0:  # round 0 warms every variant up
                times[k].append(ms)
    return times


def run_interleaved(cfg: DictConfig, kinds: list[str], rounds: int, window: int,
                    out: Path, overrides: list[str]) -> dict[str, dict[str, Any]]:
    """Time ``kinds`` interleaved and write one run directory per variant under ``out``."""
    started = time.perf_counter()
    times = interleaved_step_times(cfg, kinds, rounds, window)
    summaries = {}
    for k, ms in times.items():
        run_dir = out / f"seed={cfg.seed},norm={k}"
        run_dir.mkdir(parents=True, exist_ok=True)
        config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
        config["norm"] = OmegaConf.to_container(variant_norm(cfg, k), enum_to_str=True)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(config))
        run_overrides = [*overrides, f"seed={cfg.seed}", f"norm={k}"]
        (run_dir / "overrides.yaml").write_text("".join(f"- {o}\n" for o in run_overrides))
        summary = {
            "status": "completed", "seed": cfg.seed, "threads": torch.get_num_threads(),
            "device": str(resolve_device(cfg.trainer.device)), "kind": "interleaved timing",
            "variants": kinds, "rounds": rounds, "window_steps": window,
            "window_ms": ms, "wall_time_s": time.perf_counter() - started,
            "final": {"time/step_ms_median": statistics.median(ms),
                      "time/step_ms": statistics.fmean(ms),
                      "time/step_ms_min": min(ms), "time/step_ms_max": max(ms)},
        }
        write_json_atomic(run_dir / "summary.json", summary)
        summaries[k] = summary
    return summaries
