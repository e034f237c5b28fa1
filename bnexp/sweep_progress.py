"""One progress display for long work: a ``bnexp claims`` call (its sweeps one after another)
or a ``bnexp train -m`` sweep of more than a handful of jobs.

What it shows: the current sweep (i/n), runs done of all the call's runs, elapsed time, an
estimate of the time left, and how many runs failed or diverged. On a terminal that is one live
display (rich), with a line left above it as each sweep ends; piped, only the line per finished
sweep. Meanwhile the output of the work goes to the sweep's log files, not the terminal
(``-v`` keeps it there instead): everything the calling process prints during a sweep (Hydra's
job lines, bnexp's notes) to ``<sweep dir>/sweep.log``, each job's own output (its epoch lines,
warnings, a failure's traceback) to ``<job dir>/output.log``. Jobs run in the launcher's
processes (joblib workers, SLURM tasks), so they learn it from the environment (``QUIET_ENV``,
read by ``job_output`` in ``bnexp.sweep.run_job``), and progress is counted from the sweep
directory: finished ``summary.json`` files, one per run directory, whatever process wrote them.

The estimate (``seconds_left``): each sweep costs a fixed start-up (``STARTUP_S``, Hydra's
planning and the data load) plus its runs still to run times a cost per run. A sweep's cost per
run is measured once some of its runs have finished (the clock from the sweep's start to its
latest finished run), blended with its prior (``Stage.prior_s``: ``bnexp claims --plan``'s
model, bnexp/claims/watch.py) while few have; a sweep not started yet costs its prior, scaled
by how this call's measured sweeps compared with theirs (their time-weighted ratio, each held
within a factor of 2 of the median: the machine's speed and load today, not one sweep whose
code got slower). ``finish_s`` adds what follows the last sweep (a claims call's verdicts and
claims.md).
Without any prior, the mean measured cost per run of the call stands in.
"""

from __future__ import annotations

import io
import os
import statistics
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from bnexp.errors import BnexpError
from bnexp.manifest import read_json
from bnexp.metrics import CANCELLED, COMPLETED, DIVERGED, FAILED, INTERRUPTED, TIMEOUT
from bnexp.reuse import code_stamp, code_version

QUIET_ENV = "BNEXP_QUIET_JOBS"  # set while a display runs: jobs write to their output.log
SWEEP_LOG, JOB_LOG = "sweep.log", "output.log"
HANDFUL = 6  # `bnexp train -m` shows the display for sweeps of more jobs than this
STARTUP_S = 5.0  # a sweep's fixed start-up, as in `bnexp claims --plan` (forecast.PER_SWEEP_S)
PRIOR_RUNS = 3.0  # a prior counts as this many measured runs in a sweep's cost per run
PRIOR_SECONDS = 20.0  # and as this many measured seconds in a sweep's speed ratio
MIN_RUNS = 3  # finished runs before the running sweep's speed ratio counts
CLIP = 2.0  # a sweep's speed ratio counts at most this far from the median ratio
ENDED = (COMPLETED, DIVERGED, FAILED, CANCELLED, TIMEOUT, INTERRUPTED)


# ---------------------------------------------------------------------------------------------
# Where the output goes
# ---------------------------------------------------------------------------------------------

class LogFile(io.TextIOBase):
    """A text stream appending to ``path`` (line-buffered). Closing it only closes the file: a
    logging handler that kept it (Hydra binds its handlers to ``sys.stdout`` when it configures
    logging) reopens it on its next write instead of failing."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = Path(path)
        self._file: Any = None

    def _open(self) -> Any:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
        return self._file

    def write(self, text: str) -> int:
        return self._open().write(text)

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def fileno(self) -> int:
        return self._open().fileno()

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def close(self) -> None:  # the stream stays usable: see the class docstring
        if self._file is not None:
            self._file.close()
            self._file = None


@contextmanager
def routed(path: Path, header: bool = False) -> Iterator[LogFile]:
    """``sys.stdout`` and ``sys.stderr`` appended to ``path`` for the duration (``header``: a
    first line with the time and process)."""
    log = LogFile(path)
    if header:
        log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} pid {os.getpid()}\n")
    saved = sys.stdout, sys.stderr
    sys.stdout = sys.stderr = log  # type: ignore[assignment]
    try:
        yield log
    finally:
        sys.stdout, sys.stderr = saved
        log.close()


def job_output(path: Path, header: bool = False) -> Any:
    """In a sweep's job: its output into ``path`` while a display runs (``QUIET_ENV``), else
    where it goes anyway (the terminal, or a SLURM task's own log)."""
    return routed(path, header) if os.environ.get(QUIET_ENV) else nullcontext()


@contextmanager
def _quiet_jobs() -> Iterator[None]:
    saved = os.environ.get(QUIET_ENV)
    os.environ[QUIET_ENV] = "1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(QUIET_ENV, None)
        else:
            os.environ[QUIET_ENV] = saved


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# ---------------------------------------------------------------------------------------------
# Counting runs from the sweep directory
# ---------------------------------------------------------------------------------------------

class Scanner:
    """The run directories under a sweep directory that have ended (a summary.json with a final
    status), read again only when a summary.json changes. ``.previous/``, ``.submitit/`` and
    other hidden folders, and ``tb/``, are not searched."""

    def __init__(self) -> None:
        self._cache: dict[Path, tuple[int, str, str, float]] = {}

    def ended(self, directory: Path | None) -> dict[Path, tuple[str, str, float]]:
        """run dir -> (status, code version, when it ended) for every run that ended."""
        found: dict[Path, tuple[str, str, float]] = {}
        if directory is None or not directory.is_dir():
            return found
        for root, dirs, files in os.walk(directory):
            dirs[:] = [d for d in dirs if not d.startswith(".") and d != "tb"]
            if "summary.json" in files:
                path = Path(root) / "summary.json"
                entry = self._read(path)
                if entry is not None and entry[0] in ENDED:
                    found[path.parent] = entry
        return found

    def _read(self, path: Path) -> tuple[str, str, float] | None:
        try:
            mtime = path.stat().st_mtime_ns
        except OSError:
            return None
        cached = self._cache.get(path)
        if cached is None or cached[0] != mtime:
            summary = read_json(path)
            if not summary:
                return None
            cached = (mtime, str(summary.get("status")), code_version(summary), mtime / 1e9)
            self._cache[path] = cached
        return cached[1:]


# ---------------------------------------------------------------------------------------------
# The estimate
# ---------------------------------------------------------------------------------------------

@dataclass
class Stage:
    """One sweep of the work: its planned runs, its prior cost per run (seconds, or None), and
    what has happened to it in this call."""

    name: str
    runs: int
    directory: Path | None = None
    prior_s: float | None = None
    reused: int = 0  # runs finished by the current code before this call: nothing to run
    started: float | None = None
    ended: float | None = None
    fresh: int = 0  # runs this call finished
    last: float | None = None  # when the latest of them ended
    counts: Counter = field(default_factory=Counter)  # statuses of its ended runs

    @property
    def todo(self) -> int:
        return max(0, self.runs - self.reused)

    @property
    def done(self) -> int:
        return min(self.runs, max(self.reused + self.fresh, sum(self.counts.values())))


def _span(stage: Stage) -> float | None:
    """Seconds from the stage's start to its end, or to its latest finished run."""
    end = stage.ended if stage.ended is not None else stage.last
    if stage.started is None or end is None or (stage.ended is None and not stage.fresh):
        return None
    return max(0.0, end - stage.started)


def _measured_rate(stage: Stage) -> float | None:
    """Seconds per run, the start-up taken out, from this call's finished runs of ``stage``."""
    span = _span(stage)
    if span is None or not stage.fresh:
        return None
    return max(span - STARTUP_S, 0.5 * span) / stage.fresh


def _speed(stages: list[Stage]) -> tuple[float, float | None]:
    """(how this call's measured stages compared with their priors; the mean measured seconds
    per run of the call, start-ups included, or None before any run ended).

    The ratio is measured / prior time over the measured stages (the machine's speed and load
    today), each stage's ratio shrunk towards 1 by PRIOR_SECONDS and held within a factor
    CLIP of the median ratio, so that one sweep whose code got much slower since its prior
    was measured does not scale all the others. The running stage counts once MIN_RUNS of its
    runs have ended."""
    measured, seconds, runs = [], 0.0, 0
    for s in stages:
        span = _span(s)
        if span is None or not s.fresh:
            continue
        seconds, runs = seconds + span, runs + s.fresh
        if s.prior_s is not None and (s.ended is not None or s.fresh >= MIN_RUNS):
            prior = STARTUP_S + s.fresh * s.prior_s + PRIOR_SECONDS
            measured.append((prior, (span + PRIOR_SECONDS) / prior))
    factor = 1.0
    if measured:
        middle = statistics.median(r for _, r in measured)
        clipped = [(w, min(max(r, middle / CLIP), middle * CLIP)) for w, r in measured]
        factor = sum(w * r for w, r in clipped) / sum(w for w, _ in clipped)
    return factor, (seconds / runs if runs else None)


def _stage_left(s: Stage, now: float, factor: float, per_run: float | None) -> float | None:
    prior = None if s.prior_s is None else s.prior_s * factor
    if s.started is None:  # not started: its whole cost
        if s.prior_s is not None:
            return factor * (STARTUP_S + s.todo * s.prior_s)
        return None if per_run is None else s.todo * per_run
    measured = _measured_rate(s)
    if measured is not None and prior is not None:
        rate = (s.fresh * measured + PRIOR_RUNS * prior) / (s.fresh + PRIOR_RUNS)
    else:
        rate = measured if measured is not None else prior if prior is not None else per_run
    if rate is None:
        return None
    remaining = max(0, s.todo - s.fresh) * rate
    return max(STARTUP_S + s.todo * rate - (now - s.started), 0.1 * remaining)


def seconds_left(stages: list[Stage], now: float) -> float | None:
    """The estimated seconds until every stage has ended; None while nothing tells (no prior
    and no run ended yet)."""
    factor, per_run = _speed(stages)
    left = 0.0
    for s in stages:
        if s.ended is not None:
            continue
        part = _stage_left(s, now, factor, per_run)
        if part is None:
            return None
        left += part
    return left


def _plus(left: float | None, more: float) -> float | None:
    return None if left is None else left + more


def clock(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


# ---------------------------------------------------------------------------------------------
# The display
# ---------------------------------------------------------------------------------------------

class Display:
    """The progress of ``stages`` (sweeps run one after another by the caller, each inside
    ``with display.stage(name, directory):``). ``live``: a live display (default: when
    ``out`` is a terminal and not ``verbose``); ``verbose``: the work's own output stays on the
    terminal; ``finish_s``: the seconds the work takes after its last stage. Progress is read
    from the stages' directories, so it counts runs that any process finished."""

    def __init__(self, title: str, stages: list[Stage], verbose: bool = False,
                 out: TextIO | None = None, live: bool | None = None,
                 finish_s: float = 0.0) -> None:
        self.title, self.stages, self.verbose = title, stages, verbose
        self.finish_s = finish_s  # what follows the last stage, in the estimate
        self.out = out if out is not None else sys.stdout
        self.live = (self.out.isatty() if live is None else live) and not verbose
        self.scanner, self.version = Scanner(), code_version(code_stamp())
        self.t0 = time.time()
        self._live: Any = None
        self._console: Any = None
        for s in stages:
            s.reused = self._reused(s)

    def _reused(self, stage: Stage) -> int:
        """Runs of ``stage`` finished by the current code before it started: the call keeps
        them (an older code's are stale, and re-run)."""
        ended = self.scanner.ended(stage.directory)
        return sum(st in (COMPLETED, DIVERGED) and v == self.version
                   for st, v, _ in ended.values())

    def __enter__(self) -> Display:
        from rich.console import Console
        from rich.live import Live

        self._console = Console(file=self.out, highlight=False)
        if self.live:
            self._live = Live(get_renderable=self._render, console=self._console,
                              refresh_per_second=2, transient=True, redirect_stdout=False,
                              redirect_stderr=False)
            self._live.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def _print(self, text: str) -> None:
        """A line that stays (above the live display, or plain)."""
        if self._console is not None:
            self._console.print(text, soft_wrap=True, markup=False)
        else:
            print(text, file=self.out, flush=True)

    @contextmanager
    def stage(self, name: str, directory: Path | None = None) -> Iterator[Stage]:
        """Run one stage: its progress counted from ``directory`` (settable later on the
        stage), the output routed to its ``sweep.log`` unless verbose."""
        stage = next((s for s in self.stages if s.name == name and s.ended is None), None)
        if stage is None:
            stage = Stage(name, 0, directory)
            self.stages.append(stage)
        stage.directory = directory or stage.directory
        stage.reused, stage.started = self._reused(stage), time.time()
        try:
            with self._routing(stage):
                yield stage
        finally:
            self.update(stage)
            stage.ended = time.time()
            self._print(self.line(stage))

    @contextmanager
    def _routing(self, stage: Stage) -> Iterator[None]:
        if self.verbose or stage.directory is None:
            yield
            return
        log = stage.directory / SWEEP_LOG
        try:
            with _quiet_jobs(), routed(log, header=True):
                yield
        except (BnexpError, KeyboardInterrupt):
            raise
        except BaseException:  # a bug or Hydra's own error report: its last lines, not silence
            print(f"sweep {stage.name} stopped; the end of {log}:\n{tail(log)}", file=sys.stderr)
            raise

    def update(self, stage: Stage) -> None:
        """Count the stage's ended runs again from its directory."""
        if stage.started is None:
            return
        ended = self.scanner.ended(stage.directory)
        fresh = [t for _, _, t in ended.values() if t >= stage.started - 1.0]
        stage.fresh, stage.last = len(fresh), max(fresh, default=None)
        stage.counts = Counter(st for st, v, t in ended.values()
                               if t >= stage.started - 1.0 or v == self.version)
        stage.runs = max(stage.runs, stage.reused + stage.fresh)

    # -- what is shown ------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """The numbers shown: runs done and total, statuses, elapsed and estimated seconds."""
        now = time.time()
        counts: Counter = Counter()
        for s in self.stages:
            counts.update(s.counts)
        return {"done": sum(s.done for s in self.stages),
                "total": sum(s.runs for s in self.stages),
                "failed": counts[FAILED] + counts[CANCELLED] + counts[TIMEOUT],
                "diverged": counts[DIVERGED], "elapsed": now - self.t0,
                "left": _plus(seconds_left(self.stages, now), self.finish_s)}

    def _where(self, stage: Stage) -> str:
        index = self.stages.index(stage) + 1
        return f"[{index}/{len(self.stages)}] {stage.name}" if len(self.stages) > 1 else stage.name

    def _tail_text(self, n: dict[str, Any]) -> str:
        left = "estimating" if n["left"] is None else f"about {clock(n['left'])} left"
        if n["done"] >= n["total"] and all(s.ended is not None for s in self.stages):
            left = "done"
        return (f"{n['done']}/{n['total']} runs, {n['failed']} failed, {n['diverged']} "
                f"diverged; {clock(n['elapsed'])} elapsed, {left}")

    def line(self, stage: Stage) -> str:
        """The line a finished stage leaves: its runs and statuses, then the whole call's."""
        statuses = ", ".join(f"{k} {v}" for k, v in sorted(stage.counts.items())) or "no runs"
        reused = f", {stage.reused} reused" if stage.reused else ""
        took = clock((stage.ended or time.time()) - (stage.started or self.t0))
        return (f"{self._where(stage)}: {stage.runs} runs ({statuses}{reused}) in {took} | "
                f"{self._tail_text(self.summary())}")

    def _render(self) -> Any:
        from rich.progress_bar import ProgressBar
        from rich.table import Table

        current = next((s for s in self.stages if s.started and s.ended is None), None)
        if current is not None:
            self.update(current)
        n = self.summary()
        grid = Table.grid(padding=(0, 1))
        where, this = ("starting", "") if current is None else (
            self._where(current), f" ({current.done}/{current.runs} runs)")
        if len(self.stages) == 1:  # the title and the second row say it all
            where, this = "", ""
        grid.add_row(f"{self.title}", ProgressBar(total=max(1, n["total"]), completed=n["done"],
                                                  width=30), f"{where}{this}")
        grid.add_row("", "", self._tail_text(n))
        return grid


# ---------------------------------------------------------------------------------------------
# `bnexp train -m`
# ---------------------------------------------------------------------------------------------

def sweep_watch(verbose: bool) -> Any:
    """For ``bnexp.sweep.run_sweep``'s ``watch``: a display for a sweep of more than
    ``HANDFUL`` jobs (its own output into its log files unless ``verbose``)."""

    @contextmanager
    def watch(sweep_dir: Path, jobs: int) -> Iterator[None]:
        if jobs <= HANDFUL:
            yield
            return
        with Display("sweep", [Stage("sweep", jobs, sweep_dir)], verbose=verbose) as d, \
                d.stage("sweep", sweep_dir):
            yield

    return watch
