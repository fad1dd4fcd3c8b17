"""The analysis defaults, in one place; each can be changed per call (`Settings(accuracy_tolerance=0.05)`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    target_fraction: float = 0.9  # steps-to-target: 90 % of the arch's best final train accuracy (loss: best / 0.9)
    accuracy_tolerance: float = 0.02  # robust range and equality margin: within 2 accuracy points
    factor_tolerance: float = 2.0  # losses and log-scale quantities span decades: within 2x (robust range, margin)
    min_seeds: int = 2  # a claim needs at least this many finished seeds on each side; a CI needs 2
    upper_quantile: float = 0.9  # a cell's "upper" statistic: this quantile over its probed steps
    confidence: float = 0.95  # bootstrap percentile interval; the interval of every comparison
    alpha: float = 0.025  # each one-sided test of a verdict (docs/verdicts.md): p <= alpha iff the 95 % interval decides
    dead_band: float = 0.02  # a seed is dead at a final train accuracy within this of chance (docs/verdicts.md)
    rate_margin: float = 0.5  # divergence / training rates: a difference under half the seeds does not matter (docs/verdicts.md)
    saturation: float = 0.99  # accuracy band where a metric cannot separate two groups (ceiling)
    resamples: int = 10_000  # bootstrap resamples: quantile error well below the spread of 2-10 seeds
    seed: int = 0  # bootstrap generator seed: the same tables give the same report
    early_fraction: float = 0.1  # "early in training" = the first 10 % of a cell's steps
    curve_points: int = 200  # a training curve is averaged into at most this many step bins per cell


DEFAULT = Settings()
