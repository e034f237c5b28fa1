"""The run directory: TensorBoard writer, metrics.jsonl, summary.json and checkpoints.

Layout (see README): ``<output_dir>/runs/<YYYY-MM-DD_HH-MM-SS>_<name>_<uid>/`` holding
``config.yaml``, ``overrides.yaml``, ``tb/``, ``metrics.jsonl``, ``summary.json`` and
``checkpoint.pt``. TensorBoard shows the run as ``bnexp.tbview.run_label`` names it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from tensorboard.compat.proto.summary_pb2 import Summary
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from bnexp.jsonio import atomic_path
from bnexp.metrics import run_layout  # the curves charts
from bnexp.reuse import git_sha  # noqa: F401  (training and the claims stamp runs with it)
from bnexp.rundir import write_summary
from bnexp.tbview import run_hparams, run_label, swept_keys


def _session_start(hparams_flat: dict[str, Any], group_name: str) -> tuple[Summary, Summary]:
    """The HParams session-start summary (its trial named ``group_name``) and the session-end
    one. No experiment summary: ``bnexp tb`` writes one for all the runs it shows (bnexp/tbview.py),
    and plain TensorBoard derives one from the runs' sessions (differing keys first)."""
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    _, ssi, sei = hparams(hparams_flat, {})
    data = HParamsPluginData.FromString(ssi.value[0].metadata.plugin_data.content)
    data.session_start_info.group_name = group_name
    ssi.value[0].metadata.plugin_data.content = data.SerializeToString()
    return ssi, sei


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
        # A short set of hparams: the sweep's swept keys and the run's identity, not all 61
        # config keys (config.yaml has them).
        self.hparams = run_hparams(hparams_flat, overrides, swept_keys(run_dir))
        self._write_layout_and_hparams(layout or {})

    def _write_layout_and_hparams(self, extra_layout: dict[str, Any]) -> None:
        curves = run_layout()
        speed = curves.pop("speed")
        # once per writer; loss, accuracy and gap first, the probes' charts, then speed
        self.tb.add_custom_scalars({**curves, **extra_layout, "speed": speed})
        # Written into this run's own writer (unlike add_hparams, which makes a sub-run).
        ssi, self._sei = _session_start(self.hparams, run_label(self.dir))
        self.tb.file_writer.add_summary(ssi)

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
