"""Summaries on tables with known answers (tests/synthetic.py): robust ranges, CIs, diverged and failed cells, smoothness."""

import os
import subprocess
import sys

import numpy as np
import polars as pl
import pytest
from conftest import ROOT
from synthetic import SWEEP, write_measurements, write_runs

from analysis import curves, load, smoothness, summaries


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    path = tmp_path_factory.mktemp("syn") / "out"
    write_measurements(write_runs(str(path)))
    return str(path)


@pytest.fixture(scope="module")
def rob(out):
    return summaries.lr_robustness(load.table(out, "cells", SWEEP), load.table(out, "evals", SWEEP))


def row(df, **keys):
    rows = df.filter(**keys).to_dicts()
    assert len(rows) == 1, keys
    return rows[0]


def test_final_metric_mean_and_two_seed_ci(rob):
    r = row(rob, arch="vgg", norm="batch", lr=0.1)
    # two seeds: the resample means are a, (a+b)/2, b with p = 1/4, 1/2, 1/4, so the 95 % CI is [a, b]
    assert (r["value"], r["value_lo"], r["value_hi"], r["value_n"]) == pytest.approx((0.98, 0.97, 0.99, 2))
    assert r["metric"] == "train_accuracy" and r["best"] is True and r["in_range"] is True and r["seeds"] == 2
    assert r["test_accuracy"] == pytest.approx(0.97) and r["train_loss"] == pytest.approx(1.0)


def test_a_diverged_seed_counts_in_the_rate_not_in_the_metrics(rob):
    r = row(rob, arch="vgg", norm="batch", lr=10.0)
    assert r["seeds"] == 2 and r["divergence_rate"] == 0.5 and (r["divergence_rate_lo"], r["divergence_rate_hi"]) == (0.0, 1.0)
    assert r["value"] == pytest.approx(0.98) and r["value_n"] == 1 and r["value_lo"] is None  # the diverged seed's 0.999 is not used
    assert not r["in_range"] and not r["best"]  # however good, an lr where a seed diverged is not usable
    r = row(rob, arch="vgg", norm="none", lr=10.0)
    assert r["divergence_rate"] == 1.0 and r["value"] is None and r["value_n"] == 0


def test_failed_cells_are_counted_apart(rob):
    r = row(rob, arch="vgg", norm="none", lr=0.1)
    assert r["failed"] == 1 and r["seeds"] == 2


def test_steps_to_target(rob):
    # target: 90 % of the best final train accuracy of any finished vgg cell (0.99; the diverged 0.999 does not count)
    assert row(rob, arch="vgg", norm="batch", lr=0.1)["target"] == pytest.approx(0.891)
    r = row(rob, arch="vgg", norm="batch", lr=0.1)
    assert (r["steps_to_target"], r["steps_to_target_lo"], r["steps_to_target_hi"], r["steps_to_target_n"]) == (75.0, 50.0, 100.0, 2)
    r = row(rob, arch="vgg", norm="batch", lr=0.001)
    assert r["steps_to_target"] is None and r["steps_to_target_n"] == 0
    r = row(rob, arch="dln", norm="batch", lr=1e-5)  # regression: loss <= 50 / 0.9, reached by one seed at its last evaluation
    assert r["target"] == pytest.approx(50 / 0.9) and (r["steps_to_target"], r["steps_to_target_n"]) == (100.0, 1)


def test_robust_range_in_decades(rob):
    ranges = summaries.robust_range(rob)
    expect = {  # (arch, norm): (best lr, lr_min, lr_max, width, at_edge)
        ("vgg", "batch"): (0.1, 0.01, 1.0, 2.0, False),
        ("vgg", "none"): (0.01, 0.01, 0.1, 1.0, False),
        ("dln", "batch"): (1e-5, 1e-6, 1e-5, 1.0, True),
        ("dln", "none"): (1e-6, 1e-6, 1e-6, 0.0, True),
    }
    for (arch, norm), (best, lo, hi, width, edge) in expect.items():
        r = row(ranges, arch=arch, norm=norm)
        assert (r["best_lr"], r["lr_min"], r["lr_max"], r["width_decades"]) == pytest.approx((best, lo, hi, width)), (arch, norm)
        assert (r["at_edge"], r["contiguous"]) == (edge, True), (arch, norm)
    assert row(ranges, arch="dln", norm="batch")["metric"] == "train_loss"
    assert row(ranges, arch="vgg", norm="batch")["lrs_in_range"] == 4 and row(ranges, arch="vgg", norm="batch")["lrs_tried"] == 6


def test_final_metrics_is_built_from_cell_results(out):
    """The run summary's mean, sd and n agree with cell_results, the one owner of a cell's final metrics."""
    cells, evals = load.table(out, "cells", SWEEP), load.table(out, "evals", SWEEP)
    fm = summaries.final_metrics(cells, evals)
    r = row(fm, arch="vgg", norm="batch", lr=10.0)
    assert (r["seeds"], r["diverged"], r["failed"], r["train_accuracy_n"]) == (2, 1, 0, 1)
    assert r["train_accuracy_mean"] == pytest.approx(0.98)  # the diverged seed's 0.999 is not used
    r = row(fm, arch="vgg", norm="none", lr=0.1)
    assert (r["seeds"], r["failed"], r["train_accuracy_n"]) == (3, 1, 2)  # the failed seed 2 counts as tried, not as a result
    assert r["train_accuracy_sd"] == pytest.approx(pl.Series([0.93, 0.935]).std())
    per = summaries.cell_results(cells, evals).collect()
    for r in fm.iter_rows(named=True):
        sel = per.filter(arch=r["arch"], norm=r["norm"], lr=r["lr"], status="done")["train_loss"]
        assert r["train_loss_n"] == len(sel) and r["train_loss_mean"] == pytest.approx(sel.mean() if len(sel) else None)


def test_within_is_one_tolerance_on_the_ranked_scale():
    df = pl.DataFrame({"classification": [True, True, False, False], "value": [0.95, 0.97, 210.0, 190.0],
                       "best": [0.98, 0.98, 100.0, 100.0]})
    got = df.select(summaries.within(pl.col("value"), pl.col("best")))["value"].to_list()
    assert got == [False, True, False, True]  # 0.03 and 0.01 points below; 2.1x and 1.9x the best loss


def per_step_quantile(values, q):
    """The q-quantile with linear interpolation, by hand."""
    v = sorted(values)
    pos = q * (len(v) - 1)
    i = int(pos)
    return v[i] + (pos - i) * (v[min(i + 1, len(v) - 1)] - v[i])


def test_per_cell_statistics_over_probed_steps(out):
    per = smoothness.per_cell(load.tables(out, SWEEP))
    q = lambda norm, seed, quantity, statistic, window="overall": row(
        per, norm=norm, seed=seed, quantity=quantity, statistic=statistic, window=window)["value"]
    for s in range(3):
        for norm, k in (("batch", 1.0), ("none", 10.0)):
            betas = [k * (4 + s), k * 2, k * 2, k * 2]  # probes at steps 0, 10, 50, 90
            assert q(norm, s, "beta_eff", "median") == pytest.approx(sorted(betas)[1] / 2 + sorted(betas)[2] / 2)
            assert q(norm, s, "beta_eff", "upper") == pytest.approx(per_step_quantile(betas, 0.9))
            assert q(norm, s, "beta_eff", "above_eos") == pytest.approx(sum(b > 2 / 0.5 for b in betas) / 4)
            assert q(norm, s, "beta_eff", "median", "early") == pytest.approx(k * (4 + s))  # step 0 only (< 10 % of 100)
            assert q(norm, s, "loss_band", "upper") == pytest.approx(4.0 if norm == "batch" else 100.0)  # the inf probe dropped
    assert per.filter(quantity="loss_band", statistic="above_eos").is_empty()  # 2/lr concerns sharpness only
    assert row(per, norm="batch", seed=1, quantity="lambda_max", statistic="above_eos", window="overall")["value"] == 1.0  # 20 > 4


def test_smoothness_geometric_means_and_cis(out):
    sm = smoothness.smoothness(load.tables(out, SWEEP))
    q = lambda norm, quantity, statistic, window="overall", layer=None: row(
        sm.filter(pl.col("layer").is_null() if layer is None else pl.col("layer") == layer),
        arch="vgg", norm=norm, lr=0.5, quantity=quantity, statistic=statistic, window=window)
    geo = lambda v: float(np.exp(np.mean(np.log(v))))
    expect = [  # norm, quantity, statistic, window, layer: centre, lo, hi, centre kind (three seeds: the CI is [min, max])
        ("batch", "beta_eff", "median", "early", None, geo([4, 5, 6]), 4.0, 6.0, "geomean"),
        ("none", "beta_eff", "median", "overall", None, 20.0, 20.0, 20.0, "geomean"),
        ("batch", "grad_predictiveness", "upper", "overall", None, geo([0.3, 1.3, 2.3]), 0.3, 2.3, "geomean"),
        ("batch", "ics_l2", "median", "overall", 2, geo([5, 6, 7]), 5.0, 7.0, "geomean"),
        ("none", "ics_cosine", "median", "overall", 2, 0.9, 0.9, 0.9, "mean"),
        ("batch", "beta_eff", "above_eos", "overall", None, 1 / 6, 0.0, 0.25, "mean"),
        ("batch", "lambda_max", "median", "overall", None, geo([10, 20, 30]), 10.0, 30.0, "geomean"),
    ]
    for norm, quantity, statistic, window, layer, centre, lo, hi, kind in expect:
        r = q(norm, quantity, statistic, window, layer)
        assert (r["estimate"], r["lo"], r["hi"], r["seeds"], r["centre"]) == pytest.approx((centre, lo, hi, 3, kind)), (norm, quantity)


def test_smoothness_without_measurements_is_empty(out):
    sm = smoothness.smoothness({"cells": load.table(out, "cells", SWEEP)})
    assert sm.is_empty() and {"estimate", "lo", "hi", "seeds", "window", "statistic"} <= set(sm.columns)


def test_unconverged_and_non_positive_sharpness_is_counted_not_dropped(out):
    """batch seed 0 (tests/synthetic.py): lambda_max 10 at steps 0 and 50, unconverged (NaN) at 10, -5 at 90."""
    per = smoothness.per_cell(load.tables(out, SWEEP))
    r = lambda statistic: row(per, norm="batch", seed=0, quantity="lambda_max", statistic=statistic, window="overall")["value"]
    assert (r("probes"), r("left_out"), r("median")) == (4, 2, 10.0)
    assert r("above_eos") == pytest.approx(2 / 3)  # -5 is below 2/lr = 4 and counts; the unconverged probe has no value
    sm = smoothness.smoothness(load.tables(out, SWEEP))
    total = lambda statistic: row(sm, arch="vgg", norm="batch", lr=0.5, quantity="lambda_max", statistic=statistic, window="overall")
    assert (total("left_out")["estimate"], total("probes")["estimate"], total("left_out")["seeds"]) == (2, 8, 3)
    assert total("left_out")["centre"] == "sum" and total("left_out")["lo"] is None
    assert row(sm, arch="vgg", norm="none", lr=0.5, quantity="lambda_max", statistic="left_out", window="overall")["estimate"] == 0
    pts = curves.curvature(load.tables(out, SWEEP)).collect().filter(quantity="lambda_max", norm="batch")
    assert dict(zip(pts["step"], pts["left_out"])) == {0: 0, 10: 1, 50: 0, 90: 1}
    assert dict(zip(pts["step"], pts["seeds"])) == {0: 3, 10: 0, 50: 3, 90: 0}


def test_curvature_tables_of_definition_1_still_read_and_count_as_unconverged(tmp_path):
    """A table written by power iteration (lambda_max, iterations, rel_change; no flags) reads, its rows left out."""
    import pyarrow as pa
    from synthetic import cell

    from bnsweep.records import table

    store = write_runs(str(tmp_path / "out"))
    write_measurements(store)
    c = cell("vgg", "none", 0.5, 0)
    new = table("curvature", c, {"step": [0, 50], "lambda_max": [-40.0, 100.0]})
    old = new.select([n for n in new.column_names if not n.startswith(("lambda_m", "hvps"))])
    old = old.append_column("lambda_max", pa.array([-40.0, 100.0])).append_column("iterations", pa.array([20, 20]))
    store.write("curvature", c, old.append_column("rel_change", pa.array([1e-2, 1e-3])))
    t = load.table(str(tmp_path / "out"), "curvature", SWEEP).filter(pl.col("cell_id") == c.cell_id).collect()
    assert t["lambda_max"].to_list() == [-40.0, 100.0] and t["lambda_max_converged"].null_count() == 2
    per = smoothness.per_cell(load.tables(str(tmp_path / "out"), SWEEP))
    r = lambda statistic: row(per, norm="none", seed=0, quantity="lambda_max", statistic=statistic, window="overall")["value"]
    assert (r("probes"), r("left_out")) == (2, 2)


def test_per_cell_rows_come_sorted_by_their_keys(out):
    """One order whatever the threads did: the smoothness tables and the claims built on them do not move between reports."""
    per = smoothness.per_cell(load.tables(out, SWEEP))
    keys = ["arch", "norm", "lr", "setting", "seed", "cell_id", "quantity", "layer", "window", "statistic"]
    assert per.select(keys).is_duplicated().sum() == 0
    assert per.equals(per.sort(keys, nulls_last=True))


@pytest.mark.slow
def test_two_reports_of_one_output_write_identical_tables(out, tmp_path):
    """Every table file of two reports on unchanged tables is byte for byte the same (sums over seeds in one order)."""
    got = []
    for i in range(2):  # separate processes: another hash seed, other thread timings
        folder = tmp_path / f"r{i}"
        p = subprocess.run([sys.executable, "-m", "bnsweep", "report", out, "--formats", "none", "-o", str(folder)],
                           cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": str(i)})
        assert p.returncode == 0, p.stderr
        got.append({f.relative_to(folder).as_posix(): f.read_bytes() for f in sorted(folder.rglob("tables/*"))})
    assert got[0] and got[0].keys() == got[1].keys()
    assert [k for k in got[0] if got[0][k] != got[1][k]] == []
