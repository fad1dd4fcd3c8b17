"""The robust learning-rate range resampled over seeds: the interval of the width difference behind `bn_widens_range`.

A range is the set of learning rates where no seed diverged whose mean ranking metric is within
the tolerance of the best (summaries.lr_robustness); its width is log10(max / min). Resampling the
seeds of every (norm, lr) apart and recomputing both widths gives a percentile interval of their
difference. The width is a step function of the grid, so this interval is coarse, and with 2 or 3
seeds per lr it is narrower than its nominal level (there is no Welch interval to widen it with):
the claims table says so beside it.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from analysis.quantities import margin
from analysis.settings import DEFAULT, Settings


def _ranked(results: pl.DataFrame, norm: str) -> tuple[np.ndarray, list[np.ndarray]]:
    """log10 lrs, and per lr the per-seed ranked values (summaries.ranked; NaN: diverged or no value)."""
    r = results.filter(norm=norm).sort("lr")
    classification = bool(r["classification"].any())
    lrs, values = [], []
    for lr, g in r.group_by("lr", maintain_order=True):
        v = g["value"].to_numpy().astype(float)  # null -> NaN
        v = np.where(g["status"].to_numpy() == "done", v, np.nan)
        values.append(v if classification else -np.log10(v))
        lrs.append(np.log10(lr[0]))
    return np.asarray(lrs), values


def _widths(
    loglr: np.ndarray, values: list[np.ndarray], tol: float, rng: np.random.Generator | None, resamples: int
) -> np.ndarray:
    """Range width in decades for each resample (or once for the data, rng None); NaN where no lr is eligible."""
    cols = []
    for v in values:
        if rng is None:
            cols.append(np.array([v.mean()]))  # NaN if a seed diverged: not eligible
        else:
            cols.append(v[rng.integers(0, len(v), size=(resamples, len(v)))].mean(axis=1))
    m = np.stack(cols, axis=1)  # (resamples, lrs)
    ok = np.isfinite(m)
    best = np.where(ok, m, -np.inf).max(axis=1, keepdims=True)
    inside = ok & (m >= best - tol)
    hi = np.where(inside, loglr, -np.inf).max(axis=1)
    lo = np.where(inside, loglr, np.inf).min(axis=1)
    return np.where(inside.any(axis=1), hi - lo, np.nan)


def width_difference(
    results: pl.DataFrame, s: Settings = DEFAULT, a: str = "batch", b: str = "none"
) -> tuple[float, float, float]:
    """(estimate, lo, hi): range width of norm `a` minus that of `b` in decades, from one arch's cell_results."""
    classification = bool(results["classification"].any())
    tol = margin(not classification, s)  # the tolerance of summaries.within, on the ranked scale
    widths = []
    for i, norm in enumerate((a, b)):
        loglr, values = _ranked(results, norm)
        rng = np.random.default_rng([s.seed, 2, i])
        widths.append((_widths(loglr, values, tol, None, 1)[0], _widths(loglr, values, tol, rng, s.resamples)))
    diff = widths[0][1] - widths[1][1]
    diff = diff[np.isfinite(diff)]
    alpha = (1 - s.confidence) / 2
    lo, hi = np.quantile(diff, [alpha, 1 - alpha]) if len(diff) else (np.nan, np.nan)
    return float(widths[0][0] - widths[1][0]), float(lo), float(hi)
