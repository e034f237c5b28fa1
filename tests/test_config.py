"""Config composition for every group option, and the schema's rejection of bad values."""

from __future__ import annotations

import dataclasses
import shutil

import pytest
import yaml
from omegaconf import OmegaConf

from bnexp import config, hydra_app
from bnexp.config import (
    MISSING,
    NORM_SCHEMAS,
    BnexpConfig,
    DataConfig,
    ModelConfig,
    NormKind,
    OptimConfig,
    ProbeConfig,
    StrEnum,
    TrainerConfig,
    flatten,
    optional_keys,
    validate,
)
from bnexp.errors import BnexpError
from bnexp.hydra_app import compose_config, config_dir

GROUPS = ["data", "model", "norm", "optim", "trainer", "probe"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_group_option_composes(group: str, option: str) -> None:
    cfg = compose_config([f"{group}={option}"])
    # Each option file names itself in its selector key (the choice a user made is visible), or
    # is a setting of another option it composes (norm=noisy_static: norm=noisy, still). Groups
    # without a selector key (trainer, probe: probe=off is probe=default, changed) only compose.
    selector = {"data": cfg.data.name, "model": cfg.model.arch, "norm": cfg.norm.kind,
                "optim": cfg.optim.name}.get(group)
    defaults = yaml.safe_load((config_dir() / group / f"{option}.yaml").read_text())
    bases = [d for d in defaults.get("defaults", []) if d in options(group)]
    if selector is not None:
        assert selector == (bases[0] if bases else option)


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


# One source of values: the YAML files hold every value, the schema types and choices.


def test_schema_holds_types_and_choices_not_values() -> None:
    schemas = [DataConfig, ModelConfig, *set(NORM_SCHEMAS.values()), OptimConfig, TrainerConfig,
               ProbeConfig]
    leaves = [(s, f) for s in schemas for f in dataclasses.fields(s)]
    leaves += [(BnexpConfig, f) for f in dataclasses.fields(BnexpConfig) if f.name in
               ("seed", "name", "output_dir")]
    assert [f"{s.__name__}.{f.name}" for s, f in leaves if f.default != MISSING] == []


def test_enum_members_are_named_by_their_values() -> None:
    """OmegaConf converts a string to a member by name; users see its value."""
    enums = [v for v in vars(config).values()
             if isinstance(v, type) and issubclass(v, StrEnum) and v is not StrEnum]
    assert len(enums) == 13
    assert all(m.name == m.value for e in enums for m in e)


def test_choices_compare_print_and_interpolate_as_plain_strings() -> None:
    cfg = compose_config([])
    assert isinstance(cfg.norm.kind, NormKind) and cfg.norm.kind == "torch"
    assert (cfg.name, f"{cfg.model.arch}", str(cfg.optim.schedule)) == ("mnist-cnn-torch", "cnn",
                                                                          "onecycle")
    text = OmegaConf.to_yaml(cfg)
    assert "  kind: torch\n" in text and "NormKind" not in text
    flat = flatten(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    assert type(flat["trainer.device"]) is str and flat["model.channels"] == [16, 32, 64]


def test_values_are_those_of_the_group_files() -> None:
    """Where the old dataclass defaults disagreed with the files, users got the files' values."""
    cfg = compose_config([])
    assert (cfg.model.arch, cfg.norm.kind, cfg.optim.schedule, cfg.optim.nesterov) == \
        ("cnn", "torch", "onecycle", True)
    adam = compose_config(["optim=adam"]).optim
    assert (adam.lr, adam.momentum, adam.nesterov, list(adam.betas)) == (1e-3, 0.9, False,
                                                                         [0.9, 0.999])


@pytest.mark.parametrize("overrides", [["norm.kind=bogus"], ["norm=none", "norm.kind=bogus"]])
def test_bad_choice_is_one_paragraph_listing_the_choices(overrides: list[str]) -> None:
    with pytest.raises(BnexpError) as info:
        compose_config(overrides)
    assert str(info.value) == ("norm.kind='bogus' is not a valid choice. Use one of: none, torch, "
                               "custom, seed, noisy, ghost, layer, group (for example `bnexp "
                               "train norm.kind=none`).")


def test_bad_choice_in_a_group_file(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copytree(config_dir(), tmp_path / "configs")
    (tmp_path / "configs" / "trainer" / "gpu.yaml").write_text(
        (config_dir() / "trainer" / "default.yaml").read_text().replace("device: auto", "device: gpu"))
    monkeypatch.setattr(hydra_app, "config_dir", lambda: tmp_path / "configs")
    with pytest.raises(BnexpError, match=r"^trainer.device='gpu' is not a valid choice. Use one "
                                         r"of: auto, cpu, cuda, mps"):
        compose_config(["trainer=gpu"])


def test_validate_gives_plain_configs_the_same_messages() -> None:
    tree = OmegaConf.to_container(compose_config([]), resolve=True, enum_to_str=True)
    validate(tree)
    tree["trainer"]["progress"] = "fancy"
    with pytest.raises(BnexpError, match="trainer.progress='fancy' is not a valid choice"):
        validate(tree)


@pytest.mark.parametrize("kind,keys", [("none", []), ("seed", []), ("torch", ["eps", "momentum"]),
                                       ("custom", ["eps", "momentum", "impl"])])
def test_each_norm_kind_has_exactly_the_keys_it_takes(kind: str, keys: list[str]) -> None:
    assert list(compose_config([f"norm={kind}"]).norm) == ["kind", *keys]


@pytest.mark.parametrize("overrides,needle", [
    (["norm=seed", "norm.eps=1e-3"], "no key `norm.eps`; `norm.eps` applies only to norm=torch, "
                                     "norm=custom, norm=noisy, norm=ghost, norm=layer and "
                                     "norm=group"),
    (["norm=none", "norm.momentum=0.2"], "no key `norm.momentum`"),
    (["norm=torch", "norm.impl=eager"], "`norm.impl` applies only to norm=custom"),
    (["norm=seed", "+norm.eps=1e-3"], "norm.kind=seed takes no `norm.eps`"),
    (["norm.kind=seed"], "Choose the norm with `norm=seed`"),  # norm=torch's keys, seed's kind
    (["norm.kind=custom"], "norm.kind=custom needs `norm.impl`"),
])
def test_keys_a_norm_kind_does_not_take_are_rejected(overrides: list[str], needle: str) -> None:
    with pytest.raises(BnexpError) as info:
        compose_config(overrides)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_norm_kinds_with_the_same_keys_swap_by_kind() -> None:
    assert compose_config(["norm=none", "norm.kind=seed"]).name == "mnist-cnn-seed"


def test_a_group_without_its_file_names_the_missing_value() -> None:
    with pytest.raises(BnexpError, match=r"`trainer.epochs` has no value.*`trainer=OPTION`"):
        compose_config(["~trainer"])


def test_flatten_and_optional_keys() -> None:
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": None}) == {"a.b": 1, "a.c": [1, 2], "d": None}
    assert optional_keys() == {"data.train_size", "trainer.steps", "trainer.threads",
                               "trainer.channels_last", "norm.momentum", "sweep.pack_max"}
