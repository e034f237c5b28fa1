"""bnexp/progress.py: the progress bar follows the steps and never overshoots."""

from __future__ import annotations

from tests.conftest import cli_train


def test_progress_bar_never_overshoots(cli, mnist_root, tmp_path, monkeypatch) -> None:
    """Log points every 3 steps do not line up with 11-step epochs: the bar is set to the steps
    done in the epoch, never advanced past its total (it showed 350/312)."""
    from bnexp.progress import Progress

    seen, real_update = [], Progress.update

    def record(self, done, loss):
        real_update(self, done, loss)
        task = self._bar.tasks[0]
        seen.append((task.completed, task.total))

    monkeypatch.setattr(Progress, "update", record)
    result = cli_train(cli, mnist_root, tmp_path / "out", "model=mlp", "trainer.progress=bar",
                   "trainer.log_every=3", "trainer.epochs=3")
    assert result.exit_code == 0, result.output
    assert seen and all(done <= total for done, total in seen)
    assert (11, 11) in seen  # each epoch ends full
