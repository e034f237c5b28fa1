"""The wheel carries the configs and the C sources and works without a checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


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
