"""What probing costs: the same training with probes off, at the default cadence and at every
step, side by side in one run; prints samples/s and the ratios to probes-off.

Target (issue 4): the default cadence costs at most 5% of throughput on the MNIST MLP and CNN
on 2 CPU cores; every-step probing is reported, not bounded. samples/s counts training time only
(probes run inside the training loop; evaluation is excluded).

    python scripts/bench_probes.py --data-root ../shared/data
    python scripts/bench_probes.py --data-root ../shared/data --steps 600 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

from bnexp.hydra_app import compose_config
from bnexp.train import train

MODELS = {
    "mlp (3x100 sigmoid, BN, batch 60)": ["model=mlp", "model.activation=sigmoid",
                                          "trainer.batch_size=60", "norm=torch"],
    "cnn (default, BN)": ["model=cnn", "norm=torch"],
}
PROBES = {"off": ["probe=off"], "default": ["probe=default"], "every step": ["probe=every_step"]}


def samples_per_s(overrides: list[str], out: str) -> float:
    cfg = compose_config([*overrides, f"output_dir={out}", "trainer.progress=none",
                          "trainer.checkpoint=false", "trainer.eval_every=1000"])
    return train(cfg)["samples_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument("--steps", type=int, default=400, help="training steps per run")
    parser.add_argument("--every-step-steps", type=int, default=100,
                        help="steps for the (slow) every-step runs")
    parser.add_argument("--repeats", type=int, default=3, help="runs per cell; median reported")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out:
        print(f"{'model':>36} {'probes':>11} {'samples/s':>10} {'ratio':>7}")
        for model, model_overrides in MODELS.items():
            base = None
            for probe, probe_overrides in PROBES.items():
                steps = args.every_step_steps if probe == "every step" else args.steps
                overrides = [f"data.root={args.data_root}", f"trainer.steps={steps}",
                             *model_overrides, *probe_overrides]
                # Interleaving is unnecessary: each cell is a median over repeats.
                rates = [samples_per_s(overrides, out) for _ in range(args.repeats)]
                rate = statistics.median(rates)
                base = base or rate
                print(f"{model:>36} {probe:>11} {rate:10.0f} {rate / base:7.3f}", flush=True)


if __name__ == "__main__":
    main()
