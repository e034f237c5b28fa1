"""``train(cfg)``: one readable training loop, from a composed config to a finished run directory.

Read top to bottom: pick the device and seed everything, load the data as resident tensors,
build model/optimizer/schedule, create the run directory, then loop over epochs of steps, with
per-step train metrics, per-epoch evaluation, and a summary.json whatever the outcome
(completed, diverged, interrupted, failed).
"""

from __future__ import annotations

import ctypes
import functools
import math
import platform
import random
import statistics
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from importlib.metadata import version as _version
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

import bnexp
from bnexp.data import TensorLoader, load_splits
from bnexp.errors import BnexpError
from bnexp.models import batch_statistics, build_model
from bnexp.probes import Probes, probe_layout
from bnexp.progress import Progress
from bnexp.runlog import RunLog, git_sha, new_run_dir
from bnexp.threads import ThreadShare


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
    CPU (oneDNN kernels; the default CNN trains ~1.45x faster on 2 cores:
    scripts/bench_time_to_acc.py); trainer.channels_last overrides."""
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
    the same memory in again: ~3,000 faults a step for the default CNN, which made a process's
    first hundred steps ~1.7x slower (11.3 vs 6.5 ms). With both thresholds at 1 GiB, buffers
    stay in the heap and steady steps fault nothing; the cost is that the process's RSS stays
    at its peak. Returns whether the settings took (False off glibc)."""
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    return bool(mallopt(m_mmap_threshold, 1 << 30) and mallopt(m_trim_threshold, 1 << 30))


def make_optimizer(params: Any, cfg: Any) -> torch.optim.Optimizer:
    """SGD/Adam/AdamW; on CPU and CUDA the fused variant: one kernel updates every parameter
    (on CPU, torch's default per-parameter loop costs 260 us a step for the MLP, fused 70 us)."""
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
    arguments, not the config: it runs every step, and a DictConfig lookup costs ~10 us."""
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


def autocast(device: torch.device, precision: str) -> Any:
    """bf16 autocast (matmuls and convolutions in bfloat16; BN keeps float32 statistics)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def evaluate(model: nn.Module, loader: TensorLoader, batch_stats: bool = False,
             precision: str = "fp32") -> tuple[float, float]:
    """Mean cross-entropy and accuracy over a split: in eval mode (BN running statistics), or
    with ``batch_stats`` as in training (BN normalising each batch with its own statistics)."""
    loss_sum = torch.zeros((), device=loader.images.device)
    correct = torch.zeros((), device=loader.images.device, dtype=torch.long)
    mode = batch_statistics(model) if batch_stats else _eval_mode(model)
    with mode, autocast(loader.images.device, precision):
        for x, y in loader:
            logits = model(x)
            loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
            correct += (logits.argmax(1) == y).sum()
    n = len(loader) * loader.batch_size if loader.drop_last else len(loader.images)
    return loss_sum.item() / n, correct.item() / n


def evaluate_splits(model: nn.Module, loaders: dict[str, TensorLoader], splits: tuple[str, ...],
                    precision: str) -> dict[str, float]:
    """``<split>/loss`` and ``<split>/acc`` for those of ``splits`` that exist."""
    out = {}
    for split in splits:
        if split in loaders:
            out[f"{split}/loss"], out[f"{split}/acc"] = evaluate(model, loaders[split], False,
                                                                 precision)
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
    return {"test_single/acc": correct / len(labels), "test_single/nonfinite": nonfinite / len(labels)}


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
    from bnexp.config import optional_keys

    out: dict[str, Any] = {}
    nullable = optional_keys()

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}{k}.", v)
            return
        key = prefix[:-1]
        if isinstance(node, bool):
            out[key] = "true" if node else "false"
        elif node is None or key in nullable or not isinstance(node, (int, float, str)):
            out[key] = "null" if node is None else str(node)
        else:
            out[key] = node

    walk("", OmegaConf.to_container(cfg, resolve=True))
    return out


def train(cfg: DictConfig, overrides: list[str] | None = None,
          run_dir: Path | None = None) -> dict[str, Any]:
    """Train one model as ``cfg`` says and return its summary (also written to summary.json).

    User errors found before training (missing data, bad device) raise BnexpError before any
    run directory exists; anything after that is recorded in the run's summary.json.
    ``run_dir`` is given by sweeps (Hydra's job directory); single runs get a fresh one.
    """
    t_start = time.perf_counter()
    tc, oc = cfg.trainer, cfg.optim
    device = resolve_device(tc.device)
    share = ThreadShare(tc.threads)  # this run's share of the cores (bnexp/threads.py)
    share.apply()
    if tc.keep_memory:
        keep_freed_memory()
    seed_everything(cfg.seed)

    splits = load_splits(cfg.data, cfg.seed, device)
    spec = splits.spec
    n_train = len(splits.train[0])
    if n_train < tc.batch_size:
        raise BnexpError(f"trainer.batch_size={tc.batch_size} exceeds the {n_train} training "
                         "images; pass a smaller trainer.batch_size or a larger data.train_size.")
    channels_last = use_channels_last(cfg, device)
    shuffle_gen = torch.Generator().manual_seed(cfg.seed)  # own stream: probes can't disturb it
    train_loader = TensorLoader(*splits.train, tc.batch_size, spec, shuffle=True, drop_last=True,
                                augment=cfg.data.augment, generator=shuffle_gen,
                                channels_last=channels_last)
    eval_loaders = {"test": TensorLoader(*splits.test, tc.eval_batch_size, spec,
                                         channels_last=channels_last)}
    if splits.val is not None:
        eval_loaders["val"] = TensorLoader(*splits.val, tc.eval_batch_size, spec,
                                           channels_last=channels_last)
    if tc.train_eval_size:  # the gap compares like with like: the model in eval mode on
        # training images (a fixed, seeded subset: the split is already shuffled) and on test
        # images; the running train/acc of an epoch mixes weights from its first to its last
        # step and, with dropout or BN, train-mode noise.
        n = min(tc.train_eval_size, n_train)
        eval_loaders["train_eval"] = TensorLoader(splits.train[0][:n], splits.train[1][:n],
                                                  tc.eval_batch_size, spec,
                                                  channels_last=channels_last)
    if tc.eval_batch_stats:  # the test set in batches of the training size, BN on batch stats
        eval_loaders["test_batchstats"] = TensorLoader(*splits.test, tc.batch_size, spec,
                                                       drop_last=True, channels_last=channels_last)

    # The probe batch: fixed, from the training split, from its own generator (never the
    # shuffle stream), so every norm variant of a seed probes the same images.
    probe_gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + 17)
    probe_idx = torch.randperm(n_train, generator=probe_gen)[: cfg.probe.batch_size]
    probe_x = train_loader.normalize(splits.train[0][probe_idx.to(device)])

    model = build_model(cfg.model, cfg.norm, spec.shape, spec.num_classes).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    step_model = torch.compile(model) if tc.compile else model  # probes use the plain module
    optimizer = make_optimizer(model.parameters(), oc)
    steps_per_epoch = len(train_loader)
    total_steps = tc.steps or tc.epochs * steps_per_epoch
    epochs = math.ceil(total_steps / steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, functools.partial(
        lr_factor, total=total_steps, steps_per_epoch=steps_per_epoch, schedule=oc.schedule,
        gamma=oc.gamma, step_size=oc.step_size, warmup=oc.warmup))
    log_every, precision = tc.log_every, tc.precision  # plain values for the hot loop
    val_every = tc.val_every_steps

    if run_dir is None:
        run_dir = new_run_dir(cfg.output_dir, cfg.name)
    run_dir.mkdir(parents=True, exist_ok=True)
    log = RunLog(run_dir, OmegaConf.to_yaml(cfg, resolve=True), overrides or [], flat_hparams(cfg),
                 layout=probe_layout(model))
    probes = Probes(model, cfg.probe, cfg.model.activation, probe_x, log)
    summary: dict[str, Any] = {
        "status": "running", "name": cfg.name, "run_dir": str(run_dir), "device": str(device),
        "seed": cfg.seed, "threads": torch.get_num_threads(), "epochs": epochs,
        "steps_per_epoch": steps_per_epoch,
        "total_steps": total_steps, "params": sum(p.numel() for p in model.parameters()),
        "versions": {"bnexp": bnexp.__version__, "torch": torch.__version__,
                     "torchvision": _version("torchvision"), "python": platform.python_version()},
        "git_sha": git_sha(),
    }
    final: dict[str, float] = {}
    best: dict[str, float] = {}
    step, epoch, train_time, timed_steps = 0, 0, 0.0, 0  # time and steps of finished epochs
    try:
        with Progress(tc.progress, epochs, steps_per_epoch) as progress:
            while step < total_steps:
                epoch += 1
                progress.start_epoch(epoch, min(steps_per_epoch, total_steps - step))
                epoch_loss, epoch_correct, epoch_seen = 0.0, 0, 0
                win_loss, win_correct, win_seen = 0.0, 0, 0
                t_epoch, first_step, t_steady = time.perf_counter(), step, None
                t_window, window_ms = t_epoch, []  # per-step time of each log window
                window_start = step
                for x, y in train_loader:
                    probe = probes.begin(step, x)  # None unless a probe is due at this step
                    with autocast(device, precision):
                        logits = step_model(x)
                    loss = F.cross_entropy(logits.float(), y)
                    loss_value = loss.item()
                    if not math.isfinite(loss_value):
                        summary.update(status="diverged", diverged_step=step)
                        raise _Stop
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if probe:
                        probe.after_backward()  # gradient norms, before the update
                    optimizer.step()
                    if probe:
                        probe.after_step()  # update-to-weight ratios; logs the probe
                    scheduler.step()
                    step += 1
                    if step - first_step == STEADY_AFTER:  # step time is timed from here
                        if device.type == "cuda":
                            torch.cuda.synchronize()
                        t_steady = time.perf_counter()

                    correct = (logits.argmax(1) == y).sum().item()
                    win_loss += loss_value * len(y)
                    win_correct += correct
                    win_seen += len(y)
                    if val_every and step % val_every == 0:
                        t_val = time.perf_counter()  # not training: left out of the step time
                        log.scalars(step, evaluate_splits(model, eval_loaders, ("val", "test"),
                                                          precision), kind="val")
                        t_window += time.perf_counter() - t_val
                    if step % log_every == 0 or step == total_steps:
                        t_now = time.perf_counter()
                        ms = 1000 * (t_now - t_window) / win_seen * len(y)  # per step
                        if window_start - first_step >= STEADY_AFTER:  # after one-off costs
                            window_ms.append(ms)
                        t_window, window_start = t_now, step
                        share.apply(step)  # a training started or ended beside this one
                        log.scalars(step, {"train/loss": win_loss / win_seen,
                                           "train/acc": win_correct / win_seen,
                                           "opt/lr": scheduler.get_last_lr()[0]},
                                    epoch=epoch, kind="step", window_step_ms=ms)
                        progress.update(step - first_step, win_loss / win_seen)
                        epoch_loss, epoch_correct = epoch_loss + win_loss, epoch_correct + win_correct
                        epoch_seen += win_seen
                        win_loss, win_correct, win_seen = 0.0, 0, 0
                    if step == total_steps:
                        break
                epoch_loss, epoch_correct = epoch_loss + win_loss, epoch_correct + win_correct
                epoch_seen += win_seen
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t_end = time.perf_counter()
                epoch_time = t_end - t_epoch
                train_time, timed_steps = train_time + epoch_time, step
                steady_steps = step - first_step - STEADY_AFTER
                metrics = {"train/loss": epoch_loss / epoch_seen,
                           "train/acc": epoch_correct / epoch_seen,
                           "time/epoch_s": epoch_time,
                           "time/step_ms": 1000 * ((t_end - t_steady) / steady_steps
                                                   if steady_steps >= STEADY_AFTER
                                                   else epoch_time / (step - first_step)),
                           "time/samples_per_s": epoch_seen / epoch_time}
                if window_ms:  # robust to a neighbour's burst of load: the median window
                    metrics["time/step_ms_median"] = statistics.median(window_ms)
                if epoch % tc.eval_every == 0 or step == total_steps:
                    for split, loader in eval_loaders.items():
                        metrics[f"{split}/loss"], metrics[f"{split}/acc"] = evaluate(
                            model, loader, split == "test_batchstats", tc.precision)
                    if tc.eval_single and step == total_steps:
                        metrics.update(evaluate_single(model, splits.test, tc.eval_single, spec,
                                                       channels_last))
                    if "train_eval/acc" in metrics:
                        metrics["gap/loss"] = metrics["train_eval/loss"] - metrics["test/loss"]
                        metrics["gap/acc"] = metrics["train_eval/acc"] - metrics["test/acc"]
                    for key in ("test/acc", "val/acc"):
                        if key in metrics and metrics[key] > best.get(key, -1.0):
                            best[key] = metrics[key]
                            best[f"{key.split('/')[0]}/best_epoch"] = epoch
                tb_metrics = {k: v for k, v in metrics.items() if not k.startswith("train/")}
                log.scalars(step, tb_metrics, epoch=epoch, kind="epoch",
                            **{k: metrics[k] for k in ("train/loss", "train/acc")})
                final.update(metrics)
                progress.end_epoch(_epoch_line(epoch, epochs, metrics))
        summary["status"] = "completed"
    except _Stop:
        pass
    except KeyboardInterrupt:
        summary["status"] = "interrupted"
        raise
    except BaseException as exc:
        summary.update(status="failed", error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        share.close()
        if share.changes:
            summary["thread_changes"] = share.changes  # [step, threads] after the first
        if tc.checkpoint and summary["status"] in ("completed", "interrupted"):
            log.checkpoint({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                            "config": OmegaConf.to_container(cfg, resolve=True),
                            "step": step, "epoch": epoch})
        summary.update(
            steps=step, epochs_completed=epoch if summary["status"] == "completed" else epoch - 1,
            final=final, best=best, wall_time_s=time.perf_counter() - t_start,
            train_time_s=train_time,
            samples_per_s=(timed_steps * tc.batch_size / train_time) if train_time else None,
        )
        log.finish(summary)
    return summary


# time/step_ms leaves out each epoch's first steps (when it has 2x as many): the first steps of
# a process pay one-off costs (oneDNN kernel selection, allocator growth; ~150 ms for the CNN),
# which made the first job of a sweep look 25% slower per step than its twins.
STEADY_AFTER = 10


class _Stop(Exception):
    """Raised inside the loop to end a run early (divergence) without a traceback."""


def _epoch_line(epoch: int, epochs: int, m: dict[str, float]) -> str:
    """One line per epoch, under 80 columns."""
    parts = [f"epoch {epoch}/{epochs}: loss {m['train/loss']:.3f} acc {100 * m['train/acc']:.1f}%"]
    if "test/acc" in m:
        parts.append(f"test loss {m['test/loss']:.3f} acc {100 * m['test/acc']:.2f}%")
    parts.append(f"{m['time/epoch_s']:.1f}s {m['time/samples_per_s']:.0f}/s")
    return " | ".join(parts)
