"""Where results go: one function names every run and sweep directory.

``<output_dir>/runs/<YYYY-MM-DD_HH-MM-SS>_<name>_<uid>/`` for single runs and
``<output_dir>/sweeps/<YYYY-MM-DD_HH-MM-SS>_<name>_<uid>/`` for sweeps (its jobs in
``<num>_<overrides>/``, named by ``bnexp.sweep.job_dirname``). Torch-free: a sweep's parent
process names its directory without importing the training stack.
"""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path


def new_run_dir(output_dir: str | Path, name: str, kind: str = "runs", unique: bool = True) -> Path:
    """Create ``<output_dir>/<kind>/<stamp>_<name>_<uid>``: unique even for runs started in the
    same second. ``unique=False`` gives ``<output_dir>/<kind>/<name>`` instead, a stable name
    that a later command finds again (``bnexp claims`` resumes its sweeps there)."""
    safe = re.sub(r"[^A-Za-z0-9_.=,-]+", "-", name).strip("-") or kind.rstrip("s")
    if unique:
        safe = f"{time.strftime('%Y-%m-%d_%H-%M-%S')}_{safe}_{uuid.uuid4().hex[:6]}"
    path = Path(output_dir) / kind / safe
    path.mkdir(parents=True, exist_ok=not unique)
    return path
