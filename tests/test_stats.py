"""The seed bootstrap against the exact bootstrap distribution, enumerated by hand."""

import itertools

import numpy as np
import polars as pl
import pytest

from analysis.settings import Settings
from analysis.stats import bootstrap, flatten, seed_ci


def exact_quantile(values, stat, q):
    """The q-quantile (inverse CDF) of `stat` over all n^n equally likely resamples."""
    n = len(values)
    stats = sorted(stat([values[i] for i in idx]) for idx in itertools.product(range(n), repeat=n))
    return stats[int(np.ceil(q * len(stats))) - 1]


@pytest.mark.parametrize(
    "values, stat", [([0.0, 1.0, 2.0, 10.0], np.mean), ([3.0, 1.0, 4.0, 1.5, 9.0, 2.6], np.median), ([0.2, 0.9, 0.5], np.mean)]
)
def test_interval_matches_the_exact_bootstrap_distribution(values, stat):
    name = "mean" if stat is np.mean else "median"
    got = bootstrap(values, name)
    assert got["n"] == len(values) and got["estimate"] == pytest.approx(stat(values))
    # 10,000 resamples put the sample quantile within +-0.005 (3 sigma) in level of the exact one
    for key, q in (("lo", 0.025), ("hi", 0.975)):
        assert exact_quantile(values, stat, q - 0.005) <= got[key] <= exact_quantile(values, stat, q + 0.005), key
    assert got["lo"] <= got["estimate"] <= got["hi"]


def test_two_seeds_give_their_min_and_max():
    # resample means of {a, b}: a (1/4), (a+b)/2 (1/2), b (1/4): the 2.5 % and 97.5 % points are a and b
    assert bootstrap([0.9, 0.8]) == {"estimate": pytest.approx(0.85), "lo": pytest.approx(0.8), "hi": pytest.approx(0.9), "n": 2}


def test_deterministic_and_independent_of_order():
    v = [0.3, 0.1, 0.7, 0.4, 0.35, 0.9]
    assert bootstrap(v) == bootstrap(list(reversed(v))) == bootstrap(v)
    assert bootstrap(v, settings=Settings(seed=1)) != bootstrap(v)  # the seed is what fixes it


def test_one_seed_has_no_interval_and_nulls_are_not_seeds():
    assert bootstrap([0.5, None, float("nan")]) == {"estimate": 0.5, "lo": None, "hi": None, "n": 1}
    assert bootstrap([]) == {"estimate": None, "lo": None, "hi": None, "n": 0}


def test_seed_ci_per_group_in_a_lazy_pipeline():
    df = pl.LazyFrame({"g": ["a", "a", "b", "b", "b", "c"], "x": [0.8, 0.9, 1.0, None, 3.0, 5.0]})
    out = df.group_by("g").agg(seed_ci("x")).pipe(flatten, "x").sort("g").collect()
    assert out["x"].to_list() == pytest.approx([0.85, 2.0, 5.0])
    assert out["x_n"].to_list() == [2, 2, 1]
    assert out["x_lo"].to_list()[:2] == pytest.approx([0.8, 1.0]) and out["x_lo"][2] is None
    assert out["x_hi"].to_list()[:2] == pytest.approx([0.9, 3.0])
