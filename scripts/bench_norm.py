"""Forward+backward time of bnexp.norm.BatchNorm against torch.nn.BatchNorm*, side by side.

Target: ratio custom/torch <= 1.0 on every shape (ours no slower than stock), on an idle machine.

Training mode, median of many repeats after warm-up, on MLP-like (N, C) inputs, tall and narrow
ones (thousands of rows, tens of features), and CNN-like (N, C, H, W) ones. For each shape it
prints both times, the ratio custom/torch with its range over the interleaved rounds, the bytes
each saves for backward, the peak extra memory of one forward+backward (measured in a fresh
subprocess as the growth of peak RSS after resetting it; large buffers are mmap'ed, so RSS
follows live memory), and the memory-traffic floor: the bytes a fused implementation must move
(forward: read x for the statistics, read x and write y; backward: read x and dy for the
reductions, read them again and write dx: 8 passes of N floats), timed at the machine's
measured copy bandwidth.

    python scripts/bench_norm.py                # impl=auto: the C kernels (bnexp/kernels/) on CPU
    python scripts/bench_norm.py --impl eager     # the torch-ops path (CUDA, no C compiler)
    python scripts/bench_norm.py --impl compiled  # the torch-ops path fused by torch.compile
    python scripts/bench_norm.py --threads 2 --repeats 200
    python scripts/bench_norm.py --shapes 4096x16 8192x32 --no-memory
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
from torch import nn

from bnexp.norm import IMPLS, BatchNorm, prepare_kernels

SHAPES = [(60, 100), (256, 1024), (4096, 100),
          (2048, 16), (4096, 10), (8192, 16), (8192, 32), (16384, 64),  # tall and narrow
          (128, 32, 16, 16), (128, 64, 32, 32), (32, 128, 8, 8)]


ROUNDS = 5  # the variants alternate this many times per shape: drifting load hits both alike


def make_pair(shape: tuple[int, ...], impl: str) -> tuple[nn.Module, nn.Module]:
    ref = (nn.BatchNorm1d if len(shape) == 2 else nn.BatchNorm2d)(shape[1])
    ours = BatchNorm(shape[1], impl=impl)
    prepare_kernels(ours)  # as training does: build or load the C kernels before timing
    return ref, ours


def time_fwd_bwd(module: nn.Module, x: torch.Tensor, dy: torch.Tensor, repeats: int) -> float:
    """Median seconds of one training-mode forward+backward."""
    times = []
    for i in range(repeats + 10):
        x.grad = None
        module.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        module(x).backward(dy)
        if i >= 10:  # warm-up
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def saved_bytes(module: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the distinct tensors autograd keeps for backward (excluding x and the params,
    which exist anyway)."""
    seen: dict[int, int] = {}
    skip = {x.data_ptr(), *(p.data_ptr() for p in module.parameters())}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.data_ptr() not in skip:
            seen[t.data_ptr()] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x)
    return sum(seen.values())


def peak_extra_mb(which: str, shape: tuple[int, ...], impl: str) -> float:
    """Peak RSS growth of one forward+backward, in a fresh process."""
    code = f"""
import torch, json, sys
sys.path.insert(0, {str(sys.path[0])!r})
from scripts.bench_norm import make_pair
torch.manual_seed(0)
ref, ours = make_pair({shape!r}, {impl!r})
m = ref if {which!r} == "torch" else ours
x = torch.randn({shape!r}, requires_grad=True); dy = torch.randn({shape!r})
m(x[:2].detach().requires_grad_()).backward(dy[:2])  # load kernels, compile
def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1])
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
base = rss("VmRSS:")
m(x).backward(dy)
print(json.dumps((rss("VmHWM:") - base) / 1024))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def copy_bandwidth() -> float:
    """Bytes/s of a large tensor copy (read + write) on this machine."""
    a = torch.randn(16 * 2**20)
    b = torch.zeros_like(a)
    times = []
    for _ in range(20):
        t0 = time.perf_counter()
        b.copy_(a)
        times.append(time.perf_counter() - t0)
    return 2 * a.numel() * 4 / statistics.median(times)


def once_differentiable_cost_us(repeats: int = 20000) -> float:
    """Microseconds once_differentiable's wrapper adds to a backward call in grad mode, which
    is why _BatchNormFn.backward calls the unwrapped function when grad mode is off."""
    from torch.autograd.function import once_differentiable

    def plain(ctx, g):
        return g

    wrapped = once_differentiable(plain)
    g = torch.zeros(())
    best = []
    for fn in (plain, wrapped) * 3:
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn(None, g)
        best.append((time.perf_counter() - t0) / repeats)
    return (min(best[1::2]) - min(best[0::2])) * 1e6


def parse_shape(text: str) -> tuple[int, ...]:
    return tuple(int(d) for d in text.lower().split("x"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impl", choices=IMPLS, default="auto")
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-memory", action="store_true", help="skip the RSS measurement")
    parser.add_argument("--shapes", nargs="+", type=parse_shape, default=SHAPES,
                        help="shapes such as 4096x16 or 128x32x16x16 (default: the built-in set)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    bw = copy_bandwidth()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, impl={args.impl}, "
          f"copy bandwidth {bw / 1e9:.1f} GB/s, median of {args.repeats} repeats, "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    header = (f"{'shape':>18} {'torch ms':>9} {'ours ms':>9} {'ratio':>6} {'range':>10} {'floor ms':>9} "
              f"{'saved KB t/o':>15} {'peak MB t/o':>13}")
    print(header)
    print("-" * len(header))
    ratios = []
    for shape in args.shapes:
        torch.manual_seed(0)
        ref, ours = make_pair(shape, args.impl)
        x = torch.randn(shape, requires_grad=True)
        dy = torch.randn(shape)
        t_ref, t_ours = [], []
        for _ in range(ROUNDS):
            t_ref.append(time_fwd_bwd(ref, x, dy, args.repeats // ROUNDS))
            t_ours.append(time_fwd_bwd(ours, x, dy, args.repeats // ROUNDS))
        tr, to = statistics.median(t_ref), statistics.median(t_ours)
        ratios.append(to / tr)
        rounds = [o / r for o, r in zip(t_ours, t_ref, strict=True)]
        spread = f"{min(rounds):.2f}-{max(rounds):.2f}"
        nbytes = x.numel() * 4
        floor = 8 * nbytes / bw * 1000  # forward 3 passes + backward 5 passes over N floats
        sr, so = saved_bytes(ref, x), saved_bytes(ours, x)
        if args.no_memory:
            mem = "-"
        else:
            mem = (f"{peak_extra_mb('torch', shape, args.impl):.1f}/"
                   f"{peak_extra_mb('ours', shape, args.impl):.1f}")
        print(f"{str(shape):>18} {tr * 1e3:9.3f} {to * 1e3:9.3f} {to / tr:6.2f} {spread:>10} {floor:9.3f} "
              f"{f'{sr / 1024:.1f}/{so / 1024:.1f}':>15} {mem:>13}")
    print(f"worst ratio {max(ratios):.2f}, geometric mean "
          f"{statistics.geometric_mean(ratios):.2f} (target: <= 1.0 on every shape)")
    print(f"once_differentiable's wrapper: {once_differentiable_cost_us():.1f} us per backward "
          "call, skipped when grad mode is off")


if __name__ == "__main__":
    main()
