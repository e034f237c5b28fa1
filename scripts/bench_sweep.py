"""The same 4-job sweep of short MNIST MLP runs with Hydra's basic launcher (sequential, in one
process) and with joblib (2 jobs at once), side by side, through the real CLI.

Target (issue 5): joblib wall time at most 0.6x of sequential on 2 cores, every job's metrics
identical to its sequential twin. Floating-point results depend on the number of torch threads
(reductions are split differently), and joblib gives each of its 2 jobs cores/2 = 1 thread, so
the twin that must match exactly is the sequential sweep at 1 thread; the speed baseline is the
sequential sweep at torch's default (all cores), which is what a user would otherwise run.

    python scripts/bench_sweep.py --data-root ../shared/data [--epochs 2]

Each joblib worker is a new process that pays torch's import (~1.5 s) and torch._dynamo's (the
optimizer imports it on construction, ~1.1 s) before its first job, while the sequential sweep
pays that once. bnexp starts the workers when the sweep begins, so that import overlaps Hydra's
planning, and stops them when the last job returns (joblib would otherwise wait ~0.8 s for them
at exit); what remains is one start-up per worker on the critical path, about one 2-epoch job.
With start-up S and job time J the ratio is (S + 2J) / (S + 4J): --epochs shows it fall as jobs
get longer.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GRID = ["seed=0,1,2,3"]
RUN = ["model=mlp", "trainer.progress=none", "trainer.checkpoint=false"]


def run_sweep(data_root: str, out: Path, extra: list[str]) -> tuple[float, dict[int, dict], float]:
    """Wall time of ``bnexp train -m``, each job's final metrics by job number, and the sum of
    the jobs' own wall times (summary.json's wall_time_s)."""
    cmd = [sys.executable, "-m", "bnexp.cli", "train", "-m", f"data.root={data_root}",
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per job (short runs: 2)")
    args = parser.parse_args()
    RUN.append(f"trainer.epochs={args.epochs}")
    with tempfile.TemporaryDirectory() as tmp:
        seq_wall, seq, seq_jobs = run_sweep(args.data_root, Path(tmp, "seq"), [])
        seq1_wall, seq1, _ = run_sweep(args.data_root, Path(tmp, "seq1"), ["trainer.threads=1"])
        par_wall, par, _ = run_sweep(args.data_root, Path(tmp, "par"),
                                     ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"])
    print(f"4 jobs ({' '.join(RUN + GRID)})")
    print(f"{'launcher':>32} {'wall s':>8} {'ratio':>7}")
    print(f"{'basic (sequential, all threads)':>32} {seq_wall:8.1f} {1.0:7.2f}")
    print(f"{'basic (sequential, 1 thread)':>32} {seq1_wall:8.1f} {seq1_wall / seq_wall:7.2f}")
    print(f"{'joblib (2 jobs x 1 thread)':>32} {par_wall:8.1f} {par_wall / seq_wall:7.2f}")
    same = max_diff(par, seq1)
    print(f"joblib vs sequential at 1 thread: max metric difference {same:.3g} "
          f"({'identical' if same == 0 else 'DIFFERENT'})")
    print(f"joblib vs sequential at all threads: max metric difference {max_diff(par, seq):.3g} "
          "(thread count changes reduction order)")
    job, start = seq_jobs / len(seq), seq_wall - seq_jobs
    print(f"sequential: S = {start:.1f} s outside the jobs (imports, Hydra's planning and "
          f"per-job composing) + {len(seq)} jobs of J = {job:.1f} s; 2 workers that each pay "
          f"the start-up reach about (S + 2J) / (S + 4J) = {(start + 2 * job) / (start + 4 * job):.2f}")
    print(f"target: joblib / sequential <= 0.6 -> {par_wall / seq_wall:.2f}")


if __name__ == "__main__":
    main()
