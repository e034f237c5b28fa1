"""bnexp/cli.py: user errors as one paragraph with exit code 2, `bnexp config`, `bnexp tb`, and
a `--help` that answers before torch is imported."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY, cli_train

REPO = Path(__file__).resolve().parent.parent
BNEXP = [sys.executable, "-m", "bnexp.cli"]


@pytest.mark.parametrize("overrides,needle", [
    (["norm=batchy"], "Could not find 'norm/batchy'"),
    (["trainer.epochz=3"], "epochz"),
    (["trainer.epochs=three"], "trainer.epochs"),
    (["optim.lr=0"], "optim.lr"),
    (["trainer.batch_size=-4"], "trainer.batch_size"),
    (["trainer.epochs=0"], "trainer.epochs"),
    (["data=imagenet"], "data/imagenet"),
    (["data.verify=true"], "MD5 mismatch"),  # the generated files are not the official ones
    (["data.root={empty}", "data.download=false"], "data.download=false"),
    (["trainer.batch_size=100000"], "trainer.batch_size"),
    (["trainer.device=cuda"] if not torch.cuda.is_available() else ["trainer.device=tpu"],
     "trainer.device"),
])
def test_bad_input_is_one_paragraph_exit_2_and_no_run_dir(cli, mnist_root, tmp_path,
                                                          overrides, needle) -> None:
    out = tmp_path / "out"
    overrides = [o.format(empty=tmp_path / "empty") for o in overrides]
    result = cli_train(cli, mnist_root, out, *overrides)
    assert result.exit_code == 2, result.output
    assert needle in result.output
    assert "Traceback" not in result.output and result.output.startswith("error: ")
    assert not (out / "runs").exists() or not list((out / "runs").iterdir())


def test_config_command_prints_resolved_yaml(cli) -> None:
    result = cli("config", "norm=custom", "optim.lr=0.05")
    assert result.exit_code == 0
    assert "kind: custom" in result.output and "lr: 0.05" in result.output
    assert "${" not in result.output


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tb_serves_the_runs_scalars(cli, mnist_root, tmp_path) -> None:
    out = tmp_path / "out"
    result = cli("train", f"data.root={mnist_root}", f"output_dir={out}", *TINY, "model=mlp")
    assert result.exit_code == 0, result.output
    port = free_port()
    proc = subprocess.Popen([*BNEXP, "tb", str(out), "--port", str(port), "--host", "127.0.0.1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}/?smoothing=0&pinnedCards=" in line  # curves first
        assert "(1 runs)" in line
        assert _listening(port)  # the URL is printed only once the server answers
        tags, deadline = {}, time.time() + 90
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(
                        f"http://127.0.0.1:{port}/data/plugin/scalars/tags", timeout=5) as r:
                    tags = json.load(r)
                if tags:
                    break
            except OSError:
                pass
            time.sleep(1)
        (run_name, run_tags), = tags.items()
        assert run_name == "mnist-mlp-torch"  # named like the run: no date, no /tb
        assert {"train/loss", "test/acc", "gap/acc"} <= set(run_tags)
    finally:
        proc.terminate()  # SIGTERM to `bnexp tb` must stop its TensorBoard child too
        proc.wait(timeout=30)
    deadline = time.time() + 30
    while time.time() < deadline and _listening(port):
        time.sleep(0.5)
    assert not _listening(port), "TensorBoard outlived `bnexp tb`"


def test_tb_on_a_taken_port_is_a_clear_error(cli, tmp_path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        result = cli("tb", str(tmp_path), "--port", str(s.getsockname()[1]), "--host", "127.0.0.1")
    assert result.exit_code == 2 and "--port 0" in result.output and "http://" not in result.output


def test_tb_missing_dir_is_a_user_error(cli, tmp_path) -> None:
    result = cli("tb", str(tmp_path / "nope"))
    assert result.exit_code == 2 and "not a folder" in result.output


def test_help_is_fast_and_does_not_import_torch() -> None:
    code = "import sys; from bnexp.cli import app; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0
