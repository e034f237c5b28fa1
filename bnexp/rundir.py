"""The run directory's names and its summary.json: the one module that spells either.

Names: ``<output_dir>/runs/<YYYY-MM-DD_HH-MM-SS>_<name>_<uid>/`` for single runs,
``<output_dir>/sweeps/<YYYY-MM-DD_HH-MM-SS>_<name>_<uid>/`` for sweeps (``<name>`` says what was
swept unless a preset or ``name=`` names it: ``sweep_name``), each job in
``<num>_<overrides>/`` (``job_dirname``), and a timing sweep's variants in
``seed=<seed>,norm=<kind>/`` (``timing_run_name``).

summary.json: training, the timing runs, the sweep jobs that end outside training and the SLURM
launcher all write it through ``write_summary`` (atomic: readers never see half a file);
reports, claims, sweeps and the launcher read it through ``read_summary`` and its two
variants. Torch-free: a sweep's parent process names and reads directories without importing
the training stack.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bnexp.jsonio import write_json_atomic
from bnexp.metrics import FAILED, FINISHED

SUMMARY = "summary.json"
MAX_DIRNAME = 120  # job directory names stay far below filesystem limits (255 bytes)
PREVIOUS = ".previous"  # an unfinished attempt's files, set aside before a re-run
KEPT = (".hydra", PREVIOUS)  # what a re-run leaves in place: Hydra wrote .hydra for it


# ---------------------------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------------------------

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


CONFIG_GROUPS = ("data", "model", "norm", "optim", "reg", "experiment")  # configs/<group>/


def sweep_name(fixed: Iterable[str], swept: Iterable[str]) -> str:
    """A sweep folder's name that says what was swept: the fixed group choices, the swept keys'
    last parts and ``sweep``: ``model=mlp`` with ``norm`` swept -> ``mlp-norm-sweep``;
    ``optim.lr`` and ``seed`` swept -> ``lr,seed-sweep``."""
    choices = [line.split("=", 1)[1] for line in fixed
               if "=" in line and line.split("=", 1)[0].lstrip("+~") in CONFIG_GROUPS]
    keys = ",".join(k.rsplit(".", 1)[-1] for k in swept)
    return "-".join([*choices, keys, "sweep"] if keys else [*choices, "sweep"])


def job_dirname(overrides: str) -> str:
    """A sweep job's directory name from Hydra's ``override_dirname``: no path separators (a
    swept path would nest directories), and long names cut, with a hash to keep them unique."""
    name = overrides.replace("/", "_").replace("\\", "_") or "job"
    if len(name) > MAX_DIRNAME:
        digest = hashlib.md5(name.encode()).hexdigest()[:8]
        name = f"{name[:MAX_DIRNAME - 9]}-{digest}"
    return name


def timing_run_name(seed: int, kind: str) -> str:
    """The directory of one variant of one seed in a timing sweep (``bnexp time``, claims)."""
    return f"seed={seed},norm={kind}"


# ---------------------------------------------------------------------------------------------
# summary.json
# ---------------------------------------------------------------------------------------------

def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    """Write ``run_dir/summary.json`` atomically (the directory is created if needed)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / SUMMARY, summary)


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    """The run's summary; None when it has none yet. Raises ValueError (with the reason) when
    the file is unreadable or has no status: a reader decides whether that is a failure."""
    path = run_dir / SUMMARY
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ValueError(f"summary.json unreadable ({exc})") from None
    try:
        summary = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"summary.json unreadable ({exc})") from None
    if not isinstance(summary, dict) or "status" not in summary:
        raise ValueError("summary.json has no status")
    return summary


def summary_so_far(run_dir: Path) -> dict[str, Any]:
    """What a writer adds to (the scheduler's reason, a final status): the summary, or an
    empty one when there is none or it cannot be read (it is about to be replaced)."""
    try:
        return read_summary(run_dir) or {}
    except ValueError:
        return {}


def summary_or_failed(run_dir: Path) -> dict[str, Any]:
    """For status tables: the summary, empty before the run wrote one, and ``failed`` when it
    cannot be read."""
    try:
        return read_summary(run_dir) or {}
    except ValueError as exc:
        return {"status": FAILED, "error": str(exc)}


def finished_summary(run_dir: Path) -> dict[str, Any] | None:
    """The summary if the run finished with a result (completed, or diverged: re-running
    would diverge again), which a resumed sweep keeps; else None."""
    summary = summary_so_far(run_dir)
    return summary if summary.get("status") in FINISHED else None


def set_aside_previous_attempt(run_dir: Path) -> None:
    """Before a re-run: move everything an earlier, unfinished attempt left (summary.json,
    metrics.jsonl, tb/ events, checkpoint, configs, any other file) to ``.previous/<time>/``,
    so the new attempt starts from a clean directory and never appends to the old one's
    metrics or writes a second TensorBoard event file beside its. ``.hydra/`` stays: Hydra
    writes it for the new attempt before the job starts."""
    if not run_dir.is_dir():
        return
    existing = [p for p in run_dir.iterdir() if p.name not in KEPT and p.suffix != ".log"]
    if not existing:
        return
    dest = run_dir / PREVIOUS / time.strftime("%Y-%m-%d_%H-%M-%S")
    while dest.exists():  # two re-runs in the same second keep both
        dest = dest.with_name(f"{dest.name}-{uuid.uuid4().hex[:4]}")
    dest.mkdir(parents=True)
    for path in existing:
        shutil.move(str(path), dest / path.name)
