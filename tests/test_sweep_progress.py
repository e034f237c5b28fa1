"""The progress display of long work (bnexp/sweep_progress.py, bnexp/claims/watch.py): runs
counted from the sweep directory, the estimate of the time left, one line per finished sweep
when piped, and the work's own output in the sweep's log files (``-v`` keeps it on the
terminal), for ``bnexp train -m`` and ``bnexp claims``."""

from __future__ import annotations

import io
import json
import os
import sys
import time
from pathlib import Path

import pytest

from bnexp import sweep_progress as sp
from bnexp.reuse import code_stamp
from bnexp.sweep_progress import Display, Stage, seconds_left
from tests.conftest import TINY

FAST = [*TINY, "trainer.epochs=1", "model=mlp", "probe=off", "trainer.checkpoint=false"]


def finish(run_dir: Path, status: str = "completed", when: float | None = None,
           code: dict | None = None) -> None:
    """A run directory with a summary.json of ``status`` written at ``when``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "summary.json"
    path.write_text(json.dumps({"status": status, **(code or code_stamp())}))
    if when is not None:
        os.utime(path, (when, when))


# --- the estimate ------------------------------------------------------------------------------


def test_nothing_to_go_by_gives_no_estimate() -> None:
    assert seconds_left([Stage("a", 10), Stage("b", 5)], now=100.0) is None


def test_priors_alone_give_start_up_plus_runs() -> None:
    stages = [Stage("a", 10, prior_s=2.0), Stage("b", 5, prior_s=1.0, reused=3)]
    assert seconds_left(stages, now=0.0) == pytest.approx(2 * sp.STARTUP_S + 10 * 2 + 2 * 1)


def ended_stage(name: str, runs: int, prior: float, ratio: float, start: float = 0.0) -> Stage:
    """A stage that took ``ratio`` times its prior cost."""
    took = ratio * (sp.STARTUP_S + runs * prior)
    return Stage(name, runs, prior_s=prior, started=start, fresh=runs, last=start + took,
                 ended=start + took)


def test_a_slower_machine_than_the_priors_scales_the_sweeps_to_come() -> None:
    """The first sweep took three times its prior: the next sweep's prior is scaled up (by
    the measured ratio, shrunk towards 1 by PRIOR_SECONDS), not taken as it is."""
    first = ended_stage("a", 20, 1.0, ratio=3.0)
    left = seconds_left([first, Stage("b", 40, prior_s=1.0)], now=first.ended)
    factor = (first.ended + sp.PRIOR_SECONDS) / (sp.STARTUP_S + 20 + sp.PRIOR_SECONDS)
    assert factor > 2
    assert left == pytest.approx(factor * (sp.STARTUP_S + 40))


def test_one_sweep_far_off_its_prior_does_not_scale_the_others() -> None:
    """A sweep whose code got eight times slower since its prior was measured counts at most
    CLIP times the median ratio: the sweeps to come are scaled by the machine, not by the sum
    that one sweep dominates."""
    stages = [ended_stage("a", 20, 1.0, 2.0), ended_stage("b", 20, 1.0, 8.0, start=100),
              ended_stage("c", 20, 1.0, 2.2, start=400)]
    weight = sp.STARTUP_S + 20 + sp.PRIOR_SECONDS  # the same for all three
    ratios = [(s.ended - s.started + sp.PRIOR_SECONDS) / weight for s in stages]
    factor = (ratios[0] + sp.CLIP * ratios[2] + ratios[2]) / 3  # b held at CLIP x the median
    assert factor < sum(ratios) / 3 - 0.4  # the plain mean, which b drags up
    left = seconds_left([*stages, Stage("d", 10, prior_s=2.0)], now=1000.0)
    assert left == pytest.approx(factor * (sp.STARTUP_S + 20))


def test_the_estimate_includes_what_follows_the_last_sweep(tmp_path: Path) -> None:
    display = Display("c", [Stage("a", 10, tmp_path, prior_s=1.0)], out=io.StringIO(),
                      finish_s=30.0)
    assert display.summary()["left"] == pytest.approx(sp.STARTUP_S + 10 + 30.0)


def test_the_current_sweep_follows_its_measured_runs() -> None:
    """Its cost per run comes from its finished runs, the prior counting as PRIOR_RUNS of
    them; between finished runs the estimate counts down with the clock."""
    stage = Stage("a", 50, prior_s=1.0, started=0.0, fresh=30)
    stage.last = sp.STARTUP_S + 30 * 4.0  # 4 s per run measured, prior 1 s
    at_last = seconds_left([stage], now=stage.last)
    rate = (30 * 4.0 + sp.PRIOR_RUNS * 1.0 * factor_of([stage])) / (30 + sp.PRIOR_RUNS)
    assert at_last == pytest.approx(sp.STARTUP_S + 50 * rate - stage.last)
    assert seconds_left([stage], now=stage.last + 10) == pytest.approx(at_last - 10)
    # No prior: the measured rate alone, exactly the 20 runs left at 4 s.
    bare = Stage("a", 50, started=0.0, fresh=30, last=stage.last)
    assert seconds_left([bare], now=bare.last) == pytest.approx(20 * 4.0)


def factor_of(stages: list[Stage]) -> float:
    return sp._speed(stages)[0]


def test_without_priors_the_calls_own_runs_estimate_the_rest() -> None:
    done = Stage("a", 10, started=0.0, fresh=10, last=30.0, ended=30.0)
    assert seconds_left([done, Stage("b", 20)], now=30.0) == pytest.approx(20 * 3.0)


# --- counting runs from the directory ----------------------------------------------------------


def test_scanner_counts_ended_runs_only(tmp_path: Path) -> None:
    finish(tmp_path / "0_a")
    finish(tmp_path / "1_b", "diverged")
    finish(tmp_path / "2_c", "running")  # still training
    finish(tmp_path / "pack" / "seed=3")  # nested run directories count
    finish(tmp_path / "0_a" / ".previous" / "t" , "failed")  # an earlier attempt: not a run
    (tmp_path / "3_d").mkdir()  # not started
    found = sp.Scanner().ended(tmp_path)
    assert {p.name: s for p, (s, _, _) in found.items()} == {
        "0_a": "completed", "1_b": "diverged", "seed=3": "completed"}


def test_display_counts_fresh_reused_and_stale_runs(tmp_path: Path) -> None:
    """Runs the current code finished before count as done (reused); an older code's are stale
    and will run again, so they count only once they end again."""
    d = tmp_path / "sweep"
    finish(d / "0", when=time.time() - 100)
    finish(d / "1", when=time.time() - 100, code={"versions": {"bnexp": "0.0.1"}})
    stage = Stage("s", 3, d)
    display = Display("t", [stage], out=io.StringIO())
    assert stage.reused == 1 and stage.todo == 2
    with display, display.stage("s", d):
        finish(d / "1")
        finish(d / "2", "failed")
        display.update(stage)
        assert (stage.fresh, stage.done) == (2, 3)
    assert display.summary()["failed"] == 1 and display.summary()["done"] == 3


# --- output ------------------------------------------------------------------------------------


def test_piped_display_prints_one_line_per_sweep_and_routes_the_rest(tmp_path: Path,
                                                                     capsys) -> None:
    out = io.StringIO()
    stages = [Stage("a", 2, tmp_path / "a", prior_s=1.0), Stage("b", 1, tmp_path / "b")]
    with Display("claims", stages, out=out) as display:
        for s in stages:
            with display.stage(s.name, s.directory):
                print("[HYDRA] Launching jobs")  # what Hydra and the jobs say
                print("warning: noisy", file=sys.stderr)
                assert os.environ.get(sp.QUIET_ENV) == "1"  # jobs in other processes too
                for i in range(s.runs):
                    finish(s.directory / str(i), "diverged" if s.name == "b" else "completed")
    assert sp.QUIET_ENV not in os.environ
    lines = out.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("[1/2] a: 2 runs (completed 2)") and "2/3 runs" in lines[0]
    assert lines[1].startswith("[2/2] b: 1 runs (diverged 1)") and "3/3 runs" in lines[1]
    assert "1 diverged" in lines[1] and "done" in lines[1]
    assert capsys.readouterr().out == ""  # nothing reached the terminal
    for s in stages:
        log = (s.directory / sp.SWEEP_LOG).read_text()
        assert "[HYDRA] Launching jobs" in log and "warning: noisy" in log


def test_verbose_keeps_the_output_on_the_terminal(tmp_path: Path, capsys) -> None:
    out = io.StringIO()
    with Display("claims", [Stage("a", 1, tmp_path)], verbose=True, out=out) as display, \
            display.stage("a", tmp_path):
        print("[HYDRA] Launching jobs")
        assert sp.QUIET_ENV not in os.environ
    assert "[HYDRA] Launching jobs" in capsys.readouterr().out
    assert not (tmp_path / sp.SWEEP_LOG).exists() and len(out.getvalue().splitlines()) == 1


def test_a_failure_inside_a_sweep_shows_the_end_of_its_log(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit), Display("c", [Stage("a", 1, tmp_path)],
                                            out=io.StringIO()) as display, \
            display.stage("a", tmp_path):
        print("Error in call to target: the launcher said why")
        raise SystemExit(1)  # what Hydra's own error report ends with
    err = capsys.readouterr().err
    assert "sweep a stopped" in err and "the launcher said why" in err


def test_live_display_shows_sweep_runs_elapsed_and_estimate(tmp_path: Path) -> None:
    from rich.console import Console

    stages = [Stage("a", 4, tmp_path / "a", prior_s=2.0), Stage("b", 6, tmp_path / "b",
                                                                 prior_s=1.0)]
    display = Display("claims --budget quick", stages, out=io.StringIO(), live=True)
    with display, display.stage("a", tmp_path / "a"):
        finish(tmp_path / "a" / "0", "failed")
        console = Console(file=io.StringIO(), width=160, record=True)
        console.print(display._render())
        text = console.export_text()
    assert "[1/2] a (1/4 runs)" in text and "1/10 runs, 1 failed, 0 diverged" in text
    assert "elapsed" in text and "left" in text


def test_job_output_follows_the_environment(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.delenv(sp.QUIET_ENV, raising=False)
    with sp.job_output(tmp_path / "output.log"):
        print("epoch 1/1: on the terminal")
    monkeypatch.setenv(sp.QUIET_ENV, "1")
    with sp.job_output(tmp_path / "output.log", header=True):
        print("epoch 1/1: in the log")
    assert "on the terminal" in capsys.readouterr().out
    log = (tmp_path / "output.log").read_text()
    assert log.startswith("--- ") and "in the log" in log and "terminal" not in log


def test_log_file_survives_a_handler_that_outlives_it(tmp_path: Path) -> None:
    log = sp.LogFile(tmp_path / "x.log")
    log.write("one\n")
    log.close()
    log.write("two\n")  # a logging handler bound to it while it was sys.stdout
    log.close()
    assert (tmp_path / "x.log").read_text() == "one\ntwo\n"


# --- the commands ------------------------------------------------------------------------------


def test_big_sweep_shows_progress_and_logs_its_jobs(cli, mnist_root: Path, tmp_path: Path
                                                    ) -> None:
    """More than a handful of jobs: one line for the sweep, no Hydra or epoch lines on the
    terminal (they are in sweep.log and each job's output.log); -v brings them back."""
    args = ["train", "-m", f"data.root={mnist_root}", f"output_dir={tmp_path / 'out'}", *FAST,
            "trainer.progress=plain", "trainer.steps=2", "norm=none,torch", "seed=0,1,2,3",
            "sweep.pack=false"]  # one process per job: each its own output.log
    result = cli(*args)
    assert result.exit_code == 0, result.output
    assert "epoch 1/1" not in result.output and "[HYDRA]" not in result.output
    assert "8 runs (completed 8)" in result.output and "8/8 runs" in result.output
    (sweep_dir,) = (tmp_path / "out" / "sweeps").iterdir()
    assert "Launching 8 jobs" in (sweep_dir / sp.SWEEP_LOG).read_text()
    logs = sorted(sweep_dir.glob(f"*/{sp.JOB_LOG}"))
    assert len(logs) == 8 and all("epoch 1/1" in p.read_text() for p in logs)
    assert sp.QUIET_ENV not in os.environ
    loud = cli(*[f"output_dir={tmp_path / 'loud'}" if a.startswith("output_dir=") else a
                 for a in args], "-v")
    assert loud.exit_code == 0, loud.output
    assert loud.output.count("epoch 1/1") == 8 and "Launching 8 jobs" in loud.output
    packed = cli(*[f"output_dir={tmp_path / 'packed'}" if a.startswith("output_dir=") else a
                   for a in args if a != "sweep.pack=false"])  # seeds trained together
    assert packed.exit_code == 0, packed.output
    assert "epoch 1/1" not in packed.output and "8/8 runs" in packed.output
    (sweep_dir,) = (tmp_path / "packed" / "sweeps").iterdir()
    assert "epoch 1/1" in "".join(p.read_text() for p in sweep_dir.rglob("*.log"))


def test_small_sweep_prints_as_before(cli, mnist_root: Path, tmp_path: Path) -> None:
    result = cli("train", "-m", f"data.root={mnist_root}", f"output_dir={tmp_path}", *FAST,
                 "trainer.progress=plain", "trainer.steps=2", "seed=0,1", "sweep.pack=false")
    assert result.exit_code == 0, result.output
    assert result.output.count("epoch 1/1") == 2 and "runs (" not in result.output


def test_claims_call_piped_prints_a_line_per_sweep(cli, mnist_root: Path, tmp_path: Path
                                                   ) -> None:
    out = tmp_path / "claims"
    result = cli("claims", "--budget", "test", "--only", "exploding", "--out", str(out),
                 f"data.root={mnist_root}", "trainer.progress=plain",
                 *[o for o in TINY if not o.startswith(("trainer.epochs", "trainer.progress"))])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) <= 4, lines  # the sweep, the verdict, where claims.md is (and no more)
    assert lines[0].startswith("deep_relu: 8 runs (") and "8/8 runs" in lines[0]
    assert "epoch" not in result.output and "[job" not in result.output
    sweep_dir = out / "sweeps" / "deep_relu-test-mnist"
    assert "bnexp train -m" in (sweep_dir / sp.SWEEP_LOG).read_text()
    logs = "".join(p.read_text() for p in sweep_dir.rglob("*.log"))  # packed or one by one
    assert "epoch 1/" in logs


def test_reference_costs_are_measured_from_a_quick_call(tmp_path: Path) -> None:
    """REFERENCE (bnexp/claims/watch.py) is remeasured from a quick call's sweeps: first job's
    start to last summary, per run; a timing sweep: its process's wall per variant."""
    from bnexp.claims.watch import REFERENCE, measured_costs

    sweep = tmp_path / "sweeps" / "ioffe-quick-mnist"
    for i in range(4):
        finish(sweep / f"{i}_x", when=1000.0 + 3 * (i + 1))
    finish(sweep / "0_x" / ".previous" / "t", when=5000.0)  # an earlier attempt: not counted
    (sweep / "sweep.json").write_text(json.dumps({"jobs": {"0": {"decided": 1000.0}}}))
    timing = tmp_path / "sweeps" / "cost-quick-mnist"
    for seed in (0, 1):
        for kind in ("none", "torch"):
            (timing / f"seed={seed},norm={kind}").mkdir(parents=True)
            (timing / f"seed={seed},norm={kind}" / "summary.json").write_text(
                json.dumps({"status": "completed", "wall_time_s": 8.0}))
    assert measured_costs(tmp_path) == {"cost": 4.0, "ioffe": 3.0}
    assert set(REFERENCE) >= {"ioffe", "cost", "santurkar"}
