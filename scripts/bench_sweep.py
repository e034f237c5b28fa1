"""The same 4-job sweep of short MNIST MLP runs with Hydra's basic launcher (sequential, in one
process) and with joblib (2 jobs at once), side by side, through the real CLI.

Target (issue 5): joblib wall time at most 0.6x of sequential on 2 cores, every job's metrics
identical to its sequential twin. Floating-point results depend on the number of torch threads
(reductions are split differently), and joblib gives each of its 2 jobs cores/2 = 1 thread, so
the twin that must match exactly is the sequential sweep at 1 thread; the speed baseline is the
sequential sweep at torch's default (all cores), which is what a user would otherwise run.

    python scripts/bench_sweep.py --data-root ../shared/data [--epochs 2 5] [--repeat 2]
    python scripts/bench_sweep.py --data-root ../shared/data --warmup --epochs 1 --repeat 6

``--warmup`` measures what ``bnexp.sweep.joblib_warmup`` (joblib's workers started, and their
imports done, while the sweep is planned; stopped as soon as it ends) gains: the same joblib
sweep with and without it, interleaved, medians and ranges of the wall times. On the 2-core VM
(shared with other work, load average ~2), with the command above: 8.4 s [8.1, 8.6] with it,
9.4 s [9.1, 9.7] without, over 4 tries each; on tiny generated data (tests/conftest.py,
4 one-epoch jobs) it was faster in 14 of 14 interleaved rounds, by 0.8 s [0.25, 1.3].

Parallel workers divide the jobs, not the start-up: no job begins before a process has started
Python, imported torch and torch._dynamo (~2 s here; torch.optim imports the latter at its first
step) and Hydra has planned the sweep, about S = 3.5-4 s with either launcher (bnexp starts the
joblib workers as the sweep begins, so that their imports overlap Hydra's planning, and stops
them when the last job returns: ``--warmup`` measures that). With 4 jobs of J seconds, 2
workers reach at best about (S + 2J) / (S + 4J): ~0.65 for 2-epoch jobs of ~2.4 s, under 0.6
once a job lasts longer than the start-up (5 epochs, ~6 s). So the default measures both
lengths.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GRID = ["seed=0,1,2,3"]
RUN = ["model=mlp", "trainer.progress=none", "trainer.checkpoint=false"]


# `bnexp` with bnexp.sweep.joblib_warmup replaced by a no-op (for --warmup's baseline)
WITHOUT_WARMUP = """
import contextlib, sys
import bnexp.sweep
bnexp.sweep.joblib_warmup = lambda overrides: contextlib.nullcontext()
from bnexp.cli import app
sys.argv = ["bnexp", *sys.argv[1:]]
app()
"""


def run_sweep(data_root: str, out: Path, extra: list[str], warmup: bool = True
              ) -> tuple[float, dict[int, dict], float]:
    """Wall time of ``bnexp train -m``, each job's final metrics by job number, and the sum of
    the jobs' own wall times (summary.json's wall_time_s)."""
    bnexp = ["-m", "bnexp.cli"] if warmup else ["-c", WITHOUT_WARMUP]
    cmd = [sys.executable, *bnexp, "train", "-m", f"data.root={data_root}",
           f"output_dir={out}", *RUN, *GRID, *extra]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    (sweep_dir,) = (out / "sweeps").iterdir()
    manifest = json.loads((sweep_dir / "sweep.json").read_text())
    finals, job_time = {}, 0.0
    for num, job in manifest["jobs"].items():
        summary = json.loads((sweep_dir / job["dir"] / "summary.json").read_text())
        finals[int(num)] = {k: v for k, v in summary["final"].items() if not k.startswith("time/")}
        job_time += summary["wall_time_s"]
    return wall, finals, job_time


def max_diff(a: dict[int, dict], b: dict[int, dict]) -> float:
    return max(abs(a[n][k] - b[n][k]) for n in a for k in a[n])


def bench(data_root: str, epochs: int, repeat: int, tmp: Path) -> dict[str, float]:
    """The sweeps for jobs of ``epochs`` epochs; prints their table, returns the figures.

    The sequential and joblib sweeps alternate ``repeat`` times and each keeps its fastest
    wall time (this 2-core VM's timings vary by ~5% from run to run); the 1-thread twin runs
    once, for the metrics."""
    run = [*RUN, f"trainer.epochs={epochs}"]
    out = tmp / f"e{epochs}"
    seq_runs, par_runs = [], []
    for i in range(repeat):
        seq_runs.append(run_sweep(data_root, out / f"seq{i}", run))
        par_runs.append(run_sweep(data_root, out / f"par{i}",
                                  [*run, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]))
    seq_wall, seq, seq_jobs = min(seq_runs, key=lambda r: r[0])
    par_wall, par, _ = min(par_runs, key=lambda r: r[0])
    seq1_wall, seq1, _ = run_sweep(data_root, out / "twin", [*run, "trainer.threads=1"])
    print(f"\n4 jobs ({' '.join(run + GRID)}); wall s of each try: sequential "
          f"{', '.join(f'{r[0]:.1f}' for r in seq_runs)}; joblib "
          f"{', '.join(f'{r[0]:.1f}' for r in par_runs)}")
    print(f"{'launcher':>32} {'wall s':>8} {'ratio':>7}")
    print(f"{'basic (sequential, all threads)':>32} {seq_wall:8.1f} {1.0:7.2f}")
    print(f"{'basic (sequential, 1 thread)':>32} {seq1_wall:8.1f} {seq1_wall / seq_wall:7.2f}")
    print(f"{'joblib (2 jobs x 1 thread)':>32} {par_wall:8.1f} {par_wall / seq_wall:7.2f}")
    same = max(max_diff(r[1], seq1) for r in par_runs)
    print(f"joblib (every try) vs sequential at 1 thread: max metric difference {same:.3g} "
          f"({'identical' if same == 0 else 'DIFFERENT'})")
    print(f"joblib vs sequential at all threads: max metric difference {max_diff(par, seq):.3g} "
          "(thread count changes reduction order)")
    job, start = seq_jobs / len(seq), seq_wall - seq_jobs
    bound = (start + 2 * job) / (start + 4 * job)
    print(f"sequential: S = {start:.1f} s outside the jobs (imports, Hydra's planning and "
          f"per-job composing) + {len(seq)} jobs of J = {job:.1f} s; 2 workers divide the jobs, "
          f"not the start-up: about (S + 2J) / (S + 4J) = {bound:.2f}")
    return {"epochs": epochs, "job": job, "ratio": par_wall / seq_wall, "identical": same == 0}


def bench_warmup(data_root: str, epochs: int, repeat: int, tmp: Path) -> None:
    """The joblib sweep with and without the warm-up, alternating (the order flips each
    round, so a trend in the machine's load hits both alike)."""
    run = [*RUN, f"trainer.epochs={epochs}", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    walls: dict[bool, list[float]] = {True: [], False: []}
    for i in range(repeat):
        for warmup in ((True, False) if i % 2 == 0 else (False, True)):
            out = tmp / f"warmup{epochs}-{i}-{warmup}"
            walls[warmup].append(run_sweep(data_root, out, run, warmup=warmup)[0])
    print(f"\n4 joblib jobs ({' '.join(run + GRID)}), {repeat} tries each, interleaved:")
    for warmup, label in ((True, "with joblib_warmup"), (False, "without")):
        w = sorted(walls[warmup])
        print(f"{label:>20}: median {statistics.median(w):.1f} s [{w[0]:.1f}, {w[-1]:.1f}]")
    gains = sorted(off - on for on, off in zip(walls[True], walls[False], strict=True))
    print(f"{'gain':>20}: median {statistics.median(gains):+.2f} s [{gains[0]:+.2f}, "
          f"{gains[-1]:+.2f}] per round; faster with it in {sum(g > 0 for g in gains)} of "
          f"{len(gains)} rounds")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument("--epochs", type=int, nargs="+", default=[2, 5],
                        help="epochs per job, one set of sweeps each (default: 2 5)")
    parser.add_argument("--repeat", type=int, default=2,
                        help="tries of the sequential and joblib sweeps; the fastest counts")
    parser.add_argument("--warmup", action="store_true",
                        help="measure the joblib warm-up instead (with and without it)")
    args = parser.parse_args()
    if args.warmup:
        with tempfile.TemporaryDirectory() as tmp:
            for e in args.epochs:
                bench_warmup(args.data_root, e, args.repeat, Path(tmp))
        return
    with tempfile.TemporaryDirectory() as tmp:
        results = [bench(args.data_root, e, args.repeat, Path(tmp)) for e in args.epochs]
    print("\ntarget: joblib / sequential <= 0.6, metrics identical to the sequential twin")
    for r in results:
        met = r["ratio"] <= 0.6 and r["identical"]
        print(f"  {r['epochs']}-epoch jobs (J = {r['job']:.1f} s): {r['ratio']:.2f} "
              f"{'met' if met else 'not met'}")


if __name__ == "__main__":
    main()
