"""What ``bnexp tb`` shows: every run under a folder, named like the experiment, with the
HParams columns a student needs and a first URL that opens on the learning curves.

TensorBoard names a run by its folder's path, which for bnexp is
``sweeps/2026-12-06_16-41-04_mlp-norm-sweep_f2d663/0_norm=none/tb``: the date first, the
variant cut off. ``View`` keeps a folder of symbolic links, one folder per run named by
``run_label`` (``mlp-norm-sweep/norm=none``, ``mnist-cnn-torch``), each holding links to the
run's event files, and TensorBoard reads that folder. ``View.refresh`` adds the runs that
appeared since (a sweep still running) and drops links whose files were moved away.

HParams: runs log a short set of hparams (``run_hparams``: the sweep's swept keys, then the
identity keys); the view writes one experiment summary for all the runs it shows
(``experiment``): those keys, the swept ones marked as differing (TensorBoard lists differing
keys first and shows the first five), and the final metrics. Torch-free.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

from bnexp import metrics as m
from bnexp.manifest import MANIFEST, read_json

EVENTS = "events.out.tfevents."
TB_SUBDIR = "tb"  # where a run's event files are (older runs); a run's own folder works too
SKIPPED_PARTS = {".previous", ".hydra"}
# Every run logs these (besides its sweep's swept keys): what tells a run apart at a glance.
IDENTITY_KEYS = ("norm.kind", "model.arch", "data.name", "optim.lr", "trainer.batch_size", "seed")
# A swept config group is logged as the choice its config records (norm=none -> norm.kind).
GROUP_KEYS = {"norm": "norm.kind", "model": "model.arch", "data": "data.name",
              "optim": "optim.name"}
# Never an hparam column unless swept: they differ between runs without being a factor.
NOT_FACTORS = {"name", "output_dir", "data.root", "trainer.threads", "trainer.progress",
               "trainer.device", "data.download", "data.verify", "trainer.checkpoint",
               "sweep.stale"}
HPARAM_METRICS = m.HPARAM_METRICS  # final test/val accuracy, the gap, the test loss
# The cards the printed URL pins, in reading order, two a row: loss, accuracy, then the gap.
PINNED = (m.TRAIN_LOSS, m.TEST_LOSS, m.TRAIN_ACC, m.TEST_ACC, m.GAP_ACC, m.GAP_LOSS)
_STAMPED = re.compile(r"^\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_(.+)_([0-9a-f]{6})$")


# ---------------------------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------------------------

def short_name(dirname: str) -> str:
    """``2026-12-06_16-41-04_mnist-cnn-torch_f2d663`` -> ``mnist-cnn-torch``; other names as
    they are."""
    found = _STAMPED.match(dirname)
    return found.group(1) if found else dirname


def run_uid(dirname: str) -> str:
    found = _STAMPED.match(dirname)
    return found.group(2) if found else ""


def sweep_grid(run_dir: Path) -> dict[str, list[str]]:
    """The grid of the sweep ``run_dir`` is a job of (its sweep.json); empty for single runs."""
    grid = read_json(run_dir.parent / MANIFEST).get("grid")
    return grid if isinstance(grid, dict) else {}


def swept_keys(run_dir: Path) -> list[str]:
    """The keys the run's sweep varies (two values or more), in the sweep's order."""
    return [k for k, values in sweep_grid(run_dir).items() if len(values or []) != 1]


def run_label(run_dir: Path) -> str:
    """The run's name in TensorBoard: ``<sweep name>/<swept values>`` for a sweep job
    (``mlp-norm-sweep/norm=none,seed=0``), the run's name for a single run
    (``mnist-cnn-torch``): short, the variant first, no date and no ``/tb``."""
    if (run_dir.parent / MANIFEST).exists():
        num, _, values = run_dir.name.partition("_")
        job = values if num.isdigit() and values else run_dir.name
        return f"{short_name(run_dir.parent.name)}/{job}"
    return short_name(run_dir.name)


# ---------------------------------------------------------------------------------------------
# HParams
# ---------------------------------------------------------------------------------------------

def run_hparams(flat: dict[str, Any], overrides: list[str], swept: list[str]) -> dict[str, Any]:
    """The hparams a run logs: its sweep's swept keys (a group as its choice: ``norm`` ->
    ``norm.kind``; a key the config lacks, e.g. ``experiment``, as the override's text), then
    the identity keys. ``flat``: the run's config as HParams values (bnexp.train.flat_hparams)."""
    given = {o.split("=", 1)[0].lstrip("+~"): o.split("=", 1)[1] for o in overrides if "=" in o}
    out: dict[str, Any] = {}
    for key in swept:
        name = GROUP_KEYS.get(key, key)
        if name in flat:
            out[name] = flat[name]
        elif key in given:
            out[key] = given[key]
    out.update({k: flat[k] for k in IDENTITY_KEYS if k in flat and k not in out})
    return out


def _value(v: Any) -> Any:
    """A google.protobuf.Value as Python (number, text or bool)."""
    kind = v.WhichOneof("kind")
    return getattr(v, kind) if kind else None


def session_hparams(event_file: Path, max_events: int = 20) -> dict[str, Any] | None:
    """The hparams in the session-start summary at the head of an event file (RunLog writes it
    first); None when the file has none in its first events."""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.plugins.hparams import metadata

    try:
        for i, raw in enumerate(RawEventFileLoader(str(event_file)).Load()):
            if i >= max_events:
                return None
            for value in Event.FromString(raw).summary.value:
                if value.tag == metadata.SESSION_START_INFO_TAG:
                    info = metadata.parse_session_start_info_plugin_data(
                        value.metadata.plugin_data.content)
                    return {k: _value(v) for k, v in info.hparams.items()}
    except Exception:  # a file being written, or not an event file: no hparams yet
        return None
    return None


def experiment_columns(sessions: list[dict[str, Any]], swept: set[str],
                       any_sweep: bool) -> list[tuple[str, str, bool]]:
    """(name, "number" | "text", differs) for the HParams columns: identity keys, swept keys
    and keys whose values differ between runs (never ``NOT_FACTORS`` unless swept). A key is
    marked as differing when a sweep shown sweeps it, or, with no sweep shown, when its
    values differ; TensorBoard lists those first (by name), then the rest (by name)."""
    values: dict[str, list[Any]] = {}
    for hp in sessions:
        for k, v in hp.items():
            values.setdefault(k, []).append(v)
    columns = []
    for name, vs in values.items():
        differ = len({json.dumps(v) for v in vs}) > 1
        if name not in swept and name not in IDENTITY_KEYS and (not differ or name in NOT_FACTORS):
            continue
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vs)
        differs = name in swept if any_sweep else differ
        columns.append((name, "number" if numeric else "text", differs))
    return sorted(columns, key=lambda c: (not c[2], c[0]))


def experiment_summary(columns: list[tuple[str, str, bool]]) -> Any:
    """The HParams experiment summary (a Summary proto) for these columns and HPARAM_METRICS."""
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.plugins.hparams import api_pb2, metadata
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    kinds = {"number": api_pb2.DATA_TYPE_FLOAT64, "text": api_pb2.DATA_TYPE_STRING}
    infos = [api_pb2.HParamInfo(name=name, type=kinds[kind], differs=differs)
             for name, kind, differs in columns]
    metric_infos = [api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag), display_name=tag)
                    for tag in HPARAM_METRICS]
    data = HParamsPluginData(version=metadata.PLUGIN_DATA_VERSION, experiment=api_pb2.Experiment(
        hparam_infos=infos, metric_infos=metric_infos))
    meta = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(
        plugin_name=metadata.PLUGIN_NAME, content=data.SerializeToString()))
    return Summary(value=[Summary.Value(tag=metadata.EXPERIMENT_TAG, metadata=meta)])


# ---------------------------------------------------------------------------------------------
# The view
# ---------------------------------------------------------------------------------------------

def write_events(path: Path, summaries: list[Any]) -> None:
    """An event file of these summaries (TensorBoard's record format), written at once."""
    import time

    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.summary.writer.record_writer import RecordWriter

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        writer = RecordWriter(f)
        writer.write(Event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString())
        for summary in summaries:
            writer.write(Event(wall_time=time.time(), summary=summary).SerializeToString())


def find_runs(logdir: Path, skip: Path | None = None) -> dict[Path, list[Path]]:
    """{run directory: its event files} under ``logdir``: folders holding event files (a
    ``tb/`` folder counts for the run directory above it); set-aside attempts skipped."""
    runs: dict[Path, list[Path]] = {}
    for folder, dirs, files in os.walk(logdir):
        here = Path(folder)
        if skip is not None and here == skip:
            dirs[:] = []
            continue
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_PARTS)
        events = sorted(here / f for f in files if f.startswith(EVENTS))
        if events:
            run = here.parent if here.name == TB_SUBDIR else here
            runs.setdefault(run, []).extend(events)
    return runs


class View:
    """A folder of links that TensorBoard reads instead of ``logdir``: one folder per run,
    named ``run_label`` (``~<uid>`` added when two runs would share a name)."""

    def __init__(self, logdir: Path, folder: Path) -> None:
        self.logdir, self.folder = logdir.resolve(), folder
        self.labels: dict[Path, str] = {}
        self.sessions: dict[Path, dict[str, Any]] = {}
        self.swept: dict[Path, list[str]] = {}
        self.columns: list[tuple[str, str, bool]] = []
        self.experiment_file: Path | None = None

    def _label(self, run: Path) -> str:
        if run not in self.labels:
            label = run_label(run) if run != self.logdir else short_name(run.name)
            taken = set(self.labels.values())
            if label in taken:
                label = f"{label}~{run_uid(run.name) or len(taken)}"
            while label in taken:
                label += "~"
            self.labels[run] = label
        return self.labels[run]

    def refresh(self) -> bool:
        """Link the runs found now; True when the HParams columns changed (the experiment
        summary was rewritten: TensorBoard must read it again from the start)."""
        found = find_runs(self.logdir, skip=self.folder.resolve())
        wanted: dict[Path, Path] = {}
        for run in sorted(found):
            label = self._label(run)
            for event in found[run]:
                wanted[self.folder / label / event.name] = event
                if run not in self.sessions and (hp := session_hparams(event)) is not None:
                    self.sessions[run] = hp
                    self.swept[run] = [GROUP_KEYS.get(k, k) for k in swept_keys(run)]
        self._link(wanted)
        return self._write_experiment()

    def _link(self, wanted: dict[Path, Path]) -> None:
        for link, target in wanted.items():
            if not link.is_symlink():
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(target)
        for link in self.folder.rglob(f"{EVENTS}*"):
            if link.is_symlink() and link not in wanted:
                link.unlink()

    def _write_experiment(self) -> bool:
        runs = [r for r in sorted(self.sessions) if r in self.labels]
        swept = {k for r in runs for k in self.swept.get(r, [])}
        columns = experiment_columns([self.sessions[r] for r in runs], swept,
                                     any(self.swept.get(r) for r in runs))
        if not runs or columns == self.columns:
            return False
        first = self.folder / min(self.labels[r] for r in runs)
        if self.experiment_file is not None:
            self.experiment_file.unlink(missing_ok=True)
        # In the first run's folder (a folder of its own would be one more "run" in every
        # list), named to be read before the run's own files.
        self.experiment_file = first / f"{EVENTS}0000000000.bnexp-hparams"
        write_events(self.experiment_file, [experiment_summary(columns)])
        self.columns = columns
        return True

    def color_by_norm(self) -> bool:
        """Whether every run's label names its norm variant (``norm=<kind>``)."""
        return bool(self.labels) and all("norm=" in label for label in self.labels.values())


def tb_url(host: str, port: int, color_by_norm: bool = False) -> str:
    """The first URL ``bnexp tb`` prints: Time Series, unsmoothed, the loss, accuracy and gap
    cards pinned in that order at the top (a tag filter would hide the pinned cards); runs
    coloured by their norm variant when every run's name says it."""
    pins = json.dumps([{"plugin": "scalars", "tag": tag} for tag in PINNED],
                      separators=(",", ":"))
    params = [("smoothing", "0"), ("pinnedCards", pins)]
    if color_by_norm:
        params.append(("runColorGroup", "regex:norm=([^,/]+)"))
    query = "&".join(f"{k}={quote(v, safe='')}" for k, v in params)
    return f"http://{host}:{port}/?{query}"


# ---------------------------------------------------------------------------------------------
# Serving
# ---------------------------------------------------------------------------------------------

REFRESH_S = 5.0  # seconds between looks for new runs (TensorBoard reloads as often)


def _start(folder: Path, host: str, port: int) -> Any:
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "tensorboard.main", "--logdir", str(folder), "--port", str(port),
           "--host", host, "--reload_interval", str(int(REFRESH_S))]
    with open(folder.parent / "tensorboard.log", "a") as log:
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)


def wait_for_port(proc: Any, host: str, port: int, timeout: float = 60.0) -> bool:
    """True once ``host:port`` accepts a connection; False if the process ended first."""
    import socket
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.2)
    return False


def serve(logdir: Path, host: str, port: int, on_ready: Any) -> tuple[int, str]:
    """Run TensorBoard on a ``View`` of ``logdir`` (in a temporary folder) until it exits or
    Ctrl-C (returns 0). Every REFRESH_S seconds the view takes in new runs; when the HParams
    columns change, TensorBoard is restarted on the same port (it reads an experiment summary
    once). ``on_ready(url, runs)`` is called once the server answers. Returns TensorBoard's
    exit code and the last line of its log."""
    import shutil
    import subprocess
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="bnexp-tb-")) / f"runs-of-{logdir.resolve().name}"
    folder.mkdir()
    view = View(logdir, folder)
    view.refresh()
    proc = _start(folder, host, port)
    try:
        if wait_for_port(proc, host, port):
            on_ready(tb_url(host, port, view.color_by_norm()), len(view.labels))
        while True:
            try:
                proc.wait(timeout=REFRESH_S)
                break
            except subprocess.TimeoutExpired:
                if view.refresh():
                    proc.terminate()
                    proc.wait()
                    proc = _start(folder, host, port)
                    wait_for_port(proc, host, port)
    except KeyboardInterrupt:
        return 0, ""
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait()
        log = (folder.parent / "tensorboard.log").read_text(errors="replace").strip()
        shutil.rmtree(folder.parent, ignore_errors=True)
    return proc.returncode, log.splitlines()[-1] if log else ""
