"""``train_pack``: K runs that differ only in their seed, trained as one packed model.

Each replica is set up exactly as ``bnexp.train.setup`` sets up its single run (same seed, data
split and order, initial weights, run directory, probes); the random stream the single run's
training would draw from next becomes the replica's own generator. The replicas' models are
packed (bnexp.pack.model) and one optimizer steps them all on the sum of their mean losses, so
each replica's gradients, optimizer state and BN statistics are its single run's up to the
order of float sums. The loop mirrors ``bnexp.train.train_epoch`` step for step, once per
replica where a run writes something: its own ``Window`` of losses (a divergence is found at the
same step), probes, evaluations, epoch records and summary.json, through train.py's helpers.

A replica whose loss turns non-finite is recorded ``diverged`` at that step and retired: its
summary is written, its slice of the pack is zeroed and its loss masked, so it computes zeros
and never disturbs the others. Ctrl-C ends every replica still running as ``interrupted``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from bnexp import metrics as m
from bnexp.build import make_optimizer, make_scheduler
from bnexp.data import TensorLoader
from bnexp.pack.look import install_looks, uninstall_looks
from bnexp.pack.model import (
    PackedNet,
    grads,
    optimizer_views,
    pack_inputs,
    unbind,
    zero_replica,
)
from bnexp.probes import ProbedStep
from bnexp.probes.grad import GradNorms
from bnexp.progress import Progress
from bnexp.train import (
    Diverged,
    EpochClock,
    Training,
    Window,
    _epoch_line,
    autocast,
    end_epoch,
    evaluate_splits,
    finish,
    setup,
    single_and_gap,
)


class _Borrowed:
    """The pack's one ThreadShare as each replica sees it: closed once, by the pack."""

    def __init__(self, share: Any) -> None:
        self.share = share

    @property
    def changes(self) -> list[tuple[int, int]]:
        return self.share.changes

    def apply(self, step: int | None = None) -> int:
        return self.share.apply(step)

    def close(self) -> None:
        pass


@dataclass
class Pack:
    runs: list[Training]  # replica k's run, its single model bound to the pack
    net: PackedNet
    gens: list[torch.Generator]  # replica k's random stream (dropout, noisy BN)
    optimizer: torch.optim.Optimizer
    scheduler: Any
    share: Any  # the process's ThreadShare
    mask: torch.Tensor  # (K,): 1 for replicas still training
    active: list[int]
    t_start: float
    label_smoothing: float = 0.0  # trainer.label_smoothing, as train_step's loss has it
    step: int = 0
    updates: int = 0  # optimizer steps taken: the weight state the replicas' looks share
    windows: dict[int, Window] = field(default_factory=dict)
    shared: frozenset[str] = frozenset()  # eval splits of the same images for every replica

    @property
    def lead(self) -> Training:
        return self.runs[self.active[0] if self.active else 0]


def _stream_after_setup(device: torch.device) -> torch.Generator:
    """A generator in the state the global stream of ``device`` is in now."""
    gen = torch.Generator(device=device)
    if device.type == "cuda":
        gen.set_state(torch.cuda.get_rng_state(device))
    else:
        gen.set_state(torch.get_rng_state())
    return gen


def _use_stream(gen: torch.Generator, device: torch.device) -> None:
    """Make ``gen``'s state the global stream's (a probe of replica k draws what its single
    run's probe draws)."""
    if device.type == "cuda":
        torch.cuda.set_rng_state(gen.get_state(), device)
    else:
        torch.set_rng_state(gen.get_state())


def setup_pack(cfgs: list[DictConfig], overrides: list[list[str]], run_dirs: list[Path],
               group: str) -> Pack:
    """Set up every replica as its single run, then pack them."""
    t_start = time.perf_counter()
    runs: list[Training] = []
    gens: list[torch.Generator] = []
    try:
        for cfg, ov, run_dir in zip(cfgs, overrides, run_dirs, strict=True):
            run = setup(cfg, ov, run_dir)
            runs.append(run)
            gens.append(_stream_after_setup(run.device))
        shape = {(r.total_steps, r.summary["steps_per_epoch"]) for r in runs}
        if len(shape) != 1:
            raise ValueError(f"the replicas' steps differ: {sorted(shape)}")
        net = PackedNet([r.model for r in runs], gens)
    except BaseException:
        for run in runs:
            run.share.close()
        raise
    share = runs[0].share
    k = len(runs)
    for i, run in enumerate(runs):
        run.share = _Borrowed(share)
        run.summary["packed"] = {"k": i, "K": k, "group": group}
    cfg = cfgs[0]
    optimizer = make_optimizer(net.parameters(), cfg.optim)
    scheduler = make_scheduler(optimizer, cfg.optim, runs[0].total_steps,
                               runs[0].summary["steps_per_epoch"])
    pack = Pack(runs=runs, net=net, gens=gens, optimizer=optimizer, scheduler=scheduler,
                share=share, mask=torch.ones(k, device=runs[0].device), active=list(range(k)),
                t_start=t_start,
                label_smoothing=float(OmegaConf.select(cfg, "trainer.label_smoothing",
                                                       default=0.0) or 0.0))
    pack.shared = _shared_splits(runs)
    install_looks(pack)
    return pack


def _shared_splits(runs: list[Training]) -> frozenset[str]:
    """The evaluation splits whose loaders give every replica the same batches (test, which
    no seed draws), so that ``evaluate_packed`` reads and normalises each batch once."""
    def same(a: Any, b: Any) -> bool:  # a loader that draws (shuffle, augment) is its own
        return (b is not None and not (a.shuffle or a.augment or b.shuffle or b.augment)
                and (a.batch_size, a.drop_last) == (b.batch_size, b.drop_last)
                and a.memory_format == b.memory_format and torch.equal(a.scale, b.scale)
                and torch.equal(a.shift, b.shift) and torch.equal(a.labels, b.labels)
                and torch.equal(a.images, b.images))

    lead = runs[0].eval_loaders
    return frozenset(s for s, loader in lead.items()
                     if all(same(loader, r.eval_loaders.get(s)) for r in runs[1:]))


def train_pack(cfgs: list[DictConfig], overrides: list[list[str]], run_dirs: list[Path],
               group: str) -> list[dict[str, Any]]:
    """Train the runs of ``cfgs`` (the same config but for ``seed``) as one pack, each into
    its run directory; their summaries (also in each summary.json)."""
    pack = setup_pack(cfgs, overrides, run_dirs, group)
    lead = pack.runs[0]
    total, epochs = lead.total_steps, lead.summary["epochs"]
    status = m.COMPLETED
    try:
        with Progress(lead.cfg.trainer.progress, epochs, lead.summary["steps_per_epoch"]) as bar:
            while pack.active and pack.step < total:
                pack_epoch(pack, bar)
    except KeyboardInterrupt:
        status = m.INTERRUPTED
        raise
    except BaseException as exc:
        status = m.FAILED
        for k in pack.active:
            pack.runs[k].summary["error"] = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        for k in list(pack.active):
            _end_replica(pack, k, status)
        pack.share.close()
        uninstall_looks(pack)
    return [run.summary for run in pack.runs]


def _end_replica(pack: Pack, k: int, status: str, step: int | None = None) -> None:
    """Replica k is over: its own copies of its tensors, its summary.json written."""
    run = pack.runs[k]
    run.summary["status"] = status
    if status == m.DIVERGED:
        run.summary["diverged_step"] = step
        run.step = step
    else:
        run.step = pack.step
        optimizer_views(pack.net, pack.optimizer, run.optimizer, k, copy=True)
    unbind(pack.net, k)
    pack.active.remove(k)
    # Its share of the pack's wall time: sums over runs (claims' --plan, the adaptive looks'
    # forecasts) stay what the sweep cost; the pack's own is in packed.wall_time_s.
    wall = time.perf_counter() - pack.t_start
    run.summary["packed"]["wall_time_s"] = wall
    finish(run, wall / len(pack.runs))


def _retire(pack: Pack, k: int, step: int) -> None:
    """Replica k diverged at ``step``: recorded, then frozen at zero and masked."""
    _end_replica(pack, k, m.DIVERGED, step)
    zero_replica(pack.net, pack.optimizer, k)
    pack.mask[k] = 0.0
    pack.windows.pop(k, None)


def _read(pack: Pack, close: bool = False) -> dict[int, tuple[float, float, int]]:
    """Read every active replica's window (closing it with ``close``); retire those whose loss
    turned non-finite. Returns the closed windows' (loss, acc, steps) by replica."""
    out = {}
    for k in list(pack.active):
        try:
            if close:
                out[k] = pack.windows[k].close()
            else:
                pack.windows[k].sync()
        except Diverged as exc:
            _retire(pack, k, exc.step)
    return out


def stacked_batches(loaders: list[TensorLoader]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The replicas' batches of each step, (K, B, C, H, W) images and (K, B) labels, as their
    shuffled TensorLoaders yield them (each permutation drawn from the loader's own generator,
    as ``TensorLoader.__iter__`` draws it), normalised in one call (the same formula) instead
    of one per replica. For loaders without augmentation."""
    l0 = loaders[0]
    perms = [torch.randperm(len(ld.images), generator=ld.generator).to(ld.images.device)
             for ld in loaders]
    for i in range(len(l0)):  # each step's images gathered, not the whole shuffled split
        idx = [p[i * l0.batch_size:(i + 1) * l0.batch_size] for p in perms]
        x = torch.stack([ld.images.index_select(0, j) for ld, j in zip(loaders, idx, strict=True)])
        y = torch.stack([ld.labels.index_select(0, j) for ld, j in zip(loaders, idx, strict=True)])
        yield torch.addcmul(l0.shift, x.float(), l0.scale), y


Batches = tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor | None]


def _epoch_batches(pack: Pack) -> Iterator[Batches]:
    """Each step's batches, one per replica (retired ones' too: the pack keeps its shape), and
    for an MLP the packed input already stacked (else None: ``pack_inputs`` stacks them)."""
    loaders = [run.train_loader for run in pack.runs]
    if pack.net.is_cnn or not all(ld.shuffle and not ld.augment and ld.drop_last
                                  for ld in loaders):
        for batches in zip(*loaders, strict=True):
            yield [b[0] for b in batches], [b[1] for b in batches], None
        return
    for x, y in stacked_batches(loaders):
        yield list(x.unbind()), list(y.unbind()), x.flatten(2)


def pack_step(pack: Pack, xs: list[torch.Tensor], ys: list[torch.Tensor], precision: str,
              x: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step of every replica: the sum of their mean losses (a retired replica's
    masked to zero), on ``x`` (the packed input) or ``xs`` packed. Returns each replica's loss
    and correct count, (K,) device tensors."""
    lead = pack.lead
    if x is None:
        x = pack_inputs(xs, pack.net.is_cnn, lead.channels_last)
    y = torch.stack(ys)  # (K, B)
    with autocast(lead.device, precision):
        logits = pack.net(x)  # (K, B, classes)
    k, b = y.shape
    losses = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="none",
                             label_smoothing=pack.label_smoothing).view(k, b).mean(1)
    total = losses.sum() if len(pack.active) == k else (losses * pack.mask).sum()
    pack.optimizer.zero_grad(set_to_none=True)
    total.backward()
    pack.optimizer.step()
    pack.updates += 1
    pack.scheduler.step()
    return losses.detach(), (logits.argmax(2) == y).sum(1)


def _watch_inputs(pack: Pack, kinds: dict[int, GradNorms]) -> list[Any]:
    """Forward pre-hooks on the packed layers that hand each replica's GradNorms the norm of
    the gradient with respect to its slice of the layer's input."""
    net, handles = pack.net, []
    layers = {name: block.affine for name, block in net.blocks.named_children()
              if hasattr(block, "affine")}
    layers["head"] = net.head

    def record(name: str, g: torch.Tensor) -> None:
        g = g.detach().float()  # (K, B, I) for an MLP's input, else (B, K*C, ...)
        flat, at = (g, 0) if g.dim() == 3 else (g.unflatten(1, (net.replicas, -1)), 1)
        norms = torch.linalg.vector_norm(flat, dim=[d for d in range(flat.dim()) if d != at])
        for k, kind in kinds.items():
            kind.input_grads[name] = norms[k]

    def pre_hook(name: str) -> Any:
        def hook(_m: Any, args: tuple[torch.Tensor, ...]) -> None:
            if args[0].requires_grad:
                args[0].register_hook(lambda g: record(name, g))
        return hook

    for name, layer in layers.items():
        handles.append(layer.register_forward_pre_hook(pre_hook(name)))
    return handles


def probed_step(pack: Pack, xs: list[torch.Tensor], ys: list[torch.Tensor],
                precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A step on which the probes are due: each replica's probes around it, as its single run
    has them (``bnexp.probes.ProbedStep``), on its single model (a view of the pack), with the
    global random stream set to the replica's own for their extra passes (ICS, landscape). The
    probe-batch looks before and after the step are one packed forward (bnexp.pack.look)."""
    device = pack.lead.device
    xs = [x.clone() for x in xs]  # each replica's batch its own tensor (probes may mark it)
    with ExitStack() as stack:
        kinds = {}
        for k in pack.active:
            run = pack.runs[k]
            _use_stream(pack.gens[k], device)
            optimizer_views(pack.net, pack.optimizer, run.optimizer, k)
            stack.enter_context(ProbedStep(run.probes, pack.step, xs[k], ys[k]))
            grad_kind = next((p for p in run.probes.kinds if isinstance(p, GradNorms)), None)
            if grad_kind is not None:
                kinds[k] = grad_kind
        handles = _watch_inputs(pack, kinds) if kinds else []
        try:
            out = pack_step(pack, xs, ys, precision)
        finally:
            for h in handles:
                h.remove()
        for k in pack.active:
            grads(pack.net, k)
    return out


def pack_epoch(pack: Pack, progress: Progress) -> None:
    """The steps of one epoch for every active replica, then its epoch record."""
    lead = pack.lead
    tc = lead.cfg.trainer
    log_every, val_every, precision = tc.log_every, tc.val_every_steps, tc.precision
    first = pack.step
    for k in pack.active:
        pack.runs[k].epoch += 1
    progress.start_epoch(lead.epoch, min(len(lead.train_loader), lead.total_steps - first))
    pack.windows = {k: Window(first, tc.batch_size) for k in pack.active}
    clock = EpochClock(lead.device)
    for xs, ys, x in _epoch_batches(pack):
        if lead.probes.due(pack.step) and pack.active:
            _read(pack)  # a probe never sees a diverged replica
            losses, corrects = probed_step(pack, xs, ys, precision)
        else:
            losses, corrects = pack_step(pack, xs, ys, precision, x)
        for k in pack.active:
            pack.windows[k].add(losses[k], corrects[k])
        pack.step += 1
        clock.tick(pack.step - first)
        if val_every and pack.step % val_every == 0:
            _read(pack)
            with clock.paused():
                splits = tuple(s for s in ("val", "test") if s in lead.eval_loaders)
                for k, values in evaluate_packed(pack, splits, precision).items():
                    pack.runs[k].log.scalars(pack.step, values, kind=m.KIND_VAL)
        if pack.step % log_every == 0 or pack.step == lead.total_steps:
            _log_windows(pack, clock, first, progress)
        if pack.step == lead.total_steps or not pack.active:
            break
    _end_epoch(pack, clock, first, progress)


def evaluate_packed(pack: Pack, splits: tuple[str, ...], precision: str
                    ) -> dict[int, dict[str, float]]:
    """``<split>/loss`` and ``<split>/acc`` of every active replica in eval mode (as
    ``bnexp.train.evaluate``), one packed forward per batch: the replicas' batches of a split
    have the same sizes (their splits do), whatever images each holds (val is drawn by seed).
    A split of the same images for all (``pack.shared``: test) is read once per batch, and the
    first layer maps it to every replica (``PackedNet.forward_shared``)."""
    net, lead, out = pack.net, pack.lead, {k: {} for k in pack.active}
    net.eval()
    try:
        with torch.no_grad(), autocast(lead.device, precision):
            for split in splits:
                shared = split in pack.shared
                loaders = [run.eval_loaders[split] for run in pack.runs[:1 if shared else None]]
                loss_sum = torch.zeros(net.replicas, device=lead.device)
                correct = torch.zeros(net.replicas, device=lead.device)
                for batches in zip(*loaders, strict=True):
                    if shared:
                        x, y1 = batches[0]
                        y = y1.expand(net.replicas, -1)
                        logits = net.forward_shared(x).float()
                    else:
                        y = torch.stack([b[1] for b in batches])
                        logits = net(pack_inputs([b[0] for b in batches], net.is_cnn,
                                                 lead.channels_last)).float()
                    loss_sum += F.cross_entropy(logits.flatten(0, 1), y.flatten(),
                                                reduction="none").view(y.shape).sum(1)
                    correct += (logits.argmax(2) == y).sum(1)
                l0 = loaders[0]
                n = len(l0) * l0.batch_size if l0.drop_last else len(l0.images)
                losses, corrects = torch.stack([loss_sum, correct]).tolist()
                for k in pack.active:
                    out[k][m.split_tag(split, "loss")] = losses[k] / n
                    out[k][m.split_tag(split, "acc")] = corrects[k] / n
    finally:
        net.train()
    return out


def _evaluate_all(pack: Pack, last: bool) -> dict[int, dict[str, float]]:
    """``bnexp.train.evaluate_all`` for every active replica: the eval-mode splits packed,
    train-mode (test_batchstats) and one-at-a-time (eval_single) evaluations on each single
    model, then the train-test gap."""
    tc = pack.lead.cfg.trainer
    splits = tuple(s for s in pack.lead.eval_loaders if s != "test_batchstats")
    per = evaluate_packed(pack, splits, tc.precision)
    for k, metrics in per.items():
        run = pack.runs[k]
        metrics.update(evaluate_splits(run.model, run.eval_loaders, ("test_batchstats",),
                                       tc.precision))
        single_and_gap(run, metrics, last)
    return per


def _log_windows(pack: Pack, clock: EpochClock, first: int, progress: Progress) -> None:
    windows = _read(pack, close=True)
    ms = clock.window(pack.step - first, max((w[2] for w in windows.values()), default=0))
    pack.share.apply(pack.step)
    lr = pack.scheduler.get_last_lr()[0]
    for k, (loss_mean, acc, _) in windows.items():
        pack.runs[k].log.scalars(pack.step, {m.TRAIN_LOSS: loss_mean, m.TRAIN_ACC: acc,
                                             m.OPT_LR: lr},
                                 epoch=pack.runs[k].epoch, kind=m.KIND_STEP, window_step_ms=ms)
    if windows:
        progress.update(pack.step - first, windows[min(windows)][0])


def _end_epoch(pack: Pack, clock: EpochClock, first: int, progress: Progress) -> None:
    """Each active replica's epoch: train metrics and timings (the pack's clock), evaluation,
    the epoch record (bnexp.train.end_epoch)."""
    _read(pack, close=True)
    times = clock.stop(pack.step - first)
    lead = pack.lead
    last = pack.step == lead.total_steps
    due = lead.epoch % lead.cfg.trainer.eval_every == 0 or last
    evaluated = _evaluate_all(pack, last) if pack.active and due else {}
    for k in pack.active:
        run = pack.runs[k]
        tc = run.cfg.trainer
        metrics = {**pack.windows[k].epoch_metrics(), **times}
        metrics[m.SAMPLES_PER_S] = (pack.step - first) * tc.batch_size / metrics[m.EPOCH_S]
        run.train_time += metrics[m.EPOCH_S]
        run.timed_steps = pack.step
        run.step = pack.step
        metrics.update(evaluated.get(k, {}))
        end_epoch(run, metrics)
    if pack.active:
        lead = pack.lead
        progress.end_epoch(f"[{len(pack.active)} packed] " + _epoch_line(
            lead.epoch, lead.summary["epochs"], lead.final))
