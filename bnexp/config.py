"""The structured config schema (dataclasses) and the checks a type alone cannot express.

Hydra merges the YAML files under ``configs/`` into these dataclasses, so an unknown key or a
value of the wrong type is rejected at composition time; ``validate`` adds range checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bnexp.errors import BnexpError

DATASETS = ("mnist", "fashion_mnist", "cifar10", "cifar100")
ARCHS = ("mlp", "cnn")
NORMS = ("none", "torch", "custom", "seed")
NORM_IMPLS = ("auto", "eager", "compiled")  # bnexp.norm.IMPLS (kept here so configs load without torch)
ACTIVATIONS = ("relu", "sigmoid", "tanh")
INITS = ("default", "he")  # bnexp.models.INITS
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "step", "onecycle")
DEVICES = ("auto", "cpu", "cuda", "mps")
PROGRESS = ("auto", "bar", "plain", "none")
PRECISIONS = ("fp32", "bf16")


@dataclass
class DataConfig:
    name: str = "mnist"
    root: str = "./data"
    download: bool = True
    verify: bool = True
    train_size: int | None = None  # seeded subset of the training split (overfitting studies)
    val_size: int = 5000  # held out from the training split
    augment: bool = False  # random crop (4-px padding) + horizontal flip, batched on tensors


@dataclass
class ModelConfig:
    arch: str = "mlp"
    activation: str = "relu"
    dropout: float = 0.0
    depth: int = 3  # mlp: hidden layers
    width: int = 100  # mlp: units per hidden layer
    channels: list[int] = field(default_factory=lambda: [16, 32, 64])  # cnn: one stage each
    convs_per_stage: int = 1  # cnn: conv-norm-act blocks before each 2x2 max-pool
    init: str = "default"  # default: torch's | he: Kaiming-normal (ReLU gain) times init_gain
    init_gain: float = 1.0  # he: weight scale relative to He's; >1 makes a plain ReLU net explode


@dataclass
class NormConfig:
    kind: str = "none"
    eps: float = 1e-5
    momentum: float | None = 0.1  # None: cumulative average, as in torch.nn.BatchNorm
    impl: str = "auto"  # custom: auto (C kernels on CPU, torch ops elsewhere) | eager | compiled


@dataclass
class OptimConfig:
    name: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    schedule: str = "constant"
    step_size: int = 1  # step schedule: epochs between decays
    gamma: float = 0.1  # step schedule: decay factor
    warmup: float = 0.2  # onecycle: fraction of steps spent warming up


@dataclass
class TrainerConfig:
    epochs: int = 2
    steps: int | None = None  # if set, overrides epochs: train this many optimizer steps
    batch_size: int = 64
    eval_batch_size: int = 250
    eval_every: int = 1  # epochs between val/test evaluations (the last epoch always evaluates)
    eval_batch_stats: bool = False  # also test with BN on batch statistics (test_batchstats/*)
    eval_single: int = 0  # test images also evaluated one at a time in eval mode (test_single/*)
    val_every_steps: int = 0  # also evaluate val and test every this many steps (0: per epoch only)
    train_eval_size: int = 5000  # training images evaluated like the test set: train_eval/*, gap/*
    log_every: int = 50  # steps between train/loss points
    device: str = "auto"
    threads: int | None = None  # torch intra-op threads; None keeps torch's default
    precision: str = "fp32"  # fp32 | bf16 (autocast: matmuls/convs in bfloat16, BN stats fp32)
    channels_last: bool | None = None  # CNN memory format; None: on for CUDA and CPU
    compile: bool = False  # torch.compile the model for the training step
    progress: str = "auto"  # auto: a rich bar on a terminal, plain lines otherwise
    checkpoint: bool = True  # write checkpoint.pt at the end of the run
    keep_memory: bool = True  # glibc: reuse freed memory instead of returning it every step


@dataclass
class ProbeConfig:
    enabled: bool = True
    every: int = 200  # steps between probes (activation statistics, gradient norms)
    hist_every: int = 500  # steps between histograms; 0 disables them
    batch_size: int = 128  # size of the fixed probe batch, drawn once from the training split
    unit: int = 0  # the tracked unit (MLP) / channel (CNN) of every layer
    max_elements: int = 4096  # percentiles of larger tensors use a fixed sample of this size
    per_unit: bool = False  # also every unit's own p15/p50/p85 of each nonlinearity input


@dataclass
class BnexpConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    norm: NormConfig = field(default_factory=NormConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    seed: int = 0
    name: str = "run"
    output_dir: str = "outputs"


def optional_keys() -> set[str]:
    """Flat keys (``data.train_size``) whose schema type allows null."""
    import dataclasses

    out = set()
    for top in dataclasses.fields(BnexpConfig):
        default = top.default_factory() if callable(top.default_factory) else None
        if dataclasses.is_dataclass(default):
            out |= {f"{top.name}.{f.name}" for f in dataclasses.fields(default)
                    if "None" in str(f.type)}
    return out


def _choice(value: str, allowed: tuple[str, ...], key: str) -> None:
    if value not in allowed:
        raise BnexpError(
            f"{key}={value!r} is not a valid choice. Use one of: {', '.join(allowed)} "
            f"(for example `bnexp train {key}={allowed[0]}`)."
        )


def _positive(value: float | int | None, key: str, example: float | int = 1,
              allow_zero: bool = False) -> None:
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        bound = "non-negative" if allow_zero else "positive"
        raise BnexpError(f"{key}={value} must be {bound}; pass a {bound} value, e.g. "
                         f"`bnexp train {key}={example}`.")


def _unknown_keys(cfg: Any, schema: Any, prefix: str = "") -> list[tuple[str, list[str]]]:
    """Keys of ``cfg`` that the schema does not have, each with the schema's keys beside it."""
    unknown = []
    for key in cfg:
        if not prefix and key == "hydra":
            continue
        if key not in schema:
            unknown.append((f"{prefix}{key}", [f"{prefix}{k}" for k in schema]))
        elif hasattr(cfg[key], "keys") and hasattr(schema[key], "keys"):
            unknown += _unknown_keys(cfg[key], schema[key], f"{prefix}{key}.")
    return unknown


def check_keys(cfg: Any) -> None:
    """Hydra's ``+key=value`` adds keys even to a structured config; bnexp rejects any key the
    schema does not define, with the closest known key."""
    import difflib

    from omegaconf import OmegaConf

    unknown = _unknown_keys(cfg, OmegaConf.structured(BnexpConfig))
    if unknown:
        key, known = unknown[0]
        close = difflib.get_close_matches(key, known, n=1)
        hint = f" Did you mean `{close[0]}`?" if close else ""
        raise BnexpError(f"Unknown config key `{key}` (bnexp has no such setting, so it would "
                         f"be ignored).{hint} Run `bnexp config` to see every key; groups are "
                         "picked with `group=option` (e.g. norm=torch), values changed with "
                         "`group.key=value` (e.g. trainer.epochs=5).")


def validate(cfg: Any) -> None:
    """Range and choice checks on a composed config; raises BnexpError naming the fix."""
    check_keys(cfg)
    _choice(cfg.data.name, DATASETS, "data.name")
    _choice(cfg.model.arch, ARCHS, "model.arch")
    _choice(cfg.model.activation, ACTIVATIONS, "model.activation")
    _choice(cfg.model.init, INITS, "model.init")
    _choice(cfg.norm.kind, NORMS, "norm.kind")
    _choice(cfg.norm.impl, NORM_IMPLS, "norm.impl")
    _choice(cfg.optim.name, OPTIMIZERS, "optim.name")
    _choice(cfg.optim.schedule, SCHEDULES, "optim.schedule")
    _choice(cfg.trainer.device, DEVICES, "trainer.device")
    _choice(cfg.trainer.progress, PROGRESS, "trainer.progress")
    _choice(cfg.trainer.precision, PRECISIONS, "trainer.precision")
    for key, value, example in [
        ("optim.lr", cfg.optim.lr, 0.05),
        ("trainer.batch_size", cfg.trainer.batch_size, 128),
        ("trainer.eval_batch_size", cfg.trainer.eval_batch_size, 250),
        ("trainer.epochs", cfg.trainer.epochs, 3),
        ("trainer.steps", cfg.trainer.steps, 1000),
        ("trainer.eval_every", cfg.trainer.eval_every, 1),
        ("trainer.log_every", cfg.trainer.log_every, 50),
        ("trainer.threads", cfg.trainer.threads, 2),
        ("model.depth", cfg.model.depth, 3),
        ("model.width", cfg.model.width, 100),
        ("model.init_gain", cfg.model.init_gain, 1.0),
        ("model.convs_per_stage", cfg.model.convs_per_stage, 1),
        ("data.train_size", cfg.data.train_size, 5000),
        ("norm.eps", cfg.norm.eps, 1e-5),
        ("optim.step_size", cfg.optim.step_size, 1),
        ("probe.every", cfg.probe.every, 200),
        ("probe.batch_size", cfg.probe.batch_size, 128),
        ("probe.max_elements", cfg.probe.max_elements, 4096),
    ]:
        _positive(value, key, example)
    for key, value, example in [
        ("optim.weight_decay", cfg.optim.weight_decay, 5e-4),
        ("optim.momentum", cfg.optim.momentum, 0.9),
        ("data.val_size", cfg.data.val_size, 5000),
        ("trainer.train_eval_size", cfg.trainer.train_eval_size, 5000),
        ("model.dropout", cfg.model.dropout, 0.2),
        ("probe.hist_every", cfg.probe.hist_every, 500),
        ("probe.unit", cfg.probe.unit, 0),
        ("trainer.eval_single", cfg.trainer.eval_single, 200),
        ("trainer.val_every_steps", cfg.trainer.val_every_steps, 100),
    ]:
        _positive(value, key, example, allow_zero=True)
    if not 0 <= cfg.model.dropout < 1:
        raise BnexpError(f"model.dropout={cfg.model.dropout} must be in [0, 1); try 0.2.")
    if not cfg.model.channels or any(c <= 0 for c in cfg.model.channels):
        raise BnexpError(
            f"model.channels={list(cfg.model.channels)} must be a non-empty list of positive "
            "integers, e.g. `model.channels=[16,32,64]`."
        )
    if cfg.norm.momentum is not None and not 0 <= cfg.norm.momentum <= 1:
        raise BnexpError(f"norm.momentum={cfg.norm.momentum} must be in [0, 1] or null.")
    if cfg.optim.nesterov and cfg.optim.name == "sgd" and cfg.optim.momentum == 0:
        raise BnexpError("optim.nesterov=true needs optim.momentum > 0; set e.g. 0.9.")
