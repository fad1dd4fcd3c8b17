"""Execution choices (bnsweep/performance.py): ids, recorded choices, and what they may change, on CPU."""

import pytest
import torch
import torch.nn.functional as F
from test_measure_cells import ALL_ON, with_measure
from test_train import cell

from bnsweep import performance
from bnsweep.data import load_data
from bnsweep.performance import Performance, applied, effective
from bnsweep.records import cells_row
from bnsweep.spec import CellConfig
from bnsweep.train import evaluate, train_cell


def with_perf(c: CellConfig, **perf) -> CellConfig:
    return CellConfig.model_validate({**c.model_dump(by_alias=True), "performance": perf})


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-300)


def test_only_a_non_default_precision_changes_the_cell_id():
    c = cell("vgg_mini", "batch", 0.1)
    assert "performance" not in c.identity() and "precision" not in c.identity()  # old ids stay as they were
    for perf in ({"cudnn_benchmark": False}, {"channels_last": True}, {"deterministic": True},
                 {"precision": "highest"}):
        assert with_perf(c, **perf).cell_id == c.cell_id, perf
    assert with_perf(c, precision="high").cell_id != c.cell_id


def test_bad_precision_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match="'highest' or 'high'"):
        Performance(precision="tf32")


def test_the_cells_row_records_the_choices_in_effect_on_cpu():
    c = with_perf(cell("dln", steps=5), precision="high", channels_last=True)
    res = train_cell(c)
    row = cells_row(c, res, __import__("datetime").datetime.now(), 0.0, {}, None)
    keys = ("precision", "tf32", "cudnn_benchmark", "channels_last", "deterministic", "check_every")
    assert {k: row[k] for k in keys} == {
        "precision": "high", "tf32": False, "cudnn_benchmark": False, "channels_last": True, "deterministic": False,
        "check_every": performance.CHECK_EVERY["cpu"]}


def test_cuda_flags_are_set_for_the_cell_and_restored_after():
    b = torch.backends
    before = (b.cudnn.benchmark, b.cudnn.deterministic, b.cuda.matmul.fp32_precision, b.cudnn.conv.fp32_precision)
    with applied(Performance(precision="high"), torch.device("cuda")) as eff:
        assert (b.cudnn.benchmark, b.cuda.matmul.fp32_precision, b.cudnn.conv.fp32_precision) == (True, "tf32", "tf32")
        assert eff["tf32"] and eff["cudnn_benchmark"] and eff["check_every"] == performance.CHECK_EVERY["cuda"]
    with applied(Performance(deterministic=True), torch.device("cuda")) as eff:
        assert (b.cudnn.benchmark, b.cudnn.deterministic, b.cudnn.conv.fp32_precision) == (False, True, "ieee")
        assert b.cuda.matmul.fp32_precision == "ieee" and not eff["tf32"] and not eff["cudnn_benchmark"]
    after = (b.cudnn.benchmark, b.cudnn.deterministic, b.cuda.matmul.fp32_precision, b.cudnn.conv.fp32_precision)
    assert after == before
    assert effective(Performance(precision="high"), torch.device("cpu"))["tf32"] is False


@pytest.mark.slow
def test_channels_last_trains_the_same_cell_in_float64():
    """NHWC changes only the order of summation: 1e-10 relative in float64 over 50 steps, measurements included

    (Lanczos ends: within their residual bounds, see `same_ends`)."""
    base = with_measure(cell("vgg_mini", "batch", 0.1, steps=50, eval_every=25), ALL_ON)
    a, b = train_cell(base, dtype=torch.float64), train_cell(with_perf(base, channels_last=True), dtype=torch.float64)
    assert a.status == b.status == "done" and a.steps["step"] == b.steps["step"]
    assert max(rel(x, y) for x, y in zip(a.steps["loss"], b.steps["loss"])) < 1e-10
    assert a.steps["accuracy"] == b.steps["accuracy"]
    for ea, eb in zip(a.evals, b.evals):
        assert (ea["step"], ea["split"], ea["accuracy"]) == (eb["step"], eb["split"], eb["accuracy"])
        assert rel(ea["loss"], eb["loss"]) < 1e-10
    assert a.measure_rows.keys() == b.measure_rows.keys()
    for name in a.measure_rows:
        for ra, rb in zip(a.measure_rows[name], b.measure_rows[name], strict=True):
            if name == "curvature":
                ra, rb = same_ends(ra, rb)
            for k, v in ra.items():
                if isinstance(v, float):
                    assert abs(v - rb[k]) <= 1e-10 * max(abs(v), 1.0), (name, k, v, rb[k])
                else:
                    assert v == rb[k], (name, k)


def same_ends(ra: dict, rb: dict) -> tuple[dict, dict]:
    """Lanczos ends are iterative: a 1e-16 change in H may move where ARPACK stops, within its residual.

    Each Ritz value lies within its residual ||Hv - lambda v|| of an eigenvalue (symmetric H), so two
    runs that found the same eigenvalue agree within the sum of their residuals. Checked here; the
    remaining columns (flags) must be equal and the residual-derived ones are left out of the 1e-10 check.
    """
    for end in ("lambda_max", "lambda_min"):
        assert ra[f"{end}_converged"] and rb[f"{end}_converged"], end
        bound = ra[f"{end}_error"] * abs(ra[end]) + rb[f"{end}_error"] * abs(rb[end])
        assert abs(ra[end] - rb[end]) <= bound, (end, ra[end], rb[end], bound)
    drop = {"lambda_max", "lambda_min", "lambda_max_error", "lambda_min_error", "hvps"}
    return ({k: v for k, v in ra.items() if k not in drop}, {k: v for k, v in rb.items() if k not in drop})


def test_evaluation_equals_a_per_batch_brute_force():
    """The evaluation keeps per-batch sums on the device and syncs once per split; same floats as .item() per batch."""
    c = cell("vgg_mini", "batch", 0.1)
    data = load_data(c.dataset, "cpu")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    rows = evaluate(model, data, 7, batch_size=100)
    for row, x, y in zip(rows, (data.x_train, data.x_test), (data.y_train, data.y_test)):
        total, correct = 0.0, 0
        with torch.no_grad():
            for i in range(0, len(x), 100):
                out = model(x[i:i + 100])
                total += F.cross_entropy(out, y[i:i + 100], reduction="sum").item()
                correct += (out.argmax(1) == y[i:i + 100]).sum().item()
        assert row["loss"] == total / len(x) and row["accuracy"] == correct / len(x) and row["step"] == 7


def test_the_diverged_step_is_exact_however_rarely_divergence_is_checked(monkeypatch):
    c = cell(norm="none", lr=3e-3, steps=200, eval_every=0)
    every = train_cell(c)
    assert every.status == "diverged"
    monkeypatch.setitem(performance.CHECK_EVERY, "cpu", 150)  # the CUDA interval's situation, on CPU
    rare = train_cell(c)
    assert rare.performance["check_every"] == 150
    assert (rare.status, rare.diverged_step, rare.steps) == (every.status, every.diverged_step, every.steps)
