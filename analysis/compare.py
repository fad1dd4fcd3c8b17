"""One comparison of two groups of per-seed values: effect, 95 % interval, p-values, seeds needed.

    compare.means(a, b, "lower", margin)          # a's mean below b's   -> Result(estimate, lo, hi, p, p_against, ...)
    compare.means(a, b, "equivalent", margin)     # equal within +-margin (TOST)
    compare.rates(k_a, n_a, k_b, n_b, "lower", m) # a's rate (divergence, training) below b's

Values are per seed, on the analysis scale (log10 for heavy-tailed quantities and losses, so the
effect mean(a) - mean(b) is the log10 of the ratio of geometric means; accuracy as is; see
analysis/quantities.py). Every test is Welch's t (scipy.stats.ttest_ind, equal_var=False: the
groups' spreads differ, a dead or diverging side has almost none), or for rates the score test of
statsmodels (test_proportions_2indep) with Newcombe's interval. Each comparison gives two one-sided
p-values: `p` for the claim, `p_against` for its negation beyond the margin:

    test          claim (p)                       negation (p_against)
    lower         a - b < 0                       a - b > -m   (not lower by the margin: equal, or higher)
    higher        a - b > 0                       a - b < m
    not_lower     a - b > -m   (non-inferiority)  a - b < -m
    equivalent    -m < a - b < m   (TOST)         a - b > m or a - b < -m  (disjoint: the smaller p)

`equivalent` is the two one-sided tests (TOST) as statsmodels' ttost_ind computes them (Welch). `not_lower` is one of its two
halves: the paper claims BatchNorm's ICS is similar or higher, so higher must not count against it.

Levels: each one-sided test is run at Settings.alpha = 0.025, so `p <= alpha` exactly when the
95 % interval shown lies on the claim's side (beyond 0, or inside +-m): the verdict and the interval
in the report never disagree, and a verdict either way is at the two-sided 5 % level (the ICH E9
convention for one-sided tests). With no effect a direction claim is wrongly supported in at most
2.5 % of repetitions; measured by simulation in bench/verdict_calibration.py.

Seeds needed (for an inconclusive verdict): statsmodels' TTestIndPower (rates: NormalIndPower with
Cohen's h) solves for the seeds per side that give 80 % power at alpha for the test (claim or
negation) that the observed effect and pooled spread favour. It is an estimate: the spread and the
effect are themselves estimated from the few seeds at hand; for `equivalent` it treats TOST as its
nearer one-sided half, which slightly underestimates near the margin.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

TESTS = ("lower", "higher", "not_lower", "equivalent")
MAX_SEEDS = 1000  # beyond this an estimate says "more than 1000"
POWER = 0.8


@dataclass(frozen=True)
class Result:
    estimate: float  # mean(a) - mean(b) (rates: rate a - rate b), analysis scale
    lo: float  # its 95 % interval
    hi: float
    n_a: int
    n_b: int
    p: float  # one-sided p-value of the claim (NaN: no spread to test with)
    p_against: float  # one-sided p-value of the claim's negation beyond the margin
    seeds_needed: int | None = None  # rates only; for means see seeds_needed() (solved only where a verdict needs it)


def _one_sided(d: float, se: float, df: float, shift: float, upper: bool) -> float:
    """Welch p-value of H1: mean(a) - mean(b) > -shift (upper) or < -shift, from ttest_ind's standard error and df."""
    if not se > 0:  # no spread: the t statistic is undefined
        return math.nan
    from scipy import special  # here, not at the top: a report whose summaries are cached never imports scipy (0.8 s)

    t = (d + shift) / se
    return float(special.stdtr(df, -t) if upper else special.stdtr(df, t))


def _distances(test: str, d: float, m: float) -> tuple[float, float]:
    """How far the observed difference d lies inside the claim's and the negation's alternative (<= 0: outside)."""
    return {
        "lower": (-d, d + m),
        "higher": (d, m - d),
        "not_lower": (d + m, -(d + m)),
        "equivalent": (m - abs(d), abs(d) - m),
    }[test]


def _needed(power, effect_sizes: list[float], alpha: float) -> int | None:
    sizes = [e for e in effect_sizes if e > 0 and math.isfinite(e)]
    if not sizes:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            n = float(power.solve_power(effect_size=max(sizes), alpha=alpha, power=POWER, ratio=1.0, alternative="larger"))
        except Exception:  # the root finder gives up on effects far too small to ever find
            return MAX_SEEDS + 1
    return min(math.ceil(n), MAX_SEEDS + 1) if math.isfinite(n) else MAX_SEEDS + 1


def means(a, b, test: str, margin: float, alpha: float = 0.025, confidence: float = 0.95) -> Result:
    """Claim `test` about a vs b from their finite per-seed values (>= 2 on each side).

    One scipy.stats.ttest_ind (Welch) gives the interval, the standard error and Satterthwaite's df; each
    one-sided test, shifted by the margin where its hypothesis says so, is a Student t tail at that df (as
    statsmodels' ttost_ind computes TOST; tests/test_claims.py checks both against it)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if min(len(a), len(b)) < 2:
        raise ValueError("a comparison needs at least 2 finite values on each side")
    d, m = float(a.mean() - b.mean()), margin
    se = math.sqrt(np.var(a, ddof=1) / len(a) + np.var(b, ddof=1) / len(b))
    if se > 0:
        from scipy import stats

        res = stats.ttest_ind(a, b, equal_var=False)
        ci, df = res.confidence_interval(confidence), float(res.df)
        lo, hi = float(ci.low), float(ci.high)
    else:
        lo = hi = d
        df = len(a) + len(b) - 2.0
    tail = lambda shift, upper: _one_sided(d, se, df, shift, upper)
    p, against = {
        "lower": (tail(0.0, False), tail(m, True)),
        "higher": (tail(0.0, True), tail(-m, False)),
        "not_lower": (tail(m, True), tail(m, False)),
        "equivalent": (max(tail(m, True), tail(-m, False)), min(tail(-m, True), tail(m, False))),
    }.get(test, (None, None))
    if p is None:
        raise ValueError(f"unknown test {test!r}; known: {', '.join(TESTS)}")
    return Result(d, lo, hi, len(a), len(b), p, against)


def seeds_needed(a, b, test: str, margin: float, alpha: float = 0.025) -> int | None:
    """Seeds per side for 80 % power at `alpha` of the test the observed difference favours, at the pooled spread."""
    from statsmodels.stats.power import TTestIndPower

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    sd = math.sqrt(((len(a) - 1) * np.var(a, ddof=1) + (len(b) - 1) * np.var(b, ddof=1)) / (len(a) + len(b) - 2))
    d = float(a.mean() - b.mean())
    return _needed(TTestIndPower(), [x / sd for x in _distances(test, d, margin)], alpha) if sd > 0 else None


def rates(k_a: int, n_a: int, k_b: int, n_b: int, test: str, margin: float, alpha: float = 0.025,
          confidence: float = 0.95) -> Result:
    """Claim `test` ('lower' or 'higher') about the rate k_a/n_a vs k_b/n_b: score tests, Newcombe's interval."""
    from statsmodels.stats.power import NormalIndPower
    from statsmodels.stats.proportion import confint_proportions_2indep, proportion_effectsize, test_proportions_2indep

    if test not in ("lower", "higher"):
        raise ValueError(f"rates take a direction test (lower, higher), not {test!r}")
    if min(n_a, n_b) < 1:
        raise ValueError("a rate needs at least one seed on each side")
    sign = 1 if test == "higher" else -1  # claim: sign * (rate a - rate b) > 0

    def p_of(value: float, alternative: str) -> float:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            r = test_proportions_2indep(k_a, n_a, k_b, n_b, value=value, method="score", compare="diff",
                                        alternative=alternative)
        return float(r.pvalue) if np.isfinite(r.pvalue) else math.nan

    claim_alt, against_alt = ("larger", "smaller") if sign > 0 else ("smaller", "larger")
    p, against = p_of(0.0, claim_alt), p_of(sign * margin, against_alt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lo, hi = confint_proportions_2indep(k_a, n_a, k_b, n_b, method="newcomb", compare="diff", alpha=1 - confidence)
    ra, rb = k_a / n_a, k_b / n_b
    d = ra - rb
    shifted = [(ra, rb), (ra, min(max(rb + sign * margin, 0.0), 1.0))]  # claim: vs rb; negation: vs rb shifted by the margin
    dist = _distances(test, d, margin)
    sizes = [abs(float(proportion_effectsize(x, y))) if dd > 0 else 0.0 for (x, y), dd in zip(shifted, dist)]
    return Result(d, float(lo), float(hi), n_a, n_b, p, against, _needed(NormalIndPower(), sizes, alpha))


def holm(p: list[float], alpha: float) -> tuple[list[bool], list[float]]:
    """statsmodels' Holm step-down over `p` (NaN counts as 1): (rejected, adjusted p)."""
    from statsmodels.stats.multitest import multipletests

    if not p:
        return [], []
    if len(p) == 1:  # Holm over one test is that test (and multipletests' gc.collect() costs 0.4 s a call)
        return [bool(p[0] <= alpha)], [1.0 if not math.isfinite(p[0]) else float(p[0])]
    clean = [1.0 if not math.isfinite(x) else x for x in p]
    reject, adjusted, _, _ = multipletests(clean, alpha=alpha, method="holm")
    return [bool(x) for x in reject], [float(x) for x in adjusted]
