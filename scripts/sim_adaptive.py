"""The adaptive budget by simulation: error rates and seeds, beside fixed designs.

    python scripts/sim_adaptive.py [--reps 2000]

One paired compare claim (threshold 1 point, per-seed spread 1 point), looks at 5, 10 and 20
seeds, alpha 0.05 split over the looks (Bonferroni), run through bnexp's own decision code
(tests/sim_adaptive.py). Per true effect: the share of each verdict with its Monte-Carlo
standard error, the mean seeds used, the chance of a decision of a fixed 5-seed design (same
tests, alpha 0.05 in one look), and the seeds a fixed design needs for the adaptive budget's
chance of a decision (equal power).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from bnexp.claims.power import _t_power  # noqa: E402
from tests import sim_adaptive as sim  # noqa: E402


def fixed_power(effect: float, sd: float, n: int, alpha: float = 0.05) -> float:
    """A fixed n-seed design: Holm over its two one-sided tests at alpha (first step alpha/2)."""
    return _t_power(effect - sim.THRESHOLD, sd / math.sqrt(n), n - 1, alpha / 2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=2000)
    args = parser.parse_args()
    sd = 0.01
    print(f"{'effect':>7} {'supported':>10} {'not supp.':>10} {'incon.':>7} {'mean seeds':>11} "
          f"{'fixed-5 power':>14} {'fixed n for equal power':>24}")
    for k in (0.0, 0.5, 1.0, 2.0, 3.0):
        r = sim.rates(k * sim.THRESHOLD, sd, args.reps, seed=int(10 * k))
        decided = r["supported"] + r["not supported"]
        se = math.sqrt(max(decided * (1 - decided), 1e-9) / args.reps)
        equal = next((n for n in range(2, 200)
                      if fixed_power(k * sim.THRESHOLD, sd, n) >= decided), None)
        print(f"{k:>6.1f}x {r['supported']:>10.3f} {r['not supported']:>10.3f} "
              f"{r['inconclusive']:>7.3f} {r['mean_seeds']:>11.2f} "
              f"{fixed_power(k * sim.THRESHOLD, sd, 5):>14.3f} {str(equal):>24}"
              f"   (decided {decided:.3f} +- {se:.3f})")
    print(f"Monte-Carlo standard error of a share near 0.05: {math.sqrt(0.05 * 0.95 / args.reps):.4f}"
          f" ({args.reps} simulated calls per row); numpy {np.__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
