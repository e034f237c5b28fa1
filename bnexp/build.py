"""What a run is built from: device, seeds, loaders, the probe batch, optimizer and schedule.

train.py calls these once, before the first step; bnexp/timing.py reuses them so that timed
steps are built exactly as trained ones.
"""

from __future__ import annotations

import ctypes
import functools
import math
import random
from typing import Any

import numpy as np
import torch

from bnexp.data import Splits, TensorLoader
from bnexp.errors import BnexpError


def resolve_device(name: str) -> torch.device:
    """auto picks CUDA, then MPS, then CPU; an explicit choice that is unavailable is an error."""
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if (name == "cuda" and not cuda) or (name == "mps" and not mps):
        raise BnexpError(f"trainer.device={name} but no {name.upper()} device is available here. "
                         "Use trainer.device=auto or trainer.device=cpu.")
    return torch.device(name)


def use_channels_last(cfg: Any, device: torch.device) -> bool:
    """The CNN's memory format: channels_last suits convolutions on CUDA (tensor cores) and on
    CPU (oneDNN's fastest kernels take it); trainer.channels_last overrides."""
    choice = cfg.trainer.channels_last
    return cfg.model.arch == "cnn" and (
        choice if choice is not None else device.type in ("cuda", "cpu"))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of handing it back to the OS.

    A CPU training step allocates and frees activation buffers of a few MB; by default glibc
    maps each such block fresh (or trims the heap after freeing it), so every step page-faults
    the same memory in again, thousands of faults a step for the CNN. With both thresholds at
    1 GiB, buffers stay in the heap and steady steps fault nothing; the cost is that the
    process's RSS stays at its peak. Returns whether the settings took (False off glibc)."""
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    return bool(mallopt(m_mmap_threshold, 1 << 30) and mallopt(m_trim_threshold, 1 << 30))


def make_optimizer(params: Any, cfg: Any) -> torch.optim.Optimizer:
    """SGD/Adam/AdamW; on CPU and CUDA the fused variant: one kernel updates every parameter,
    where torch's default loops over them in Python, which dominates a small MLP's step."""
    params = list(params)
    fused = all(p.device.type in ("cpu", "cuda") for p in params) or None
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay, fused=fused)
    cls = torch.optim.Adam if cfg.name == "adam" else torch.optim.AdamW
    return cls(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay,
               fused=fused)


def lr_factor(step: int, total: int, steps_per_epoch: int, schedule: str, gamma: float,
              step_size: int, warmup: float) -> float:
    """Multiplier of optim.lr at ``step`` (0-based) of ``total`` optimizer steps. Plain
    arguments, not the config: it runs every step, and DictConfig lookups are slow."""
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * step / total))
    if schedule == "step":
        return gamma ** (step // (step_size * steps_per_epoch))
    if schedule == "onecycle":  # linear warm-up from lr/10, then linear decay to 0
        warm = max(1, int(warmup * total))
        if step < warm:
            return 0.1 + 0.9 * step / warm
        return max(0.0, (total - step) / max(1, total - warm))
    return 1.0


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: Any, total_steps: int,
                   steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """optim.schedule as a per-step LambdaLR (scheduler.step() after every optimizer step)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, functools.partial(
        lr_factor, total=total_steps, steps_per_epoch=steps_per_epoch, schedule=cfg.schedule,
        gamma=cfg.gamma, step_size=cfg.step_size, warmup=cfg.warmup))


def make_loaders(cfg: Any, splits: Splits, channels_last: bool
                 ) -> tuple[TensorLoader, dict[str, TensorLoader]]:
    """The shuffled training loader and the evaluation loaders by split name: test, val (when
    held out), train_eval (training images in eval mode, for the train-test gap) and
    test_batchstats (test in training-size batches on batch statistics)."""
    tc, spec = cfg.trainer, splits.spec
    n_train = len(splits.train[0])
    if n_train < tc.batch_size:
        raise BnexpError(f"trainer.batch_size={tc.batch_size} exceeds the {n_train} training "
                         "images; pass a smaller trainer.batch_size or a larger data.train_size.")
    shuffle_gen = torch.Generator().manual_seed(cfg.seed)  # own stream: probes can't disturb it
    train = TensorLoader(*splits.train, tc.batch_size, spec, shuffle=True, drop_last=True,
                         augment=cfg.data.augment, generator=shuffle_gen,
                         channels_last=channels_last)

    def loader(images: torch.Tensor, labels: torch.Tensor, **kw: Any) -> TensorLoader:
        return TensorLoader(images, labels, kw.pop("batch_size", tc.eval_batch_size), spec,
                            channels_last=channels_last, **kw)

    evals = {"test": loader(*splits.test)}
    if splits.val is not None:
        evals["val"] = loader(*splits.val)
    if tc.train_eval_size:  # the gap compares like with like: the model in eval mode on
        # training images (a fixed, seeded subset: the split is already shuffled) and on test
        # images; the running train/acc of an epoch mixes weights from its first to its last
        # step and, with dropout or BN, train-mode noise.
        n = min(tc.train_eval_size, n_train)
        evals["train_eval"] = loader(splits.train[0][:n], splits.train[1][:n])
    if tc.eval_batch_stats:
        evals["test_batchstats"] = loader(*splits.test, batch_size=tc.batch_size, drop_last=True)
    return train, evals


def probe_batch(cfg: Any, splits: Splits, train_loader: TensorLoader) -> torch.Tensor:
    """The fixed probe batch: from the training split, drawn by its own generator (never the
    shuffle stream), so every norm variant of a seed probes the same images."""
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + 17)
    idx = torch.randperm(len(splits.train[0]), generator=gen)[: cfg.probe.batch_size]
    return train_loader.normalize(splits.train[0][idx.to(splits.train[0].device)])
