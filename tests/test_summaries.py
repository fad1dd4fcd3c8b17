"""Summaries on tables with known answers (tests/synthetic.py): robust ranges, CIs, diverged and failed cells, smoothness."""

import polars as pl
import pytest

from analysis import load, summaries
from synthetic import SWEEP, write_measurements, write_runs


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


def test_smoothness_medians_and_cis(out):
    sm = summaries.smoothness(load.tables(out, SWEEP))
    q = lambda norm, quantity, window="overall", layer=None: row(
        sm.filter(pl.col("layer").is_null() if layer is None else pl.col("layer") == layer), arch="vgg", norm=norm, lr=0.5, quantity=quantity, window=window)
    expect = [  # norm, quantity, window, layer: median, lo, hi (three seeds: the median's CI is [min, max], P(median = min) = 7/27)
        ("batch", "beta_eff", "overall", None, 2.75, 2.5, 3.0),  # per seed (4 + s + 2 + 2 + 2) / 4
        ("batch", "beta_eff", "early", None, 5.0, 4.0, 6.0),  # step 0 only: 4 + s
        ("none", "beta_eff", "overall", None, 27.5, 25.0, 30.0),
        ("batch", "loss_band", "overall", None, 4.0, 4.0, 4.0),  # 4 / 1; the inf probe is dropped
        ("none", "loss_band", "overall", None, 100.0, 100.0, 100.0),
        ("batch", "grad_predictiveness", "overall", None, 1.3, 0.3, 2.3),
        ("none", "grad_predictiveness", "early", None, 13.0, 3.0, 23.0),
        ("batch", "ics_l2", "overall", 2, 6.0, 5.0, 7.0),
        ("none", "ics_cosine", "overall", 2, 0.9, 0.9, 0.9),
        ("batch", "lambda_max", "overall", None, 20.0, 10.0, 30.0),
    ]
    for norm, quantity, window, layer, med, lo, hi in expect:
        r = q(norm, quantity, window, layer)
        assert (r["median"], r["lo"], r["hi"], r["seeds"]) == pytest.approx((med, lo, hi, 3)), (norm, quantity, window)


def test_smoothness_without_measurements_is_empty(out):
    sm = summaries.smoothness({"cells": load.table(out, "cells", SWEEP)})
    assert sm.is_empty() and {"median", "lo", "hi", "seeds", "window"} <= set(sm.columns)
