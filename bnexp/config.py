"""The structured config schema: the type and the choices of every key, and the checks a type
alone cannot express.

Values live in one place, the YAML files under ``configs/`` (as in lightning-hydra-template):
every field here is ``MISSING``, so a group file that forgets a key is an error instead of a
silent default that disagrees with the file. Hydra merges the files into these dataclasses, so
an unknown key, a wrong type or a choice outside its enum is rejected at composition time;
``validate`` adds range checks. The ``StrEnum`` choices are the only list of each: bnexp.norm,
bnexp.models and bnexp.data import them. Members are ``str``s, so ``cfg.norm.kind == "torch"``,
``f"{cfg.norm.kind}"`` and dict look-ups by plain strings keep working; convert with
``OmegaConf.to_container(..., enum_to_str=True)`` before pickling (``torch.load`` with
``weights_only=True`` refuses unknown classes).

This module imports neither torch nor Hydra: the CLI imports it for fast errors.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import NoneType
from typing import Any

from bnexp.errors import BnexpError

if sys.version_info >= (3, 11):
    from enum import StrEnum
else:  # pyproject allows Python 3.10, which lacks enum.StrEnum: the same behaviour by hand
    from enum import Enum

    class StrEnum(str, Enum):
        __str__ = str.__str__
        __format__ = str.__format__

MISSING = "???"  # omegaconf.MISSING, without importing omegaconf here (over 0.1 s)

# Each member's value is its name: OmegaConf turns "torch" into NormKind["torch"] (by name),
# while users, run directories and comparisons see the value, so the two must not differ.


class Dataset(StrEnum):
    mnist = "mnist"
    fashion_mnist = "fashion_mnist"
    cifar10 = "cifar10"
    cifar100 = "cifar100"


class Arch(StrEnum):
    mlp = "mlp"
    cnn = "cnn"


class NormKind(StrEnum):
    none = "none"  # no normalisation: the baseline
    torch = "torch"  # torch.nn.BatchNorm1d/2d: the reference
    custom = "custom"  # bnexp.norm.BatchNorm: ours, hand-derived backward
    seed = "seed"  # bnexp.norm.SeedBatchNorm: the write-up's literal layer
    noisy = "noisy"  # bnexp.norm.NoisyBatchNorm: BN + Santurkar et al.'s time-varying noise
    ghost = "ghost"  # bnexp.norm.GhostBatchNorm: statistics of virtual batches (Hoffer et al.)
    layer = "layer"  # nn.GroupNorm(1, C): per-sample, no batch dependence
    group = "group"  # nn.GroupNorm(groups, C): per-sample, per group of channels


class NormImpl(StrEnum):
    auto = "auto"  # C kernels on CPU float32/64, torch ops elsewhere
    eager = "eager"  # torch ops only
    compiled = "compiled"  # torch ops fused by torch.compile


class Activation(StrEnum):
    relu = "relu"
    sigmoid = "sigmoid"
    tanh = "tanh"


class Pool(StrEnum):
    late = "late"  # cnn: conv -> norm -> act, then 2x2 max-pool
    early = "early"  # cnn: conv -> 2x2 max-pool -> norm -> act (norm and act on 4x fewer values)


class Head(StrEnum):
    gap = "gap"  # cnn: global average pool of the last stage, then the linear head
    flatten = "flatten"  # cnn: the last stage's feature map flattened into the linear head


class Init(StrEnum):
    default = "default"  # torch's own init
    he = "he"  # Kaiming-normal (fan_in, ReLU gain) times model.init_gain


class OptimName(StrEnum):
    sgd = "sgd"
    adam = "adam"
    adamw = "adamw"


class Schedule(StrEnum):
    constant = "constant"
    cosine = "cosine"
    step = "step"
    onecycle = "onecycle"


class Device(StrEnum):
    auto = "auto"  # cuda > mps > cpu
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"


class ProgressMode(StrEnum):
    auto = "auto"  # a rich bar on a terminal, plain lines otherwise
    bar = "bar"
    plain = "plain"
    none = "none"


class Precision(StrEnum):
    fp32 = "fp32"
    bf16 = "bf16"  # autocast: matmuls/convs in bfloat16, BN statistics in float32
    auto = "auto"  # bf16 where the device computes it in hardware, else fp32




@dataclass
class DataConfig:
    name: Dataset = MISSING
    root: str = MISSING
    download: bool = MISSING
    verify: bool = MISSING  # check the official MD5s
    train_size: int | None = MISSING  # seeded subset of the training split; None: all of it
    val_size: int = MISSING  # held out from the training split
    augment: bool = MISSING  # random crop (4-px padding) + horizontal flip, batched on tensors


@dataclass
class ModelConfig:
    arch: Arch = MISSING
    activation: Activation = MISSING
    dropout: float = MISSING
    depth: int = MISSING  # mlp: hidden layers
    width: int = MISSING  # mlp: units per hidden layer
    channels: list[int] = MISSING  # cnn: one stage each
    convs_per_stage: int = MISSING  # cnn: conv-norm-act blocks before each 2x2 max-pool
    pool: Pool = MISSING  # cnn: max-pool after the stage's last activation, or before its norm
    head: Head = MISSING  # cnn: global average pool or flatten before the linear head
    init: Init = MISSING
    init_gain: float = MISSING  # he: weight scale relative to He's


@dataclass
class NormConfig:
    """A norm kind without settings (none; seed, whose eps is fixed and which keeps no running
    statistics). Each kind's config holds exactly the keys its layer takes (NORM_SCHEMAS), so a
    key the chosen kind would ignore is an error, not a silent no-op."""

    kind: NormKind = MISSING


@dataclass
class BatchNormConfig(NormConfig):
    """norm=torch: running statistics like torch.nn.BatchNorm."""

    eps: float = MISSING
    momentum: float | None = MISSING  # None: cumulative average, as in torch.nn.BatchNorm


@dataclass
class CustomNormConfig(BatchNormConfig):
    """norm=custom: bnexp.norm.BatchNorm, which also picks the code that runs."""

    impl: NormImpl = MISSING


@dataclass
class NoisyNormConfig(BatchNormConfig):
    """norm=noisy: torch's BN followed by Santurkar et al.'s noise (bnexp.norm.NoisyBatchNorm)."""

    noise_mean: float = MISSING  # per-sample shift noise from U(-noise_mean, noise_mean)
    noise_var: float = MISSING  # per-sample scale noise from U(1, noise_var) (>= 1)
    noise_change: float = MISSING  # std of the noise centre's random-walk step, each step
    noise_bound: float = MISSING  # the walk reflected within [-noise_bound, noise_bound]


@dataclass
class GhostNormConfig(BatchNormConfig):
    """norm=ghost: BN on virtual batches (bnexp.norm.GhostBatchNorm)."""

    ghost_batch: int = MISSING  # samples per virtual batch; >= trainer.batch_size: plain BN


@dataclass
class LayerNormConfig(NormConfig):
    """norm=layer: nn.GroupNorm(1, C), which has no running statistics and no momentum."""

    eps: float = MISSING


@dataclass
class GroupNormConfig(LayerNormConfig):
    """norm=group: nn.GroupNorm(groups, C)."""

    groups: int = MISSING  # must divide model.width (mlp) / every model.channels entry (cnn)


# The schema of each norm kind. Each configs/norm/<kind>.yaml names its own in its defaults
# list (/schema/norm/<kind>, stored by bnexp.hydra_app); a new kind adds a line here.
NORM_SCHEMAS: dict[NormKind, type[NormConfig]] = {
    NormKind.none: NormConfig,
    NormKind.torch: BatchNormConfig,
    NormKind.custom: CustomNormConfig,
    NormKind.seed: NormConfig,
    NormKind.noisy: NoisyNormConfig,
    NormKind.ghost: GhostNormConfig,
    NormKind.layer: LayerNormConfig,
    NormKind.group: GroupNormConfig,
}


@dataclass
class OptimConfig:
    name: OptimName = MISSING
    lr: float = MISSING
    momentum: float = MISSING  # sgd
    nesterov: bool = MISSING  # sgd
    weight_decay: float = MISSING
    betas: list[float] = MISSING  # adam, adamw
    schedule: Schedule = MISSING
    step_size: int = MISSING  # step schedule: epochs between decays
    gamma: float = MISSING  # step schedule: decay factor
    warmup: float = MISSING  # onecycle: fraction of steps spent warming up


@dataclass
class TrainerConfig:
    epochs: int = MISSING
    steps: int | None = MISSING  # if set, overrides epochs: train this many optimizer steps
    batch_size: int = MISSING
    eval_batch_size: int = MISSING
    eval_every: int = MISSING  # epochs between val/test evaluations (the last always evaluates)
    eval_batch_stats: bool = MISSING  # also test with BN on batch statistics (test_batchstats/*)
    eval_single: int = MISSING  # test images also evaluated one at a time (test_single/*)
    val_every_steps: int = MISSING  # also evaluate val and test every this many steps (0: never)
    train_eval_size: int = MISSING  # training images evaluated like the test set: gap/*
    log_every: int = MISSING  # steps between train/loss points
    device: Device = MISSING
    threads: int | None = MISSING  # torch intra-op threads; None keeps torch's default
    precision: Precision = MISSING
    channels_last: bool | None = MISSING  # CNN memory format; None: on for CUDA and CPU
    compile: bool = MISSING  # torch.compile the model for the training step
    progress: ProgressMode = MISSING
    checkpoint: bool = MISSING  # write checkpoint.pt at the end of the run
    label_smoothing: float = MISSING  # of the training loss (evaluation: plain cross-entropy)
    keep_memory: bool = MISSING  # glibc: reuse freed memory instead of returning it every step


@dataclass
class ProbeConfig:
    """The probes' cadence, probe batch and switches: each probe kind (bnexp/probes/registry.py)
    runs while ``enabled`` and its own switch below are on (act/, grad/, update/: ``enabled``)."""

    enabled: bool = MISSING  # all probes
    every: int = MISSING  # steps between probes (activation statistics, gradient norms)
    hist_every: int = MISSING  # steps between histograms (the Histograms kind); 0 disables them
    batch_size: int = MISSING  # size of the fixed probe batch, drawn once from the training split
    unit: int = MISSING  # the tracked unit (MLP) / channel (CNN) of every layer
    max_elements: int = MISSING  # percentiles of larger tensors use a fixed sample of this size
    per_unit: bool = MISSING  # also every unit's own p15/p50/p85 of each nonlinearity input
    ics: bool = MISSING  # Santurkar's internal covariate shift per layer (bnexp/probes/ics.py)
    landscape: bool = MISSING  # loss/gradient along the gradient (bnexp/probes/loss_landscape.py)
    landscape_multiples: list[float] = MISSING  # landscape step sizes, in multiples of the lr


# What a resumed sweep does with a finished run that is stale (made by another code version, or
# its config.yaml differs from the job's config composed now; bnexp/reuse.py): a str with its
# choices here rather than one more enum, as it steers the sweep, not the training.
STALE_CHOICES = ("rerun", "reuse", "refuse")


@dataclass
class SweepConfig:
    """How ``bnexp train -m`` and ``bnexp claims`` treat their sweeps (bnexp/sweep.py); no run's
    numbers depend on it (bnexp/reuse.py leaves ``sweep.*`` out of the comparison)."""

    stale: str = MISSING  # rerun (old files to .previous/) | reuse (keep) | refuse (stop, exit 2)
    pack: bool = MISSING  # train jobs that differ only in seed as one packed model (bnexp/pack/)
    pack_max: int | None = MISSING  # the most replicas in one pack; None: the launcher's default


@dataclass
class BnexpConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    norm: NormConfig = field(default_factory=NormConfig)  # a NORM_SCHEMAS class once composed
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    seed: int = MISSING
    name: str = MISSING
    output_dir: str = MISSING


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level of dotted keys, in order: ``{"optim": {"lr": 0.1}}`` ->
    ``{"optim.lr": 0.1}``; lists stay values (``model.channels`` is one key). Pass plain
    containers (``OmegaConf.to_container``): a DictConfig's items resolve as they are read."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@functools.cache  # validate() asks once per key, and sweeps validate every grid point
def key_types(norm_kind: str | None = None) -> dict[str, Any]:
    """Every flat key of the schema with its type, in schema order (do not modify: cached).
    The ``norm.*`` keys are those of ``norm_kind``'s schema, or of every kind's when it is
    None or not a kind."""
    norms = ([NORM_SCHEMAS[NormKind(norm_kind)]] if norm_kind in NormKind.__members__
             else list(NORM_SCHEMAS.values()))
    out: dict[str, Any] = {}
    for top, top_type in typing.get_type_hints(BnexpConfig).items():
        if not dataclasses.is_dataclass(top_type):
            out[top] = top_type
            continue
        for schema in norms if top == "norm" else [top_type]:
            out.update({f"{top}.{k}": t for k, t in typing.get_type_hints(schema).items()})
    return out


def optional_keys() -> set[str]:
    """Flat keys (``data.train_size``) whose schema type allows null, for any norm kind."""
    return {k for k, t in key_types().items() if NoneType in typing.get_args(t)}


def _choices(key: str) -> list[str] | None:
    """The allowed values of an enum-typed key, else None."""
    kind = key_types().get(key)
    if isinstance(kind, type) and issubclass(kind, StrEnum):
        return [member.value for member in kind]
    return None


def choice_error(key: str, value: Any) -> str | None:
    """The message for a value outside an enum-typed key's choices (None for other keys)."""
    allowed = _choices(key)
    if allowed is None or value in allowed:
        return None
    return (f"{key}={value!r} is not a valid choice. Use one of: {', '.join(allowed)} "
            f"(for example `bnexp train {key}={allowed[0]}`).")


def key_hint(key: str) -> str:
    """For a key the composed config lacks: the norm kinds that take it, or the closest key."""
    import difflib

    kinds = [f"norm={kind}" for kind in NormKind if key in key_types(kind)]
    if kinds:
        listed = kinds[0] if len(kinds) == 1 else f"{', '.join(kinds[:-1])} and {kinds[-1]}"
        return f"`{key}` applies only to {listed}"
    close = difflib.get_close_matches(key, list(key_types()), n=1)
    return f"did you mean `{close[0]}`?" if close else ""


def _plain(cfg: Any) -> dict[str, Any]:
    """A composed config as a plain dict with resolved values and plain-string choices."""
    from omegaconf import OmegaConf

    # Hydra's own node is not bnexp's, and its interpolations need a running job.
    if not OmegaConf.is_config(cfg):
        return {k: v for k, v in cfg.items() if k != "hydra"}
    body = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    return OmegaConf.to_container(body, resolve=True, enum_to_str=True)  # "???" where missing


def check_keys(flat: dict[str, Any]) -> None:
    """Every key of the schema, with a value, and no other.

    Hydra's ``+key=value`` adds keys even to a structured config, and ``norm.kind=seed`` on top
    of norm=torch's file keeps torch's keys: seed would silently ignore them."""
    kind = flat.get("norm.kind")
    allowed = key_types(kind)
    unknown = [k for k in flat if k not in allowed]
    if unknown and unknown[0] in key_types():
        raise BnexpError(
            f"norm.kind={kind} takes no `{unknown[0]}` ({key_hint(unknown[0])}), so it would be "
            f"ignored. Choose the norm with `norm={kind}` (its config file sets exactly the keys "
            f"it takes) rather than `norm.kind={kind}`, and leave out `{unknown[0]}`.")
    if unknown:
        hint = key_hint(unknown[0])
        raise BnexpError(f"Unknown config key `{unknown[0]}` (bnexp has no such setting, so it "
                         f"would be ignored).{' ' + hint[0].upper() + hint[1:] if hint else ''} "
                         "Run `bnexp config` to see every key; groups are picked with "
                         "`group=option` (e.g. norm=torch), values changed with `group.key=value` "
                         "(e.g. trainer.epochs=5).")
    missing = [k for k in allowed if flat.get(k, MISSING) == MISSING]
    if missing and missing[0].startswith("norm.") and missing[0] != "norm.kind":
        raise BnexpError(
            f"norm.kind={kind} needs `{missing[0]}`, which the chosen norm file does not set. "
            f"Choose the norm with `norm={kind}` rather than `norm.kind={kind}`.")
    if missing:
        group = missing[0].split(".")[0]
        raise BnexpError(
            f"`{missing[0]}` has no value: the config files under configs/ set none. Set it with "
            f"`{missing[0]}=VALUE`, or pick a complete option with `{group}=OPTION` (each "
            f"configs/{group}/*.yaml file sets every key of its group).")


# (key, example) of values that must be positive, then of values that may also be zero.
_POSITIVE = [
    ("optim.lr", 0.05), ("trainer.batch_size", 128), ("trainer.eval_batch_size", 250),
    ("trainer.epochs", 3), ("trainer.steps", 1000), ("trainer.eval_every", 1),
    ("trainer.log_every", 50), ("trainer.threads", 2), ("model.depth", 3), ("model.width", 100),
    ("model.init_gain", 1.0), ("model.convs_per_stage", 1), ("data.train_size", 5000),
    ("norm.eps", 1e-5), ("optim.step_size", 1), ("probe.every", 200), ("probe.batch_size", 128),
    ("probe.max_elements", 4096), ("norm.groups", 4), ("sweep.pack_max", 8),
]
_NON_NEGATIVE = [
    ("optim.weight_decay", 5e-4), ("optim.momentum", 0.9), ("data.val_size", 5000),
    ("trainer.train_eval_size", 5000), ("model.dropout", 0.2), ("probe.hist_every", 500),
    ("probe.unit", 0), ("trainer.eval_single", 200), ("trainer.val_every_steps", 100),
    ("norm.noise_mean", 0.5), ("norm.noise_change", 0.1), ("norm.noise_bound", 1.0),
]


def _check_ranges(flat: dict[str, Any]) -> None:
    """Signs from the tables above (a key the chosen norm lacks is skipped), then intervals."""
    for rules, allow_zero in ((_POSITIVE, False), (_NON_NEGATIVE, True)):
        for key, example in rules:
            value = flat.get(key)
            if value is not None and (value < 0 or (value == 0 and not allow_zero)):
                bound = "non-negative" if allow_zero else "positive"
                raise BnexpError(f"{key}={value} must be {bound}; pass a {bound} value, e.g. "
                                 f"`bnexp train {key}={example}`.")
    if not 0 <= flat["model.dropout"] < 1:
        raise BnexpError(f"model.dropout={flat['model.dropout']} must be in [0, 1); try 0.2.")
    channels = flat["model.channels"]
    if not channels or any(c <= 0 for c in channels):
        raise BnexpError(f"model.channels={list(channels)} must be a non-empty list of positive "
                         "integers, e.g. `model.channels=[16,32,64]`.")
    multiples = flat.get("probe.landscape_multiples")
    if multiples is not None and (not multiples or any(v <= 0 for v in multiples)):
        raise BnexpError(f"probe.landscape_multiples={list(multiples)} must be a non-empty list "
                         "of positive numbers, e.g. `probe.landscape_multiples=[0.5,1,2,4]`.")
    _check_norm_sizes(flat)
    if flat.get("sweep.stale", "rerun") not in STALE_CHOICES:
        raise BnexpError(f"sweep.stale={flat['sweep.stale']!r} is not a valid choice. Use one "
                         f"of: {', '.join(STALE_CHOICES)} (for example `sweep.stale=reuse`).")
    momentum = flat.get("norm.momentum")
    if momentum is not None and not 0 <= momentum <= 1:
        raise BnexpError(f"norm.momentum={momentum} must be in [0, 1] or null.")
    if flat["optim.nesterov"] and flat["optim.name"] == "sgd" and flat["optim.momentum"] == 0:
        raise BnexpError("optim.nesterov=true needs optim.momentum > 0; set e.g. 0.9.")


def _check_norm_sizes(flat: dict[str, Any]) -> None:
    """norm.noise_var >= 1; norm.ghost_batch holds at least two samples; norm.groups divides
    every normalised width."""
    noise_var = flat.get("norm.noise_var")
    if noise_var is not None and noise_var < 1:
        raise BnexpError(f"norm.noise_var={noise_var} must be at least 1 (the per-sample scale "
                         "noise is drawn from U(1, noise_var); 1 is no scale noise); try "
                         "`norm.noise_var=1.25`.")
    ghost = flat.get("norm.ghost_batch")
    if ghost is not None and ghost < 2:
        raise BnexpError(f"norm.ghost_batch={ghost} must be at least 2 (a virtual batch of one "
                         "sample has no spread to normalise by); try `norm.ghost_batch=16`.")
    groups = flat.get("norm.groups")
    if groups is None:
        return
    key = "model.width" if flat["model.arch"] == "mlp" else "model.channels"
    widths = [flat["model.width"]] if key == "model.width" else list(flat["model.channels"])
    common = functools.reduce(math.gcd, widths)
    # The largest divisor of every width up to `groups`, and in the MLP with two units a group.
    smallest = 2 if key == "model.width" else 1
    fit = max((d for d in range(1, min(groups, common) + 1)
               if common % d == 0 and common // d >= smallest), default=1)
    shown = widths[0] if len(widths) == 1 else widths
    if any(w % groups for w in widths):
        raise BnexpError(f"norm.groups={groups} must divide the channels of every normalised "
                         f"layer ({key}={shown}); use a divisor of {common}, e.g. "
                         f"`norm.groups={fit}`.")
    if common // groups < smallest:
        raise BnexpError(f"norm.groups={groups} leaves one unit per group of {key}={shown}, "
                         f"which has no spread to normalise by; use fewer groups, e.g. "
                         f"`norm.groups={fit}`.")


def validate(cfg: Any) -> None:
    """Key, choice and range checks on a composed config; raises BnexpError naming the fix.

    Composition already enforces types and choices; the choices are checked again here so that
    a config that did not come through the schema gets the same message."""
    flat = flatten(_plain(cfg))
    check_keys(flat)
    for key, value in flat.items():
        message = choice_error(key, value)
        if message:
            raise BnexpError(message)
    _check_ranges(flat)
