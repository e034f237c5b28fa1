"""Process start-up: import the training stack once, with Python's cyclic GC out of the way.

Importing torch, torch._dynamo (torch.optim imports it at its first step) and TensorBoard creates
about a million objects that live as long as the process. The cyclic GC walks every one of them in
each full collection: several times during the import itself, again while training, and once
more at interpreter exit. Importing with the GC paused and then
freezing what exists (``gc.freeze``, as CPython's docs suggest for long-lived start-up objects)
skips those walks; objects made afterwards are collected as usual.
"""

from __future__ import annotations

import gc
import sys
from types import ModuleType


def import_trainer() -> ModuleType:
    """``bnexp.train``, imported (on first use) with the GC paused and the imports frozen."""
    if "bnexp.train" in sys.modules:  # later jobs in the same process: nothing to freeze again
        return sys.modules["bnexp.train"]
    enabled = gc.isenabled()
    gc.collect()  # garbage made so far is freed, not frozen (cheap: torch is not loaded yet)
    gc.disable()
    try:
        import torch._dynamo  # noqa: F401

        import bnexp.train
    finally:
        gc.freeze()
        if enabled:
            gc.enable()
    return bnexp.train
