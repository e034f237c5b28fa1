"""bnexp's tensor-resident pipeline against the conventional one of the PyTorch MNIST example,
side by side: the same model and optimizer trained for one epoch of MNIST.

- bnexp: ``bnexp.train.train`` as ``bnexp train`` runs it, with its full logging on (per-step
  TensorBoard scalars, probes at the default cadence, metrics.jsonl); samples/s over the
  training loop (evaluation excluded).
- conventional: ``torchvision.datasets.MNIST`` + ``ToTensor`` + ``Normalize`` +
  ``DataLoader(batch_size, shuffle=True)`` and a bare training loop with no logging at all.

Targets (issue 7) on 2 CPU cores: at least 6x on the BN paper's MLP (3x100 sigmoid, batch 60)
and at least 1.3x on bnexp's default CNN.

    python scripts/bench_pipeline.py --data-root ../shared/data
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

from bnexp.build import make_optimizer
from bnexp.hydra_app import compose_config
from bnexp.models import build_model
from bnexp.train import train

MODELS = {
    "BN paper MLP (3x100 sigmoid, BN, batch 60)": ["model=mlp", "model.activation=sigmoid",
                                                   "trainer.batch_size=60", "norm=torch",
                                                   "optim.schedule=constant"],
    "default CNN (BN)": ["optim.schedule=constant"],
}


def conventional_samples_per_s(cfg, data_root: str, max_steps: int | None) -> float:
    """One epoch the way the PyTorch MNIST example feeds its model."""
    from torchvision import datasets, transforms

    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    dataset = datasets.MNIST(data_root, train=True, transform=transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.trainer.batch_size, shuffle=True)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, cfg.norm, (1, 28, 28), 10)
    optimizer = make_optimizer(model.parameters(), cfg.optim)
    model.train()
    seen, t0 = 0, time.perf_counter()
    for step, (x, y) in enumerate(loader):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        seen += len(y)
        if max_steps and step + 1 >= max_steps:
            break
    return seen / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument("--repeats", type=int, default=3, help="median of this many runs")
    parser.add_argument("--cnn-steps", type=int, default=150,
                        help="steps for the CNN (a full epoch of the slow pipeline takes ~35 s)")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of "
          f"{args.repeats} runs")
    print(f"{'model':>44} {'conventional':>13} {'bnexp':>9} {'ratio':>6}")
    with tempfile.TemporaryDirectory() as out:
        for name, overrides in MODELS.items():
            steps = args.cnn_steps if "CNN" in name else None
            cfg = compose_config([f"data.root={args.data_root}", f"output_dir={out}",
                                  "trainer.progress=none", "trainer.checkpoint=false",
                                  "trainer.epochs=1", *overrides,
                                  *([f"trainer.steps={steps}"] if steps else [])])
            ours, theirs = [], []
            for _ in range(args.repeats):  # interleaved: drifting load hits both alike
                theirs.append(conventional_samples_per_s(cfg, args.data_root, steps))
                ours.append(train(cfg)["samples_per_s"])
            a, b = statistics.median(theirs), statistics.median(ours)
            print(f"{name:>44} {a:11.0f}/s {b:7.0f}/s {b / a:6.2f}", flush=True)


if __name__ == "__main__":
    main()
