"""Atomic writes: every file that readers may open at any moment (summary.json, sweep.json,
checkpoints, reports) goes through a temp file or folder beside its target and one rename, so a
reader never sees half a file and a failure leaves the previous version as it was.

Kept apart from ``runlog`` so that a sweep's parent process (which only writes sweep.json) does
not import torch and TensorBoard: with a parallel launcher, that is start-up time on the
critical path before the first job.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _replace(tmp: Path, target: Path) -> None:
    """Move ``tmp`` onto ``target``; a folder target is removed first (rename cannot
    replace a non-empty folder)."""
    if tmp.is_dir() and target.is_dir():
        shutil.rmtree(target)
    os.replace(tmp, target)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temp file beside ``path`` to write into; it becomes ``path`` when the block completes
    and is removed if the block fails."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide results from other users
        _replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def staging(out: Path, names: tuple[str, ...]) -> Iterator[Path]:
    """A temp folder inside ``out`` to write ``names`` (files or folders) into; they replace
    the old ones only when the block completes, so a failure leaves the previous results."""
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".staging-", dir=out))
    try:
        yield tmp
        for name in names:
            if (tmp / name).exists():
                _replace(tmp / name, out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so that readers never see half a file."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(data, f, indent=2, default=_jsonable)
        f.write("\n")


def _jsonable(value: Any) -> Any:
    """Tensors (by duck typing: no torch import here) and paths."""
    if hasattr(value, "numel") and hasattr(value, "tolist"):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value)}")
