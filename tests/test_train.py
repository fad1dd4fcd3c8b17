"""The training loop: determinism, divergence, evaluation schedule, step semantics."""

import pytest
import torch

from bnsweep.data import load_data
from bnsweep.models import build_model
from bnsweep.norms import NORMS, norm_layer
from bnsweep.spec import CellConfig, TrainSpec
from bnsweep.train import BatchOrder, _generator, loss_fn, train_cell


def cell(arch="dln", norm="batch", lr=1e-5, seed=0, steps=40, eval_every=20, **train):
    if arch == "dln":
        ds, model, bs = {"name": "gaussian_regression", "samples": 64, "test_samples": 32}, {"depth": 4}, 64
    else:
        ds, model, bs = {"name": "digits"}, {"width": 0.0625}, 32
    return CellConfig(sweep="t", arch=arch, norm=norm, lr=lr, seed=seed, dataset=ds,
                      model=model, norm_options={}, device="cpu", resources={"cpu": 1},
                      train=TrainSpec(steps=steps, batch_size=train.pop("batch_size", bs), eval_every=eval_every, **train))


@pytest.mark.slow
@pytest.mark.parametrize("norm", NORMS)
def test_same_seed_same_result_and_seeds_differ(norm):
    a, b = train_cell(cell("vgg_mini", norm, 0.1, steps=15, eval_every=5)), train_cell(cell("vgg_mini", norm, 0.1, steps=15, eval_every=5))
    assert a.steps == b.steps and a.evals == b.evals
    c = train_cell(cell("vgg_mini", norm, 0.1, seed=1, steps=15, eval_every=5))
    assert c.steps["loss"] != a.steps["loss"]


def test_step_zero_loss_is_the_initial_model_on_the_first_batch():
    c = cell("vgg_mini", "noisy_batch", 0.1, steps=3)
    res = train_cell(c)
    data = load_data(c.dataset, "cpu")
    torch.manual_seed(c.seed)
    model = build_model(c.arch, c.model, norm_layer(c.norm, c.norm_options, _generator(c.seed, 1, torch.device("cpu"))), data.info)
    idx = BatchOrder(len(data.x_train), 32, _generator(c.seed, 0, torch.device("cpu")), torch.device("cpu")).next()
    out = model(data.x_train[idx])
    assert res.steps["loss"][0] == pytest.approx(loss_fn(data.info)(out, data.y_train[idx]).item(), rel=1e-6)
    assert res.steps["accuracy"][0] == (out.argmax(1) == data.y_train[idx]).float().mean().item()


def test_evaluation_schedule_and_regression_columns():
    res = train_cell(cell(steps=40, eval_every=15))
    assert res.status == "done" and res.steps["step"] == list(range(40))
    assert [(e["step"], e["split"]) for e in res.evals] == [(s, sp) for s in (0, 15, 30, 40) for sp in ("train", "test")]
    assert all(a is None for a in res.steps["accuracy"]) and all(e["accuracy"] is None for e in res.evals)


def test_divergence_ends_the_cell_with_rows_up_to_the_bad_step():
    res = train_cell(cell(norm="none", lr=3e-3, steps=200, eval_every=10))
    assert res.status == "diverged"
    d = res.diverged_step
    assert res.steps["step"] == list(range(d + 1))
    last, first = res.steps["loss"][-1], res.steps["loss"][0]
    assert not (last == last and abs(last) < float("inf")) or last > 1000 * first
    assert all(loss <= 1000 * first for loss in res.steps["loss"][:-1])
    assert all(e["step"] <= d for e in res.evals)
    ok = train_cell(cell(norm="batch", lr=3e-3, steps=200, eval_every=10))
    assert ok.status == "done"  # the same learning rate with BatchNorm trains


def test_batch_order_covers_each_epoch_once():
    order = BatchOrder(10, 3, torch.Generator().manual_seed(0), torch.device("cpu"))
    epoch = torch.cat([order.next() for _ in range(3)])  # 3 batches of 3: the ragged tail of 1 is dropped
    assert len(set(epoch.tolist())) == 9
    assert not torch.equal(torch.cat([order.next() for _ in range(3)]), epoch)  # a new permutation


def test_momentum_and_weight_decay_change_training():
    base = train_cell(cell(steps=10)).steps["loss"]
    assert train_cell(cell(steps=10, momentum=0.9)).steps["loss"] != base
    assert train_cell(cell(steps=10, weight_decay=0.1)).steps["loss"] != base
