"""The DLN protocol options (docs/dln-protocol.md): data scales, loss reduction and 1/2, last-layer
norm, Glorot normal; each changes what it says, and at its default changes no cell id."""

import math

import pytest
import torch

from bnsweep.data import DATASETS, GaussianRegressionSpec, load_data
from bnsweep.models import DlnOptions, build_model, norm_layers, weight_layers
from bnsweep.norms import NORMS, norm_layer
from bnsweep.spec import SweepSpec, expand
from bnsweep.train import loss_fn, train_cell

# sweeps/quickstart.yaml as it was when cell ids were first fixed, and its cells' ids then
QUICKSTART = {
    "name": "quickstart", "output": "runs/quickstart", "device": "cpu", "train": {"eval_every": 250},
    "grid": [{"arch": ["dln"], "norm": ["none", "batch"], "lr": [1.0e-6, 3.0e-6, 1.0e-5], "seed": [0, 1],
              "overrides": {"dataset": {"name": "gaussian_regression", "a_std": 1.0},  # the A of those cells
                           "train": {"steps": 1500, "batch_size": 1000}}},
             {"arch": ["vgg_mini"], "norm": ["none", "batch"], "lr": [0.05, 0.2, 1.0], "seed": [0, 1],
              "overrides": {"dataset": {"name": "digits"}, "model": {"vgg": {"width": 0.125}},
                            "train": {"steps": 1500, "batch_size": 64}}}],
}
QUICKSTART_IDS = {0: "9e46342b794cc2f1", 1: "a5ef0eb526e04e7b", 2: "fa785c751879c658", 23: "3c3fa5735081d1de"}
LATE = {"dataset": {"a_std": 2.0, "x_std": 0.5, "reduction": "mean", "half": True},
        "model": {"norm_last": True, "init": "glorot_normal"}}


def dln_cell(data: dict | None = None, model: dict | None = None, norm: str = "batch", **train):
    spec = SweepSpec.model_validate({
        "name": "t", "output": "unused", "device": "cpu",
        "dataset": {"name": "gaussian_regression", "samples": 64, "test_samples": 32, **(data or {})},
        "model": {"dln": {"depth": 4, **(model or {})}},
        "train": {"steps": 3, "batch_size": 64, "eval_every": 0, **train},
        "grid": {"arch": ["dln"], "norm": [norm], "lr": [1e-4], "seed": [0]}})
    return expand(spec)[0]


def test_cells_of_the_earlier_reading_keep_their_ids():
    cells = expand(SweepSpec.model_validate(QUICKSTART))
    assert {i: cells[i].cell_id for i in QUICKSTART_IDS} == QUICKSTART_IDS


@pytest.mark.parametrize("section,key,value", [(s, k, v) for s, kv in LATE.items() for k, v in kv.items()])
def test_a_late_option_changes_the_id_only_away_from_the_value_earlier_cells_had(section, key, value):
    before = (GaussianRegressionSpec if section == "dataset" else DlnOptions).late_fields[key]
    base = dln_cell(**{"data" if section == "dataset" else "model": {key: before}})
    other = dln_cell(**{"data" if section == "dataset" else "model": {key: value}})
    assert other.cell_id != base.cell_id
    assert key not in base.identity()[section] and other.identity()[section][key] == value


def test_late_fields_name_real_fields_with_values_they_accept():
    for cls in (GaussianRegressionSpec, DlnOptions):
        for key, before in cls.late_fields.items():
            assert key in cls.model_fields
            cls.model_validate({key: before})


def test_data_scales_multiply_a_and_x():
    base = GaussianRegressionSpec(samples=50, test_samples=10, a_std=1.0)
    x, y, _, _ = DATASETS["gaussian_regression"].load(base)
    xs, ys, _, _ = DATASETS["gaussian_regression"].load(base.model_copy(update={"a_std": 3.0, "x_std": 0.5}))
    torch.testing.assert_close(xs, 0.5 * x, rtol=1e-6, atol=0)
    torch.testing.assert_close(ys, 1.5 * y, rtol=1e-5, atol=1e-6)
    a = torch.linalg.lstsq(x, y).solution.T  # the map the targets come from: A with N(0, 1) entries
    assert 0.6 < a.std().item() < 1.4 and torch.allclose(x @ a.T, y, atol=1e-4)
    _, y_default, _, _ = DATASETS["gaussian_regression"].load(base.model_copy(update={"a_std": GaussianRegressionSpec().a_std}))
    torch.testing.assert_close(y_default, y * 0.1**0.5, rtol=1e-5, atol=1e-6)  # the default: A with variance 1/10


@pytest.mark.parametrize("reduction,half,factor",
                         [("sum", False, 1.0), ("sum", True, 0.5), ("mean", False, 1 / 64), ("mean", True, 0.5 / 64)])
def test_loss_reduction_and_half_in_training_and_evaluation(reduction, half, factor):
    cell = dln_cell({"reduction": reduction, "half": half})
    load_data.cache_clear()
    res = train_cell(cell)
    data = load_data(cell.dataset, "cpu")
    torch.manual_seed(cell.seed)  # the cell's initial weights, rebuilt: brute-force step-0 loss
    model = build_model("dln", cell.model, norm_layer("batch", NORMS["batch"].Options()), data.info)
    model.eval()  # evaluation 0: running statistics at their start, before any training-mode forward
    test_sse = ((model(data.x_test) - data.y_test) ** 2).sum().item()
    model.train()
    sse = sum(((model(data.x_train)[i] - data.y_train[i]) ** 2).sum().item() for i in range(64))
    assert res.steps["loss"][0] == pytest.approx(factor * sse, rel=1e-5)
    ev = [r for r in res.evals if r["step"] == 0 and r["split"] == "test"][0]
    assert ev["loss"] == pytest.approx(test_sse * (0.5 if half else 1) / (32 if reduction == "mean" else 1), rel=1e-5)
    assert loss_fn(data.info).factor(64) == factor


def test_norm_last_puts_a_norm_after_every_layer():
    info = DATASETS["gaussian_regression"].info(GaussianRegressionSpec())
    for last, n in ((False, 4), (True, 5)):
        model = build_model("dln", DlnOptions(depth=5, norm_last=last), norm_layer("l2", NORMS["l2"].Options()), info)
        assert len(norm_layers(model)) == n and list(model.body)[-1].__class__.__name__ == ("L2Norm" if last else "Linear")


def test_glorot_normal_draws_normal_weights_of_glorot_variance():
    info = DATASETS["gaussian_regression"].info(GaussianRegressionSpec())
    torch.manual_seed(0)
    w = torch.cat([layer.weight.flatten() for layer in weight_layers(
        build_model("dln", DlnOptions(init="glorot_normal"), norm_layer("none", NORMS["none"].Options()), info))])
    std = math.sqrt(2 / (10 + 10))
    assert abs(w.std().item() / std - 1) < 0.05  # 2500 draws: the sd's standard error is 1.4 %
    assert w.abs().max().item() > math.sqrt(3) * std  # a uniform of this variance never exceeds sqrt(3) sd


def test_dln_without_batch_size_gets_the_full_batch():
    grid = lambda archs, data, **train: {"arch": archs, "norm": ["none"], "lr": [0.1], "overrides": {"dataset": data, "train": train}}
    spec = {"name": "t", "output": "unused", "grid": [grid(["dln"], {"name": "gaussian_regression", "samples": 300}),
                                                       grid(["vgg_mini"], {"name": "digits"}),
                                                       grid(["dln"], {"name": "gaussian_regression", "seed": 1}, batch_size=128)]}
    assert [c.train.batch_size for c in expand(SweepSpec.model_validate(spec))] == [300, 128, 128]
