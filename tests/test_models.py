"""Model shapes for every model x norm, layer names stable across norms, no bias before a norm."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from bnexp.config import ModelConfig, NormConfig
from bnexp.models import build_model
from bnexp.norm import BatchNorm, SeedBatchNorm

NORMS = ["none", "torch", "custom", "seed"]
NORM_TYPES = {"none": nn.Identity, "torch": (nn.BatchNorm1d, nn.BatchNorm2d),
              "custom": BatchNorm, "seed": SeedBatchNorm}


def build(arch: str, norm: str, shape=(1, 28, 28), classes=10, **kw) -> nn.Module:
    mcfg = OmegaConf.structured(ModelConfig(arch=arch, **kw))
    return build_model(mcfg, OmegaConf.structured(NormConfig(kind=norm)), shape, classes)


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("shape,classes", [((1, 28, 28), 10), ((3, 32, 32), 100)])
def test_output_shape(arch: str, norm: str, shape, classes) -> None:
    model = build(arch, norm, shape, classes)
    out = model(torch.randn(5, *shape))
    assert out.shape == (5, classes)
    out.sum().backward()
    norms = [m for m in model.modules() if isinstance(m, NORM_TYPES[norm])]
    assert norms, "each hidden block carries the chosen norm"


@pytest.mark.parametrize("arch,prefix", [("mlp", "fc"), ("cnn", "conv")])
def test_layer_names_stable_and_bias_dropped(arch: str, prefix: str) -> None:
    names = {}
    for norm in NORMS:
        model = build(arch, norm)
        names[norm] = [n for n, _ in model.blocks.named_children() if n.startswith(prefix)]
        for block_name in names[norm]:
            has_bias = getattr(model.blocks, block_name).affine.bias is not None
            assert has_bias == (norm == "none")
    assert len({tuple(v) for v in names.values()}) == 1
    assert names["none"][0] == f"{prefix}1"


def test_bn_paper_mlp_is_one_config_away() -> None:
    model = build("mlp", "torch", depth=3, width=100, activation="sigmoid")
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [lin.out_features for lin in linears] == [100, 100, 100, 10]
    assert sum(isinstance(m, nn.Sigmoid) for m in model.modules()) == 3


def test_checkpoint_moves_between_torch_and_custom() -> None:
    src = build("cnn", "torch")
    dst = build("cnn", "custom")
    dst.load_state_dict(src.state_dict())
    back = build("cnn", "torch")
    back.load_state_dict(dst.state_dict())
    x = torch.randn(4, 1, 28, 28)
    src.eval()
    dst.eval()
    torch.testing.assert_close(src(x), dst(x), rtol=1e-5, atol=1e-5)
