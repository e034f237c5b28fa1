"""Whether a finished run still stands for the job asked now: the code that made it and its
composed config, against the current ones.

A sweep that is resumed (``bnexp train -m --resume DIR``, a second ``bnexp claims`` call on the
same ``--out``) keeps its finished runs. A run is *stale* when it was made by another code
version (bnexp's version and git SHA, as its summary.json records them) or when the job's
config, composed now, differs from the ``config.yaml`` the run wrote (a preset edited since):
``stale_reason`` says which, with one example. What a sweep does with a stale run is the
``sweep.stale`` setting (``bnexp.sweep``: re-run it by default, keep it, or refuse).

The code version is ``bnexp <version> (git <sha12>)``; outside a git checkout (an installed
wheel) it is ``bnexp <version>``. Uncommitted edits are not part of it: the SHA names the
commit, so runs made before and after an uncommitted edit look alike (commit before the runs a
verdict quotes). Torch-free: a sweep's parent process and the claims read it.
"""

from __future__ import annotations

import functools
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from bnexp import __version__
from bnexp.config import flatten

UNKNOWN = "unknown"  # a summary that records no version (written before bnexp recorded one)
_ABSENT = object()

# Keys that never change a run's numbers, left out of the comparison: where its files go and
# its name (output_dir, name), where the data is found and whether it is fetched or checked
# (data.root, data.download, data.verify: data.name, the sizes and the seed fix the data),
# what is printed (trainer.progress), whether checkpoint.pt is written (trainer.checkpoint),
# glibc's reuse of freed memory (trainer.keep_memory: speed only), how a sweep treats stale
# runs (sweep.*), and the torch threads (trainer.threads): a sweep sets them from its launcher
# (bnexp.sweep._share_cores) and a run changes them as neighbours start and end
# (bnexp.threads), so the recorded value is a share of the machine, not a setting; threads
# change only the order of float sums. Timing runs compare the threads: there they are the
# setting the step times depend on (``TIMING_HARMLESS``). Everything else, device, precision,
# eval batch sizes included, is compared: when in doubt, a run is re-made.
HARMLESS_KEYS = frozenset({"output_dir", "name", "data.root", "data.download", "data.verify",
                           "trainer.progress", "trainer.checkpoint", "trainer.keep_memory",
                           "trainer.threads"})
HARMLESS_PREFIXES = ("sweep.",)
TIMING_HARMLESS = HARMLESS_KEYS - {"trainer.threads"}


@functools.cache
def git_sha() -> str | None:
    """HEAD of the git checkout bnexp runs from; None outside one (an installed wheel, even
    one installed inside another project's repository). Once per process: a process runs the
    code it imported, whatever is committed while it runs."""
    here = Path(__file__).parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=here, timeout=5)
        ours = subprocess.run(["git", "ls-files", "--error-unmatch", "__init__.py"],
                              capture_output=True, text=True, cwd=here, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0 or ours.returncode != 0:  # not a checkout, or not bnexp's
        return None
    return head.stdout.strip() or None


def code_stamp() -> dict[str, Any]:
    """What a summary.json records of the code that made the run (training adds the versions
    of torch, torchvision and Python beside bnexp's)."""
    return {"versions": {"bnexp": __version__}, "git_sha": git_sha()}


def code_version(summary: Mapping[str, Any]) -> str:
    """``bnexp 0.1.0 (git 1a2b3c4d5e6f)`` from a summary (or ``code_stamp()``); ``bnexp 0.1.0``
    when it records no SHA; ``unknown`` when it records no version."""
    version = (summary.get("versions") or {}).get("bnexp")
    if version is None:
        return UNKNOWN
    sha = summary.get("git_sha")
    return f"bnexp {version} (git {sha[:12]})" if sha else f"bnexp {version}"


def config_difference(recorded: Mapping[str, Any], current: Mapping[str, Any],
                      harmless: frozenset[str] = HARMLESS_KEYS) -> str | None:
    """The first key (of the current config's order) whose value differs between a run's
    config and the one composed now, as one phrase, with how many more differ; None if none.
    Both are nested plain containers."""
    old, new = flatten(recorded), flatten(current)
    keys = [k for k in dict.fromkeys([*new, *old])
            if k not in harmless and not k.startswith(HARMLESS_PREFIXES)]
    differing = [k for k in keys if old.get(k, _ABSENT) != new.get(k, _ABSENT)]
    if not differing:
        return None
    key = differing[0]
    was = f"{key}={old[key]!r}" if key in old else f"no {key}"
    now = f"{key}={new[key]!r}" if key in new else f"no {key}"
    more = f" (and {len(differing) - 1} more keys)" if len(differing) > 1 else ""
    return f"config: its config.yaml has {was}, the job now has {now}{more}"


def as_written(yaml_text: str) -> dict[str, Any]:
    """A config as a run's config.yaml holds it, read back: compare configs after the same
    round trip, so that YAML's spelling of floats or enums never shows as a difference."""
    return yaml.safe_load(yaml_text) or {}


def stale_reason(run_dir: Path, summary: Mapping[str, Any], current: Mapping[str, Any],
                 harmless: frozenset[str] = HARMLESS_KEYS) -> str | None:
    """Why the finished run in ``run_dir`` (its ``summary``) no longer stands for a job whose
    config is now ``current`` (read back as from a config.yaml: ``as_written``), run by this
    code; None when it still does. The code version is checked first."""
    made, now = code_version(summary), code_version(code_stamp())
    if made != now:
        return f"code: made by {made}, this is {now}"
    try:
        recorded = as_written((run_dir / "config.yaml").read_text())
    except FileNotFoundError:
        return "config: the run has no config.yaml"
    except (OSError, yaml.YAMLError) as exc:
        return f"config: its config.yaml is unreadable ({type(exc).__name__})"
    return config_difference(recorded, current, harmless)
