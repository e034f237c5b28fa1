"""Model shapes for every model x norm, layer names stable across norms, no bias before a norm."""

from __future__ import annotations

import functools

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from bnexp.config import NormKind
from bnexp.hydra_app import compose_config
from bnexp.models import build_model
from bnexp.norm import BatchNorm, GhostBatchNorm, NoisyBatchNorm, SeedBatchNorm

NORMS = [kind.value for kind in NormKind]
NORM_TYPES = {"none": nn.Identity, "torch": (nn.BatchNorm1d, nn.BatchNorm2d),
              "custom": BatchNorm, "seed": SeedBatchNorm, "noisy": NoisyBatchNorm,
              "ghost": GhostBatchNorm, "layer": nn.GroupNorm, "group": nn.GroupNorm}


@functools.cache
def composed(arch: str, norm: str):
    """The model and norm sections as users get them (values live in configs/, not the schema)."""
    cfg = compose_config([f"model={arch}", f"norm={norm}"])
    return cfg.model, cfg.norm


def build(arch: str, norm: str, shape=(1, 28, 28), classes=10, **kw) -> nn.Module:
    model_cfg, norm_cfg = composed(arch, norm)
    return build_model(OmegaConf.merge(model_cfg, kw), norm_cfg, shape, classes)


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


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
@pytest.mark.parametrize("init", ["default", "he"])
def test_same_seed_same_initial_weights_for_every_norm(arch: str, init: str) -> None:
    """What makes a comparison paired by seed paired: every norm variant draws the same random
    numbers at construction (biases are built, then dropped), so the weights are identical."""
    weights = {}
    for norm in NORMS:
        torch.manual_seed(3)
        model = build(arch, norm, init=init, init_gain=1.3)
        weights[norm] = {n: p for n, p in model.named_parameters() if n.endswith("affine.weight")
                         or n.startswith("head.")}
    for norm in NORMS[1:]:
        assert weights[norm].keys() == weights["none"].keys()
        for name, w in weights[norm].items():
            torch.testing.assert_close(w, weights["none"][name], rtol=0, atol=0)


def test_he_init_with_gain_sets_the_weight_scale() -> None:
    """Kaiming-normal (ReLU gain): var = gain^2 * 2 / fan_in; biases zero."""
    torch.manual_seed(0)
    model = build("mlp", "none", depth=3, width=400, init="he", init_gain=1.5)
    w = model.blocks.fc2.affine.weight
    assert w.std().item() == pytest.approx(1.5 * (2 / 400) ** 0.5, rel=0.02)
    assert model.blocks.fc2.affine.bias.abs().max().item() == 0.0


def test_he_init_plain_relu_net_keeps_gradients_flat_and_gain_makes_them_grow() -> None:
    """The exploding baseline of claim 3: with He init the per-layer growth of the backpropagated
    gradient (w.r.t. each layer's input) toward the input is ~1; with init_gain g it is ~g;
    with BN it is Yang et al.'s ~1.21 whatever the gain."""
    from bnexp.stats import growth_rate

    def rate(norm: str, gain: float) -> float:
        torch.manual_seed(0)
        model = build("mlp", norm, depth=20, width=256, activation="relu", init="he",
                      init_gain=gain)
        h, inputs = torch.randn(256, 784), []
        for block in model.blocks:  # the gradient w.r.t. each block's input
            if h.requires_grad:
                h.retain_grad()
            inputs.append(h)
            h = block(h)
        torch.nn.functional.cross_entropy(model.head(h), torch.randint(0, 10, (256,))).backward()
        return growth_rate([t.grad.norm().item() for t in inputs[1:]])

    assert rate("none", 1.0) == pytest.approx(1.0, abs=0.04)
    assert rate("none", 1.3) == pytest.approx(1.3, abs=0.06)
    assert rate("torch", 1.0) == pytest.approx(1.21, abs=0.06)
    assert rate("torch", 1.3) == pytest.approx(rate("torch", 1.0), rel=1e-3)  # scale-invariant


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_cnn_pool_and_head_options(shape) -> None:
    """pool=early is conv -> max-pool -> norm -> act per stage (the same weights as pool=late,
    under the same names); head=flatten feeds the last feature map, gap its channel means."""
    torch.manual_seed(0)
    early = build("cnn", "torch", shape, pool="early", head="flatten")
    late = build("cnn", "torch", shape, pool="late", head="gap")
    assert [k for k in early.state_dict() if not k.startswith("head")] == [
        k for k in late.state_dict() if not k.startswith("head")]
    side = shape[1] // 8  # three 2x2 max-pools, floored
    assert early.head.in_features == 64 * side * side and late.head.in_features == 64
    x = torch.randn(4, *shape)
    h = x
    for block in early.blocks:  # the stages by hand
        h = block.act(block.norm(nn.functional.max_pool2d(block.affine(h), 2)))
    assert torch.allclose(early(x), early.head(h.flatten(1)), atol=1e-6)
    h = late.blocks(x)
    assert torch.allclose(late(x), late.head(h.mean(dim=(2, 3))), atol=1e-6)
