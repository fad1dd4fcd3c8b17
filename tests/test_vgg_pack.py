"""Packed VGG cells as one grouped network (bnsweep/vgg_pack.py) against each member's own module.

One training step of K members: the stacked losses, accuracies, gradients and running statistics equal
those of each member's `nn.Module` (its real norm layers, its noisy BatchNorm drawing its own noise) run
alone through autograd, to 1e-12 relative in float64, in both memory layouts; and a pack trains without
vmap, through `train_pack`, as the unpacked cells do (float64: tests/test_pack.py; float32: the rounding
README, Packed cells, states).
"""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from test_pack import F64, members, same_result

import bnsweep.pack
from bnsweep.data import DatasetInfo
from bnsweep.models import VggOptions, build_model
from bnsweep.norms import NORMS, NoisyBatchNorm, norm_layer, sample_noise
from bnsweep.pack import _noise_shapes, train_pack
from bnsweep.spec import CellConfig
from bnsweep.train import train_cell
from bnsweep.vgg_pack import StackedVGG

INFO = DatasetInfo("digits", (1, 8, 8), 10, "classification", 64)
INFO16 = DatasetInfo("digits", (1, 16, 16), 10, "classification", 64)  # vgg_mini ends at 2x2: the head flattens C, H, W
K, N = 3, 16


def nets(norm: str, info: DatasetInfo, dtype=F64, **vgg) -> tuple[list[nn.Module], list[torch.Generator]]:
    """K members with different initialisations, random affine parameters and their own noise generators."""
    out, gens = [], []
    for k in range(K):
        torch.manual_seed(k)
        gen = torch.Generator().manual_seed(100 + k)
        net = build_model("vgg_mini", build_opts(vgg), norm_layer(norm, NORMS[norm].Options(), gen), info).to(dtype)
        with torch.no_grad():
            for name, p in net.named_parameters():
                if name.endswith((".weight", ".bias")) and p.dim() == 1 and not name.startswith("head"):
                    p.copy_(torch.randn_like(p) * 0.5 + (1.0 if name.endswith("weight") else 0.0))
        out.append(net.train())
        gens.append(gen)
    return out, gens


def build_opts(vgg: dict) -> VggOptions:
    return VggOptions.model_validate({"width": 0.125, **vgg})


def noisy_names(net: nn.Module) -> list[str]:
    return [n for n, m in net.named_modules() if isinstance(m, NoisyBatchNorm)]


def reference(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float, dict, dict]:
    """A member alone: loss, accuracy, gradients and running statistics after its forward pass."""
    out = net(x)
    loss = F.cross_entropy(out, y)
    grads = torch.autograd.grad(loss, list(net.parameters()))
    names = [n for n, _ in net.named_parameters()]
    return loss.item(), (out.argmax(1) == y).double().mean().item(), dict(zip(names, grads)), \
        {n: b.clone() for n, b in net.named_buffers()}


@pytest.mark.parametrize("info", [INFO, INFO16], ids=["8x8", "16x16"])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("norm", NORMS)
def test_one_stacked_step_equals_each_members_module(norm, channels_last, info):
    members_, gens = nets(norm, info)
    g = torch.Generator().manual_seed(7)
    xs = torch.randn(K, N, *info.input_shape, dtype=F64, generator=g)
    ys = torch.randint(0, 10, (K, N), generator=g)
    order = noisy_names(members_[0])
    shapes = _noise_shapes(members_[0], xs[0])
    # the stacked program's inputs, taken before the members run: weights, buffers, and each member's noise drawn
    # from a copy of its generator in layer order (the real layers draw theirs from the generator itself)
    params = {n: torch.stack([dict(m.named_parameters())[n].detach() for m in members_]).requires_grad_()
              for n, _ in members_[0].named_parameters()}
    buffers = {n: torch.stack([dict(m.named_buffers())[n].clone() for m in members_]) for n, _ in members_[0].named_buffers()}
    drawn = []
    for gen in gens:
        copy = torch.Generator().set_state(gen.get_state())
        drawn.append([sample_noise(xs.new_empty(shapes[n]), NORMS[norm].Options(), copy) for n in order])
    noise = [(torch.stack([d[i][0] for d in drawn]), torch.stack([d[i][1] for d in drawn])) for i in range(len(order))]

    refs = [reference(m, xs[k], ys[k]) for k, m in enumerate(members_)]
    program = StackedVGG(members_[0], order, F.cross_entropy, channels_last=channels_last)
    loss, acc = program(params, buffers, xs, ys, noise)
    grads = torch.autograd.grad(loss.sum(), list(params.values()))
    for k, (l_ref, a_ref, g_ref, b_ref) in enumerate(refs):
        assert loss[k].item() == pytest.approx(l_ref, rel=1e-12)
        assert acc[k].item() == a_ref
        for (n, gr), gs in zip(g_ref.items(), grads):
            torch.testing.assert_close(gs[k], gr, rtol=1e-10, atol=1e-13, msg=f"gradient of {n}, member {k}")
        for n, b in b_ref.items():
            torch.testing.assert_close(buffers[n][k], b, rtol=1e-12, atol=1e-15, msg=f"buffer {n}, member {k}")
    assert len(set(loss.tolist())) == K  # the members differ: a mix-up of members would show


def test_a_packed_vgg_trains_without_vmap(monkeypatch):
    """The product path: no vmap, and in float32 each member within float32 rounding of its unpacked run."""
    def refuse(*a, **k):
        raise AssertionError("vmap on the VGG path")

    cells = members("vgg_mini", "batch", steps=5, eval_every=5)
    monkeypatch.setattr(bnsweep.pack, "vmap", refuse)
    packed = train_pack(cells)
    monkeypatch.undo()
    for c, p in zip(cells, packed):
        u = train_cell(c)
        assert p.status == u.status == "done" and p.performance == u.performance  # the choices in effect, recorded
        assert p.steps["loss"] == pytest.approx(u.steps["loss"], rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("norm", NORMS)
def test_channels_last_pack_equals_channels_last_cells(norm):
    """`performance: {channels_last: true}`: the pack runs NHWC; each member equals its unpacked NHWC run."""
    cells = [CellConfig.model_validate({**c.model_dump(by_alias=True), "performance": {"channels_last": True}})
             for c in members("vgg_mini", norm, steps=30, eval_every=15)]
    packed = train_pack(cells, dtype=F64)
    for c, p in zip(cells, packed):
        u = train_cell(c, dtype=F64)
        assert u.performance["channels_last"] and p.performance == u.performance
        same_result(u, p)


def test_mlp_head_packs_through_vmap():
    """A head StackedVGG has no rule for (Linear-norm-ReLU twice) packs as vmap of the module, equal to unpacked."""
    cells = [CellConfig.model_validate({**c.model_dump(by_alias=True), "model": {"width": 0.0625, "head": "mlp", "mlp_hidden": 64}})
             for c in members("vgg_mini", "batch", steps=8, eval_every=4)]
    mlp = build_model("vgg_mini", build_opts({"head": "mlp"}), norm_layer("batch", NORMS["batch"].Options()), INFO)
    assert not StackedVGG.supports(mlp)
    for c, p in zip(cells, train_pack(cells, dtype=F64)):
        same_result(train_cell(c, dtype=F64), p)
