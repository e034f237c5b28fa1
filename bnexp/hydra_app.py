"""Composing configs with Hydra: finds the config tree, composes and validates, parses
overrides, and turns Hydra's and OmegaConf's errors into one paragraph with the fix.

Sweeps (Hydra's multirun: planning, launching, the manifest) are ``bnexp.sweep``'s; it composes
through this module, which imports nothing of it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from bnexp.config import NORM_SCHEMAS, BnexpConfig, choice_error, key_hint, validate
from bnexp.errors import BnexpError

ConfigStore.instance().store(name="bnexp_schema", node=BnexpConfig)
for _kind, _schema in NORM_SCHEMAS.items():  # named by configs/norm/<kind>.yaml's defaults list
    ConfigStore.instance().store(group="schema/norm", name=_kind.value, node=_schema)


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


def compose_with_hydra(overrides: list[str], shown: list[str] | None = None) -> DictConfig:
    """The composed config with Hydra's own node (launcher, sweeper params, job settings),
    unresolved and not validated; errors name the ``shown`` overrides (default: these)."""
    return _compose(overrides, overrides if shown is None else shown, with_hydra=True)


def parse_overrides(overrides: list[str]) -> list[Any]:
    """Hydra's parsed ``Override`` objects (sweeps, keys, values) for ``key=value`` lines."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as exc:
        raise BnexpError(_explain(exc, overrides)) from None


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
    cause: BaseException | None = exc
    while cause is not None:  # a value outside an enum's choices: the message validate() gives
        choice = choice_error(str(getattr(cause, "full_key", "")), getattr(cause, "value", None))
        if choice and "Invalid value" in str(cause):
            return choice
        cause = cause.__cause__ or cause.__context__  # Hydra re-raises a group file's error
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
        hint = key_hint(missing.group(1))
        detail = f"there is no key `{missing.group(1)}`" + (f"; {hint}" if hint else ".")
    return (f"Invalid configuration: {detail} (overrides: {' '.join(overrides) or 'none'}). "
            "Run `bnexp config` to see every key with its current value, and use "
            "`group=option` to pick a config file (e.g. norm=torch) or `group.key=value` to "
            "change a value (e.g. optim.lr=0.05).")
