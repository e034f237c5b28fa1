"""The one atomic-write helper (files and staged folders) and the one run-directory namer."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from bnexp.jsonio import atomic_path, staging, write_json_atomic
from bnexp.rundir import new_run_dir


def test_json_is_written_whole_readable_and_without_leftovers(tmp_path: Path) -> None:
    path = tmp_path / "summary.json"
    write_json_atomic(path, {"status": "completed", "dir": tmp_path})
    assert json.loads(path.read_text()) == {"status": "completed", "dir": str(tmp_path)}
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0600
    with pytest.raises(TypeError):  # a failed write leaves the previous file as it was
        write_json_atomic(path, {"status": object()})
    assert json.loads(path.read_text())["status"] == "completed"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_atomic_path_replaces_only_when_the_block_completes(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError
    assert path.read_bytes() == b"old"
    with atomic_path(path) as tmp:
        assert tmp.parent == tmp_path and tmp != path
        tmp.write_bytes(b"new")
    assert path.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_staging_replaces_files_and_folders_together(tmp_path: Path) -> None:
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "old.png").write_text("old")
    (tmp_path / "report.md").write_text("old")
    with pytest.raises(RuntimeError), staging(tmp_path, ("report.md", "figures")) as tmp:
        (tmp / "report.md").write_text("half")
        raise RuntimeError
    assert (tmp_path / "report.md").read_text() == "old"
    with staging(tmp_path, ("report.md", "figures")) as tmp:
        (tmp / "figures").mkdir()
        (tmp / "figures" / "new.png").write_text("new")
        (tmp / "report.md").write_text("new")
    assert (tmp_path / "report.md").read_text() == "new"
    assert [p.name for p in (tmp_path / "figures").iterdir()] == ["new.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figures", "report.md"]


def test_run_and_sweep_directories_are_named_by_one_function(tmp_path: Path) -> None:
    a = new_run_dir(tmp_path, "mnist-mlp-torch")
    b = new_run_dir(tmp_path, "mnist-mlp-torch")  # the same second: still two directories
    assert a != b and a.is_dir() and b.is_dir() and a.parent == tmp_path / "runs"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_mnist-mlp-torch_[0-9a-f]{6}", a.name)
    sweep = new_run_dir(tmp_path, "my sweep/1", "sweeps")
    assert sweep.parent == tmp_path / "sweeps" and "_my-sweep-1_" in sweep.name
    assert "_sweep_" in new_run_dir(tmp_path, "", "sweeps").name
    stable = new_run_dir(tmp_path, "overfit-quick-mnist", "sweeps", unique=False)
    assert stable == tmp_path / "sweeps" / "overfit-quick-mnist"
    assert new_run_dir(tmp_path, "overfit-quick-mnist", "sweeps", unique=False) == stable
