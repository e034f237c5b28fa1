"""Kept only so that ``bnexp.train`` and ``bnexp.claims`` (owned by others while this changed)
import; ``bnexp.rundir`` owns run and sweep directory names now. Delete this module once they
import ``new_run_dir`` from ``bnexp.rundir``."""

from bnexp.rundir import new_run_dir

__all__ = ["new_run_dir"]
