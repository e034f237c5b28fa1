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
like any other run. ``run_timing_sweep`` does it for several seeds into one directory, keeping
seeds already timed by this code version with this config and these rounds (``bnexp.reuse``;
``sweep.stale`` says whether a stale seed is timed again, kept or refused), and claims each seed
first (``bnexp.runlock``) so that two calls on the
same directory split the seeds instead of timing each twice (two timings at once would also
slow each other down and spoil both).
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
from bnexp.errors import BnexpError
from bnexp.hydra_app import compose_config
from bnexp.metrics import COMPLETED
from bnexp.models import build_model
from bnexp.norm import prepare_kernels
from bnexp.reuse import TIMING_HARMLESS, as_written, code_stamp, stale_reason
from bnexp.rundir import finished_summary, set_aside_previous_attempt, timing_run_name, write_summary
from bnexp.runlock import claimed, lock_path, wait_for_others
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
        run_dir = out / timing_run_name(cfg.seed, k)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(variant_config_yaml(cfg, k))
        run_overrides = [*overrides, f"seed={cfg.seed}", f"norm={k}"]
        (run_dir / "overrides.yaml").write_text("".join(f"- {o}\n" for o in run_overrides))
        stamp = code_stamp()
        stamp["versions"]["torch"] = torch.__version__
        summary = {
            **stamp, "status": COMPLETED, "seed": cfg.seed, "threads": torch.get_num_threads(),
            "device": str(resolve_device(cfg.trainer.device)), "kind": "interleaved timing",
            "variants": kinds, "rounds": rounds, "window_steps": window,
            "window_ms": ms, "wall_time_s": time.perf_counter() - started,
            "final": {"time/step_ms_median": statistics.median(ms),
                      "time/step_ms": statistics.fmean(ms),
                      "time/step_ms_min": min(ms), "time/step_ms_max": max(ms)},
        }
        write_summary(run_dir, summary)
        summaries[k] = summary
    return summaries


def variant_config_yaml(cfg: DictConfig, kind: str) -> str:
    """The config.yaml of one variant's run: the run's config with the variant's norm."""
    config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    config["norm"] = OmegaConf.to_container(variant_norm(cfg, kind), enum_to_str=True)
    return OmegaConf.to_yaml(config)


def run_timing_sweep(base: list[str], kinds: list[str], seeds: list[int], rounds: int,
                     window: int, sweep_dir: Path) -> None:
    """Time ``kinds`` interleaved for every seed into ``sweep_dir`` (``seed=<s>,norm=<kind>/``),
    the config composed from ``base`` overrides plus ``seed=<s>``.

    Each seed is claimed first: one that another live process holds is left to it and waited
    for at the end (and timed here after all if that process died before finishing it). A seed
    whose variants all have a finished summary.json is kept unless stale (``_stale_seed``);
    a stale one is timed again, kept or refused (BnexpError) as ``sweep.stale`` says; a
    half-written or stale seed is timed again from clean directories. Prints once how many
    seeds were kept and re-timed, and why."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    todo, decided = list(seeds), {}
    while todo:
        held = [seed for seed in todo
                if not _time_seed(base, kinds, seed, (rounds, window), sweep_dir, decided)]
        if held:
            wait_for_others(sweep_dir, lambda text: print(f"timing: {text}", flush=True))
        todo = [seed for seed in held if not _seed_done(sweep_dir, seed, kinds)]
    kept = [s for s, why in decided.items() if why == ""]
    stale = {s: why for s, why in decided.items() if why}
    if kept or stale:
        line = f"timing: reused {len(kept)} timed seeds"
        if stale:
            seed, why = next(iter(stale.items()))
            line += f", timed {len(stale)} again because stale (e.g. seed {seed}: {why})"
        print(line, flush=True)


def _seed_done(sweep_dir: Path, seed: int, kinds: list[str]) -> bool:
    return all(finished_summary(sweep_dir / timing_run_name(seed, k)) for k in kinds)


def _time_seed(base: list[str], kinds: list[str], seed: int, timing: tuple[int, int],
               sweep_dir: Path, decided: dict[int, str]) -> bool:
    """Time one seed unless it is done and current (``decided[seed]``: "" when kept, else why
    it was stale); False when another live process holds it."""
    with claimed(lock_path(sweep_dir, f"seed={seed}")) as lock:
        if lock is None:
            return False
        cfg = compose_config([*base, f"seed={seed}"])
        why = _stale_seed(cfg, kinds, timing, sweep_dir) if _seed_done(
            sweep_dir, seed, kinds) else None
        mode = OmegaConf.select(cfg, "sweep.stale", default="rerun")
        if why is not None:
            decided[seed] = why
            if not why or mode == "reuse":
                return True
            if mode == "refuse":
                raise BnexpError(
                    f"{sweep_dir}: the timing of seed {seed} is stale ({why}), and "
                    "sweep.stale=refuse left it as it is. Time it again with sweep.stale=rerun "
                    "(its files go to .previous/), keep it with sweep.stale=reuse, or use a new "
                    "directory.")
        for k in kinds:  # a killed or stale attempt's variants, complete or not: all timed again
            set_aside_previous_attempt(sweep_dir / timing_run_name(seed, k))
        run_interleaved(cfg, kinds, *timing, sweep_dir, base)
        return True


def _stale_seed(cfg: DictConfig, kinds: list[str], timing: tuple[int, int], sweep_dir: Path
                ) -> str:
    """Why a seed's finished timing no longer stands for this one ("" if it does): other
    variants, rounds or window, another code version, or another config (threads compared:
    step times depend on them, ``bnexp.reuse.TIMING_HARMLESS``)."""
    asked = {"variants": list(kinds), "rounds": timing[0], "window_steps": timing[1]}
    for k in kinds:
        run_dir = sweep_dir / timing_run_name(cfg.seed, k)
        summary = finished_summary(run_dir) or {}
        had = {key: summary.get(key) for key in asked}
        if had != asked:
            return f"timing: timed with {had}, now {asked}"
        why = stale_reason(run_dir, summary, as_written(variant_config_yaml(cfg, k)),
                           TIMING_HARMLESS)
        if why:
            return why
    return ""
