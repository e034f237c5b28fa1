"""Time-to-accuracy through the real ``bnexp train`` CLI on real MNIST, plus start-up figures.

For each configuration: wall time from launching the command to the end of the first epoch
whose test accuracy reaches the target (read from the CLI's own per-epoch lines as they are
printed), the time to the first training step (when the step-0 probe record appears in
metrics.jsonl, written just before the first step), and the command's peak RSS. Also the time
``bnexp --help`` takes. Targets (issue 7, 2 CPU cores): default CNN with BN 99.0% within 20 s;
the BN paper's MLP with BN 97.0% within 10 s; first step within 5 s; --help under 1 s; peak
RSS of a default run under 2 GB.

    python scripts/bench_time_to_acc.py --data-root ../shared/data
"""

from __future__ import annotations

import argparse
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
CONFIGS = {
    "default CNN (BN), target 99.0% <= 20 s": ([], 0.990, 20.0),
    # BN lets this sigmoid net take a 20x larger learning rate than the CNN's default.
    "BN paper MLP (3x100 sigmoid, BN, batch 60, lr 1.0, 3 epochs), target 97.0% <= 10 s": (
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


def time_to_accuracy(overrides: list[str], target: float, data_root: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        cmd = [*BNEXP, "train", f"data.root={data_root}", f"output_dir={out}",
               "trainer.progress=plain", "trainer.checkpoint=false", *overrides]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="../shared/data")
    args = parser.parse_args()
    print(f"bnexp --help: {help_time():.2f} s (median of 5; target < 1 s)")
    for name, (overrides, target, budget) in CONFIGS.items():
        r = time_to_accuracy(overrides, target, args.data_root)
        epochs = ", ".join(f"ep{e} {100 * a:.2f}% @{t:.1f}s" for e, a, t in r["epochs"])
        reached = (f"{r['reached'][1]:.1f} s (epoch {r['reached'][0]})" if r["reached"]
                   else "not reached")
        verdict = "met" if r["reached"] and r["reached"][1] <= budget else "MISSED"
        print(f"{name}\n  time to target: {reached} -> {verdict}; first step after "
              f"{r.get('first_step', float('nan')):.1f} s (target <= 5 s); whole run "
              f"{r['total']:.1f} s\n  {epochs}")
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"peak RSS of the largest run: {peak_mb:.0f} MB (target < 2048 MB)")


if __name__ == "__main__":
    main()
