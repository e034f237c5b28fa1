"""Time-to-accuracy through the real ``bnexp train`` CLI on real MNIST, plus start-up figures.

For each configuration and seed: the whole command's wall time (launch to exit, checkpoint and
TensorBoard included, as ``time bnexp train`` measures it), the time to the end of the first
epoch whose test accuracy reaches the target (read from the CLI's own per-epoch lines as they
are printed), the final test accuracy, and the time to the first training step (when the step-0
probe record appears in metrics.jsonl, written just before the first step). The default CNN
runs beside the previous default (issue 24: the 2-epoch recipe, expressed as overrides),
alternating seed by seed, so that both see the same load. Also ``bnexp --help`` and the peak RSS.

Targets (2 idle CPU cores): default CNN with BN 99.0% with the whole command within 10 s on every
seed (issue 24); the BN paper's MLP with BN 97.0% within 10 s; --help under 1 s; peak RSS under
2 GB.

    python scripts/bench_time_to_acc.py --data-root ../shared/data            # 5 seeds
    python scripts/bench_time_to_acc.py --seeds 0,1,2,3,4 --repeats 3 --no-mlp
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BNEXP = [sys.executable, "-m", "bnexp.cli"]
# The default before issue 24 (2 epochs of batch 64, lr 0.1, fp32, pool after the activation,
# global-average-pool head), in today's keys.
PREVIOUS_DEFAULT = ["trainer.epochs=2", "trainer.batch_size=64", "optim.lr=0.1",
                    "optim.warmup=0.2", "trainer.precision=fp32", "model.pool=late",
                    "model.head=gap", "trainer.label_smoothing=0.0"]
CNN = {  # name: (overrides, target accuracy, budget for the whole command in s)
    "default CNN (BN)": ([], 0.990, 10.0),
    "previous default CNN (BN, before issue 24)": (PREVIOUS_DEFAULT, 0.990, 30.0),
}
MLP = {
    # BN lets this sigmoid net take a 20x larger learning rate than the CNN's default.
    "BN paper MLP (3x100 sigmoid, BN, batch 60, lr 1.0, 3 epochs)": (
        ["model=mlp", "model.activation=sigmoid", "trainer.batch_size=60", "norm=torch",
         "optim.lr=1.0", "trainer.epochs=3"], 0.970, 10.0),
}
EPOCH = re.compile(r"^epoch (\d+)/(\d+)\b.*test loss [\d.]+ acc ([\d.]+)%")


def first_step_watcher(out: Path, t0: float, result: dict) -> None:
    """Record when the first metrics.jsonl line (the step-0 probe) appears."""
    while "first_step" not in result and not result.get("done"):
        for f in out.glob("runs/*/metrics.jsonl"):
            if f.stat().st_size > 0:
                result["first_step"] = time.perf_counter() - t0
                return
        time.sleep(0.01)


def run_once(overrides: list[str], target: float, data_root: str, seed: int) -> dict:
    """One ``bnexp train`` command, as a user runs it (checkpoint and TensorBoard included)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        cmd = [*BNEXP, "train", f"data.root={data_root}", f"output_dir={out}",
               "trainer.progress=plain", f"seed={seed}", *overrides]
        result: dict = {"reached": None, "epochs": []}
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        watcher = threading.Thread(target=first_step_watcher, args=(out, t0, result), daemon=True)
        watcher.start()
        for line in proc.stdout:
            m = EPOCH.match(line)
            if m:
                elapsed, acc = time.perf_counter() - t0, float(m.group(3)) / 100
                result["epochs"].append((int(m.group(1)), acc, elapsed))
                if result["reached"] is None and acc >= target:
                    result["reached"] = (int(m.group(1)), elapsed)
        proc.wait()
        result["done"] = True
        result["total"] = time.perf_counter() - t0
        result["returncode"] = proc.returncode
    return result


def help_time(repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([*BNEXP, "--help"], capture_output=True, check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def describe(results: list[dict]) -> str:
    """Median and range of the whole command, of the time to target, and the final accuracies."""
    totals = [r["total"] for r in results]
    reached = [r["reached"][1] for r in results if r["reached"]]
    finals = [100 * r["epochs"][-1][1] if r["epochs"] else float("nan") for r in results]
    first = [r["first_step"] for r in results if "first_step" in r]
    parts = [f"whole command median {statistics.median(totals):.1f} s "
             f"({min(totals):.1f}-{max(totals):.1f})",
             f"target reached in {len(reached)}/{len(results)}"
             + (f", median {statistics.median(reached):.1f} s" if reached else ""),
             f"final test acc {min(finals):.2f}-{max(finals):.2f}%"]
    if first:
        parts.append(f"first step median {statistics.median(first):.1f} s")
    return "; ".join(parts)


def bench(configs: dict, seeds: list[int], repeats: int, data_root: str) -> None:
    """Every configuration for every seed and repeat, alternating configurations within a seed."""
    results: dict[str, list[dict]] = {name: [] for name in configs}
    for repeat in range(repeats):
        for seed in seeds:
            for name, (overrides, target, budget) in configs.items():
                r = run_once(overrides, target, data_root, seed)
                results[name].append(r)
                final = f"{100 * r['epochs'][-1][1]:.2f}%" if r["epochs"] else "no epoch line"
                verdict = "met" if r["reached"] and r["total"] <= budget else "MISSED"
                print(f"  repeat {repeat} seed {seed} {name}: whole command {r['total']:.1f} s, "
                      f"test acc {final}, target {target:.1%} within {budget:.0f} s: {verdict}",
                      flush=True)
    for name, rs in results.items():
        print(f"{name}: {describe(rs)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated seeds")
    parser.add_argument("--repeats", type=int, default=1, help="passes over the seeds")
    parser.add_argument("--no-mlp", action="store_true", help="skip the BN paper MLP")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start; "
          f"bnexp --help: {help_time():.2f} s (median of 5; target < 1 s)", flush=True)
    bench(CNN, seeds, args.repeats, args.data_root)
    if not args.no_mlp:
        bench(MLP, seeds[:1], 1, args.data_root)
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"peak RSS of the largest run: {peak_mb:.0f} MB (target < 2048 MB); load average "
          f"{os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
