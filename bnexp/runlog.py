"""The run directory: TensorBoard writer, metrics.jsonl, summary.json and checkpoints.

Layout (see README): ``<output_dir>/runs/<YYYY-MM-DD_HH-MM-SS>_<name>_<uid>/`` holding
``config.yaml``, ``overrides.yaml``, ``tb/``, ``metrics.jsonl``, ``summary.json`` and
``checkpoint.pt``.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import torch
from tensorboard.compat.proto.summary_pb2 import Summary
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from bnexp.jsonio import atomic_path
from bnexp.metrics import HPARAM_METRICS, run_layout  # the HParams metrics, the curves charts
from bnexp.reuse import git_sha  # noqa: F401  (training and the claims stamp runs with it)
from bnexp.rundir import write_summary


def _trial_named(ssi: Summary, run_name: str) -> Summary:
    """The HParams table names a trial by its run's path, and every run directory starts with
    the same date, so the column showed one prefix for all; name it "<uid> <name>" instead."""
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    parts = run_name.split("_")
    if len(parts) >= 4 and re.fullmatch(r"\d{4}-\d\d-\d\d", parts[0]):  # a single run's dir
        run_name = f"{parts[-1]} {'_'.join(parts[2:-1])}"  # sweep jobs' "3_norm=..." stay
    data = HParamsPluginData.FromString(ssi.value[0].metadata.plugin_data.content)
    data.session_start_info.group_name = run_name
    ssi.value[0].metadata.plugin_data.content = data.SerializeToString()
    return ssi


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


class RunLog:
    """Everything a run writes; one instance per run, closed exactly once."""

    def __init__(self, run_dir: Path, config_yaml: str, overrides: list[str],
                 hparams_flat: dict[str, Any], layout: dict[str, Any] | None = None) -> None:
        self.dir = run_dir
        (run_dir / "config.yaml").write_text(config_yaml)
        (run_dir / "overrides.yaml").write_text(
            "".join(f"- {json.dumps(o)}\n" for o in overrides) or "[]\n")
        self.tb = SummaryWriter(log_dir=str(run_dir / "tb"))
        self._metrics = open(run_dir / "metrics.jsonl", "a", buffering=1)
        self._hparams = hparams_flat
        self._write_layout_and_hparams(layout or {})

    def _write_layout_and_hparams(self, extra_layout: dict[str, Any]) -> None:
        self.tb.add_custom_scalars({**run_layout(), **extra_layout})  # once per writer
        # hparams() returns the experiment, session-start and session-end summaries; writing
        # them into this run's own writer (unlike add_hparams) keeps one run per training run.
        exp, ssi, self._sei = hparams(self._hparams, {m: 0.0 for m in HPARAM_METRICS})
        self.tb.file_writer.add_summary(exp)
        self.tb.file_writer.add_summary(_trial_named(ssi, self.dir.name))

    def scalars(self, step: int, values: dict[str, float], **extra: Any) -> None:
        """Log scalars to TensorBoard and the same record to metrics.jsonl.

        All values go into one event (one Summary with many values): a probe logs ~100
        scalars, and ``add_scalar`` costs ~70 us each."""
        summary = Summary(value=[Summary.Value(tag=tag, simple_value=float(value))
                                 for tag, value in values.items()])
        self.tb.file_writer.add_summary(summary, step)
        record = {"step": step, **extra, **{k: _finite(float(v)) for k, v in values.items()}}
        self._metrics.write(json.dumps(record) + "\n")

    def record(self, step: int, kind: str, values: dict[str, Any]) -> None:
        """A record for metrics.jsonl only (lists, e.g. per-unit percentiles: no TB scalars)."""
        self._metrics.write(json.dumps({"step": step, "kind": kind, **values}) + "\n")

    def checkpoint(self, state: dict[str, Any]) -> Path:
        path = self.dir / "checkpoint.pt"
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
        return path

    def finish(self, summary: dict[str, Any]) -> None:
        write_summary(self.dir, summary)
        self.tb.file_writer.add_summary(self._sei)
        self.tb.flush()
        self.tb.close()
        self._metrics.close()
