"""``bnexp tb`` serves a run over HTTP; the wheel carries the configs and works without a checkout."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import TINY

REPO = Path(__file__).resolve().parent.parent
BNEXP = [sys.executable, "-m", "bnexp.cli"]


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
        assert f"http://127.0.0.1:{port}/?tagFilter=" in line and "train" in line  # curves first
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
        (run_name, run_tags), = [(k, v) for k, v in tags.items() if k.endswith("tb")]
        assert {"train/loss", "test/acc", "gap/acc"} <= set(run_tags)
    finally:
        proc.terminate()  # SIGTERM to `bnexp tb` must stop its TensorBoard child too
        proc.wait(timeout=30)
    deadline = time.time() + 30
    while time.time() < deadline and _listening(port):
        time.sleep(0.5)
    assert not _listening(port), "TensorBoard outlived `bnexp tb`"


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


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


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git to copy the checkout")
def test_wheel_installs_with_its_configs(tmp_path) -> None:
    """pip wheel + install into a fresh venv; dependencies come from this environment through a
    .pth file so the test needs no download, but bnexp itself only from the wheel."""
    wheel_dir = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(wheel_dir), str(REPO)], check=True)
    (wheel,) = wheel_dir.glob("bnexp-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps",
                    "-q", str(wheel)], check=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    where = subprocess.run([str(py), "-c", "import bnexp.hydra_app as h; print(h.config_dir())"],
                           capture_output=True, text=True, check=True, cwd=workdir, env=env)
    assert str(venv) in where.stdout, "configs must come from the installed wheel"
    bnexp_cmd = [str(venv / "bin" / "bnexp")]
    helped = subprocess.run([*bnexp_cmd, "--help"], capture_output=True, text=True, cwd=workdir,
                            env=env)
    assert helped.returncode == 0 and "train" in helped.stdout
    shown = subprocess.run([*bnexp_cmd, "config", "norm=custom"], capture_output=True, text=True,
                           cwd=workdir, env=env)
    assert shown.returncode == 0, shown.stderr
    assert "kind: custom" in shown.stdout

