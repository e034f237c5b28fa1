"""Config composition for every group option, and the schema's rejection of bad values."""

from __future__ import annotations

import pytest

from bnexp.errors import BnexpError
from bnexp.hydra_app import compose_config, config_dir

GROUPS = ["data", "model", "norm", "optim", "trainer", "probe"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_group_option_composes(group: str, option: str) -> None:
    cfg = compose_config([f"{group}={option}"])
    # Each option file names itself in its selector key (the choice a user made is visible).
    selector = {"data": cfg.data.name, "model": cfg.model.arch, "norm": cfg.norm.kind,
                "optim": cfg.optim.name}.get(group, option)
    assert selector == option


def test_expected_options_exist() -> None:
    assert options("data") == ["cifar10", "cifar100", "fashion_mnist", "mnist"]
    assert options("model") == ["cnn", "mlp"]
    assert set(options("norm")) >= {"none", "torch", "custom"}
    assert options("optim") == ["adam", "adamw", "sgd"]


def test_defaults_and_overrides() -> None:
    cfg = compose_config(["norm=custom", "model=mlp", "optim.lr=0.05", "trainer.epochs=1"])
    assert (cfg.norm.kind, cfg.model.arch, cfg.optim.lr, cfg.trainer.epochs) == \
        ("custom", "mlp", 0.05, 1)
    assert cfg.name == "mnist-mlp-custom"


def test_env_overrides_data_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BNEXP_DATA", "/somewhere/data")
    assert compose_config([]).data.root == "/somewhere/data"
    monkeypatch.delenv("BNEXP_DATA")
    assert compose_config([]).data.root == "./data"


@pytest.mark.parametrize("overrides,needle", [
    (["norm=batchy"], "norm/batchy"),                 # unknown group option
    (["trainer.epochz=3"], "epochz"),                 # unknown key
    (["trainer.epochs=three"], "epochs"),             # wrong type
    (["optim.lr=0"], "optim.lr"),                     # non-positive
    (["optim.lr=-0.1"], "optim.lr"),
    (["trainer.batch_size=0"], "trainer.batch_size"),
    (["trainer.epochs=-1"], "trainer.epochs"),
    (["data.name=imagenet"], "data.name"),            # unknown dataset
    (["data=imagenet"], "data/imagenet"),
    (["model.activation=gelu"], "model.activation"),
    (["trainer.device=tpu"], "trainer.device"),
    (["model.dropout=1.5"], "model.dropout"),
])
def test_bad_overrides_raise_user_errors(overrides: list[str], needle: str) -> None:
    with pytest.raises(BnexpError) as info:
        compose_config(overrides)
    assert needle in str(info.value)


@pytest.mark.parametrize("override,needle,suggestion", [
    ("+trainer.epoch=5", "trainer.epoch", "trainer.epochs"),
    ("+trainer.foo=1", "trainer.foo", None),
    ("+lr=0.1", "`lr`", None),
    ("+optim.momentun=0.5", "optim.momentun", "optim.momentum"),
])
def test_keys_added_with_plus_are_rejected(override: str, needle: str, suggestion) -> None:
    """Hydra's + adds keys even to a structured config: bnexp refuses any key the schema lacks."""
    with pytest.raises(BnexpError) as info:
        compose_config([override])
    text = str(info.value)
    assert needle in text and "\n" not in text
    assert suggestion is None or f"Did you mean `{suggestion}`" in text


def test_plus_groups_and_hydra_keys_still_work(cli) -> None:
    assert compose_config(["+reg=bn_dropout"]).model.dropout == 0.3
    result = cli("train", "-m", "+trainer.foo=1,2", "trainer.epochs=1")
    assert result.exit_code == 2 and "trainer.foo" in result.output and "Traceback" not in result.output
