"""A packed sweep through bnexp's SLURM launcher (issue 23, "through SLURM, one task per pack"),
without a cluster: submitit's executor is a stand-in that runs each array task in this process
(as the task's own process would: the launcher's ``__call__``, then the result file the waiter
reads) or, for the tasks a test kills, runs nothing and reports the scheduler's ending; the
waiter polls a fake scheduler on a fake clock. tests/test_slurm.py runs a pack on real SLURM
daemons (slow)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.conftest import TINY
from tests.test_slurm_wait import Clock

slurm = pytest.importorskip("bnexp.slurm", reason="pip install 'bnexp[slurm]'",
                            exc_type=ImportError)

FAST = [*TINY, "trainer.epochs=1", "probe=off", "trainer.checkpoint=false", "trainer.threads=1",
        "hydra/launcher=submitit_slurm"]
GRID = ["model=mlp", "norm=none,torch", "seed=0,1,2"]  # jobs 0-2 norm=none, 3-5 norm=torch


@dataclass
class FakeSlurm:
    """The cluster as the launcher sees it. ``arrays``: the job numbers of each array's tasks,
    in submission order; ``kill``: jobs whose task dies (TIMEOUT) before it writes anything."""

    kill: set[int] = field(default_factory=set)
    arrays: list[list[int]] = field(default_factory=list)
    states: dict[str, str] = field(default_factory=dict)  # task id -> its final state
    current: str = ""

    def executor(self, cluster: str, folder: str, **_: Any) -> FakeExecutor:
        return FakeExecutor(self, str(folder))

    def scheduler_states(self, array: str) -> dict[str, dict[str, str]]:
        return {t: {"state": s, "reason": "None", "exit_code": "0:0", "node": "localnode"}
                for t, s in self.states.items() if t.startswith(f"{array}_")}


@dataclass
class FakeExecutor:
    """submitit's AutoExecutor, as bnexp.slurm's ``_submit`` uses it."""

    cluster: FakeSlurm
    folder: str

    def update_parameters(self, **_: Any) -> None:
        pass

    def map_array(self, fn: Any, *args: Any) -> list[Any]:
        from submitit.core.utils import cloudpickle_dump

        array = str(41 + len(self.cluster.arrays))
        calls = list(zip(*args, strict=True))
        self.cluster.arrays.append([call[2] for call in calls])  # (overrides, key, num, ...)
        jobs = []
        for i, call in enumerate(calls):
            job_id = f"{array}_{i}"
            folder = Path(self.folder.replace("%j", job_id))
            folder.mkdir(parents=True, exist_ok=True)
            jobs.append(SimpleNamespace(job_id=job_id, paths=SimpleNamespace(
                result_pickle=folder / f"{job_id}_result.pkl")))
            if call[2] in self.cluster.kill:
                self.cluster.states[job_id] = "TIMEOUT"
                continue
            self.cluster.current = job_id
            cloudpickle_dump(("success", fn(*call)), jobs[-1].paths.result_pickle)
            self.cluster.states[job_id] = "COMPLETED"
        return jobs


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> FakeSlurm:
    import submitit
    from hydra.core.singleton import Singleton

    from bnexp import slurm_wait

    fake = FakeSlurm()
    # A task's process starts from the sweep's Hydra state; in this process it is that state
    # already, and setting it again would re-scan Hydra's plugins, re-defining their classes.
    monkeypatch.setattr(Singleton, "set_state", staticmethod(lambda state: None))
    monkeypatch.setattr(submitit, "AutoExecutor", fake.executor)
    monkeypatch.setattr(submitit, "JobEnvironment", lambda: SimpleNamespace(job_id=fake.current))
    monkeypatch.setattr(slurm.SlurmLauncher, "check_environment", staticmethod(lambda: None))
    monkeypatch.setattr(slurm, "partition_nodes", lambda partition: None)
    monkeypatch.setattr(slurm_wait, "scheduler_states", fake.scheduler_states)
    monkeypatch.setattr(slurm_wait, "run", lambda cmd, timeout=20: "")
    monkeypatch.setattr(slurm_wait, "time", Clock())
    return fake


def sweep(cli, root: Path, out: Path, *overrides: str):
    return cli("train", "-m", f"data.root={root}", f"output_dir={out}", *FAST, *overrides)


def jobs_and_summaries(out: Path) -> tuple[Path, dict[int, dict], dict[int, dict]]:
    """The sweep's directory, sweep.json's jobs and each job's summary.json, by job number."""
    (sweep_dir,) = (out / "sweeps").iterdir()
    jobs = {int(k): j for k, j in json.loads((sweep_dir / "sweep.json").read_text())["jobs"].items()}
    summaries = {n: json.loads((sweep_dir / j["dir"] / "summary.json").read_text())
                 for n, j in jobs.items()}
    return sweep_dir, jobs, summaries


def test_each_pack_is_one_task_that_trains_every_run(cli, mnist_root, tmp_path,
                                                     cluster: FakeSlurm) -> None:
    result = sweep(cli, mnist_root, tmp_path, *GRID)
    assert result.exit_code == 0, result.output
    assert cluster.arrays == [[0, 3]]  # one array, one task per pack: its first job leads
    assert "submitted job array 41 (2 tasks: 2 packs of 3 runs; 1 CPUs" in result.output
    assert "trained 6 runs as 2 packed models" in result.output
    _, jobs, summaries = jobs_and_summaries(tmp_path)
    assert len({j["dir"] for j in jobs.values()}) == 6  # each run its own directory
    for num, summary in summaries.items():
        leader = 0 if num < 3 else 3
        assert jobs[num]["status"] == summary["status"] == "completed"
        assert {key: summary["packed"][key] for key in ("k", "K", "group")} == {
            "k": num - leader, "K": 3, "group": jobs[leader]["dir"]}
        assert jobs[num]["scheduler"]["job_id"] == f"41_{leader // 3}"


def test_a_killed_leader_ends_its_pack_and_resume_trains_only_the_rest(
        cli, mnist_root, tmp_path, cluster: FakeSlurm) -> None:
    cluster.kill = {3}  # the norm=torch pack's task dies before it writes anything
    result = sweep(cli, mnist_root, tmp_path, *GRID)
    assert result.exit_code == 1, result.output
    assert "3 did not finish" in result.output
    sweep_dir, jobs, summaries = jobs_and_summaries(tmp_path)
    assert [jobs[n]["status"] for n in range(6)] == ["completed"] * 3 + ["timeout"] * 3
    for num in (4, 5):  # the followers: their leader's status and the scheduler's record
        assert summaries[num]["status"] == "timeout"
        assert summaries[num]["scheduler"] == summaries[3]["scheduler"]
        assert summaries[num]["scheduler"]["job_id"] == "41_1"
        assert "pack's leader (job 3, 41_1)" in summaries[num]["error"]
        assert jobs[num]["scheduler"]["state"] == "TIMEOUT"

    cluster.kill = set()
    result = cli("train", "-m", "--resume", str(sweep_dir))
    assert result.exit_code == 0, result.output
    assert cluster.arrays[-1] == [3]  # only the unfinished pack, as one task
    assert "(1 task: 1 pack of 3 runs;" in result.output
    _, jobs, summaries = jobs_and_summaries(tmp_path)
    assert all(s["status"] == "completed" for s in summaries.values())
    assert [summaries[n]["packed"]["K"] for n in range(3, 6)] == [3, 3, 3]

    # Two runs of the first pack unfinished: its task trains those two, job 0 stays as it is.
    for num in (1, 2):
        path = sweep_dir / jobs[num]["dir"] / "summary.json"
        path.write_text(json.dumps({**summaries[num], "status": "interrupted"}))
    kept = (sweep_dir / jobs[0]["dir"] / "summary.json").read_text()
    result = cli("train", "-m", "--resume", str(sweep_dir))
    assert result.exit_code == 0, result.output
    assert cluster.arrays[-1] == [1] and "(1 task: 1 pack of 2 runs;" in result.output
    _, jobs, summaries = jobs_and_summaries(tmp_path)
    assert all(s["status"] == "completed" for s in summaries.values())
    assert [(summaries[n]["packed"]["k"], summaries[n]["packed"]["K"]) for n in (1, 2)] == [
        (0, 2), (1, 2)]
    assert (sweep_dir / jobs[0]["dir"] / "summary.json").read_text() == kept


@pytest.mark.parametrize("gpus,tasks", [("0", [[0, 1]]), ("1", [[0]])])
def test_the_launcher_decides_packability_for_the_tasks_device(cli, mnist_root, tmp_path,
                                                              cluster: FakeSlurm, gpus: str,
                                                              tasks: list[list[int]]) -> None:
    """A CNN at batch 32 gains nothing packed on the CPU: one task per job there; a task with
    a GPU (trainer.device=auto) packs it. The tasks are killed here: nothing trains."""
    cluster.kill = set(range(10))
    result = sweep(cli, mnist_root, tmp_path, "model=cnn", "trainer.device=auto", "seed=0,1",
                   f"hydra.launcher.gpus_per_node={gpus}")
    assert cluster.arrays == tasks, result.output
    sweep_dir, jobs, _ = jobs_and_summaries(tmp_path)
    plan = json.loads((sweep_dir / "sweep.json").read_text())["packing"]
    if gpus == "0":
        assert plan["packs"] == [] and all("CNN" in jobs[n]["unpacked"] for n in (0, 1))
        assert "(2 tasks, 1 CPUs" in result.output
    else:
        assert plan["packs"] == [[0, 1]] and plan["one_task"]
        assert "(1 task: 1 pack of 2 runs;" in result.output
    assert [jobs[n]["status"] for n in (0, 1)] == ["timeout", "timeout"]


def test_a_leader_that_finds_its_pack_unpackable_trains_each_run(cli, mnist_root, tmp_path,
                                                                 cluster: FakeSlurm) -> None:
    """The launcher expected a GPU (gpus_per_node=1) and packed the CNN's seeds into one task;
    the task has only the CPU, where the CNN is not packed: it trains both, one after
    another, instead of leaving the second unrun."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("here the task has the GPU the launcher expected")
    result = sweep(cli, mnist_root, tmp_path, "model=cnn", "trainer.device=auto", "seed=0,1",
                   "hydra.launcher.gpus_per_node=1")
    assert result.exit_code == 0, result.output
    assert cluster.arrays == [[0]] and "one after another" in result.output
    _, jobs, summaries = jobs_and_summaries(tmp_path)
    for num in (0, 1):
        assert summaries[num]["status"] == jobs[num]["status"] == "completed"
        assert "packed" not in summaries[num] and "CNN" in jobs[num]["unpacked"]
