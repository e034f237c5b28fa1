"""The only module that talks to Hydra: finds the config tree, composes, translates errors."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from bnexp.config import BnexpConfig, validate
from bnexp.errors import BnexpError
from bnexp.sweep import safe_dirname  # noqa: F401  (registers the job-directory resolver)

ConfigStore.instance().store(name="bnexp_schema", node=BnexpConfig)



def config_dir() -> Path:
    """The config tree: inside the package in an installed wheel, else the checkout's configs/."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "configs", here.parent / "configs"):
        if (candidate / "config.yaml").exists():
            return candidate
    raise RuntimeError(f"bnexp's configs/ tree is missing (looked in {here} and {here.parent})")


def compose_config(overrides: list[str]) -> DictConfig:
    """Compose ``configs/config.yaml`` with Hydra overrides and validate the result."""
    cfg = _compose(overrides, overrides)
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as exc:
        raise BnexpError(_explain(exc, overrides)) from None
    validate(cfg)
    return cfg


def _compose(overrides: list[str], shown: list[str], with_hydra: bool = False) -> DictConfig:
    """Hydra's compose(), its errors turned into one paragraph naming ``shown`` overrides."""
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides),
                           return_hydra_config=with_hydra)
    except (HydraException, OmegaConfBaseException) as exc:
        raise BnexpError(_explain(exc, shown)) from None


def _explain(exc: Exception, overrides: list[str]) -> str:
    """One paragraph: what Hydra/OmegaConf objected to, and how to fix it."""
    parts = [str(exc).strip()]
    cause = exc.__cause__
    while cause is not None:
        text = str(cause).strip()
        if text and text not in parts[-1]:
            parts.append(text)
        cause = cause.__cause__
    detail = " ".join(" ".join(p.split()) for p in parts)
    detail = re.sub(r"\s*Config search path:.*", "", detail)  # Hydra's internals, not the user's
    detail = re.sub(r"\s*full_key: \S*(\s+reference_type=\S+)?(\s+object_type=\S+)?", "", detail)
    detail = re.sub(r"\s*To append to your config use \S+", "", detail)  # the schema forbids it
    missing = re.search(r"Could not override '([\w.]+)'\. Key '\w+' not in '\w+'", detail)
    if missing:  # the schema's class name is bnexp's internals: name the key and the closest one
        import difflib

        from bnexp.config import BnexpConfig

        known = list(_flat_keys(OmegaConf.structured(BnexpConfig)))
        close = difflib.get_close_matches(missing.group(1), known, n=1)
        detail = (f"there is no key `{missing.group(1)}`"
                  + (f"; did you mean `{close[0]}`?" if close else "."))
    return (f"Invalid configuration: {detail} (overrides: {' '.join(overrides) or 'none'}). "
            "Run `bnexp config` to see every key with its current value, and use "
            "`group=option` to pick a config file (e.g. norm=torch) or `group.key=value` to "
            "change a value (e.g. optim.lr=0.05).")


def _flat_keys(node: Any, prefix: str = "") -> list[str]:
    out = []
    for key in node:
        if hasattr(node[key], "keys"):
            out += _flat_keys(node[key], f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}")
    return out


def plan_multirun(overrides: list[str], sweep_dir: Path | None = None
                  ) -> tuple[Path, list[str], dict[str, list[str]]]:
    """Check a sweep before anything runs; return its directory, the overrides for Hydra and
    the grid (each swept key with its values; empty for sweeps only Hydra can expand).

    Every value of every swept key (from the command line and from a preset's
    ``hydra.sweeper.params``) is composed and validated on its own, so a typo in one value is
    a clear error before any job starts. ``sweep_dir`` fixes the sweep's directory (a new one,
    or an earlier sweep's when resuming: bnexp.sweep.run_sweep).
    """
    import importlib
    import time
    import uuid

    from hydra.core.override_parser.overrides_parser import OverridesParser

    rest = list(overrides)
    try:
        parsed = OverridesParser.create().parse_overrides(rest)
    except HydraException as exc:
        raise BnexpError(_explain(exc, rest)) from None
    sweeps = {o.get_key_element(): o for o in parsed if o.is_sweep_override()}
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]

    def values(o: Any) -> list[str]:
        try:
            return [f"{o.input_line.split('=', 1)[0]}={v}" for v in o.sweep_string_iterator()]
        except Exception:  # glob() and other sweeps that need the option list: Hydra expands
            return []

    firsts = [v[0] for v in map(values, sweeps.values()) if v]
    base = _compose(fixed + firsts, overrides, with_hydra=True)
    preset = OmegaConf.select(base, "hydra.sweeper.params") or {}
    preset_lines = [f"{k}={v}" for k, v in preset.items()]
    # Hydra's order: the preset's keys first (a command-line value keeps the preset's place),
    # then the command line's; its job numbers count through the product in that order.
    ordered = {}
    fixed_keys = {o.get_key_element() for o in parsed if not o.is_sweep_override()}
    for o in OverridesParser.create().parse_overrides(preset_lines):
        key = o.get_key_element()
        if key not in fixed_keys:  # one value on the command line replaces the preset's grid
            ordered[key] = sweeps.get(key, o)
    ordered.update({k: o for k, o in sweeps.items() if k not in ordered})
    sweeps = ordered
    lines = {key: values(o) for key, o in sweeps.items()}
    for key, key_lines in lines.items():
        others = [v[0] for k, v in lines.items() if k != key and v]
        for line in key_lines:
            validate(_compose(fixed + others + [line], overrides, with_hydra=True))

    target = OmegaConf.select(base, "hydra.launcher._target_") or ""
    try:
        importlib.import_module(target.rsplit(".", 1)[0])
    except ImportError:
        extra = "slurm" if "submitit" in target else "parallel"
        raise BnexpError(
            f"The launcher {target} is not installed. Install it with "
            f"`pip install 'bnexp[{extra}]'` (or drop the hydra/launcher override to run the "
            "jobs one after another)."
        ) from None

    if sweep_dir is None:
        named = any(o.startswith(("experiment=", "name=")) for o in fixed)
        name = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(base.name)) if named else "sweep"
        stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
        sweep_dir = Path(base.output_dir) / "sweeps" / f"{stamp}_{name}_{uuid.uuid4().hex[:6]}"
    grid = {key: [line.split("=", 1)[1] for line in key_lines] for key, key_lines in lines.items()}
    # Job directories are named by the swept overrides only: the fixed ones are the same for
    # every job and would make names too long for the filesystem.
    excluded = list(OmegaConf.select(base, "hydra.job.config.override_dirname.exclude_keys") or [])
    excluded += [o.key_or_group for o in parsed if not o.is_sweep_override()]
    rest = rest + [f"hydra.job.config.override_dirname.exclude_keys=[{','.join(excluded)}]"]
    return sweep_dir, rest, grid


def launch_multirun(overrides: list[str], sweep_dir: Path) -> None:
    """Hand the command line to Hydra's own runner (``hydra.main`` with ``-m``), so that
    sweepers and launcher plugins work as in any Hydra app."""
    import sys

    import hydra
    from hydra.core.global_hydra import GlobalHydra

    from bnexp.sweep import run_job

    GlobalHydra.instance().clear()  # a previous compose or sweep in this process
    app = hydra.main(version_base="1.3", config_path=str(config_dir()),
                     config_name="config")(run_job)
    argv = sys.argv
    sys.argv = ["bnexp", "--multirun", *overrides, f"hydra.sweep.dir='{sweep_dir}'"]
    try:
        app()
    finally:
        sys.argv = argv
