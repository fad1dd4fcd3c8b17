"""Models: every architecture x every norm builds and runs; Glorot init; the DLN is a matrix product."""

import math

import pytest
import torch
import torch.nn as nn

from bnsweep.data import DatasetInfo
from bnsweep.errors import UserError
from bnsweep.models import MODELS, VGG_CFGS, DlnOptions, VggOptions, build_model, norm_layers, weight_layers
from bnsweep.norms import NORMS, norm_layer

CIFAR = DatasetInfo("cifar10", (3, 32, 32), 10, "classification", 50000)
DIGITS = DatasetInfo("digits", (1, 8, 8), 10, "classification", 1438)
GAUSS = DatasetInfo("gaussian_regression", (10,), 10, "regression", 1000)


def setup(arch):
    if arch == "dln":
        return DlnOptions(depth=5), GAUSS
    return VggOptions(width=1 / 16), DIGITS if arch == "vgg_mini" else CIFAR


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("arch", MODELS)
def test_every_model_with_every_norm(arch, norm):
    opts, info = setup(arch)
    model = build_model(arch, opts, norm_layer(norm, NORMS[norm].Options(), torch.Generator().manual_seed(0)), info)
    x = torch.randn(4, *info.input_shape)
    y = model(x)
    assert y.shape == (4, info.out_dim)
    n_weight = len(weight_layers(model))
    expected = opts.depth if arch == "dln" else sum(v != "M" for v in VGG_CFGS[arch]) + 1
    assert n_weight == expected
    assert len(norm_layers(model)) == (0 if norm == "none" else n_weight - 1)  # after every weight layer but the last
    y.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_vgg16_has_the_papers_13_conv_layers_and_linear_head():
    model = build_model("vgg16", VggOptions(), norm_layer("batch", NORMS["batch"].Options()), CIFAR)
    layers = weight_layers(model)
    assert [type(m) for m in layers] == [nn.Conv2d] * 13 + [nn.Linear]
    assert [m.out_channels for m in layers[:13]] == [v for v in VGG_CFGS["vgg16"] if v != "M"]
    assert layers[-1].in_features == 512 and layers[-1].out_features == 10


def test_mlp_head_and_width():
    model = build_model("vgg11", VggOptions(width=0.25, head="mlp", mlp_hidden=64), norm_layer("batch", NORMS["batch"].Options()), CIFAR)
    layers = weight_layers(model)
    assert layers[0].out_channels == 16 and [m.out_features for m in layers[-3:]] == [16, 16, 10]
    assert len(norm_layers(model)) == len(layers) - 1


@pytest.mark.parametrize("arch", MODELS)
def test_glorot_uniform_init_and_zero_bias(arch):
    torch.manual_seed(0)
    opts, info = setup(arch)
    model = build_model(arch, opts, norm_layer("none", NORMS["none"].Options()), info)
    for m in weight_layers(model):
        w = m.weight
        fan_in, fan_out = w.shape[1] * w[0, 0].numel(), w.shape[0] * w[0, 0].numel()
        bound = math.sqrt(6 / (fan_in + fan_out))
        assert w.abs().max() <= bound
        if w.numel() >= 500:  # U(-a, a) has variance a^2 / 3
            assert abs(w.var().item() / (bound**2 / 3) - 1) < 0.2
        if m.bias is not None:
            assert torch.all(m.bias == 0)


def test_dln_output_is_the_product_of_its_weight_matrices():
    model = build_model("dln", DlnOptions(), norm_layer("none", NORMS["none"].Options()), GAUSS).double()
    ws = [m.weight for m in weight_layers(model)]
    assert len(ws) == 25 and all(w.shape == (10, 10) for w in ws)
    product = torch.eye(10, dtype=torch.float64)
    for w in ws:  # W_25 ... W_2 W_1: the first layer acts first
        product = w @ product
    x = torch.randn(7, 10, dtype=torch.float64)
    torch.testing.assert_close(model(x), x @ product.T)


@pytest.mark.parametrize("arch,info", [("vgg16", DIGITS), ("vgg16", GAUSS), ("dln", DIGITS), ("dln", CIFAR)])
def test_incompatible_data_is_refused(arch, info):
    with pytest.raises(UserError, match=arch):
        MODELS[arch].check(arch, info)
