"""The fast paths of ``bnexp.norm.BatchNorm``: the reference formulas of ``bnexp.norm``
(``bn_forward``/``bn_backward``) computed faster, and tested against them.

- ``cpu``: C kernels (``bn_cpu.c``, bodies in ``bn_cpu_impl.h``) built with the system's
  compiler and called through ctypes; CPU float32/float64, contiguous or channels_last.
- ``eager``: torch ops arranged so the output is the only full-size buffer; everywhere else.
- ``channels``: per-channel shape helpers, shared with the reference.

Nothing here imports ``bnexp.norm``: the layers sit on top and pick a path per call.
"""

from bnexp.kernels.cpu import available, build, load, loaded

__all__ = ["available", "build", "load", "loaded"]
