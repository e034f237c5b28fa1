"""What probing costs: the same training with probes off, at the default cadence, with the
opt-in ICS and loss-landscape probes at that cadence, and at every step, side by side in one
run; prints samples/s and the ratios to probes-off.

Target: the default probes cost at most 5% of throughput on the MNIST MLP and CNN on 2 CPU
cores; the opt-in probes and every-step probing are reported, not bounded. samples/s counts
training time only (probes run inside the training loop; evaluation is excluded).

    python scripts/bench_probes.py --data-root ../shared/data
    python scripts/bench_probes.py --data-root ../shared/data --repeats 5

Every-step runs train a tenth of the steps (they are ~5x slower).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

from bnexp.hydra_app import compose_config
from bnexp.train import train

# (overrides, training steps per run): about 4 s (MLP) and 8 s (CNN) of training each, so
# the step-0 probe (with histograms) weighs in as it does in a default run, not more.
MODELS = {
    "mlp (3x100 sigmoid, BN, batch 60)": (["model=mlp", "model.activation=sigmoid",
                                           "trainer.batch_size=60", "norm=torch"], 2500),
    "cnn (default, BN)": (["model=cnn", "norm=torch"], 1000),
}
PROBES = {"off": ["probe=off"], "default": ["probe=default"],
          "+ ics": ["probe=default", "probe.ics=true"],
          "+ landscape": ["probe=default", "probe.landscape=true"],
          "every step": ["probe=every_step"]}


def samples_per_s(overrides: list[str], out: str) -> float:
    cfg = compose_config([*overrides, f"output_dir={out}", "trainer.progress=none",
                          "trainer.checkpoint=false", "trainer.eval_every=1000"])
    return train(cfg)["samples_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument("--repeats", type=int, default=3, help="runs per cell; median reported")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out:
        print(f"{'model':>36} {'probes':>13} {'samples/s':>10} {'ratio':>7}")
        for model, (model_overrides, steps) in MODELS.items():
            rates: dict[str, list[float]] = {p: [] for p in PROBES}
            for _ in range(args.repeats):  # interleaved, so drifting machine load hits all alike
                for probe, probe_overrides in PROBES.items():
                    n = max(20, steps // 10) if probe == "every step" else steps
                    overrides = [f"data.root={args.data_root}", f"trainer.steps={n}",
                                 *model_overrides, *probe_overrides]
                    rates[probe].append(samples_per_s(overrides, out))
            base = statistics.median(rates["off"])
            for probe, values in rates.items():
                rate = statistics.median(values)
                print(f"{model:>36} {probe:>13} {rate:10.0f} {rate / base:7.3f}", flush=True)


if __name__ == "__main__":
    main()
