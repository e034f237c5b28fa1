"""JSON files that readers may open at any moment (summary.json, sweep.json), written atomically.

Kept apart from ``runlog`` so that a sweep's parent process (which only writes sweep.json) does
not import torch and TensorBoard: with a parallel launcher, that is start-up time on the
critical path before the first job.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON through a temp file + rename, so readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide results from other users
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, default=_jsonable)
        f.write("\n")
    os.replace(tmp, path)


def _jsonable(value: Any) -> Any:
    """Tensors (by duck typing: no torch import here) and paths."""
    if hasattr(value, "numel") and hasattr(value, "tolist"):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value)}")
