"""bnexp: experiments that test what Batch Normalization actually does."""

import os
from pathlib import Path

__version__ = "0.1.0"


def user_cache_dir() -> Path:
    """bnexp's per-user cache (tensor caches of read-only data folders, built C kernels):
    $XDG_CACHE_HOME/bnexp, else ~/.cache/bnexp."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bnexp"

