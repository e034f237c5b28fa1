"""Builds, loads and calls the C BatchNorm kernels (``bn_cpu.c``) for CPU float32/float64 tensors.

``load()`` compiles the C source with the system's C compiler (``$CC`` or ``cc``) into a
per-user cache, keyed by a hash of the sources, compiler, flags and CPU, and loads it with
ctypes: no build step at install time, and no torch headers (which take a minute to compile
against). ``bnexp.norm.prepare_kernels`` calls it before training; a layer nobody prepared
calls it on its first CPU float forward (``bnexp.norm``), once per process. Where there is no
compiler, ``load()`` warns once and returns False, and BatchNorm runs the torch-ops path instead.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch

from bnexp import user_cache_dir

SOURCE = Path(__file__).with_name("bn_cpu.c")
SOURCES = (SOURCE, SOURCE.with_name("bn_cpu_impl.h"))  # what the build reads: the cache key
# -march=native: the cache key includes this CPU's feature flags, so a home directory shared by
# different machines (a cluster) keeps one build per CPU kind. Without OpenMP (Apple's clang),
# the kernels run on one thread.
FLAG_SETS = (["-O3", "-march=native", "-fopenmp", "-fPIC", "-shared", "-std=c11"],
             ["-O3", "-fPIC", "-shared", "-std=c11"])

_P, _I, _D = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double
_SIGNATURES = {  # argument types: ctypes then converts plain ints and floats quickly
    "bn_forward": [_P, _P, _I, _I, _I, _P, _P, _D, _P, _P, _P, _P, _D, ctypes.c_int],
    "bn_backward": [_P, _P, _P, _I, _I, _I, _P, _P, _P, _P, ctypes.c_int],
}
_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}
_FNS: dict[tuple[str, torch.dtype], ctypes._CFuncPtr] = {}  # filled by load()
_TRIED: list[bool] = []  # load() has run (and warned, if it failed)


def cache_dir() -> Path:
    """Where built kernels live: $BNEXP_CACHE, else bnexp's per-user cache."""
    if os.environ.get("BNEXP_CACHE"):
        return Path(os.environ["BNEXP_CACHE"])
    return user_cache_dir()


def _cpu_id() -> str:
    """The machine and its CPU feature flags: what -march=native compiles for."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        flags = platform.processor()
    return platform.machine() + flags


def build() -> Path:
    """The path of the compiled kernels for these sources, compiler and CPU, building if needed."""
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None:
        raise OSError(f"no C compiler {cc!r} on PATH (set $CC to use another)")
    source = b"".join(path.read_bytes() for path in SOURCES)
    key = hashlib.sha256(source + f"{cc} {FLAG_SETS} {_cpu_id()}".encode()).hexdigest()[:16]
    target = cache_dir() / "kernels" / f"bn_cpu-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for flags in FLAG_SETS:
        # Build beside the target, then rename: parallel sweep jobs may race to build it.
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        try:
            result = subprocess.run([cc, *flags, str(SOURCE), "-o", tmp, "-lm"],
                                    capture_output=True, text=True)
            if result.returncode == 0:
                os.replace(tmp, target)
                return target
            errors.append(result.stderr.strip()[-300:])
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise OSError(f"{cc} could not build {SOURCE.name}: {errors[-1]}")


def load() -> bool:
    """Builds (if needed) and loads the kernels once per process; True when they are usable.

    A failure (no compiler, a build error) warns once and leaves the torch-ops path in use.
    """
    if not _TRIED:
        _TRIED.append(True)
        try:
            lib = ctypes.CDLL(str(build()))
            for name, argtypes in _SIGNATURES.items():
                for dtype, suffix in _SUFFIX.items():
                    fn = getattr(lib, f"{name}_{suffix}")
                    fn.argtypes, fn.restype = argtypes, ctypes.c_int
                    _FNS[name, dtype] = fn
        except OSError as exc:
            _FNS.clear()
            warnings.warn(f"bnexp's C BatchNorm kernel is unavailable ({exc}); norm=custom runs on "
                          "torch ops instead (slower on CPU, same results)", stacklevel=2)
    return loaded()


def loaded() -> bool:
    """True when ``load()`` has loaded the kernels in this process (never builds)."""
    return bool(_FNS)


def load_attempted() -> bool:
    """True once ``load()`` has run in this process, whether or not it succeeded."""
    return bool(_TRIED)


def available() -> bool:
    """True when the C kernels are built (or can be) and loaded: ``load()``."""
    return load()


Layout = tuple[int, int, int]


def layout(x: torch.Tensor, *others: torch.Tensor | None) -> Layout | None:
    """(N, C, S) of x as the kernels see its memory, or None when they do not apply.

    They apply once loaded, to CPU float32/float64 inputs, contiguous or channels_last, with
    parameters and buffers (``others``) of the same dtype, contiguous, on the CPU. A
    channels_last (N, C, *spatial) tensor is an (N*spatial, C) matrix in memory, so it is passed
    as such.
    """
    dtype = x.dtype
    if not _FNS or dtype not in _SUFFIX or not x.is_cpu or x.dim() < 2:
        return None
    for t in others:
        if t is not None and (t.dtype is not dtype or not t.is_cpu or not t.is_contiguous()):
            return None
    n, c = x.shape[:2]
    s = x.numel() // max(1, n * c)
    if x.is_contiguous():
        return n, c, s
    if x.dim() in (4, 5) and x.is_contiguous(
            memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d):
        return n * s, c, 1
    return None


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def forward(x: torch.Tensor, shape: Layout, weight: torch.Tensor | None,
            bias: torch.Tensor | None, eps: float, running_mean: torch.Tensor | None,
            running_var: torch.Tensor | None, num_batches: torch.Tensor | None,
            momentum: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Training-mode BN of x (``shape`` from ``layout``): y in x's memory format and a (3, C)
    tensor of per-channel (mean, invstd, biased var). Running statistics are updated in place
    (``momentum=None``: PyTorch's cumulative average)."""
    n, c, s = shape
    y = torch.empty_like(x)
    stats = x.new_empty((3, c))
    rc = _FNS["bn_forward", x.dtype](
        x.data_ptr(), y.data_ptr(), n, c, s, _ptr(weight), _ptr(bias), eps, stats.data_ptr(),
        _ptr(running_mean), _ptr(running_var), _ptr(num_batches),
        -1.0 if momentum is None else momentum, torch.get_num_threads())
    if rc != 0:
        raise MemoryError("bnexp's BatchNorm kernel could not allocate its per-channel buffers")
    return y, stats


def backward(dy: torch.Tensor, x: torch.Tensor, shape: Layout, weight: torch.Tensor | None,
             stats: torch.Tensor, need_dx: bool, need_dw: bool
             ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """(dx, dweight, dbias) of training-mode BN from ``forward``'s stats (None where not
    needed); dy is brought to x's memory format first."""
    n, c, s = shape
    if dy.stride() != x.stride():
        dy = torch.empty_like(x).copy_(dy)
    dx = torch.empty_like(x) if need_dx else None
    dw, db = (x.new_empty(c), x.new_empty(c)) if need_dw else (None, None)
    rc = _FNS["bn_backward", x.dtype](
        dy.data_ptr(), x.data_ptr(), _ptr(dx), n, c, s, _ptr(weight), stats.data_ptr(), _ptr(dw),
        _ptr(db), torch.get_num_threads())
    if rc != 0:
        raise MemoryError("bnexp's BatchNorm kernel could not allocate its per-channel buffers")
    return dx, dw, db
