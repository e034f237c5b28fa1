"""``train(cfg)``: one readable training loop, from a composed config to a finished run directory.

Read top to bottom: ``train_step`` is one optimizer step; ``train_epoch`` runs the steps of an
epoch and reads their loss and accuracy off the device every ``trainer.log_every`` steps;
``evaluate_all`` scores the splits; ``train`` sets up (``setup``), loops over epochs and writes
summary.json whatever the outcome (completed, diverged, interrupted, failed).

Nothing in a step waits for the device: the loss and the correct count stay device tensors
until a log window is read (one host sync per window), which is also where a divergence is
found, at the exact step whose loss was first non-finite.
"""

from __future__ import annotations

import functools
import math
import platform
import statistics
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from importlib.metadata import version as _version
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

import bnexp
from bnexp import metrics as m
from bnexp.build import (
    keep_freed_memory,
    make_loaders,
    make_optimizer,
    make_scheduler,
    probe_batch,
    resolve_device,
    seed_everything,
    use_channels_last,
)
from bnexp.config import flatten, optional_keys
from bnexp.data import TensorLoader, load_splits
from bnexp.models import batch_statistics, build_model
from bnexp.norm import prepare_kernels
from bnexp.probes import Probes, probe_layout
from bnexp.progress import Progress
from bnexp.rundir import new_run_dir
from bnexp.runlog import RunLog, git_sha
from bnexp.threads import ThreadShare

# time/step_ms leaves out each epoch's first steps (when it has 2x as many): the first steps of
# a process pay one-off costs (kernel selection, allocator growth), which would make the first
# job of a sweep look slower per step than its twins.
STEADY_AFTER = 10


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
               x: torch.Tensor, y: torch.Tensor, precision: str,
               label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step. Returns the loss and the number of correct predictions as device
    tensors: reading them here would make the host wait for the device every step."""
    with autocast(x.device, precision):
        logits = model(x)
    loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    return loss.detach(), (logits.argmax(1) == y).sum()


@dataclass
class Training:
    """What the loop needs, built once by ``setup``; ``step`` and ``epoch`` are its progress."""

    cfg: DictConfig
    device: torch.device
    model: nn.Module  # the plain module: evaluation and probes
    step_model: nn.Module  # what train_step calls: the model, or torch.compile(model)
    optimizer: torch.optim.Optimizer
    scheduler: Any
    train_loader: TensorLoader
    eval_loaders: dict[str, TensorLoader]
    test: tuple[torch.Tensor, torch.Tensor]  # the test split's tensors (trainer.eval_single)
    spec: Any
    channels_last: bool
    probes: Probes
    log: RunLog
    share: ThreadShare
    summary: dict[str, Any]
    total_steps: int
    step: int = 0
    epoch: int = 0
    train_time: float = 0.0  # seconds of finished epochs' training steps
    timed_steps: int = 0  # the steps of those epochs
    final: dict[str, float] = field(default_factory=dict)
    best: dict[str, float] = field(default_factory=dict)


def train(cfg: DictConfig, overrides: list[str] | None = None,
          run_dir: Path | None = None) -> dict[str, Any]:
    """Train one model as ``cfg`` says and return its summary (also written to summary.json).

    User errors found before training (missing data, bad device) raise BnexpError before any
    run directory exists; anything after that is recorded in the run's summary.json.
    ``run_dir`` is given by sweeps (Hydra's job directory); single runs get a fresh one.
    """
    t_start = time.perf_counter()
    run = setup(cfg, overrides or [], run_dir)
    try:
        with Progress(cfg.trainer.progress, run.summary["epochs"],
                      run.summary["steps_per_epoch"]) as progress:
            while run.step < run.total_steps:
                metrics = train_epoch(run, progress)
                last = run.step == run.total_steps
                if run.epoch % cfg.trainer.eval_every == 0 or last:
                    metrics.update(evaluate_all(run, last))
                end_epoch(run, metrics)
                progress.end_epoch(_epoch_line(run.epoch, run.summary["epochs"], metrics))
        run.summary["status"] = m.COMPLETED
    except Diverged as exc:
        run.summary.update(status=m.DIVERGED, diverged_step=exc.step)
        run.step = exc.step  # steps whose loss was finite
    except KeyboardInterrupt:
        run.summary["status"] = m.INTERRUPTED
        raise
    except BaseException as exc:
        run.summary.update(status=m.FAILED, error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        finish(run, time.perf_counter() - t_start)
    return run.summary


def train_epoch(run: Training, progress: Progress) -> dict[str, float]:
    """The steps of one epoch (or what is left of trainer.steps): train metrics and timings.
    Raises Diverged at the first non-finite loss."""
    tc = run.cfg.trainer
    log_every, val_every, precision = tc.log_every, tc.val_every_steps, tc.precision
    run.epoch += 1
    first = run.step
    progress.start_epoch(run.epoch, min(len(run.train_loader), run.total_steps - first))
    window, clock = Window(first, tc.batch_size), EpochClock(run.device)
    for x, y in run.train_loader:
        if run.probes.due(run.step):
            window.sync()  # a probe reads the device anyway; it never sees a diverged model
        with run.probes.at(run.step, x, y):  # no-op unless a probe is due at this step
            loss, correct = train_step(run.step_model, run.optimizer, run.scheduler, x, y,
                                       precision, tc.label_smoothing)
        window.add(loss, correct)
        run.step += 1
        clock.tick(run.step - first)
        if val_every and run.step % val_every == 0:
            window.sync()
            with clock.paused():  # evaluation is not training: left out of the step time
                run.log.scalars(run.step, evaluate_splits(run.model, run.eval_loaders,
                                                          ("val", "test"), precision),
                                kind=m.KIND_VAL)
        if run.step % log_every == 0 or run.step == run.total_steps:
            loss_mean, acc, steps = window.close()
            ms = clock.window(run.step - first, steps)
            run.share.apply(run.step)  # a training started or ended beside this one
            run.log.scalars(run.step, {m.TRAIN_LOSS: loss_mean, m.TRAIN_ACC: acc,
                                       m.OPT_LR: run.scheduler.get_last_lr()[0]},
                            epoch=run.epoch, kind=m.KIND_STEP, window_step_ms=ms)
            progress.update(run.step - first, loss_mean)
        if run.step == run.total_steps:
            break
    window.close()  # the steps after the last full window
    metrics = {**window.epoch_metrics(), **clock.stop(run.step - first)}
    metrics[m.SAMPLES_PER_S] = (run.step - first) * tc.batch_size / metrics[m.EPOCH_S]
    run.train_time += metrics[m.EPOCH_S]
    run.timed_steps = run.step
    return metrics


def evaluate_all(run: Training, last: bool) -> dict[str, float]:
    """Every evaluation split, the train-test gap, and after the last step the one-at-a-time
    test (trainer.eval_single)."""
    metrics = evaluate_splits(run.model, run.eval_loaders, tuple(run.eval_loaders),
                              run.cfg.trainer.precision)
    return single_and_gap(run, metrics, last)


def single_and_gap(run: Training, metrics: dict[str, float], last: bool) -> dict[str, float]:
    """``metrics`` with, after the last step, the one-at-a-time test and the train-test gap."""
    tc = run.cfg.trainer
    if tc.eval_single and last:
        metrics.update(evaluate_single(run.model, run.test, tc.eval_single, run.spec,
                                       run.channels_last))
    if m.TRAIN_EVAL_ACC in metrics:
        metrics[m.GAP_LOSS] = metrics[m.TRAIN_EVAL_LOSS] - metrics[m.TEST_LOSS]
        metrics[m.GAP_ACC] = metrics[m.TRAIN_EVAL_ACC] - metrics[m.TEST_ACC]
    return metrics


def end_epoch(run: Training, metrics: dict[str, float]) -> None:
    """Track the best val/test accuracy and log the epoch (train/* only to metrics.jsonl: the
    step windows already put them on TensorBoard's curves)."""
    for split in ("test", "val"):
        key = m.split_tag(split, "acc")
        if key in metrics and metrics[key] > run.best.get(key, -1.0):
            run.best[key] = metrics[key]
            run.best[m.split_tag(split, "best_epoch")] = run.epoch
    train_metrics = (m.TRAIN_LOSS, m.TRAIN_ACC)
    tb_metrics = {k: v for k, v in metrics.items() if k not in train_metrics}
    run.log.scalars(run.step, tb_metrics, epoch=run.epoch, kind=m.KIND_EPOCH,
                    **{k: metrics[k] for k in train_metrics})
    run.final.update(metrics)


class Diverged(Exception):
    """The loss became non-finite at ``step``: the run ends, recorded as diverged."""

    def __init__(self, step: int) -> None:
        super().__init__(f"non-finite loss at step {step}")
        self.step = step


class Window:
    """Per-step losses and correct counts, kept on the device until read. A log window ends
    every trainer.log_every steps (``close``); a probe or an evaluation reads earlier
    (``sync``) so that it never runs on a diverged model."""

    def __init__(self, first_step: int, batch_size: int) -> None:
        self.batch_size = batch_size
        self.next_step = first_step  # the step of the first unread entry
        self.losses: list[torch.Tensor] = []
        self.corrects: list[torch.Tensor] = []
        self.window = [0.0, 0.0, 0]  # loss sum, correct, steps: read, not yet closed
        self.epoch = [0.0, 0.0, 0]  # the same for the epoch's closed windows

    def add(self, loss: torch.Tensor, correct: torch.Tensor) -> None:
        self.losses.append(loss)
        self.corrects.append(correct)

    def sync(self) -> None:
        """Read the unread steps (one host sync); raise Diverged at the first non-finite loss."""
        n = len(self.losses)
        if not n:
            return
        values = torch.cat([torch.stack(self.losses).float(),
                            torch.stack(self.corrects).float()]).tolist()
        for i, value in enumerate(values[:n]):
            if not math.isfinite(value):
                raise Diverged(self.next_step + i)
        self.losses, self.corrects = [], []
        self.next_step += n
        self.window = [self.window[0] + sum(values[:n]), self.window[1] + sum(values[n:]),
                       self.window[2] + n]

    def close(self) -> tuple[float, float, int]:
        """End the log window: its mean loss, accuracy and number of steps."""
        self.sync()
        loss_sum, correct, steps = self.window
        self.epoch = [a + b for a, b in zip(self.epoch, self.window, strict=True)]
        self.window = [0.0, 0.0, 0]
        seen = steps * self.batch_size
        return (loss_sum / steps, correct / seen, steps) if steps else (math.nan, math.nan, 0)

    def epoch_metrics(self) -> dict[str, float]:
        loss_sum, correct, steps = self.epoch
        return {m.TRAIN_LOSS: loss_sum / steps, m.TRAIN_ACC: correct / (steps * self.batch_size)}


class EpochClock:
    """Wall time of an epoch's training steps, evaluation left out: the whole epoch, its steady
    part (after STEADY_AFTER steps) and the per-step time of each log window. On CUDA the
    clock synchronises only where a time is taken that no window read already waited for."""

    def __init__(self, device: torch.device) -> None:
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        self.t0 = self.t_window = time.perf_counter()
        self.t_steady: float | None = None
        self.paused_s = self.paused_at_steady = 0.0
        self.window_start, self.window_ms = 0, []

    def tick(self, done: int) -> None:
        if done == STEADY_AFTER:
            self.sync()
            self.t_steady, self.paused_at_steady = time.perf_counter(), self.paused_s

    @contextmanager
    def paused(self) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            dt = time.perf_counter() - t
            self.paused_s += dt
            self.t_window += dt

    def window(self, done: int, steps: int) -> float:
        """Per-step ms of the window that just ended (after a read: the device has caught up)."""
        now = time.perf_counter()
        ms = 1000 * (now - self.t_window) / max(steps, 1)
        if self.window_start >= STEADY_AFTER:  # after one-off costs
            self.window_ms.append(ms)
        self.t_window, self.window_start = now, done
        return ms

    def stop(self, steps: int) -> dict[str, float]:
        self.sync()
        t_end = time.perf_counter()
        epoch_s = t_end - self.t0 - self.paused_s
        steady = steps - STEADY_AFTER
        if steady >= STEADY_AFTER and self.t_steady is not None:
            step_s = (t_end - self.t_steady - (self.paused_s - self.paused_at_steady)) / steady
        else:
            step_s = epoch_s / steps
        out = {m.EPOCH_S: epoch_s, m.STEP_MS: 1000 * step_s}
        if self.window_ms:  # robust to a neighbour's burst of load: the median window
            out[m.STEP_MS_MEDIAN] = statistics.median(self.window_ms)
        return out


def setup(cfg: DictConfig, overrides: list[str], run_dir: Path | None) -> Training:
    """Everything the loop needs, in order: device and cores, seeds, data, model, optimizer and
    schedule, then the run directory. User errors surface before the directory exists."""
    tc = cfg.trainer
    device = resolve_device(tc.device)
    share = ThreadShare(tc.threads)  # this run's share of the cores (bnexp/threads.py)
    share.apply()
    try:
        if tc.keep_memory:
            keep_freed_memory()
        seed_everything(cfg.seed)
        splits = load_splits(cfg.data, cfg.seed, device)
        channels_last = use_channels_last(cfg, device)
        train_loader, eval_loaders = make_loaders(cfg, splits, channels_last)
        probe_x = probe_batch(cfg, splits, train_loader)
        model = build_model(cfg.model, cfg.norm, splits.spec.shape,
                            splits.spec.num_classes).to(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        prepare_kernels(model)  # C kernels built (or loaded) now, not inside the first step
        optimizer = make_optimizer(model.parameters(), cfg.optim)
        steps_per_epoch = len(train_loader)
        total_steps = tc.steps or tc.epochs * steps_per_epoch
        scheduler = make_scheduler(optimizer, cfg.optim, total_steps, steps_per_epoch)
        run_dir = run_dir or new_run_dir(cfg.output_dir, cfg.name)
        run_dir.mkdir(parents=True, exist_ok=True)
        log = RunLog(run_dir, OmegaConf.to_yaml(cfg, resolve=True), overrides, flat_hparams(cfg),
                     layout=probe_layout(model))
    except BaseException:
        share.close()
        raise
    summary = {
        "status": m.RUNNING, "name": cfg.name, "run_dir": str(run_dir), "device": str(device),
        "precision": effective_precision(device, tc.precision), "seed": cfg.seed,
        "threads": torch.get_num_threads(),
        "epochs": math.ceil(total_steps / steps_per_epoch), "steps_per_epoch": steps_per_epoch,
        "total_steps": total_steps, "params": sum(p.numel() for p in model.parameters()),
        "versions": {"bnexp": bnexp.__version__, "torch": torch.__version__,
                     "torchvision": _version("torchvision"), "python": platform.python_version()},
        "git_sha": git_sha(),
    }
    return Training(cfg=cfg, device=device, model=model,
               step_model=torch.compile(model) if tc.compile else model,
               optimizer=optimizer, scheduler=scheduler, train_loader=train_loader,
               eval_loaders=eval_loaders, test=splits.test, spec=splits.spec,
               channels_last=channels_last,
               probes=Probes(model, cfg.probe, cfg.model.activation, probe_x, log, optimizer),
               log=log,
               share=share, summary=summary, total_steps=total_steps)


def finish(run: Training, wall_time_s: float) -> None:
    """Give the cores back, checkpoint a completed or interrupted run, write summary.json."""
    summary, tc = run.summary, run.cfg.trainer
    run.share.close()
    if run.share.changes:
        summary["thread_changes"] = run.share.changes  # [step, threads] after the first
    if tc.checkpoint and summary["status"] in (m.COMPLETED, m.INTERRUPTED):
        config = OmegaConf.to_container(run.cfg, resolve=True, enum_to_str=True)
        run.log.checkpoint({"model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
                            "config": config, "step": run.step, "epoch": run.epoch})
    completed = summary["status"] == m.COMPLETED
    summary.update(
        steps=run.step, epochs_completed=run.epoch if completed else run.epoch - 1,
        final=run.final, best=run.best, wall_time_s=wall_time_s, train_time_s=run.train_time,
        samples_per_s=(run.timed_steps * tc.batch_size / run.train_time) if run.train_time else None,
    )
    run.log.finish(summary)


# ---------------------------------------------------------------------------------------------
# Evaluation


def native_bf16(device: torch.device) -> bool:
    """Whether this device computes bfloat16 in hardware: CUDA that supports it, a CPU with
    AVX512-BF16 or AMX (Linux flags). Elsewhere bf16 is emulated and slower than float32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    return _cpu_bf16()


@functools.cache
def _cpu_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def effective_precision(device: torch.device, precision: str) -> str:
    """``auto``: bf16 where the device has it in hardware, else fp32."""
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def autocast(device: torch.device, precision: str) -> Any:
    """bf16 autocast (matmuls and convolutions in bfloat16; BN keeps float32 statistics)."""
    if effective_precision(device, precision) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def evaluate(model: nn.Module, loader: TensorLoader, batch_stats: bool = False,
             precision: str = "fp32") -> tuple[float, float]:
    """Mean cross-entropy and accuracy over a split: in eval mode (BN running statistics), or
    with ``batch_stats`` as in training (BN normalising each batch with its own statistics)."""
    loss_sum = torch.zeros((), device=loader.images.device)
    correct = torch.zeros((), device=loader.images.device)
    mode = batch_statistics(model) if batch_stats else _eval_mode(model)
    with mode, autocast(loader.images.device, precision):
        for x, y in loader:
            logits = model(x)
            loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
            correct += (logits.argmax(1) == y).sum()
    n = len(loader) * loader.batch_size if loader.drop_last else len(loader.images)
    total_loss, total_correct = torch.stack([loss_sum, correct]).tolist()  # one host read
    return total_loss / n, total_correct / n


def evaluate_splits(model: nn.Module, loaders: dict[str, TensorLoader], splits: tuple[str, ...],
                    precision: str) -> dict[str, float]:
    """``<split>/loss`` and ``<split>/acc`` for those of ``splits`` that exist; the split
    ``test_batchstats`` is evaluated on batch statistics, as in training."""
    out = {}
    for split in splits:
        if split in loaders:
            out[m.split_tag(split, "loss")], out[m.split_tag(split, "acc")] = evaluate(
                model, loaders[split], split == "test_batchstats", precision)
    return out


def evaluate_single(model: nn.Module, test: tuple[torch.Tensor, torch.Tensor], n: int, spec: Any,
                    channels_last: bool) -> dict[str, float]:
    """The first ``n`` test images, each on its own, in eval mode: how a deployed model sees
    one request at a time. A layer that normalises with the batch's own statistics has no
    variance to divide by here (the literal BN's unbiased variance of one value is NaN), so
    ``test_single/nonfinite`` (the fraction of images whose logits are not finite) records the
    failure as a measurement; such images count as wrong in ``test_single/acc``."""
    images, labels = test[0][:n], test[1][:n]
    loader = TensorLoader(images, labels, 1, spec, channels_last=channels_last)
    correct, nonfinite = 0, 0
    with _eval_mode(model), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*degrees of freedom")  # measured, not warned
        for x, y in loader:
            logits = model(x)
            finite = bool(torch.isfinite(logits).all())
            nonfinite += not finite
            correct += finite and int(logits.argmax(1).item() == y.item())
    return {m.TEST_SINGLE_ACC: correct / len(labels), m.TEST_SINGLE_NONFINITE: nonfinite / len(labels)}


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train()


def flat_hparams(cfg: DictConfig) -> dict[str, Any]:
    """The config as flat ``a.b: value`` pairs of the types the HParams dashboard accepts, one
    type per key in every run: booleans as "true"/"false" (torch's hparams() would turn them
    into 0/1), and keys that may be null (data.train_size, trainer.steps, ...) always as text,
    so that one column does not mix 2000.0, 10000 and "None"."""
    nullable = optional_keys()

    def typed(key: str, value: Any) -> Any:
        if isinstance(value, bool):
            return "true" if value else "false"
        if value is None or key in nullable or not isinstance(value, (int, float, str)):
            return "null" if value is None else str(value)
        return str(value) if isinstance(value, str) else value  # a choice's enum: its text

    flat = flatten(OmegaConf.to_container(cfg, resolve=True))
    return {key: typed(key, value) for key, value in flat.items()}


def _epoch_line(epoch: int, epochs: int, values: dict[str, float]) -> str:
    """One line per epoch, under 80 columns."""
    v = values
    parts = [f"epoch {epoch}/{epochs}: loss {v[m.TRAIN_LOSS]:.3f} acc {100 * v[m.TRAIN_ACC]:.1f}%"]
    if m.TEST_ACC in v:
        parts.append(f"test loss {v[m.TEST_LOSS]:.3f} acc {100 * v[m.TEST_ACC]:.2f}%")
    parts.append(f"{v[m.EPOCH_S]:.1f}s {v[m.SAMPLES_PER_S]:.0f}/s")
    return " | ".join(parts)
