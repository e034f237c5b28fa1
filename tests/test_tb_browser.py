"""TensorBoard as a student first sees it, in a real browser: ``bnexp tb`` on a small norm sweep
and one CNN run, opened in Debian's headless Chromium over the DevTools protocol
(scripts/tb_screenshots.py), the first URL, HParams, custom scalars and distributions
captured as PNGs and checked through the pages' text. Slow (about a minute and a half);
skipped where Chromium is not installed (``scripts/setup.sh --with-chromium``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from scripts.tb_screenshots import capture, find_chromium, train_demo

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    find_chromium() is None, reason="Chromium is not installed: scripts/setup.sh --with-chromium "
                                    "(or apt-get install chromium) to run the browser test")]


def test_tensorboard_in_a_browser_opens_on_labelled_unsmoothed_curves(mnist_root, tmp_path):
    logdir = tmp_path / "outputs"
    train_demo(logdir, mnist_root, ["data.verify=false", "data.val_size=40", "trainer.epochs=2",
                                    "trainer.batch_size=32", "trainer.log_every=2",
                                    "model.channels=[4,8]", "model.width=16",
                                    "probe.every=200", "probe.hist_every=4"])
    out = Path(os.environ.get("BNEXP_TB_SCREENSHOTS", tmp_path / "png"))
    shots = capture(logdir, out, wait_s=14.0)
    for name, png in shots.items():
        assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 20_000, name
    text = {name: png.with_suffix(".txt").read_text().replace("\n/", "/")  # "train" "/loss"
            for name, png in shots.items()}
    first = text["first"]
    assert "smoothing=0" in (out / "url.txt").read_text()
    assert "Pinned" in first
    order = [first.index(tag) for tag in ("train/loss", "train/acc", "gap/acc")]
    assert order == sorted(order)  # loss, then accuracy, then the gap
    for variant in ("none", "torch", "custom"):
        assert f"mlp-norm-sweep/norm={variant}" in first  # every run labelled with its variant
    assert "/tb" not in first and "2026-" not in first
    hparams = text["hparams"]
    assert hparams.index("norm.kind") < hparams.index("data.name")  # the swept key first
    assert "trainer.checkpoint" not in hparams and "probe.max_elements" not in hparams
    custom = text["custom_scalars"]
    assert "loss: test" in custom and "accuracy gap (train - test)" in custom
    assert "global / first-to-last" not in custom
    assert "hist/act/conv1/norm" in text["distributions"]  # non-empty for the CNN run
