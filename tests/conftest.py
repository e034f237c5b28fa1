"""Shared fixtures: tiny datasets written in the real file formats, and a CLI runner."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from omegaconf import DictConfig
from typer.testing import CliRunner

from bnexp.cli import app
from bnexp.hydra_app import compose_config


def write_idx(path: Path, array: np.ndarray) -> None:
    """IDX as in the official MNIST files: magic 2051 (images) / 2049 (labels), big-endian."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if array.ndim == 3:
        header = struct.pack(">IIII", 2051, *array.shape)
    else:
        header = struct.pack(">II", 2049, len(array))
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def make_digits(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Learnable fake digits: class k lights up a 4x4 patch at a class-specific spot."""
    labels = rng.integers(0, 10, n)
    images = rng.integers(0, 60, (n, 28, 28))
    for i, k in enumerate(labels):
        r, c = 2 + 6 * (k // 4), 2 + 6 * (k % 4)
        images[i, r:r + 4, c:c + 4] = 255
    return images.astype(np.uint8), labels.astype(np.uint8)


def write_mnist(root: Path, folder: str = "MNIST", n_train: int = 400, n_test: int = 100) -> Path:
    rng = np.random.default_rng(0)
    raw = root / folder / "raw"
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images, labels = make_digits(n, rng)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return root


def write_cifar(root: Path, n_per_batch: int = 40, n_test: int = 60, classes: int = 10) -> Path:
    """CIFAR-10's "python version" layout: data_batch_1..5, test_batch, batches.meta."""
    rng = np.random.default_rng(1)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)

    def batch(n: int) -> dict:
        return {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                "labels": [int(v) for v in rng.integers(0, classes, n)]}

    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch(n_per_batch)))
    (folder / "test_batch").write_bytes(pickle.dumps(batch(n_test)))
    meta = {"label_names": [f"class{i}" for i in range(classes)]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))
    return root


@pytest.fixture
def mnist_root(tmp_path: Path) -> Path:
    return write_mnist(tmp_path / "data")


@pytest.fixture
def cifar_root(tmp_path: Path) -> Path:
    return write_cifar(tmp_path / "data")


@pytest.fixture
def cli():
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, [str(a) for a in args])

    return invoke


# Tests that compare two runs for exact equality fix the thread count: a run shares the cores
# with other bnexp trainings of this user (bnexp/threads.py), and reductions split over a
# different number of threads round differently.
FIXED_THREADS = "trainer.threads=1"

# Overrides that make a run take about a second on tiny generated data.
TINY = ["data.verify=false", "data.val_size=40", "trainer.batch_size=32", "trainer.epochs=2",
        "trainer.eval_batch_size=64", "trainer.log_every=2", "trainer.progress=none",
        "model.channels=[4,8]", "model.width=16", "model.depth=2"]


def compose(*overrides: object) -> DictConfig:
    """A config exactly as ``bnexp train`` composes it (configs/ + the schema), overridden."""
    return compose_config([str(o) for o in overrides])


@pytest.fixture
def cfg(mnist_root: Path, tmp_path: Path):
    """The one way tests build a training config (as lightning-hydra-template's conftest):
    composed from configs/, shrunk by TINY to about a second of training on generated MNIST,
    writing under ``tmp_path``; ``cfg("model=mlp", "norm=none")`` adds overrides."""

    def make(*overrides: object, out: str = "out") -> DictConfig:
        return compose(f"data.root={mnist_root}", f"output_dir={tmp_path / out}", *TINY,
                       *overrides)

    return make


def cli_train(cli, root: Path, out: Path, *overrides: object):
    """``bnexp train`` through the CLI on the generated data, shrunk by TINY."""
    return cli("train", f"data.root={root}", f"output_dir={out}", *TINY, *overrides)


def only_run(out: Path) -> Path:
    """The one run directory under ``out``."""
    runs = list((out / "runs").iterdir())
    assert len(runs) == 1, runs
    return runs[0]
