"""Packed training (bnexp/pack/) against the same seeds trained one after another.

Per configuration, in one process, alternating round by round: the seeds as one packed model
(``bnexp.pack.loop.train_pack``) and the same seeds one run after another (``bnexp.train``),
each writing its real run directories (probes, evaluations, checkpoints included). Reported:
training samples/s (from each run's own ``samples_per_s``, training steps only: packed, the
seeds' together; one by one, one run's, as it runs alone) and the wall time
of all the seeds (set-up to the last summary.json), as medians with their ranges over the
rounds, and the packed/unpacked ratios.

``--sweep`` also times the whole CLI sweep of issue 23's acceptance check (the BN paper's MLP,
8 seeds, 1500 steps, ``sweep.pack=true`` vs ``false``, alternating) and compares seed 3's
test accuracy.

Timings need the machine to itself (pin nothing else on its cores); quote the device.

    python scripts/bench_pack.py --data-root ../shared/data                 # all configurations
    python scripts/bench_pack.py --configs mlp --steps 200 --rounds 3
    python scripts/bench_pack.py --sweep --rounds 1 --configs none
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

# name: overrides (each run gets trainer.steps, seed, data.root, output_dir on top)
CONFIGS = {
    "mlp": ("BN paper MLP 784-100x3-10 sigmoid, BN, batch 60",
            ["experiment=ioffe_mnist", "norm=torch", "optim.lr=0.3"]),
    "cnn": ("default CNN, BN, batch 64", ["model=cnn", "norm=torch"]),
    "santurkar_cnn": ("claims' santurkar CNN (ICS + landscape probes), batch 64",
                      ["experiment=santurkar", "model=cnn", "norm=torch"]),
    "santurkar_cnn_noisy": ("claims' santurkar CNN, noisy BN, batch 64",
                            ["experiment=santurkar", "model=cnn", "norm=noisy"]),
    "cnn_b4": ("default CNN, BN, batch 4 (claim 7's smallest batch)",
               ["model=cnn", "norm=torch", "trainer.batch_size=4"]),
    "cnn_b16": ("default CNN, BN, batch 16", ["model=cnn", "norm=torch", "trainer.batch_size=16"]),
    "mlp_b4": ("small_batch MLP, BN, batch 4", ["experiment=small_batch", "norm=torch",
                                                 "trainer.batch_size=4"]),
}
QUIET = ["trainer.progress=none", "trainer.eval_single=0"]


def compose(overrides: list[str]):
    from bnexp.hydra_app import compose_config

    return compose_config(overrides)


def one_round(overrides: list[str], seeds: list[int], out: Path, packed: bool) -> dict:
    """Train ``seeds`` packed or one by one; wall time and per-run samples/s."""
    from bnexp.pack.loop import train_pack
    from bnexp.train import train

    cfgs = [compose([*overrides, f"seed={s}", f"output_dir={out}"]) for s in seeds]
    dirs = [out / f"seed{s}" for s in seeds]
    t0 = time.perf_counter()
    if packed:
        summaries = train_pack(cfgs, [[f"seed={s}"] for s in seeds], dirs, "bench")
    else:
        summaries = [train(c, [f"seed={s}"], run_dir=d) for c, d, s in zip(cfgs, dirs, seeds, strict=True)]
    wall = time.perf_counter() - t0
    rates = [s["samples_per_s"] for s in summaries if s.get("samples_per_s")]
    # Packed, each replica's rate is the pack's: the seeds' samples/s together is their sum;
    # one by one, one run's rate is what the seeds get (each runs alone).
    return {"wall": wall, "throughput": sum(rates) if packed else statistics.mean(rates),
            "test_acc": [s["final"].get("test/acc") for s in summaries],
            "status": [s["status"] for s in summaries]}


def bench_config(name: str, args: argparse.Namespace) -> dict:
    label, overrides = CONFIGS[name]
    overrides = [*overrides, f"trainer.steps={args.steps}", f"data.root={args.data_root}",
                 f"trainer.device={args.device}", f"trainer.precision={args.precision}", *QUIET]
    if args.threads:
        overrides.append(f"trainer.threads={args.threads}")
    seeds = list(range(args.seeds))
    results: dict[str, list[dict]] = {"packed": [], "single": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = ("packed", "single") if r % 2 == 0 else ("single", "packed")
            for mode in order:
                out = Path(tmp) / f"{mode}{r}"
                results[mode].append(one_round(overrides, seeds, out, mode == "packed"))
    return {"label": label, **results}


def _med(values: list[float]) -> str:
    return f"{statistics.median(values):,.0f} [{min(values):,.0f}-{max(values):,.0f}]"


def report(name: str, res: dict, seeds: int) -> None:
    p, s = res["packed"], res["single"]
    rate_p, rate_s = [r["throughput"] for r in p], [r["throughput"] for r in s]
    wall_p, wall_s = [r["wall"] for r in p], [r["wall"] for r in s]
    print(f"\n{name}: {res['label']}, {seeds} seeds")
    print(f"  training samples/s     packed {_med(rate_p)}   one by one {_med(rate_s)}   "
          f"ratio {statistics.median(rate_p) / statistics.median(rate_s):.2f}x")
    print(f"  wall, all seeds (s)    packed {statistics.median(wall_p):.1f} "
          f"[{min(wall_p):.1f}-{max(wall_p):.1f}]   one by one {statistics.median(wall_s):.1f} "
          f"[{min(wall_s):.1f}-{max(wall_s):.1f}]   ratio "
          f"{statistics.median(wall_p) / statistics.median(wall_s):.2f}x")
    pairs = [(x, y) for x, y in zip(p, s, strict=True)]
    same = all(x["status"] == y["status"] for x, y in pairs)
    accs = [(a, b) for x, y in pairs for a, b in zip(x["test_acc"], y["test_acc"], strict=True)
            if a is not None and b is not None]
    gap = max((abs(a - b) for a, b in accs), default=0.0)
    print(f"  same statuses: {same}; largest test-acc difference, packed vs not: "
          f"{100 * gap:.2f} points")


def time_sweep(args: argparse.Namespace) -> None:
    """Issue 23's acceptance sweep through the CLI, sweep.pack=true vs false, alternating."""
    seeds = ",".join(str(s) for s in range(8))
    base = [sys.executable, "-m", "bnexp.cli", "train", "-m", "experiment=ioffe_mnist",
            "norm=torch", "optim.lr=0.3", f"seed={seeds}", f"trainer.steps={args.sweep_steps}",
            f"data.root={args.data_root}", f"trainer.precision={args.precision}",
            "trainer.progress=none"]
    walls: dict[str, list[float]] = {"true": [], "false": []}
    acc3: dict[str, list[float]] = {"true": [], "false": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for pack in (("true", "false") if r % 2 == 0 else ("false", "true")):
                out = Path(tmp) / f"{pack}{r}"
                t0 = time.perf_counter()
                done = subprocess.run([*base, f"sweep.pack={pack}", f"output_dir={out}"],
                                      capture_output=True, text=True)
                walls[pack].append(time.perf_counter() - t0)
                print(f"  sweep.pack={pack}: {walls[pack][-1]:.1f} s, exit {done.returncode}",
                      flush=True)
                if done.returncode:
                    print(done.stdout[-2000:], done.stderr[-2000:])
                    return
                (job,) = (out / "sweeps").glob("*/3_*")
                acc3[pack].append(json.loads((job / "summary.json").read_text())["final"]["test/acc"])
    t, f = statistics.median(walls["true"]), statistics.median(walls["false"])
    print(f"\nsweep experiment=ioffe_mnist norm=torch optim.lr=0.3 seed=0..7 "
          f"trainer.steps={args.sweep_steps}:")
    print(f"  wall sweep.pack=true {t:.1f} s {walls['true']}, false {f:.1f} s {walls['false']}: "
          f"{t / f:.2f}x")
    print(f"  seed 3 test acc: packed {acc3['true']}, unpacked {acc3['false']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-root", default=os.environ.get("BNEXP_DATA", "../shared/data"))
    ap.add_argument("--configs", default="mlp,cnn,santurkar_cnn,cnn_b4",
                    help=f"comma-separated, of {', '.join(CONFIGS)} (none: only --sweep)")
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="trainer.threads (0: bnexp's share)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--sweep", action="store_true", help="also time issue 23's CLI sweep")
    ap.add_argument("--sweep-steps", type=int, default=1500)
    args = ap.parse_args()
    import torch

    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1, fused=True)  # imports dynamo
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU x{os.cpu_count()}"
    print(f"bench_pack: {args.seeds} seeds, {args.steps} steps, {args.rounds} rounds, {device}, "
          f"load average {os.getloadavg()[0]:.1f}, torch {torch.__version__}")
    for name in [c for c in args.configs.split(",") if c and c != "none"]:
        report(name, bench_config(name, args), args.seeds)
    if args.sweep:
        time_sweep(args)


if __name__ == "__main__":
    main()
