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


def test_openmp_spin_count_is_lowered_unless_the_user_chose() -> None:
    code = "import bnexp, os; print(os.environ.get('GOMP_SPINCOUNT'))"
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY",
                                                            "BNEXP_THREADS")}
    run = lambda **extra: subprocess.run([sys.executable, "-c", code], env={**env, **extra},  # noqa: E731
                                         capture_output=True, text=True).stdout.strip()
    assert run() == threads.SPINCOUNT
    assert run(GOMP_SPINCOUNT="5") == "5"
    assert run(OMP_WAIT_POLICY="ACTIVE") == "None"
    assert run(BNEXP_THREADS="off") == "None"
