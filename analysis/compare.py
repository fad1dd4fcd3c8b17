"""The verdict rule: two groups of per-seed values compared by the interval of their DIFFERENCE.

    compare.lower(batch, none, margin)     # claim: batch < none   -> Comparison(outcome, estimate, lo, hi, ...)
    compare.higher(bn, none, margin)       # claim: bn > none (reported as bn - none)
    compare.similar(noisy, batch, margin)  # claim: equal within +-margin
    compare.not_lower(batch, none, margin) # claim: batch is not lower than none by more than the margin

Values are per seed, already on the analysis scale (log10 for heavy-tailed quantities and losses,
see analysis/quantities.py). The difference is mean(a) - mean(b). Its interval is the wider of two
at Settings.confidence: a stratified percentile bootstrap over seeds (each group resampled apart,
Settings.resamples times, a fixed generator seed) and Welch's t interval. With 2 to 5 seeds the
percentile bootstrap alone is too narrow (with 3 values there are only 10 distinct resamples, and
its tails are those of 27 points): simulated with 3 seeds against 3 and no effect, it excludes 0
in 25 % of draws (tests/test_verdict_rule.py). Welch's interval restores the nominal rate under
normality; the bootstrap keeps any asymmetry of larger samples.

Outcomes (margin: the smallest difference that matters, Settings; the same for every claim):

    claim        supported                 contradicted                                  inconclusive
    lower        hi < 0                    lo > 0 (the opposite), or -m < lo, hi < m      otherwise
    similar      -m < lo and hi < m        lo > m or hi < -m                              otherwise
    not_lower    lo > -m                   hi < -m                                        otherwise

What 3 seeds against 3 can say: Welch's t with about 4 degrees of freedom is 2.8, so `supported`
needs an observed difference of about 2.3 per-seed standard deviations (2.8 x sqrt(2/3)) or more;
a true effect of 5 standard deviations is found in 97 % of simulated draws, one of 3 in 66 %.
Smaller effects come out `inconclusive` with an estimate of the seeds that would settle them.
Measured by simulation (tests/test_verdict_rule.py, 1000 draws each): power 0.97 (3 seeds, 5 sd),
0.98 (5 seeds, 3 sd), 0.96 (8 seeds, 2 sd); with no effect, supported or contradicted in 3.0 %,
4.7 %, 5.0 %, 4.9 %, 3.5 % of draws at 2, 3, 5, 8, 20 seeds (normal noise), at most 3.1 % (skewed).
No test of 3 against 3 can be distribution-free at 5 % (a permutation test's smallest p is 0.1):
this rule rests on the per-seed values being roughly normal on the analysis scale.

Seeds needed (an estimate, normal approximation from the observed spread s and difference d):
the n per side that gives an 80 % chance to exclude 0, 2 (z_.975 + z_.8)^2 s^2 / d^2, or to
show equality within the margin, 2 (z_.95 + z_.8)^2 s^2 / (m - |d|)^2, whichever is smaller.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache
from statistics import NormalDist

import numpy as np
from scipy.special import stdtrit

from analysis.settings import DEFAULT, Settings
from bnsweep.console import fmt

SUPPORTED, CONTRADICTED, INCONCLUSIVE = "supported", "contradicted", "inconclusive"
Z = NormalDist()
MAX_SEEDS = 1000  # beyond this an estimate of seeds needed says "more than 1000"


@dataclass(frozen=True)
class Comparison:
    outcome: str
    estimate: float  # mean(a) - mean(b), analysis scale
    lo: float
    hi: float
    n_a: int
    n_b: int
    why: str  # the clause of the rule that decided it
    seeds_needed: int | None = None  # for an inconclusive outcome: seeds per side that would settle it (estimate)

    def interval(self, ratio: bool = False) -> str:
        """'-1.30 [-2.10, -0.60]', or as a ratio 10^d for log10 values: 'x0.050 [x0.008, x0.25]'."""
        if ratio:
            return f"x{fmt(10**self.estimate)} [x{fmt(10**self.lo)}, x{fmt(10**self.hi)}]"
        return f"{self.estimate:+.3g} [{self.lo:+.3g}, {self.hi:+.3g}]"

    def note(self) -> str:
        """The outcome's reason, and for an inconclusive one the seeds that would settle it."""
        if self.outcome != INCONCLUSIVE:
            return self.why
        if self.seeds_needed is None:
            return f"{self.why}; no estimate of the seeds needed (no spread or no difference)"
        more = f"more than {MAX_SEEDS}" if self.seeds_needed > MAX_SEEDS else f"about {self.seeds_needed}"
        return f"{self.why}; {more} seeds per side would likely settle it (estimate from the observed spread)"


@lru_cache(maxsize=64)
def _counts(n: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n) how often each of n values is drawn in each resample, divided by n."""
    idx = np.random.default_rng([seed, n, 1]).integers(0, n, size=(resamples, n))
    counts = np.zeros((resamples, n))
    np.add.at(counts, (np.arange(resamples)[:, None], idx), 1.0)
    return counts / n


def _welch_df(va: np.ndarray, vb: np.ndarray, na: int, nb: int) -> np.ndarray:
    """Welch-Satterthwaite degrees of freedom (na + nb - 2 where both variances are 0)."""
    sa, sb = va / na, vb / nb
    num, den = (sa + sb) ** 2, sa**2 / (na - 1) + sb**2 / (nb - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        df = num / den
    return np.where(den > 0, df, na + nb - 2)


def intervals(a: np.ndarray, b: np.ndarray, s: Settings = DEFAULT) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(estimate, lo, hi) of mean(a) - mean(b) for each row of a (draws, n_a) and b (draws, n_b), vectorised.

    Each row is one comparison; rows share the resample draws (a fixed generator), values are sorted
    within each row first, so the same values give the same interval in any order.
    """
    a, b = np.sort(np.atleast_2d(a), axis=1), np.sort(np.atleast_2d(b), axis=1)
    na, nb = a.shape[1], b.shape[1]
    ma, mb = a.mean(axis=1), b.mean(axis=1)
    diff = a @ _counts(na, s.resamples, s.seed).T - b @ _counts(nb, s.resamples, s.seed).T  # (draws, resamples)
    alpha = (1 - s.confidence) / 2
    lo, hi = _quantile(diff, np.full(len(a), alpha)), _quantile(diff, np.full(len(a), 1 - alpha))
    va, vb = a.var(axis=1, ddof=1) / na, b.var(axis=1, ddof=1) / nb
    half = stdtrit(_welch_df(va * na, vb * nb, na, nb), 1 - alpha) * np.sqrt(va + vb)
    return ma - mb, np.minimum(lo, ma - mb - half), np.maximum(hi, ma - mb + half)


def _quantile(rows: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Per row its q-quantile (linear interpolation, as np.quantile), q one level per row."""
    srt = np.sort(rows, axis=1)
    pos = q * (rows.shape[1] - 1)
    i = np.clip(np.floor(pos).astype(int), 0, rows.shape[1] - 2)
    frac = pos - i
    r = np.arange(rows.shape[0])
    return srt[r, i] * (1 - frac) + srt[r, i + 1] * frac


def seeds_needed(a: np.ndarray, b: np.ndarray, margin: float | None, s: Settings = DEFAULT) -> int | None:
    """Seeds per side at which the difference's interval would likely (80 %) exclude 0 or fit in +-margin."""
    na, nb = len(a), len(b)
    sd2 = ((na - 1) * np.var(a, ddof=1) + (nb - 1) * np.var(b, ddof=1)) / (na + nb - 2)
    d = abs(float(np.mean(a) - np.mean(b)))
    if sd2 <= 0:
        return None
    z2, power = Z.inv_cdf(1 - (1 - s.confidence) / 2), Z.inv_cdf(0.8)
    options = [2 * (z2 + power) ** 2 * sd2 / d**2] if d > 0 else []
    if margin is not None and d < margin:
        options.append(2 * (Z.inv_cdf(s.confidence) + power) ** 2 * sd2 / (margin - d) ** 2)
    return max(math.ceil(min(options)), max(na, nb) + 1) if options else None


RULES = {  # claim -> (lo, hi, margin) -> (outcome, why) or None for inconclusive
    "lower": lambda lo, hi, m: (
        (SUPPORTED, "the interval of the difference lies below 0")
        if hi < 0
        else (CONTRADICTED, "the interval lies above 0: the opposite holds")
        if lo > 0
        else (CONTRADICTED, f"equal within +-{m:.3g}: the interval lies inside it")
        if -m < lo and hi < m
        else None
    ),
    "similar": lambda lo, hi, m: (
        (SUPPORTED, f"the interval lies within +-{m:.3g}")
        if -m < lo and hi < m
        else (CONTRADICTED, f"the interval lies outside +-{m:.3g}")
        if lo > m or hi < -m
        else None
    ),
    "not_lower": lambda lo, hi, m: (
        (SUPPORTED, f"the interval lies above -{m:.3g}: no reduction beyond the margin")
        if lo > -m
        else (CONTRADICTED, f"the interval lies below -{m:.3g}: a reduction beyond the margin")
        if hi < -m
        else None
    ),
}


def outcomes(claim: str, lo: np.ndarray, hi: np.ndarray, margin: float) -> np.ndarray:
    """The outcome of `claim` for each interval, vectorised (for simulations)."""
    rule = RULES[claim]
    return np.array([(rule(a, h, margin) or (INCONCLUSIVE, ""))[0] for a, h in zip(lo, hi)])


def compare(claim: str, a, b, margin: float, s: Settings = DEFAULT) -> Comparison:
    """Claim `claim` ('lower', 'similar', 'not_lower') about a vs b from their per-seed values (each >= 2 finite)."""
    a = np.asarray([x for x in a if x is not None and np.isfinite(x)], dtype=float)
    b = np.asarray([x for x in b if x is not None and np.isfinite(x)], dtype=float)
    if min(len(a), len(b)) < 2:
        raise ValueError("a comparison needs at least 2 finite values on each side")
    est, lo, hi = (float(x[0]) for x in intervals(a, b, s))
    decided = RULES[claim](lo, hi, margin)
    if decided:
        return Comparison(decided[0], est, lo, hi, len(a), len(b), decided[1])
    why = "the interval of the difference includes values both for and against the claim"
    return Comparison(INCONCLUSIVE, est, lo, hi, len(a), len(b), why, seeds_needed(a, b, margin, s))


def lower(a, b, margin: float, s: Settings = DEFAULT) -> Comparison:
    return compare("lower", a, b, margin, s)


def higher(a, b, margin: float, s: Settings = DEFAULT) -> Comparison:
    """Claim a > b: the `lower` rule on -a, -b, reported as a - b."""
    c = compare("lower", -np.asarray(a, dtype=float), -np.asarray(b, dtype=float), margin, s)
    return replace(
        c,
        estimate=-c.estimate,
        lo=-c.hi,
        hi=-c.lo,
        why=c.why.replace("below 0", "ABOVE").replace("above 0", "below 0").replace("ABOVE", "above 0"),
    )


def similar(a, b, margin: float, s: Settings = DEFAULT) -> Comparison:
    return compare("similar", a, b, margin, s)


def not_lower(a, b, margin: float, s: Settings = DEFAULT) -> Comparison:
    return compare("not_lower", a, b, margin, s)


def rates(k_a: int, n_a: int, k_b: int, n_b: int, s: Settings = DEFAULT) -> tuple[float, float, float]:
    """(estimate, lo, hi) of k_a/n_a - k_b/n_b: Newcombe's hybrid score interval from Wilson intervals.

    For divergence rates: a bootstrap of 0/3 against 3/3 has no spread and would claim certainty.
    """
    z = Z.inv_cdf(1 - (1 - s.confidence) / 2)

    def wilson(k: int, n: int) -> tuple[float, float]:
        p, c = k / n, z * z / n
        mid, half = (p + c / 2) / (1 + c), z * math.sqrt(p * (1 - p) / n + c / (4 * n)) / (1 + c)
        return mid - half, mid + half

    pa, pb = k_a / n_a, k_b / n_b
    (la, ua), (lb, ub) = wilson(k_a, n_a), wilson(k_b, n_b)
    d = pa - pb
    return d, d - math.sqrt((pa - la) ** 2 + (ub - pb) ** 2), d + math.sqrt((ua - pa) ** 2 + (pb - lb) ** 2)
