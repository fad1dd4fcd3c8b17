"""Statistics over seeds: percentile-bootstrap confidence intervals of one group and seed bands, as Polars expressions.

Comparing two groups is analysis/compare.py (the interval of the difference); which statistic a
quantity gets is analysis/quantities.py.

    frame.group_by("arch", "norm", "lr").agg(seed_ci("test_accuracy"))   # struct {estimate, lo, hi, n}
    .pipe(flatten, "test_accuracy")   # -> test_accuracy, test_accuracy_lo, test_accuracy_hi, test_accuracy_n

The bootstrap is deterministic: values are sorted first and the resample indices come from a
generator seeded with (settings.seed, n), so the same numbers give the same interval in any row
order. One seed gives an estimate with no interval; no seeds give nulls and n = 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import polars as pl

from analysis.settings import DEFAULT, Settings
from bnsweep.console import fmt


def geomean(v: np.ndarray, axis: int | None = None) -> np.ndarray:
    """10 ** mean(log10 v): the centre of a heavy-tailed positive quantity over seeds."""
    return 10 ** np.mean(np.log10(v), axis=axis)


STATS = {"mean": np.mean, "median": np.median, "geomean": geomean}
CI = pl.Struct({"estimate": pl.Float64, "lo": pl.Float64, "hi": pl.Float64, "n": pl.Int64})


@lru_cache(maxsize=64)
def _indices(n: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n) resample indices, the same for every group of n values."""
    return np.random.default_rng([seed, n]).integers(0, n, size=(resamples, n))


def bootstrap(values: Sequence[float], stat: str = "mean", settings: Settings = DEFAULT) -> dict:
    """{estimate, lo, hi, n}: `stat` of the finite values and its percentile-bootstrap interval."""
    v = np.sort(np.asarray([x for x in values if x is not None], dtype=float))
    v = v[np.isfinite(v)]
    n = len(v)
    if n == 0:
        return {"estimate": None, "lo": None, "hi": None, "n": 0}
    f = STATS[stat]
    if n == 1:
        return {"estimate": float(v[0]), "lo": None, "hi": None, "n": 1}
    boot = f(v[_indices(n, settings.resamples, settings.seed)], axis=1)
    alpha = (1 - settings.confidence) / 2
    lo, hi = np.quantile(boot, [alpha, 1 - alpha])
    return {"estimate": float(f(v)), "lo": float(lo), "hi": float(hi), "n": n}


def seed_ci(col: str, stat: str = "mean", settings: Settings = DEFAULT) -> pl.Expr:
    """In a group_by().agg(): `stat` of `col` over the group's rows (one per seed) with its bootstrap CI."""
    one = lambda s: pl.Series([bootstrap(s.to_list(), stat, settings)], dtype=CI)
    return pl.col(col).drop_nulls().sort().map_batches(one, return_dtype=CI, returns_scalar=True).alias(col)


def flatten(frame: pl.LazyFrame, *cols: str) -> pl.LazyFrame:
    """Struct columns from seed_ci as flat columns: c, c_lo, c_hi, c_n."""
    return frame.with_columns(
        pl.col(c).struct.field(f).alias(c if f == "estimate" else f"{c}_{f}")
        for c in cols for f in ("lo", "hi", "n", "estimate")
    )


def mean_sd_n(col: str) -> list[pl.Expr]:
    """In a group_by().agg(): mean, sample sd and count of `col` (nulls skipped): col_mean, col_sd, col_n.

    bnsweep.console.mean_sd formats the three as text.
    """
    c = pl.col(col)
    return [c.mean().alias(f"{col}_mean"), c.std().alias(f"{col}_sd"), c.count().alias(f"{col}_n")]


def seed_band(col: str, log: pl.Expr | bool = False) -> list[pl.Expr]:
    """In a group_by().agg() over seeds: centre line (the mean; the geometric mean where `log`) and min-max band of
    `col`, and the seed count."""
    v = pl.col(col).filter(pl.col(col).is_finite())
    geo = 10 ** v.log10().mean()
    centre = geo if log is True else v.mean() if log is False else pl.when(log).then(geo).otherwise(v.mean())
    return [centre.alias("mean"), v.min().alias("lo"), v.max().alias("hi"), v.count().alias("seeds")]


def fmt_ci(estimate: float | None, lo: float | None, hi: float | None, n: int | None) -> str:
    """'0.983 [0.975, 0.990] (n=3)'; one seed has no interval: '0.983 (n=1)'; no seeds: '- (n=0)'."""
    spread = f" [{fmt(lo)}, {fmt(hi)}]" if lo is not None and hi is not None else ""
    return f"{fmt(estimate)}{spread} (n={n or 0})"
