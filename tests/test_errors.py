"""Errors a new user meets (issue 24): each is one paragraph, exit code 2, and nothing is
written. Here a subset larger than the training split; a SLURM sweep on a machine whose SLURM
has no configuration is tests/test_slurm_config.py's (it needs the slurm extra). BatchNorm used
on its own is no error any more: it loads its kernels on its first forward (tests/test_norm.py).
"""

from __future__ import annotations

from pathlib import Path

from tests.conftest import TINY


def assert_user_error(result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output  # one paragraph
    for needle in needles:
        assert needle in result.output, (needle, result.output)


def written(out: Path) -> list[Path]:
    return sorted(out.rglob("*")) if out.exists() else []


# --- data.train_size ---------------------------------------------------------------------------


def test_train_size_larger_than_the_split_is_refused(cli, mnist_root: Path, tmp_path: Path
                                                     ) -> None:
    """The generated MNIST has 400 training images, 40 held out for validation (TINY): 360."""
    out = tmp_path / "out"
    result = cli("train", f"data.root={mnist_root}", f"output_dir={out}", *TINY,
                 "data.train_size=100000000")
    assert_user_error(result, "data.train_size=100000000", "360 training images",
                      "data.val_size", "data.train_size=360")
    assert written(out) == []


def test_train_size_of_the_whole_split_still_trains(cli, mnist_root: Path, tmp_path: Path
                                                    ) -> None:
    result = cli("train", f"data.root={mnist_root}", f"output_dir={tmp_path}", *TINY,
                 "data.train_size=360", "trainer.steps=1", "probe=off")
    assert result.exit_code == 0, result.output
