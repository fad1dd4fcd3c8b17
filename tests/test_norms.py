"""Normalisation variants against brute-force per-channel formulas (docs/protocol.md section 3)."""

import math
import re

import pytest
import torch

from bnsweep.norms import (
    NORMS,
    BatchNorm,
    BatchOptions,
    L2Norm,
    LpNorm,
    LpOptions,
    NoisyBatchNorm,
    NoisyBatchOptions,
    NoNorm,
    norm_layer,
    sample_noise,
)
from bnsweep.options import NoOptions

SHAPES = {"conv": (6, 3, 4, 5), "linear": (32, 3)}


def randomise_affine(layer):
    with torch.no_grad():
        for name in ("weight", "bias"):
            if getattr(layer, name, None) is not None:
                getattr(layer, name).copy_(torch.randn_like(getattr(layer, name)))


@pytest.mark.parametrize("kind", SHAPES)
@pytest.mark.parametrize("name", NORMS)
def test_every_norm_runs_in_both_modes(name, kind):
    layer = NORMS[name](3, NORMS[name].Options(), torch.Generator().manual_seed(0)).double()
    x = torch.randn(SHAPES[kind], dtype=torch.float64, requires_grad=True)
    for train in (True, False):
        layer.train(train)
        y = layer(x)
        assert y.shape == x.shape and torch.isfinite(y).all()
    layer.train()
    layer(x).square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def brute_force(x, p, eps, weight, bias):
    """(x_c - mean(x_c)) / ((mean |x_c|^p)^(1/p) + eps) * w_c + b_c, channel by channel, over N (and H, W)."""
    out = torch.empty_like(x)
    for c in range(x.shape[1]):
        v = x[:, c]
        flat = v.reshape(-1)
        scale = flat.abs().max() if math.isinf(p) else flat.abs().pow(p).mean().pow(1 / p)
        out[:, c] = (v - flat.mean()) / (scale + eps) * weight[c] + bias[c]
    return out


@pytest.mark.parametrize("kind", SHAPES)
@pytest.mark.parametrize("name", ["l1", "l2", "linf"])
def test_lp_norm_matches_brute_force(name, kind):
    layer = NORMS[name](3).double()
    randomise_affine(layer)
    x = torch.randn(SHAPES[kind], dtype=torch.float64) * 3 + 1
    y = layer(x)
    torch.testing.assert_close(y, brute_force(x, layer.p, layer.eps, layer.weight.detach(), layer.bias.detach()), rtol=1e-12, atol=1e-12)
    # eval mode: the running mean and scale after one step, lerped from (0, 1) with momentum 0.1
    dims = [0, *range(2, x.dim())]
    scale = x.abs().amax(dims) if math.isinf(layer.p) else x.abs().pow(layer.p).mean(dims).pow(1 / layer.p)
    torch.testing.assert_close(layer.running_mean, 0.1 * x.mean(dims))
    torch.testing.assert_close(layer.running_scale, 0.9 + 0.1 * scale)
    layer.eval()
    shape = (1, -1) + (1,) * (x.dim() - 2)
    expected = (x - layer.running_mean.view(shape)) / (layer.running_scale.view(shape) + layer.eps) * layer.weight.view(
        shape
    ) + layer.bias.view(shape)
    torch.testing.assert_close(layer(x), expected.detach())


@pytest.mark.parametrize("kind", SHAPES)
@pytest.mark.parametrize("name", ["l1", "l2", "linf"])
def test_lp_norm_gradients_match_brute_force(name, kind):
    """Training sees the gradients of the formula itself, for the input and the affine parameters."""
    layer = NORMS[name](3).double()
    randomise_affine(layer)
    x = (torch.randn(SHAPES[kind], dtype=torch.float64) * 3 + 1).requires_grad_()
    w, b = (layer.weight.detach().clone().requires_grad_(), layer.bias.detach().clone().requires_grad_())
    probe = torch.randn(SHAPES[kind], dtype=torch.float64)
    got = torch.autograd.grad((layer(x) * probe).sum(), (x, layer.weight, layer.bias))
    want = torch.autograd.grad((brute_force(x, layer.p, layer.eps, w, b) * probe).sum(), (x, w, b))
    for g, e in zip(got, want):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", SHAPES)
def test_batch_norm_matches_brute_force(kind):
    layer = NORMS["batch"](3).double()
    randomise_affine(layer)
    x = torch.randn(SHAPES[kind], dtype=torch.float64) * 2 - 1
    out = torch.empty_like(x)
    for c in range(3):
        v = x[:, c]
        out[:, c] = (v - v.mean()) / torch.sqrt(v.var(unbiased=False) + layer.eps) * layer.weight[c] + layer.bias[c]
    torch.testing.assert_close(layer(x), out.detach(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1000, 10), (64, 8, 8, 8), (3, 5)])
def test_noise_drawn_in_place_or_into_a_slot_is_the_formulas_bit_for_bit(shape, dtype):
    """sample_noise's in-place arithmetic, and its draw into a pack's stacked slot, give the formulas' values
    exactly, written out of place here from the same generator stream (rand c, rand c, rand y, randn y)."""
    o = NoisyBatchOptions()
    y = torch.empty(shape, dtype=dtype)
    g = torch.Generator().manual_seed(3)
    kw = dict(generator=g, dtype=dtype)
    unit = (1, -1, *[1] * (len(shape) - 2))
    mu = ((2 * torch.rand(shape[1], **kw) - 1) * o.n_mu).view(unit)
    sigma = (1 + torch.rand(shape[1], **kw) * (o.n_sigma - 1)).view(unit)
    m = mu + (2 * torch.rand(shape, **kw) - 1) * o.r_mu
    s = sigma + torch.randn(shape, **kw) * o.r_sigma
    alone = sample_noise(y, o, torch.Generator().manual_seed(3))
    slots = torch.zeros(3, *shape, dtype=dtype), torch.zeros(3, *shape, dtype=dtype)
    sample_noise(y, o, torch.Generator().manual_seed(3), out=(slots[0][1], slots[1][1]))
    assert torch.equal(alone[0], s) and torch.equal(alone[1], m)
    assert torch.equal(slots[0][1], s) and torch.equal(slots[1][1], m)
    assert not slots[0][0].any() and not slots[1][2].any()  # the other slots untouched


@pytest.mark.parametrize("shape", [(4096, 8), (64, 8, 6, 6)])
def test_noisy_batch_noise_follows_algorithm_1(shape):
    o = NoisyBatchOptions()
    y = torch.zeros(shape, dtype=torch.float64)
    mus, sigmas = [], []
    g = torch.Generator().manual_seed(0)
    for _ in range(20):  # 20 training steps: the per-unit moments change every step
        s, m = sample_noise(y, o, g)
        assert s.shape == m.shape == y.shape
        dims = [0, *range(2, y.dim())]
        # per element, m ~ U(mu_t - 0.1, mu_t + 0.1): its range per unit is 0.2 wide around mu_t
        lo, hi = m.amin(dims), m.amax(dims)
        assert torch.all(hi - lo <= 2 * o.r_mu + 1e-12) and torch.all(hi - lo > 1.9 * o.r_mu)
        mu = (lo + hi) / 2
        assert torch.all(mu.abs() <= o.n_mu + 1e-3)
        # per element, s ~ N(sigma_t, 0.1)
        sigma, spread = s.mean(dims), s.std(dims)
        assert torch.all((sigma > 1 - 0.02) & (sigma < o.n_sigma + 0.02))
        torch.testing.assert_close(spread, torch.full_like(spread, o.r_sigma), atol=0.015, rtol=0)
        mus.append(mu)
        sigmas.append(sigma)
    mus, sigmas = torch.stack(mus), torch.stack(sigmas)
    # over steps, mu_t and sigma_t fill their ranges (uniform): not constant, not out of range
    assert mus.min() < -0.3 and mus.max() > 0.3 and sigmas.min() < 1.06 and sigmas.max() > 1.19
    assert mus.std(0).min() > 0.1


def test_noisy_batch_applies_noise_after_batch_norm_in_training_only():
    x = torch.randn(16, 4, 3, 3, dtype=torch.float64)
    g = torch.Generator().manual_seed(7)
    noisy = NoisyBatchNorm(4, NoisyBatchOptions(), g).double()
    plain = BatchNorm(4).double()
    state = g.get_state()
    y = noisy(x)
    g.set_state(state)
    bn = plain(x)  # one training-mode call each, so both running statistics moved once
    s, m = sample_noise(bn, NoisyBatchOptions(), g)
    torch.testing.assert_close(y, s * bn + m)
    noisy.eval(), plain.eval()
    before = g.get_state()
    torch.testing.assert_close(noisy(x), plain(x))
    assert torch.equal(g.get_state(), before)  # eval mode draws nothing


def test_noisy_batch_same_seed_same_noise():
    x = torch.randn(16, 4)
    a = NoisyBatchNorm(4, NoisyBatchOptions(), torch.Generator().manual_seed(3))
    b = NoisyBatchNorm(4, NoisyBatchOptions(), torch.Generator().manual_seed(3))
    c = NoisyBatchNorm(4, NoisyBatchOptions(), torch.Generator().manual_seed(4))
    ya, yb, yc = a(x), b(x), c(x)
    assert torch.equal(ya, yb) and not torch.equal(ya, yc)
    assert not torch.equal(a(x), ya)  # a new draw every step


def test_lp_scale_is_taken_before_centring():
    """A channel shifted by a constant has a larger l_p scale (the paper's 'before shifting the mean')."""
    layer = LpNorm.__subclasses__()[1](1)  # l2
    x = torch.randn(1000, 1)
    assert layer.scale(x + 5).item() > 4 * layer.scale(x).item()


def test_norm_layer_builds_the_named_variant_with_its_options_and_one_generator():
    """What a model calls per layer: each width gets its own layer, all with the sweep's options and generator."""
    gen = torch.Generator().manual_seed(0)
    noisy = NoisyBatchOptions(n_mu=0.2, momentum=0.3, eps=1e-3)
    make = norm_layer("noisy_batch", noisy, gen)
    a, b = make(4), make(6)
    assert type(a) is NoisyBatchNorm and (a.num_features, b.num_features) == (4, 6)
    assert a.generator is gen and b.generator is gen and a.noise is noisy and (a.momentum, a.eps) == (0.3, 1e-3)
    bn = norm_layer("batch", BatchOptions(momentum=0.2, eps=1e-4))(3)
    assert type(bn) is BatchNorm and (bn.num_features, bn.momentum, bn.eps) == (3, 0.2, 1e-4)
    lp = norm_layer("l2", LpOptions(momentum=0.5, eps=1e-3))(5)
    assert type(lp) is L2Norm and lp.weight.shape == (5,) and (lp.momentum, lp.eps) == (0.5, 1e-3)
    assert type(norm_layer("none", NoOptions())(3)) is NoNorm


@pytest.mark.parametrize("p", [3.0, 1.5])
@pytest.mark.parametrize("kind", SHAPES)
def test_an_lp_norm_of_any_p_matches_brute_force(p, kind):
    """The general branch of LpNorm.scale (the registry's p = 1, 2, inf each have a shortcut)."""
    layer = type("LpAny", (LpNorm,), {"p": p})(3).double()
    randomise_affine(layer)
    x = torch.randn(SHAPES[kind], dtype=torch.float64) * 3 + 1
    torch.testing.assert_close(layer(x), brute_force(x, p, layer.eps, layer.weight, layer.bias))


@pytest.mark.parametrize("shape", [(5,), (2, 3, 4), (1, 3, 2, 2, 2)])
@pytest.mark.parametrize("name", ["l1", "noisy_batch", "batch"])
def test_other_input_shapes_are_refused_naming_the_shape(name, shape):
    with pytest.raises(ValueError, match=r"expects \(N, C\) or \(N, C, H, W\) input, got shape " + re.escape(str(shape))):
        NORMS[name](3)(torch.zeros(shape))


def test_the_noise_is_drawn_on_the_device_and_in_the_dtype_of_its_input():
    """On the meta device (no data, no generator): a draw made elsewhere would land on the CPU."""
    s, m = sample_noise(torch.empty(4, 3, 2, 2, device="meta", dtype=torch.float64), NoisyBatchOptions(), None)
    assert s.device.type == m.device.type == "meta" and s.dtype == m.dtype == torch.float64
    assert s.shape == m.shape == (4, 3, 2, 2)


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0, math.inf])
def test_stacked_lp_norm_and_its_closed_form_gradients_match_brute_force(p):
    """The packed DLN's l_p layer on (K, C, B): each member's output, running statistics and gradients (input,
    weight, bias; its backward is written out, not autograd's) equal the brute-force formula's, member by member;
    and gradcheck's finite differences agree with that backward."""
    from bnsweep.dln_pack import _lp_norm, _LpNorm

    gen = torch.Generator().manual_seed(3)
    k, c, n = 3, 4, 7
    h = (torch.randn(k, c, n, dtype=torch.float64, generator=gen) * 3 + 1).requires_grad_()
    w = torch.randn(k, c, dtype=torch.float64, generator=gen).requires_grad_()
    b = torch.randn(k, c, dtype=torch.float64, generator=gen).requires_grad_()
    rm, rs = torch.zeros(k, c, dtype=torch.float64), torch.ones(k, c, dtype=torch.float64)
    probe = torch.randn(k, c, n, dtype=torch.float64, generator=gen)
    out = _lp_norm(h, w, b, rm, rs, p, 0.1, 1e-5)
    got = torch.autograd.grad((out * probe).sum(), (h, w, b))
    for m in range(k):
        x = h[m].detach().T.clone().requires_grad_()  # member m as (N, C)
        wm, bm = (t[m].detach().clone().requires_grad_() for t in (w, b))
        want = brute_force(x, p, 1e-5, wm, bm)
        torch.testing.assert_close(out[m].T, want, rtol=1e-12, atol=1e-12)
        grads = torch.autograd.grad((want * probe[m].T).sum(), (x, wm, bm))
        torch.testing.assert_close(got[0][m].T, grads[0], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(got[1][m], grads[1], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(got[2][m], grads[2], rtol=1e-10, atol=1e-12)
        scale = x.abs().amax(0) if math.isinf(p) else x.abs().pow(p).mean(0).pow(1 / p)
        torch.testing.assert_close(rm[m], 0.1 * x.mean(0).detach())
        torch.testing.assert_close(rs[m], 0.9 + 0.1 * scale.detach())
    first = lambda *a: _LpNorm.apply(*a, p, 1e-5)[0]  # noqa: E731
    assert torch.autograd.gradcheck(first, (h, w, b))


def test_stacked_linf_norm_shares_a_tied_maximum_as_the_unpacked_layer_does():
    """Two samples tied at max |h|: the written-out backward splits d scale / d h between them, as autograd's amax."""
    from bnsweep.dln_pack import _lp_norm

    gen = torch.Generator().manual_seed(4)
    h = torch.randn(1, 2, 6, dtype=torch.float64, generator=gen)
    h[0, 0, 1], h[0, 0, 4] = 5.0, -5.0
    w, b = torch.randn(1, 2, dtype=torch.float64, generator=gen), torch.randn(1, 2, dtype=torch.float64, generator=gen)
    probe = torch.randn(1, 2, 6, dtype=torch.float64, generator=gen)
    hs = h.clone().requires_grad_()
    got = torch.autograd.grad((_lp_norm(hs, w, b, torch.zeros(1, 2, dtype=torch.float64), torch.ones(1, 2, dtype=torch.float64), math.inf,
                                             0.1, 1e-5) * probe).sum(), hs)[0]
    layer = NORMS["linf"](2).double()
    with torch.no_grad():
        layer.weight.copy_(w[0]), layer.bias.copy_(b[0])
    x = h[0].T.clone().requires_grad_()
    want = torch.autograd.grad((layer(x) * probe[0].T).sum(), x)[0]
    torch.testing.assert_close(got[0].T, want, rtol=1e-12, atol=1e-12)
    assert got[0, 0, 1] != got[0, 0, 4]  # each tied sample got its own (signed) share
