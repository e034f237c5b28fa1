"""Two trainings at once on a small machine: does each keep a fair share of the lone speed?

Runs `bnexp train` for the default CNN and the BN paper's MLP: one alone, then two at once
(same config, started together), alternating, ``--repeat`` times, and prints samples/s (from each
run's median step time) with the ratio of each of the pair to the lone run. Targets: two at once
each >= 0.4x the lone throughput; the lone run no slower than torch's default thread settings
(``--baseline`` also runs both cases with bnexp's thread sharing off: torch's defaults).

    python scripts/bench_contention.py [--steps 300] [--repeat 2] [--baseline]
    python scripts/bench_contention.py --env OMP_WAIT_POLICY=PASSIVE   # try a policy

Run it alone on the machine: any other process makes the numbers meaningless.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BNEXP = [sys.executable, "-m", "bnexp.cli"]
MODELS = {
    "default CNN": ["model=cnn", "norm=torch"],
    "BN paper MLP": ["model=mlp", "model.activation=sigmoid", "trainer.batch_size=60", "norm=torch"],
}


def start(args: list[str], out: Path, env: dict[str, str]) -> subprocess.Popen:
    cmd = [*BNEXP, "train", *args, f"output_dir={out}", "data.val_size=0",
           "trainer.train_eval_size=0", "probe=off", "trainer.checkpoint=false",
           "trainer.progress=none", "trainer.log_every=25"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


def throughput(out: Path, proc: subprocess.Popen) -> tuple[float, int]:
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"bnexp train failed:\n{err}")
    (summary_path,) = (out / "runs").glob("*/summary.json")
    summary = json.loads(summary_path.read_text())
    batch = 60 if "trainer.batch_size=60" in proc.args else 64
    return 1000 * batch / summary["final"]["time/step_ms_median"], summary["threads"]


def run(args: list[str], n: int, env: dict[str, str]) -> list[tuple[float, int]]:
    with tempfile.TemporaryDirectory() as tmp:
        outs = [Path(tmp, str(i)) for i in range(n)]
        procs = [start(args, o, env) for o in outs]
        return [throughput(o, p) for o, p in zip(outs, procs, strict=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--data-root", default=os.environ.get("BNEXP_DATA", "../shared/data"))
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the runs")
    parser.add_argument("--baseline", action="store_true",
                        help="also time both cases with BNEXP_THREADS=off (torch's defaults)")
    opts = parser.parse_args()
    env = {**os.environ, **dict(e.split("=", 1) for e in opts.env)}
    print(f"{os.cpu_count()} CPUs; extra env: {opts.env or 'none'}; {opts.steps} steps a run")
    print(f"{'model':<14} {'case':<22} {'samples/s (threads)':<40} ratio to alone")
    for name, model_args in MODELS.items():
        args = [*model_args, f"data.root={opts.data_root}", f"trainer.steps={opts.steps}"]
        cases = [("alone", 1, env), ("two at once", 2, env)]
        if opts.baseline:  # the same two cases with torch's own thread settings
            off = {**env, "BNEXP_THREADS": "off"}
            cases = [("alone, torch default", 1, off), cases[0],
                     ("two, torch default", 2, off), cases[1]]
        results: dict[str, list[float]] = {c: [] for c, _, _ in cases}
        threads: dict[str, set[int]] = {c: set() for c, _, _ in cases}
        for _ in range(opts.repeat):  # alternate the cases: drift in load hits all of them
            for case, n, case_env in cases:
                for tput, t in run(args, n, case_env):
                    results[case].append(tput)
                    threads[case].add(t)
                time.sleep(1)
        lone = statistics.median(results["alone"])
        for case, values in results.items():
            text = ", ".join(f"{v:,.0f}" for v in values)
            ratios = [v / lone for v in values]
            print(f"{name:<14} {case:<22} {text + f' ({sorted(threads[case])})':<40} "
                  f"{min(ratios):.2f}-{max(ratios):.2f}")


if __name__ == "__main__":
    main()
