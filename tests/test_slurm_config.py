"""A SLURM sweep on a machine whose SLURM has no configuration (issue 24): one paragraph
naming the cause (no configuration found, and where SLURM looked) and the fix (SLURM_CONF, or
the local cluster's `eval "$(bash scripts/slurm_local.sh env)"`), exit code 2, nothing written;
before, sbatch's DNS errors came back as advice to change the hydra.launcher settings. SLURM's
commands are stand-ins that fail as the real ones do: no cluster is needed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bnexp.errors import BnexpError
from tests.conftest import TINY
from tests.test_errors import assert_user_error, written

# bnexp.slurm is Hydra's submitit launcher with checks: it needs the `slurm` extra.
slurm = pytest.importorskip("bnexp.slurm", reason="pip install 'bnexp[slurm]'",
                            exc_type=ImportError)

NO_SOURCE = ("sinfo: error: resolve_ctls_from_dns_srv: res_nsearch error: Unknown host\n"
             "sinfo: error: fetch_config: DNS SRV lookup failed\n"
             "sinfo: error: _establish_config_source: failed to fetch config\n"
             "sinfo: fatal: Could not establish a configuration source\n")


@pytest.fixture
def unconfigured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """SLURM's commands as on a machine with the client installed and no slurm.conf: they
    print the DNS errors above and fail. Nothing here reaches a real SLURM."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("sinfo", "sbatch", "squeue", "scontrol"):
        script = bin_dir / name
        script.write_text(f"#!/bin/sh\ncat >&2 <<'EOF'\n{NO_SOURCE.replace('sinfo', name)}EOF\n"
                          "exit 1\n")
        script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("SLURM_CONF", raising=False)
    monkeypatch.setattr(slurm, "CONF_PATHS", (str(tmp_path / "etc" / "slurm.conf"),))
    return bin_dir


def test_slurm_sweep_without_a_configuration_names_cause_and_fix(cli, mnist_root: Path,
                                                                  tmp_path: Path,
                                                                  unconfigured: Path) -> None:
    out = tmp_path / "out"
    result = cli("train", "-m", "hydra/launcher=submitit_slurm", f"data.root={mnist_root}",
                 f"output_dir={out}", *TINY, "seed=0,1")
    assert_user_error(result, "No SLURM configuration found", "SLURM_CONF is not set",
                      str(tmp_path / "etc"), "export SLURM_CONF=",
                      'eval "$(bash scripts/slurm_local.sh env)"',
                      "Could not establish a configuration source")
    assert "Check the hydra.launcher" not in result.output
    assert written(out) == []


def test_slurm_conf_naming_no_file_is_refused(unconfigured: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "nowhere.conf"))
    with pytest.raises(BnexpError, match=r"SLURM_CONF=.*nowhere.conf names no file.*slurm_local"):
        slurm.check_configured()


def test_a_configured_or_configless_slurm_passes(unconfigured: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=x\n")
    monkeypatch.setenv("SLURM_CONF", str(conf))
    slurm.check_configured()  # SLURM_CONF names a file
    monkeypatch.delenv("SLURM_CONF")
    monkeypatch.setattr(slurm, "CONF_PATHS", (str(conf),))
    slurm.check_configured()  # a slurm.conf where SLURM looks
    monkeypatch.setattr(slurm, "CONF_PATHS", ())
    (unconfigured / "sinfo").write_text("#!/bin/sh\necho 'debug*'\n")
    slurm.check_configured()  # configless: the controller answers


def test_no_sbatch_says_this_machine_is_no_slurm_client(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BnexpError, match="sbatch is not on PATH"):
        slurm.check_configured()
