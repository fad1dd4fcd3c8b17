"""Claim verdicts: declared comparisons on tables with known answers, the non-informative conditions on hand-made
tables, and the tests (TOST, Welch, Holm) against numbers computed here from their textbook formulas."""

import math

import numpy as np
import polars as pl
import pytest
from scipy import stats
from statsmodels.stats.weightstats import ttost_ind
from synthetic import SWEEP, write_measurements, write_runs

from analysis import claims, compare, load, outcomes, smoothness, verdicts
from analysis.claims import INCONCLUSIVE, NOT_MEASURED, SUPPORTED
from analysis.declared import CLAIMS
from analysis.verdicts import CONTRADICTED_BY, NOT_INFORMATIVE, TOO_FEW


@pytest.fixture(scope="module")
def found(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("syn") / "out")
    write_measurements(write_runs(out))
    t = load.tables(out, SWEEP)
    found = claims.check(outcomes.per_cell(t["cells"], t["evals"]), smoothness.per_cell(t))
    assert [v.spec.id for v in found] == list(CLAIMS)
    return {v.spec.id: v for v in found}


def test_verdicts_on_the_synthetic_sweep(found):
    got = {k: (v.verdict, v.code) for k, v in found.items()}
    assert got == {
        "bn_tolerates_lr": (INCONCLUSIVE, TOO_FEW),  # vgg lr 10: none 2/2 diverged, batch 1/2: 2 seeds cannot say
        "bn_widens_range": (INCONCLUSIVE, TOO_FEW),  # vgg lr 10 (none fails in 2/2): batch trains in 1/2
        "noisy_bn": (INCONCLUSIVE, TOO_FEW),
        "ics_not_reduced": (NOT_MEASURED, ""),  # its primary is the DLN's ICS, absent here
        "bn_smoother": (SUPPORTED, ""),  # beta_eff 10x lower at vgg lr 0.5, the only lr measured
        "bn_predictive": (INCONCLUSIVE, TOO_FEW),
        "lp_like_bn": (INCONCLUSIVE, TOO_FEW),  # l1 has one seed
    }
    assert "about 5 seeds per side" in found["bn_predictive"].reason and "estimate" in found["bn_predictive"].reason
    assert "n = 1, 2" in found["lp_like_bn"].reason
    primary = found["bn_smoother"].rows[0]
    assert (primary.role, primary.key.arch, primary.key.lr, primary.declared.metric) == ("primary", "vgg", 0.5, "beta_eff")
    # per seed s the 0.9 quantile of beta_eff over its probes (4 + s, 2, 2, 2) x (1 batch, 10 none): a ratio of 0.1 exactly
    assert primary.result.estimate == pytest.approx(-1.0) and primary.effect().startswith("x0.1 [")


def test_the_csv_carries_every_column_of_a_comparison(found):
    f = claims.frame(list(found.values()))
    for col in ("claim", "role", "arch", "norm_a", "norm_b", "lr", "metric", "window", "n_a", "n_b", "effect", "effect_lo",
                "effect_hi", "p_value", "p_adjusted", "informative", "reason", "verdict", "claim_verdict", "claim_reason"):
        assert col in f.columns, col
    assert set(f["claim"]) == set(CLAIMS)  # a claim without comparisons keeps a row
    row = f.filter(claim="bn_smoother", role="primary").row(0, named=True)
    assert row["n_a"] == 3 and row["n_b"] == 3 and row["verdict"] == SUPPORTED and row["claim_verdict"] == SUPPORTED
    assert row["effect_lo"] < row["effect"] < row["effect_hi"] and row["scale"] == "log10 ratio"


# hand-made outcomes: the columns claims.Data reads
def cells(arch: str, norm: str, lr: float, auc=(), diverged: int = 0, dead: int = 0, loss=()) -> list[dict]:
    rows = []
    vals = list(auc) or list(loss)
    for i in range(len(vals) + diverged):
        div = i >= len(vals)
        v = None if div else vals[i]
        is_dead = not div and i < dead
        rows.append({"arch": arch, "norm": norm, "lr": lr, "setting": "", "seed": i, "cell_id": f"{arch}{norm}{lr}{i}",
                     "diverged": float(div), "dead": float(is_dead), "trained": float(not div and not is_dead),
                     "auc_accuracy": v if auc else None, "final_accuracy": v if auc else None,
                     "log_final_loss": math.log10(v) if loss and v else None})
    return rows


EMPTY_SMOOTH = pl.DataFrame(schema=smoothness.PER_CELL_SCHEMA)


def judge(claim: str, *groups: list[dict], smooth: pl.DataFrame = EMPTY_SMOOTH) -> verdicts.Verdict:
    o = pl.DataFrame([r for g in groups for r in g])
    return verdicts.judge(CLAIMS[claim], claims.rows(CLAIMS[claim], claims.Data(o, smooth)))


RNG = np.random.default_rng(0)
NOISY, BATCH, NONE = (list(x) for x in (0.95 + RNG.normal(0, 0.003, 8), 0.95 + RNG.normal(0, 0.003, 8), 0.90 + RNG.normal(0, 0.003, 8)))


def test_equal_within_the_margin_is_supported_by_tost():
    v = judge("noisy_bn", cells("vgg_mini", "noisy_batch", 0.2, NOISY), cells("vgg_mini", "batch", 0.2, BATCH),
              cells("vgg_mini", "none", 0.2, NONE))
    assert v.verdict == SUPPORTED, v.reason
    assert [(r.role, r.declared.a, r.declared.b, r.outcome) for r in v.rows] == [
        ("primary", "noisy_batch", "batch", SUPPORTED), ("secondary", "batch", "none", SUPPORTED),
        ("secondary", "noisy_batch", "none", SUPPORTED)]


def test_a_ceiling_is_not_informative():
    """Both sides at train accuracy 1.00: the metric cannot separate them, whatever a test would say."""
    top = [1.0, 0.999, 1.0, 1.0, 0.995, 1.0, 1.0, 1.0]
    v = judge("noisy_bn", cells("vgg_mini", "noisy_batch", 0.2, top), cells("vgg_mini", "batch", 0.2, top),
              cells("vgg_mini", "none", 0.2, top))
    assert (v.verdict, v.code) == (INCONCLUSIVE, NOT_INFORMATIVE), v.reason
    assert all(not r.informative and "ceiling" in r.reason for r in v.rows)


def test_a_dead_side_is_not_informative_and_counts_towards_nothing():
    """none at chance in 5 of 8 seeds: its comparisons are shown with the reason, and do not withhold the verdict."""
    v = judge("noisy_bn", cells("vgg_mini", "noisy_batch", 0.2, NOISY), cells("vgg_mini", "batch", 0.2, BATCH),
              cells("vgg_mini", "none", 0.2, [x + 0.04 for x in BATCH], dead=5))  # none "beats" batch on AUC, but it is dead
    assert v.verdict == SUPPORTED
    dead = [r for r in v.rows if r.declared.b == "none"]
    assert dead and all(not r.informative and r.reason == "none dead in 5/8 seeds" for r in dead)


def test_a_diverged_side_is_not_informative():
    none = cells("vgg_mini", "none", 0.2, NONE[:3], diverged=5)
    v = judge("noisy_bn", cells("vgg_mini", "noisy_batch", 0.2, NOISY), cells("vgg_mini", "batch", 0.2, BATCH), none)
    assert all(not r.informative and "none diverged in 5/8 seeds" in r.reason for r in v.rows if r.declared.b == "none")
    # ... except for a claim about divergence, where it is the measurement
    v = judge("bn_tolerates_lr", cells("vgg_mini", "batch", 30.0, BATCH), cells("vgg_mini", "none", 30.0, NONE[:3], diverged=5))
    assert v.rows[0].informative and v.rows[0].key.lr == 30.0 and v.verdict == SUPPORTED, v.reason


def smooth_rows(lr: float, batch: list[float], none: list[float], quantity: str = "beta_eff") -> list[dict]:
    return [{"arch": "vgg_mini", "norm": n, "lr": lr, "setting": "", "seed": s, "cell_id": f"vgg_mini{n}{lr}{s}",
             "quantity": quantity, "layer": None, "window": "overall", "statistic": "upper", "value": v}
            for n, vals in (("batch", batch), ("none", none)) for s, v in enumerate(vals)]


@pytest.mark.slow
def test_the_primary_decides_and_a_significant_secondary_contradiction_withholds_it():
    lrs, low, high = (0.05, 0.2, 1.0), [2.0, 2.1, 1.9, 2.05], [20.0, 21.0, 19.0, 20.5]
    groups = [cells("vgg_mini", n, lr, [0.9, 0.91, 0.92, 0.9]) for n in ("batch", "none") for lr in lrs]
    agree = pl.DataFrame([r for lr in lrs for r in smooth_rows(lr, low, high)], schema=smoothness.PER_CELL_SCHEMA)
    v = judge("bn_smoother", *groups, smooth=agree)
    assert v.verdict == SUPPORTED and v.rows[0].key.lr == 0.2  # vgg_mini's standard lr
    against = [r for lr in lrs for r in smooth_rows(lr, *((high, low) if lr == 1.0 else (low, high)))]
    v = judge("bn_smoother", *groups, smooth=pl.DataFrame(against, schema=smoothness.PER_CELL_SCHEMA))
    assert (v.verdict, v.code) == (INCONCLUSIVE, CONTRADICTED_BY) and "beta_eff at vgg_mini lr=1" in v.reason
    # an inconclusive secondary withholds nothing
    vague = [r for lr in lrs for r in smooth_rows(lr, *(([2, 30, 3, 20], [20, 2, 30, 3]) if lr == 1.0 else (low, high)))]
    assert judge("bn_smoother", *groups, smooth=pl.DataFrame(vague, schema=smoothness.PER_CELL_SCHEMA)).verdict == SUPPORTED


def test_without_the_primary_the_claim_is_not_measured():
    v = judge("noisy_bn", cells("vgg_mini", "batch", 0.2, BATCH), cells("vgg_mini", "none", 0.2, NONE))
    assert v.verdict == NOT_MEASURED and "noisy_batch" in v.reason


# the tests against their textbook formulas (Welch's t with Satterthwaite's df; Holm's step-down)
def welch_p(a, b, shift: float, upper: bool) -> float:
    """P-value of H1: mean(a) - mean(b) > -shift (upper) or < -shift, from the formula."""
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    t = (np.mean(a) - np.mean(b) + shift) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return float(stats.t.sf(t, df) if upper else stats.t.cdf(t, df))


@pytest.mark.parametrize("seed", range(5))
def test_tost_and_one_sided_tests_match_their_formulas(seed):
    rng = np.random.default_rng(seed)
    a, b, m = rng.normal(0.02 * seed, 0.05, 5), rng.normal(0, 0.08, 7), 0.1
    eq = compare.means(a, b, "equivalent", m)
    assert eq.p == pytest.approx(max(welch_p(a, b, m, True), welch_p(a, b, -m, False)), rel=1e-9)  # TOST: the larger
    assert eq.p_against == pytest.approx(min(welch_p(a, b, -m, True), welch_p(a, b, m, False)), rel=1e-9)
    low = compare.means(a, b, "lower", m)
    assert low.p == pytest.approx(welch_p(a, b, 0, False)) and low.p_against == pytest.approx(welch_p(a, b, m, True))
    ni = compare.means(a, b, "not_lower", m)
    assert ni.p == pytest.approx(welch_p(a, b, m, True)) and ni.p_against == pytest.approx(welch_p(a, b, m, False))
    assert eq.p == pytest.approx(ttost_ind(a, b, -m, m, usevar="unequal")[0], rel=1e-9)  # statsmodels' TOST
    # the 95 % interval and the one-sided tests at 0.025 agree
    assert (low.p <= 0.025) == (low.hi < 0) and (eq.p <= 0.025) == (-m < eq.lo and eq.hi < m)


def test_holm_matches_its_step_down_formula():
    p = [0.01, 0.04, 0.03, 0.005, 0.2]
    order = np.argsort(p)
    by_hand = np.empty(len(p))
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        by_hand[i] = running
    reject, adjusted = compare.holm(p, 0.05)
    assert adjusted == pytest.approx(list(by_hand)) and reject == list(by_hand <= 0.05)
    assert adjusted == pytest.approx([0.04, 0.09, 0.09, 0.025, 0.2])


def test_rates_use_newcombe_and_the_score_test():
    r = compare.rates(0, 8, 7, 8, "lower", 0.5)
    assert r.estimate == pytest.approx(-7 / 8) and r.lo < r.estimate < r.hi and r.p < 0.025
    r = compare.rates(8, 8, 7, 8, "lower", 0.5)  # batch diverges as often as none: the negation (not lower by 0.5) holds
    assert r.p > 0.5 and r.p_against < 0.025


def test_a_rate_at_its_floor_or_ceiling_on_both_sides_is_not_informative():
    """Neither network trains at lr 10 (0/8 and 0/8): that says nothing about which trains at more rates, so it cannot
    withhold bn_widens_range's verdict; both diverging in 8 of 8 seeds cannot decide bn_tolerates_lr."""
    chance = [0.1] * 8
    v = judge("bn_widens_range", cells("vgg_mini", "batch", 1.0, [1.0] * 8), cells("vgg_mini", "none", 1.0, chance, dead=8),
              cells("vgg_mini", "batch", 10.0, chance, dead=8), cells("vgg_mini", "none", 10.0, chance, dead=8))
    assert v.verdict == SUPPORTED, v.reason
    floor = [r for r in v.rows if r.key.lr == 10.0]
    assert len(floor) == 1 and not floor[0].informative and floor[0].reason == "floor: trained in 0/8 and 0/8 seeds"
    v = judge("bn_tolerates_lr", cells("vgg_mini", "batch", 30.0, diverged=8), cells("vgg_mini", "none", 30.0, diverged=8))
    assert (v.verdict, v.code) == (INCONCLUSIVE, NOT_INFORMATIVE), v.reason
    assert v.rows[0].reason == "ceiling: diverged in 8/8 and 8/8 seeds"
    v = judge("bn_tolerates_lr", cells("vgg_mini", "batch", 30.0, diverged=8), cells("vgg_mini", "none", 30.0, NONE[:1], diverged=7))
    assert v.rows[0].informative  # 8/8 against 7/8: not both at a bound, so the rate is evidence
