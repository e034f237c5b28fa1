"""Sharing the cores among bnexp trainings (bnexp/threads.py): the registry, the shares, the
OpenMP defaults set before torch is loaded."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bnexp import threads


@pytest.fixture
def four_cores(monkeypatch):
    monkeypatch.setattr(threads, "available_cores", lambda: 4)
    monkeypatch.delenv("BNEXP_THREADS", raising=False)


def test_a_training_alone_uses_every_core_and_shares_with_others(tmp_path: Path, four_cores) -> None:
    share = threads.ThreadShare(None, folder=tmp_path)
    assert (tmp_path / str(os.getpid())).exists() and share.threads() == 4
    neighbour = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / str(neighbour.pid)).touch()  # a second training starts
        assert share.threads() == 2
    finally:
        neighbour.kill()
        neighbour.wait()
    assert share.threads() == 4  # it ended: its stale file is removed, the cores come back
    assert not (tmp_path / str(neighbour.pid)).exists()
    share.close()
    assert not (tmp_path / str(os.getpid())).exists()


def test_apply_sets_torch_threads_and_records_changes(tmp_path: Path, four_cores) -> None:
    before = torch.get_num_threads()
    share = threads.ThreadShare(None, folder=tmp_path)
    try:
        assert share.apply() == 4 and torch.get_num_threads() == 4
        (tmp_path / "1").touch()  # pid 1 is always alive
        assert share.apply(step=50) == 2 and share.changes == [(50, 2)]
    finally:
        share.close()
        torch.set_num_threads(before)


def test_fixed_threads_and_off_do_not_register(tmp_path: Path, four_cores, monkeypatch) -> None:
    fixed = threads.ThreadShare(3, folder=tmp_path)
    assert fixed.threads() == 3 and not list(tmp_path.iterdir())
    monkeypatch.setenv("BNEXP_THREADS", "off")
    off = threads.ThreadShare(None, folder=tmp_path)
    assert off.threads() is None and not list(tmp_path.iterdir())


def test_c_kernels_share_torchs_openmp_runtime() -> None:
    """One OpenMP runtime in the process: bnexp's C kernels add no thread pool of their own, and
    torch.set_num_threads governs them too."""
    if not Path("/proc/self/maps").exists():
        pytest.skip("needs Linux's /proc")
    from bnexp import kernels
    from bnexp.norm import BatchNorm

    if not kernels.available():
        pytest.skip("no C compiler here: the kernels are not built")
    x = torch.randn(64, 8, requires_grad=True)
    BatchNorm(8)(x).sum().backward()
    maps = Path("/proc/self/maps").read_text().splitlines()
    runtimes = {line.split()[-1] for line in maps if "libgomp" in line or "libiomp" in line}
    assert len(runtimes) == 1, runtimes
