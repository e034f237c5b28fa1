"""Typer commands: parse arguments, call into the library, print. No logic lives here.

torch and Hydra are imported inside the commands so that ``bnexp --help`` answers at once.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from bnexp.errors import BnexpError, one_line_warnings

app = typer.Typer(help="bnexp: experiments that test what Batch Normalization actually does.",
                  no_args_is_help=True, pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]})
data_app = typer.Typer(help="List, fetch and verify datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")

Overrides = Annotated[list[str] | None, typer.Argument(
    help="Hydra overrides, e.g. norm=custom model=mlp optim.lr=0.05 trainer.epochs=1",
    show_default=False)]
DataRoot = Annotated[Path | None, typer.Option(
    "--root", help="Data folder (default: $BNEXP_DATA or ./data).")]
Verbose = Annotated[bool, typer.Option(
    "--verbose", "-v", help="Print every job's output (Hydra's job lines, epoch lines) instead "
    "of one progress display; otherwise it goes to the sweep's sweep.log and each job's "
    "output.log.")]


one_line_warnings()


@contextmanager
def user_errors():
    """Print a BnexpError as one short paragraph and exit 2; bugs keep their traceback."""
    try:
        yield
    except BnexpError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None


def _root(root: Path | None) -> Path:
    import os

    return root if root is not None else Path(os.environ.get("BNEXP_DATA", "./data"))


@app.command()
def train(
    overrides: Overrides = None,
    multirun: Annotated[bool, typer.Option(
        "--multirun", "-m", help="Run the grid of all swept values (norm=none,torch seed=0,1) "
        "through Hydra's launcher.")] = False,
    resume: Annotated[Path | None, typer.Option(
        help="With -m: continue the sweep in this directory (its own grid, from sweep.json); "
        "only jobs without a finished result run.")] = None,
    verbose: Verbose = False,
) -> None:
    """Train one model; OVERRIDES use Hydra's syntax (norm=torch model=cnn optim.lr=0.05)."""
    overrides = list(overrides or [])
    old_style = [o.split("=", 1)[1] for o in overrides if o.startswith("sweep.resume=")]
    if old_style:  # the earlier spelling of --resume
        overrides = [o for o in overrides if not o.startswith("sweep.resume=")]
        resume = Path(old_style[-1])
    if resume is not None and not multirun:
        typer.secho("error: --resume continues a sweep: use `bnexp train -m --resume DIR`.",
                    fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    if multirun:
        _multirun(overrides, resume, verbose)
        return
    with user_errors():
        from bnexp.hydra_app import compose_config
        from bnexp.startup import import_trainer

        cfg = compose_config(overrides or [])
        try:
            summary = import_trainer().train(cfg, overrides or [])
        except KeyboardInterrupt:
            typer.secho("interrupted: everything logged so far is kept in the run directory",
                        fg=typer.colors.YELLOW, err=True)
            raise typer.Exit(130) from None
    final = summary["final"]
    acc = f"test acc {100 * final['test/acc']:.2f}%" if "test/acc" in final else "no evaluation"
    typer.echo(f"{summary['status']}: {acc} after {summary['steps']} steps in "
               f"{summary['wall_time_s']:.1f}s -> {summary['run_dir']}")
    if summary["status"] == "diverged":
        typer.echo(f"the loss became non-finite at step {summary['diverged_step']}")


def _multirun(overrides: list[str], resume: Path | None, verbose: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    from bnexp.sweep import UNFINISHED, run_sweep
    from bnexp.sweep_progress import sweep_watch

    started: list[Path] = []

    def announce(sweep_dir: Path) -> None:
        started.append(sweep_dir)
        typer.echo(f"sweep -> {sweep_dir}")

    try:
        with user_errors():
            sweep_dir, rows, failed = run_sweep(overrides, ["bnexp", "train", "-m", *overrides],
                                                on_start=announce, resume=resume,
                                                watch=sweep_watch(verbose))
    except KeyboardInterrupt:
        how = (f"`bnexp train -m --resume {started[0]}`" if started
               else "the same command")
        typer.secho(f"interrupted: finished jobs are kept; continue with {how}",
                    fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(130) from None
    table = Table("job", "varied overrides", "status", "test acc")
    for r in rows:
        acc = f"{100 * r['test_acc']:.2f}%" if r["test_acc"] is not None else "-"
        status = r["status"] + (" (kept)" if r["resumed"] else "")
        table.add_row(str(r["num"]), r["varied"], status, acc)
    Console(width=120).print(table)
    typer.echo(f"sweep: {sweep_dir} (sweep.json, one directory per job)")
    unfinished = sum(r["status"] in UNFINISHED for r in rows)
    if failed or unfinished:
        parts = [f"{failed} failed (see their summary.json)"] if failed else []
        parts += [f"{unfinished} did not finish"] if unfinished else []
        typer.secho(f"{' and '.join(parts)} of {len(rows)} jobs; re-run only those with: "
                    f"bnexp train -m --resume {sweep_dir}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)


@app.command()
def report(
    paths: Annotated[list[Path], typer.Argument(help="Run or sweep directories (searched "
                                                "recursively for runs).")],
    out: Annotated[Path | None, typer.Option(
        help="Where report.md, results.csv and figures/ go (default: a new folder "
             "outputs/reports/<time>_report_<id>/ for each report).")] = None,
) -> None:
    """Aggregate runs into a table, report.md, results.csv and PNG figures."""
    from rich.console import Console
    from rich.table import Table

    with user_errors():
        from bnexp.report import fmt, write_report

        found = write_report(list(paths), out)
    console = Console(width=140)
    table = Table("group", "runs", "status", "test acc %", "gap (pp)", "step ms",
                  title=f"{len(found['runs'])} runs, grouped by "
                        f"{', '.join(found['keys']) or '(nothing varies)'}")
    for g in found["groups"]:
        status = ", ".join(f"{v} {k}" for k, v in sorted(g.statuses().items()))
        table.add_row(g.label, str(len(g.runs)), status, fmt(g.stat("test/acc"), 100),
                      fmt(g.stat("gap/acc"), 100), fmt(g.stat("time/step_ms")))
    console.print(table)
    for path, reason in found["problems"]:
        typer.secho(f"skipped {path}: {reason}", fg=typer.colors.YELLOW, err=True)
    typer.echo(f"report: {found['out'] / 'report.md'} ({len(found['figures'])} figures, "
               "results.csv)")


@app.command()
def claims(
    overrides: Overrides = None,
    budget: Annotated[str, typer.Option(help="quick (a preview: 3 seeds, short training), "
                                        "standard (>= 5 seeds: the verdicts to cite), full (a "
                                        "cluster), or test (tiny).")] = "quick",
    out: Annotated[Path, typer.Option(help="Where claims.md, figures/ and the sweeps go.")] = Path(
        "outputs/claims"),
    only: Annotated[str | None, typer.Option(
        help="Comma-separated claim ids to run (default: all).")] = None,
    spec: Annotated[Path | None, typer.Option(
        help="A claims file of your own (the schema of configs/claims/claims.yaml) instead "
             "of bnexp's.")] = None,
    max_minutes: Annotated[float | None, typer.Option(
        help="With --budget adaptive: stop adding looks when the next would not fit.")] = None,
    plan_only: Annotated[bool, typer.Option(
        "--plan", help="Run nothing: print per claim and sweep the runs, the estimated minutes "
                       "and, from an earlier claims.json, the expected chance of a decision.")
    ] = False,
    verbose: Verbose = False,
) -> None:
    """Run the experiment presets and write claims.md and claims.json: one verdict per claim,
    by the decision rules declared in configs/claims/claims.yaml, or in your own --spec FILE
    (tests paired by seed, Holm across claims). data=fashion_mnist or data=cifar10 runs the
    claims that support it. The whole claims file is checked before anything runs.
    Re-running reuses completed runs."""
    with user_errors():
        from bnexp.claims import run_claims
        from bnexp.claims.watch import claims_watch

        if plan_only:
            from bnexp.claims.forecast import print_plan

            print_plan(budget, out, overrides or [], only.split(",") if only else None,
                       spec, typer.echo)
            return
        path = run_claims(budget, out, overrides or [],
                          only=only.split(",") if only else None, echo=typer.echo,
                          spec_path=spec, max_minutes=max_minutes,
                          watch=claims_watch(out, verbose))
    typer.echo(f"claims: {path}")


@app.command()
def time(
    overrides: Overrides = None,
    variants: Annotated[str, typer.Option(help="Norm kinds to time, comma-separated; the first "
                                          "is the baseline.")] = "none,torch,custom,seed",
    rounds: Annotated[int, typer.Option(min=1, help="Timed windows per variant.")] = 8,
    window: Annotated[int, typer.Option(min=1, help="Training steps per window.")] = 25,
    seeds: Annotated[str, typer.Option(help="Seeds, comma-separated (one process each).")] = "0",
    out: Annotated[Path, typer.Option(help="Where the per-variant run directories go.")] = Path(
        "outputs/timing"),
) -> None:
    """Time a training step of each norm variant, interleaved in one process (rounds of WINDOW
    steps, order rotated, a warm-up round dropped), so machine load hits all alike; prints the
    median ms per step and the overhead against the first variant."""
    import statistics

    with user_errors():
        from bnexp.config import NormKind
        from bnexp.hydra_app import compose_config

        kinds = [k for k in variants.split(",") if k]
        bad = [k for k in kinds if k not in NormKind.__members__]
        if bad or not kinds:
            raise BnexpError(f"--variants {variants}: unknown norm kind(s) {', '.join(bad)}. "
                             f"Use a comma-separated list of: {', '.join(NormKind)}.")
        try:
            seed_list = [int(x) for x in seeds.split(",") if x]
        except ValueError:
            raise BnexpError(f"--seeds {seeds} must be comma-separated integers, e.g. 0,1,2.") from None
        from bnexp.timing import run_interleaved

        results = {}
        for seed in seed_list:
            cfg = compose_config([*(overrides or []), f"seed={seed}"])
            results[seed] = run_interleaved(cfg, kinds, rounds, window, out, overrides or [])
    base = kinds[0]
    for seed, per in results.items():
        ref = per[base]["final"]["time/step_ms_median"]
        typer.echo(f"seed {seed} ({per[base]['threads']} threads, {per[base]['device']}): ms per "
                   f"step, median [min, max] of {rounds} windows of {window} steps")
        for k, summary in per.items():
            f = summary["final"]
            typer.echo(f"  {k:>7}: {f['time/step_ms_median']:7.2f} [{f['time/step_ms_min']:.2f}, "
                       f"{f['time/step_ms_max']:.2f}]  {100 * (f['time/step_ms_median'] / ref - 1):+6.1f}%"
                       f" vs {base}")
    if len(results) > 1:
        for k in kinds[1:]:
            ratios = [per[k]["final"]["time/step_ms_median"] / per[base]["final"]["time/step_ms_median"]
                      for per in results.values()]
            typer.echo(f"{k} vs {base} over {len(ratios)} seeds: median "
                       f"{100 * (statistics.median(ratios) - 1):+.1f}% "
                       f"[{100 * (min(ratios) - 1):+.1f}%, {100 * (max(ratios) - 1):+.1f}%]")
    typer.echo(f"timing: {out}")


@app.command()
def config(overrides: Overrides = None) -> None:
    """Print the composed, resolved config without training."""
    with user_errors():
        from omegaconf import OmegaConf

        from bnexp.hydra_app import compose_config

        typer.echo(OmegaConf.to_yaml(compose_config(overrides or [])), nl=False)


def _known_dataset(name: str) -> None:
    from bnexp.config import Dataset

    if name not in Dataset.__members__:
        raise BnexpError(f"Unknown dataset {name!r}. Known datasets: {', '.join(Dataset)} "
                         "(e.g. `bnexp data get mnist`).")


@data_app.command("list")
def data_list(root: DataRoot = None) -> None:
    """Show the datasets bnexp knows and whether each is installed under the data folder."""
    from rich.console import Console
    from rich.table import Table

    from bnexp.data import REGISTRY, is_present

    root = _root(root)
    table = Table("name", "classes", "shape", "installed", title=f"datasets in {root}")
    for name, spec in REGISTRY.items():
        table.add_row(name, str(spec.num_classes), "x".join(map(str, spec.shape)),
                      "yes" if is_present(spec, root) else "no")
    Console().print(table)


@data_app.command("get")
def data_get(
    name: Annotated[str, typer.Argument(help="mnist | fashion_mnist | cifar10 | cifar100")],
    from_dir: Annotated[Path | None, typer.Option(
        "--from", help="Folder holding the official archives (no download).")] = None,
    root: DataRoot = None,
) -> None:
    """Download NAME (or install it from --from DIR) into the data folder, checking MD5s."""
    with user_errors():
        _known_dataset(name)  # before importing torch: a typo answers at once
        from bnexp import data

        root = _root(root)
        if from_dir is not None:
            data.get_from_dir(name, from_dir, root)
        else:
            data.download(name, root)
        problems = data.check_files(name, root)
        if problems:
            raise BnexpError(f"{name} was fetched but failed verification: {'; '.join(problems)}.")
    typer.echo(f"{name}: installed and verified in {root}")


@data_app.command("verify")
def data_verify(
    name: Annotated[str, typer.Argument(help="mnist | fashion_mnist | cifar10 | cifar100")],
    root: DataRoot = None,
) -> None:
    """Check the installed files of NAME against the official MD5s."""
    with user_errors():
        _known_dataset(name)
        from bnexp import data

        root = _root(root)
        problems = data.check_files(name, root)
        if problems:
            raise BnexpError(f"{name} in {root} failed verification: {'; '.join(problems)}. "
                             f"Delete the files and run `bnexp data get {name}"
                             f"{data.root_flag(root)}`.")
        problems = data.cache_problems(name, root)
        if problems:
            raise BnexpError(f"{name} in {root}: the files match the official MD5s, but "
                             f"{'; '.join(problems)}. Delete that cache file; the next run "
                             "rebuilds it from the verified files.")
    typer.echo(f"{name}: all files match the official MD5s, and the tensor cache its checksum "
               f"({root})")


@app.command()
def tb(
    logdir: Annotated[Path, typer.Argument(help="Folder of runs to show.")] = Path("outputs"),
    port: Annotated[int, typer.Option(help="Port; 0 picks a free one.")] = 6006,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "localhost",
) -> None:
    """Start TensorBoard on LOGDIR (default outputs/) and print the URL that opens on the
    learning curves. Runs are named like the experiment (mlp-norm-sweep/norm=none), new runs
    appear as they start, and HParams lists the swept keys first."""
    import signal
    import socket

    with user_errors():
        if not logdir.is_dir():
            raise BnexpError(f"{logdir} is not a folder. Pass the folder that holds your runs "
                             "(default: outputs/, created by `bnexp train`).")
    with user_errors():
        try:
            with socket.socket() as s:  # taken (another TensorBoard?): say so, do not guess
                s.bind((host, port))
                port = s.getsockname()[1]
        except OSError as exc:
            raise BnexpError(f"Cannot listen on {host}:{port} ({exc.strerror}): another program "
                             "(perhaps another TensorBoard) uses that port. Pass another one, "
                             "e.g. --port 6007, or --port 0 for any free port.") from None
    from bnexp.tbview import serve

    def stop(_signum: int, _frame: object) -> None:  # `kill`/a scheduler: stop TensorBoard too
        raise KeyboardInterrupt

    def ready(url: str, runs: int) -> None:  # the URL only once it answers
        typer.echo(f"TensorBoard on {logdir} ({runs} runs): {url}")
        typer.echo(f"  opens on loss, accuracy and the gap, unsmoothed; every chart: "
                   f"http://{host}:{port}/?smoothing=0, HParams: http://{host}:{port}/#hparams; "
                   "Ctrl-C to stop")
        sys.stdout.flush()

    signal.signal(signal.SIGTERM, stop)
    code, last_line = serve(logdir, host, port, ready)
    if code not in (0, -15):
        typer.secho(f"error: TensorBoard exited with code {code}: {last_line}. If the port is "
                    "taken, pass --port 0.", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)


if __name__ == "__main__":
    app()
