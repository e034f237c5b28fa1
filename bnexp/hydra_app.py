"""The only module that talks to Hydra: finds the config tree, composes, translates errors."""

from __future__ import annotations

import re
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from bnexp.config import BnexpConfig, validate
from bnexp.errors import BnexpError

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
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = compose(config_name="config", overrides=list(overrides))
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException) as exc:
        raise BnexpError(_explain(exc, overrides)) from None
    validate(cfg)
    return cfg


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
    detail = re.sub(r"\s*full_key: \S+ reference_type=\S+ object_type=\S+", "", detail)
    detail = re.sub(r"\s*To append to your config use \S+", "", detail)  # the schema forbids it
    return (f"Invalid configuration: {detail} (overrides: {' '.join(overrides) or 'none'}). "
            "Run `bnexp config` to see every key with its current value, and use "
            "`group=option` to pick a config file (e.g. norm=torch) or `group.key=value` to "
            "change a value (e.g. optim.lr=0.05).")
