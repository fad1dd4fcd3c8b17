"""The curvature probe against independent references: dense float64 Hessians and built spectra.

The reference is the Hessian itself: `torch.autograd.functional.hessian` of the step's batch loss (training
mode, the probe's own buffers cloned, the step's noise replayed) and `torch.linalg.eigvalsh`. It shares no
code with the probe (ARPACK's Lanczos on Hessian-vector products).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from test_measure import DIGITS, Quadratic, measured_step, replay, sse

from bnsweep.data import DatasetInfo
from bnsweep.limits import MAX_HVPS, MAX_LANCZOS_BASIS
from bnsweep.measure import MeasureSpec
from bnsweep.measure.curvature import CurvatureOptions, extremes
from bnsweep.models import DlnOptions, VggOptions, build_model
from bnsweep.norms import NORMS, norm_layer

DEFAULTS = CurvatureOptions(every=1)
GAUSS10 = DatasetInfo("gaussian_regression", (10,), 10, "regression", 64)


def network(arch: str, norm: str, dtype=torch.float64, seed: int = 0):
    """`dln`: the paper's DLN shape (25 layers of 10x10: 2,500 weights, plus BatchNorm's affines); `dln_small`: 6 layers
    of 10x10 (600 weights); `vgg_mini` at width 1/16 (4,726 parameters; 4,838 with BatchNorm)."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    if arch.startswith("dln"):
        depth = 25 if arch == "dln" else 6
        model = build_model("dln", DlnOptions(depth=depth, width=10, bias=False), norm_layer(norm, NORMS[norm].Options(), g), GAUSS10)
        x, y, lf = torch.randn(64, 10), torch.randn(64, 10) @ torch.randn(10, 10), sse
    else:
        model = build_model("vgg_mini", VggOptions(width=1 / 16), norm_layer(norm, NORMS[norm].Options(), g), DIGITS)
        x, y, lf = torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,)), torch.nn.functional.cross_entropy
    return model.to(dtype), x.to(dtype), (y.to(dtype) if arch.startswith("dln") else y), lf


def trained(model, x, y, lf, steps: int, lr: float):
    """`steps` plain SGD steps on the batch (the weights a probe later in training sees)."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        lf(model(x), y).backward()
        opt.step()
    return model


def dense_spectrum(model, x, y, lf, rng) -> torch.Tensor:
    """Every eigenvalue of the float64 Hessian of the batch loss at the model's weights, training mode."""
    ref = copy.deepcopy(model).double()
    names, shapes = zip(*[(n, p.shape) for n, p in ref.named_parameters()])
    sizes = [math.prod(s) for s in shapes]
    x = x.double()
    y = y.double() if y.is_floating_point() else y

    def loss_of(flat):
        ps = dict(zip(names, [t.view(s) for t, s in zip(flat.split(sizes), shapes)]))
        replay(rng)
        buffers = {n: b.clone() for n, b in ref.named_buffers()}
        return lf(torch.func.functional_call(ref, {**ps, **buffers}, (x,)), y)

    flat = torch.cat([p.detach().reshape(-1) for p in ref.parameters()])
    h = torch.autograd.functional.hessian(loss_of, flat, vectorize=True)
    return torch.linalg.eigvalsh((h + h.T) / 2)


def probe(model, x, y, lf, options: dict | None = None) -> tuple[dict, list]:
    rows, rng, _ = measured_step(model, x, y, lf, {"curvature": options or {}})
    return rows["curvature"][0], rng


def assert_both_ends(row: dict, eig: torch.Tensor, tol: float = DEFAULTS.tol, rounding: float = 1e-9) -> None:
    """Both ends within tol of the dense ones, converged, and each inside its own stated error bound (which bounds the
    distance to the Hessian the products compute: `rounding` x |lambda_max| more for float32 products against float64)."""
    top, bottom = eig[-1].item(), eig[0].item()
    assert row["lambda_max_converged"] and row["lambda_min_converged"], row
    assert abs(row["lambda_max"] - top) <= tol * abs(top), (row["lambda_max"], top)
    assert abs(row["lambda_min"] - bottom) <= tol * (top - bottom), (row["lambda_min"], bottom)
    # the stated bound holds: the true end lies within error x |value|
    assert abs(row["lambda_max"] - top) <= row["lambda_max_error"] * abs(row["lambda_max"]) * (1 + 1e-6) + rounding * abs(top)
    assert abs(row["lambda_min"] - bottom) <= row["lambda_min_error"] * abs(row["lambda_min"]) * (1 + 1e-6) + rounding * abs(top)
    assert row["lambda_max_error"] <= tol
    assert 0 < row["hvps"] <= 2 * (DEFAULTS.max_hvps + 1)


SLOW = pytest.mark.slow  # a dense Hessian of 2,500 to 4,838 parameters: minutes on a shared 2-core machine


@pytest.mark.parametrize("steps", [0, 20], ids=["init", "trained"])
@pytest.mark.parametrize("norm", ["none", "batch"])
@pytest.mark.parametrize("arch", ["dln_small", pytest.param("dln", marks=SLOW), pytest.param("vgg_mini", marks=SLOW)])
def test_default_probe_matches_the_dense_hessian(arch, norm, steps):
    model, x, y, lf = network(arch, norm)
    trained(model, x, y, lf, steps, lr=0.05 if arch == "vgg_mini" else 1e-4)
    before = copy.deepcopy(model)
    row, rng = probe(model, x, y, lf)
    eig = dense_spectrum(before, x, y, lf, rng)
    assert_both_ends(row, eig)


@SLOW
def test_batchnorm_dln_at_initialisation_has_a_negative_largest_magnitude_and_a_positive_top():
    """The case power iteration got wrong, the quickstart's BatchNorm DLN at step 0 (full batch of 1000): the probe
    returns the positive top, not the negative end of larger magnitude."""
    from bnsweep.data import load_data
    from bnsweep.spec import CellConfig
    from bnsweep.train import loss_fn, new_state

    cell = CellConfig.model_validate({
        "sweep": "t", "arch": "dln", "norm": "batch", "lr": 1e-6, "seed": 0, "dataset": {"name": "gaussian_regression"},
        "model": {"depth": 25, "width": 10, "bias": False}, "norm_options": {}, "device": "cpu", "resources": {},
        "train": {"steps": 10, "batch_size": 1000}})
    data = load_data(cell.dataset, "cpu")
    model = new_state(cell, data, torch.device("cpu"), torch.float64).model
    x, y, lf = data.x_train.double(), data.y_train.double(), loss_fn(data.info)
    before = copy.deepcopy(model)
    row, rng = probe(model, x, y, lf)
    eig = dense_spectrum(before, x, y, lf, rng)
    assert eig[0].abs() > eig[-1].abs() and eig[-1] > 0  # the network is such a case (-2.76e6 and +1.95e6)
    assert row["lambda_max"] > 0 > row["lambda_min"]
    assert_both_ends(row, eig)


def quadratic_with(spectrum: np.ndarray, seed: int = 0):
    """L(w) = 0.5 w^T H w with H = Q diag(spectrum) Q^T for a random orthogonal Q."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(spectrum), len(spectrum), generator=g, dtype=torch.float64))
    h = q @ torch.diag(torch.as_tensor(spectrum, dtype=torch.float64)) @ q.T
    model = Quadratic(torch.randn(len(spectrum), generator=g, dtype=torch.float64))
    return model, (lambda out, y: 0.5 * out @ h @ out)


def test_largest_magnitude_negative_spectrum_returns_the_positive_top():
    spectrum = np.concatenate([[-10.0, 3.0], np.linspace(-2, 2.5, 98)])
    model, lf = quadratic_with(spectrum)
    row, _ = probe(model, torch.zeros(1), torch.zeros(1), lf)
    assert row["lambda_max"] == pytest.approx(3.0, rel=1e-3) and row["lambda_min"] == pytest.approx(-10.0, rel=1e-3)


def test_all_negative_spectrum_gives_a_negative_top():
    spectrum = -np.linspace(1, 5, 60)
    model, lf = quadratic_with(spectrum)
    row, _ = probe(model, torch.zeros(1), torch.zeros(1), lf)
    assert row["lambda_max"] == pytest.approx(-1.0, rel=1e-3) and row["lambda_min"] == pytest.approx(-5.0, rel=1e-3)
    assert row["lambda_max_converged"] and row["lambda_min_converged"]


def test_a_probe_out_of_budget_says_so_and_writes_no_value():
    """A close top pair at a tolerance of 1e-9 within 30 products: NaN and the flag false, not a low value."""
    spectrum = np.concatenate([[1.0, 0.9999], np.linspace(0, 0.999, 400)])
    model, lf = quadratic_with(spectrum)
    row, _ = probe(model, torch.zeros(1), torch.zeros(1), lf, {"tol": 1e-9, "max_hvps": 30, "basis": 10})
    assert not row["lambda_max_converged"] and math.isnan(row["lambda_max"]) and math.isnan(row["lambda_max_error"])
    assert row["hvps"] <= 2 * 30


def test_the_error_bound_is_the_residual_of_the_returned_vector():
    """extremes on a known matrix: error = ||Hv - theta v|| / |theta| >= the true relative error."""
    rng = np.random.default_rng(3)
    q, _ = np.linalg.qr(rng.standard_normal((300, 300)))
    spectrum = np.concatenate([[50.0, 49.0], rng.uniform(-20, 40, 298)])
    h = q @ np.diag(spectrum) @ q.T
    for tol in (1e-2, 1e-4, 1e-8):
        upper, lower = extremes(lambda v: h @ v, 300, rng.standard_normal(300), CurvatureOptions(every=1, tol=tol))
        assert upper.converged and lower.converged
        assert abs(upper.value - 50.0) <= upper.error * abs(upper.value) * (1 + 1e-9) and upper.error <= tol
        assert abs(lower.value - spectrum.min()) <= lower.error * abs(lower.value) * (1 + 1e-9)


def test_small_models_are_solved_densely():
    spectrum = np.array([-3.0, 0.5, 2.0, 7.0])
    model, lf = quadratic_with(spectrum)
    row, _ = probe(model, torch.zeros(1), torch.zeros(1), lf)
    assert row["lambda_max"] == pytest.approx(7.0, rel=1e-12) and row["lambda_min"] == pytest.approx(-3.0, rel=1e-12)
    assert row["hvps"] == 4


@pytest.mark.parametrize("arch", ["dln_small", pytest.param("vgg_mini", marks=SLOW)])
@pytest.mark.parametrize("norm", ["none", "batch"])
def test_float32_products_meet_the_tolerance_against_float64(arch, norm):
    """The probe on float32 weights (the sweeps' precision) against the float64 dense Hessian of the same weights."""
    model, x, y, lf = network(arch, norm, dtype=torch.float32)
    trained(model, x, y, lf, 10, lr=0.05 if arch == "vgg_mini" else 1e-4)
    before = copy.deepcopy(model)
    row, rng = probe(model, x, y, lf)
    eig = dense_spectrum(before, x, y, lf, rng)
    assert_both_ends(row, eig, rounding=1e-5)  # float32 products: 1.8e-7 to 2.5e-7 relative from float64 here


@pytest.mark.parametrize(
    ("options", "text"),
    [
        ({"max_hvps": MAX_HVPS + 1}, f"less than or equal to {MAX_HVPS}"),
        ({"basis": MAX_LANCZOS_BASIS + 1}, f"less than or equal to {MAX_LANCZOS_BASIS}"),
        ({"basis": 2}, "greater than or equal to 3"),
        ({"tol": 0.0}, "curvature.tol"),
        ({"tol": 0.5}, "less than or equal to 0.1"),
        ({"max_hvps": 10, "basis": 20}, "max_hvps (10) must be >= basis (20)"),
        ({"iterations": 20}, "iterations"),
    ],
)
def test_every_numeric_option_is_bounded(options, text):
    with pytest.raises(ValidationError, match=text.replace("(", r"\(").replace(")", r"\)")):
        MeasureSpec.model_validate({"curvature": {"every": 10, **options}})
