"""The verdict engine (analysis/verdicts.py) and the per-cell outcomes it reads (analysis/outcomes.py) on hand-made
inputs whose answers are worked out by hand here: the conditions at their "more than half" bounds, each comparison's
row at the exact p-values of a Cauchy-distributed t (1 degree of freedom: p = 1/2 + atan(t)/pi), Newcombe's interval
and the seeds an estimate asks for from their textbook formulas, the claim's verdict from hand-made rows, and the
outcomes' areas, dead cells and order from small tables."""

import math
from dataclasses import replace

import polars as pl
import pytest
from scipy import stats

from analysis import outcomes, verdicts
from analysis.compare import Result
from analysis.declared import ClaimSpec, Declared
from analysis.settings import Settings
from analysis.verdicts import CONTRADICTED, CONTRADICTED_BY, INCONCLUSIVE, NOT_INFORMATIVE, NOT_MEASURED, SUPPORTED, TOO_FEW, Key, Row, Side

KEY = Key("vgg", 0.2)
HIGHER = Declared("vgg", "batch", "none", "auc_accuracy", "higher")
LOWER = Declared("vgg", "batch", "none", "auc_accuracy", "lower")
DIVERGENCE = Declared("vgg", "batch", "none", "divergence", "lower")
TRAINING = Declared("vgg", "batch", "none", "training", "higher")
# accuracy margin 0.5 and 50 % intervals: at 1 degree of freedom the interval is the estimate +- 1 standard error
# (the t quantile 0.75 at 1 df is tan(pi / 4) = 1)
HALF = Settings(accuracy_tolerance=0.5, confidence=0.5)
# a side with no spread and one at 0 and 2 (variance 2): se = sqrt(0 / 2 + 2 / 2) = 1, and Welch's df is that side's n - 1 = 1
FLAT, SPREAD = [1.5, 1.5], [0.0, 2.0]
# scipy warns of "precision loss" on a side whose values are all equal (FLAT): its variance is 0 exactly
pytestmark = pytest.mark.filterwarnings("ignore:Precision loss occurred:RuntimeWarning")
CEILING = "ceiling: both sides in the metric's saturation band in most seeds"


def cauchy(t: float) -> float:
    return 0.5 + math.atan(t) / math.pi


# the conditions: "more than half" of a side's seeds, never half
@pytest.mark.parametrize("a, why", [
    (Side(4, dead=2), ""),
    (Side(5, dead=2), ""),
    (Side(5, dead=3), "a dead in 3/5 seeds"),
    (Side(4, diverged=2), ""),
    (Side(5, diverged=2), ""),
    (Side(5, diverged=3), "a diverged in 3/5 seeds"),
])
def test_dead_or_diverged_means_in_more_than_half_the_seeds(a, why):
    assert verdicts.conditions({"a": a, "b": Side(5)}, False, False) == why


def test_the_conditions_are_joined_in_order_and_do_not_apply_to_a_claim_about_training():
    sides = {"a": Side(4, dead=3, saturated=1), "b": Side(4, diverged=4)}
    assert verdicts.conditions(sides, False, False) == "a dead in 3/4 seeds; b diverged in 4/4 seeds"
    both = {"a": Side(4, dead=3, saturated=3), "b": Side(4, saturated=4)}
    assert verdicts.conditions(both, False, True) == f"a dead in 3/4 seeds; {CEILING}"
    assert verdicts.conditions(sides, True, True) == ""


@pytest.mark.parametrize("a, b, saturates, why", [
    (Side(4, saturated=3), Side(4, saturated=3), True, CEILING),
    (Side(4, saturated=2), Side(4, saturated=3), True, ""),  # half of one side is not most of it
    (Side(6, saturated=3), Side(6, saturated=6), True, ""),
    (Side(4, diverged=2, saturated=2), Side(4, saturated=3), True, CEILING),  # most of the 2 seeds that finished
    (Side(4, saturated=4), Side(4, saturated=4), False, ""),  # a metric without a ceiling
])
def test_a_ceiling_is_both_sides_saturated_in_most_of_their_finished_seeds(a, b, saturates, why):
    assert verdicts.conditions({"a": a, "b": b}, False, saturates) == why


# one comparison's row
def test_too_few_values_give_a_row_without_a_test():
    row = verdicts.comparison("c", "secondary", HIGHER, KEY, [0.9], [0.8, 0.7], (Side(1), Side(2)), False)
    assert row == Row("c", "secondary", HIGHER, KEY, None, False, "too few seeds: n = 1, 2; a test needs 2 a side")
    row = verdicts.comparison("c", "primary", HIGHER, KEY, [0.9, 0.8], [0.8, 0.7], (Side(2), Side(2)), False,
                              Settings(min_seeds=3))
    assert (row.result, row.reason) == (None, "too few seeds: n = 2, 2; a test needs 3 a side")
    # a rate counts its seeds, n of (k, n)
    row = verdicts.comparison("c", "primary", DIVERGENCE, KEY, (0, 1), (5, 8), (Side(1), Side(8, diverged=5)), True)
    assert row == Row("c", "primary", DIVERGENCE, KEY, None, False, "too few seeds: n = 1, 8; a test needs 2 a side")


def test_two_values_a_side_are_enough_and_alpha_and_the_settings_reach_the_test():
    """a - b = 0.5 with se 1 at 1 df: p of 'higher' is P(T > 0.5), its negation (below the margin 0.5) P(T < 0) = 1/2."""
    row = verdicts.comparison("c", "primary", HIGHER, KEY, FLAT, SPREAD, (Side(2), Side(2)), False, HALF, alpha=0.4)
    r = row.result
    assert (r.estimate, r.n_a, r.n_b) == (0.5, 2, 2)
    assert (r.lo, r.hi) == pytest.approx((-0.5, 1.5))
    assert r.p == pytest.approx(cauchy(-0.5)) and r.p_against == pytest.approx(0.5)
    assert replace(row, result=None) == Row("c", "primary", HIGHER, KEY, None, True,
                                            "p = 0.35 <= 0.4: the 95 % interval lies on the claim's side", SUPPORTED)
    # at the default alpha (0.025) the same data decide nothing
    assert verdicts.comparison("c", "primary", HIGHER, KEY, FLAT, SPREAD, (Side(2), Side(2)), False, HALF).outcome == INCONCLUSIVE


def test_p_equal_to_alpha_is_significant():
    """Equal means: p of 'higher' is P(T > 0) = 1/2 exactly, its negation's P(T < -0.5) = 0.35 also <= 1/2."""
    row = verdicts.comparison("c", "primary", HIGHER, KEY, SPREAD, [1.0, 1.0], (Side(2), Side(2)), False, HALF, alpha=0.5)
    assert (row.result.p, row.outcome, row.reason) == (0.5, SUPPORTED, "p = 0.5 <= 0.5: the 95 % interval lies on the claim's side")


def test_p_against_equal_to_alpha_contradicts():
    """'lower' with a - b = 0.5: p = P(T < 0.5) = 0.65; the negation (a - b > -0.5) has p = P(T > 1) = 1/4."""
    alpha = float(stats.t.cdf(-1.0, 1))  # 1/4: the Cauchy distribution's at -1, to the last bit as scipy gives it
    assert alpha == pytest.approx(0.25)
    row = verdicts.comparison("x", "secondary", LOWER, KEY, FLAT, SPREAD, (Side(2), Side(2)), False, HALF, alpha=alpha)
    assert row.result.p == pytest.approx(cauchy(0.5)) and row.result.p_against == alpha
    assert replace(row, result=None) == Row("x", "secondary", LOWER, KEY, None, True,
                                            "p against = 0.25 <= 0.25: its negation holds beyond the margin", CONTRADICTED)


def power(n: int, effect: float, alpha: float) -> float:
    """One-sided two-sample t-test's power at n a side (the noncentral t), for the brute-force search below."""
    df = 2 * n - 2
    return float(stats.nct.sf(stats.t.ppf(1 - alpha, df), df, effect * math.sqrt(n / 2)))


def test_an_inconclusive_comparison_estimates_the_seeds_that_would_settle_it():
    """Equal means at pooled sd 1 and margin 0.5: the test the data favour (the negation's) has effect size 0.5."""
    row = verdicts.comparison("c", "primary", HIGHER, KEY, SPREAD, [1.0, 1.0], (Side(2), Side(2)), False, HALF, alpha=0.05)
    needed = next(n for n in range(2, 1000) if power(n, 0.5, 0.05) >= 0.8)
    assert needed == 51
    assert row.result.p == 0.5 and row.result.p_against == pytest.approx(cauchy(-0.5))
    assert replace(row, result=None) == Row("c", "primary", HIGHER, KEY, None, True,
                                            "neither the claim nor its negation is significant", INCONCLUSIVE, seeds_needed=needed)
    row = verdicts.comparison("c", "primary", HIGHER, KEY, SPREAD, [1.0, 1.0], (Side(2), Side(2)), False, HALF, 0.05, estimate=False)
    assert (row.outcome, row.seeds_needed) == (INCONCLUSIVE, None)


def test_no_spread_on_either_side_is_inconclusive_without_an_estimate():
    row = verdicts.comparison("c", "primary", HIGHER, KEY, [1.0, 1.0], [1.0, 1.0], (Side(2), Side(2)), False)
    assert math.isnan(row.result.p) and math.isnan(row.result.p_against)
    assert replace(row, result=None) == Row("c", "primary", HIGHER, KEY, None, True,
                                            "no spread on either side: a t-test is undefined", INCONCLUSIVE)


def wilson(k: int, n: int, z: float) -> tuple[float, float]:
    centre, half = (k + z * z / 2) / (n + z * z), z / (n + z * z) * math.sqrt(k * (n - k) / n + z * z / 4)
    return centre - half, centre + half


def newcombe(k_a: int, n_a: int, k_b: int, n_b: int, confidence: float) -> tuple[float, float]:
    """Newcombe's hybrid score interval for a difference of rates (Newcombe 1998, method 10), from Wilson's."""
    z = stats.norm.ppf(0.5 + confidence / 2)
    (la, ua), (lb, ub), ra, rb = wilson(k_a, n_a, z), wilson(k_b, n_b, z), k_a / n_a, k_b / n_b
    return ra - rb - math.hypot(ra - la, ub - rb), ra - rb + math.hypot(ua - ra, rb - lb)


def test_a_rate_comparison_passes_alpha_the_margin_and_the_confidence():
    """2/4 against 3/4, 'lower' by the margin 0.5: both the claim's and the negation's distance are 0.25, and both
    effect sizes are Cohen's h = |2 asin(sqrt(1/2)) - 2 asin(sqrt(3/4))| = pi/6; a one-sided z-test at alpha 0.05 and
    80 % power needs n = 2 (z_0.95 + z_0.8)^2 / h^2 = 45.1 a side."""
    row = verdicts.comparison("c", "primary", DIVERGENCE, KEY, (2, 4), (3, 4), (Side(4), Side(4)), True, Settings(confidence=0.5),
                              alpha=0.05)
    n = 2 * (stats.norm.ppf(0.95) + stats.norm.ppf(0.8)) ** 2 / (math.pi / 6) ** 2
    assert n == pytest.approx(45.1, abs=0.01)
    assert (row.informative, row.outcome, row.seeds_needed, row.result.seeds_needed) == (True, INCONCLUSIVE, 46, 46)
    assert row.result.estimate == -0.25 and (row.result.lo, row.result.hi) == pytest.approx(newcombe(2, 4, 3, 4, 0.5))
    # the score test of the negation (a - b >= -0.5) at 2/4 vs 3/4 is far from 0.05: the margin reached it
    assert 0.1 < row.result.p_against < 0.5


def test_a_rate_at_its_floor_adds_to_the_other_conditions():
    row = verdicts.comparison("c", "secondary", TRAINING, KEY, (0, 4), (0, 4), (Side(4, dead=4), Side(4, dead=3)), False)
    assert replace(row, result=None) == Row("c", "secondary", TRAINING, KEY, None, False,
                                            "batch dead in 4/4 seeds; none dead in 3/4 seeds; floor: trained in 0/4 and 0/4 seeds")
    assert (row.result.estimate, row.result.n_a, row.result.n_b) == (0.0, 4, 4)
    row = verdicts.comparison("c", "secondary", TRAINING, KEY, (4, 4), (4, 4), (Side(4), Side(4)), True)
    assert (row.informative, row.reason) == (False, "ceiling: trained in 4/4 and 4/4 seeds")


# the claim's verdict from hand-made rows
SPEC = ClaimSpec("c", "Fig. 0", "batch beats none", HIGHER)
NAME = "batch vs none auc_accuracy at vgg lr=0.2"


def row(role: str = "secondary", p: float = 0.5, p_against: float = 0.5, outcome: str = INCONCLUSIVE, informative: bool = True,
        reason: str = "r", lr: float = 0.2, metric: str = "auc_accuracy", seeds_needed: int | None = None) -> Row:
    d = Declared("vgg", "batch", "none", metric, "higher")
    return Row("c", role, d, Key("vgg", lr), Result(0.1, 0.05, 0.15, 4, 4, p, p_against), informative, reason, outcome,
               seeds_needed=seeds_needed)


def test_without_its_primary_a_claim_is_not_measured():
    v = verdicts.judge(SPEC, [])
    assert (v.verdict, v.code, v.rows) == (NOT_MEASURED, "", [])
    assert v.reason == ("needs batch and none on the vgg (auc_accuracy) at the lrs the claim names (standard), "
                        "with >= 2 finished seeds a side")
    secondary = [row()]
    v = verdicts.judge(SPEC, secondary, Settings(min_seeds=3))
    assert v.rows == secondary and v.reason.endswith("with >= 3 finished seeds a side")


def test_the_secondaries_are_holm_adjusted_among_the_informative_and_the_primary_keeps_its_p():
    """Holm by hand over p = (0.01, 0.04, 0.03): 3 x 0.01, max(0.06, 0.04), max(0.03, 2 x 0.03); over the
    negations' (0.5, 0.02, 0.9): max(0.06, 2 x 0.5), 3 x 0.02, max(1, 0.9). The non-informative one is left out."""
    rows = [row("primary", 0.01, 0.9, SUPPORTED, reason="p = 0.01 <= 0.025"),
            row(p=0.01, p_against=0.5), row(p=0.04, p_against=0.02), row(p=0.001, p_against=0.001, informative=False),
            row(p=0.03, p_against=0.9)]
    v = verdicts.judge(SPEC, rows)
    assert [r.p_adjusted for r in v.rows] == pytest.approx([0.01, 0.03, 0.06, math.nan, 0.06], nan_ok=True)
    assert [r.p_against_adjusted for r in v.rows] == pytest.approx([0.9, 1.0, 0.06, math.nan, 1.0], nan_ok=True)
    assert (v.verdict, v.code) == (SUPPORTED, "")
    assert v.reason == f"the primary ({NAME}): +0.1 [+0.05, +0.15]; p = 0.01 <= 0.025"


def test_an_informative_secondary_at_adjusted_p_alpha_withholds_a_supported_verdict():
    """Holm over the negations' p (0.025, 0.001): max(2 x 0.001, 1 x 0.025) = 0.025 <= alpha, and 0.002."""
    rows = [row("primary", 0.001, 0.9, SUPPORTED), row(p=0.9, p_against=0.025, lr=1.0),
            row(p=0.9, p_against=0.001, lr=2.0, metric="beta_eff"), row(p=0.9, p_against=0.0001, informative=False)]
    v = verdicts.judge(SPEC, rows)
    assert (v.spec, v.verdict, v.code) == (SPEC, INCONCLUSIVE, CONTRADICTED_BY)
    assert v.reason == ("contradicted by: batch vs none auc_accuracy at vgg lr=1 (+0.1 [+0.05, +0.15], adjusted p 0.025); "
                        "batch vs none beta_eff at vgg lr=2 (x1.26 [x1.12, x1.41], adjusted p 0.002)")
    assert [r.p_against_adjusted for r in v.rows[1:3]] == pytest.approx([0.025, 0.002]) and len(v.rows) == 4
    # an explicit alpha is the one used: at 0.001 neither withholds it
    assert verdicts.judge(SPEC, rows, alpha=0.001).verdict == SUPPORTED


def test_a_contradicted_verdict_is_withheld_by_a_secondary_that_supports_the_claim():
    rows = [row("primary", 0.9, 0.001, CONTRADICTED), row(p=0.01, p_against=0.9, lr=1.0)]
    v = verdicts.judge(SPEC, rows)
    assert (v.verdict, v.code) == (INCONCLUSIVE, CONTRADICTED_BY)
    assert v.reason == "contradicted by: batch vs none auc_accuracy at vgg lr=1 (+0.1 [+0.05, +0.15], adjusted p 0.01)"
    # one that contradicts the claim too does not withhold a contradiction
    assert verdicts.judge(SPEC, [rows[0], row(p=0.9, p_against=0.01)]).verdict == CONTRADICTED
    # alpha 0.05 given: a secondary at p 0.04 withholds a supported verdict; at the default 0.025 it does not
    rows = [row("primary", 0.001, 0.9, SUPPORTED), row(p=0.9, p_against=0.04)]
    assert verdicts.judge(SPEC, rows, alpha=0.05).code == CONTRADICTED_BY and verdicts.judge(SPEC, rows).verdict == SUPPORTED


def test_a_primary_that_is_not_informative_makes_the_claim_inconclusive_with_its_reason():
    few = replace(row("primary", reason="too few seeds: n = 1, 2; a test needs 2 a side", informative=False), result=None)
    v = verdicts.judge(SPEC, [few])
    assert (v.verdict, v.code, v.reason, v.rows) == (INCONCLUSIVE, TOO_FEW, few.reason, [few])
    dead = row("primary", reason="none dead in 5/8 seeds", informative=False)
    v = verdicts.judge(SPEC, [dead])
    assert (v.verdict, v.code) == (INCONCLUSIVE, NOT_INFORMATIVE)
    assert v.reason == f"no informative comparison: the primary ({NAME}): none dead in 5/8 seeds"


@pytest.mark.parametrize("n, reason", [
    (12, "too few seeds: about 12 seeds per side would give 80 % power at alpha 0.025 at the observed spread and effect "
         "(an estimate; now n = 4, 4)"),
    (1000, "too few seeds: about 1000 seeds per side would give"),
    (1001, "too few seeds: more than 1000 seeds per side would give"),
    (None, "too few seeds: n = 4, 4; no estimate (no spread, or an effect at the boundary of both tests)"),
])
def test_an_inconclusive_primary_says_how_many_seeds_would_settle_it(n, reason):
    primary = row("primary", seeds_needed=n)
    v = verdicts.judge(SPEC, [primary, row()])
    assert (v.verdict, v.code) == (INCONCLUSIVE, TOO_FEW) and v.reason.startswith(reason)
    assert [r.seeds_needed for r in v.rows] == [n, None] and v.rows[0].p_adjusted == 0.5


def test_a_key_and_an_effect_as_text():
    assert Key("vgg", 0.5).text() == "vgg lr=0.5"
    assert Key("dln", 0.01, "train.steps=20", 0).text() == "dln lr=0.01 layer #0 [train.steps=20]"
    log = Declared("vgg", "batch", "none", "beta_eff", "lower")
    r = Result(-1.0, -2.0, 0.5, 4, 4, 0.01, 0.9)
    assert Row("c", "primary", log, KEY, r, True, "").effect() == "x0.1 [x0.01, x3.16]"
    assert Row("c", "primary", HIGHER, KEY, Result(0.058, -0.01, 0.12, 4, 4, 0.1, 0.1), True, "").effect() == "+0.058 [-0.01, +0.12]"
    assert Row("c", "primary", HIGHER, KEY, None, False, "").effect() == "-"


# analysis/outcomes.py: per finished cell, on hand-made cells and evals tables
def cell(cell_id: str, arch: str = "vgg", dataset: str = "cifar10", status: str = "done", norm: str = "batch", lr: float = 0.1,
         setting: str = "", seed: int = 0) -> dict:
    return {"cell_id": cell_id, "arch": arch, "norm": norm, "lr": lr, "setting": setting, "seed": seed, "status": status,
            "dataset": dataset}


def train(cell_id: str, arch: str, points: list[tuple], split: str = "train") -> list[dict]:
    """Evaluations (step, loss, accuracy) of one cell."""
    return [{"cell_id": cell_id, "arch": arch, "split": split, "step": s, "loss": loss, "accuracy": acc} for s, loss, acc in points]


EVALS = {"cell_id": pl.String, "arch": pl.String, "split": pl.String, "step": pl.Int64, "loss": pl.Float64, "accuracy": pl.Float64}


def per_cell(cells: list[dict], evals: list[dict], settings: Settings = Settings()) -> dict[str, dict]:
    out = outcomes.per_cell(pl.DataFrame(cells).lazy(), pl.DataFrame(evals, schema=EVALS).lazy(), settings)
    return {r["cell_id"]: r for r in out.iter_rows(named=True)}


def test_the_area_under_train_accuracy_is_the_trapezoid_mean_over_the_evaluated_steps():
    """a: steps 0, 10, 30 at 0.1, 0.5, 0.9: (10 x 0.3 + 20 x 0.7) / 30 = 17/30; b, evaluated from step 10: 10 x 0.3 / 10;
    c, at steps 0 and 1: 0.4; d, one evaluation: no area. The test split (accuracy 0) is not training. The rows come
    shuffled, the cells interleaved."""
    evals = [*train("a", "vgg", [(30, 0.3, 0.9), (0, 2.3, 0.1), (10, 1.0, 0.5)]), *train("b", "vgg", [(20, 1.0, 0.4), (10, 2.0, 0.2)]),
             *train("a", "vgg", [(30, 3.0, 0.0), (0, 3.0, 0.0), (10, 3.0, 0.0)], "test"),
             *train("c", "vgg", [(1, 1.0, 0.6), (0, 2.0, 0.2)]), *train("d", "vgg", [(0, 2.0, 0.5)])]
    got = per_cell([cell(x, seed=i) for i, x in enumerate("abcd")], evals)
    assert {x: got[x]["auc_accuracy"] for x in "abcd"} == pytest.approx({"a": 17 / 30, "b": 0.3, "c": 0.4, "d": None})
    assert got["d"]["auc_accuracy"] is None  # not NaN: a single evaluation spans no steps
    assert {x: got[x]["final_accuracy"] for x in "abcd"} == {"a": 0.9, "b": 0.4, "c": 0.6, "d": 0.5}


def test_a_cell_is_dead_at_chance_accuracy_or_without_progress_in_its_loss():
    """cifar10 has 10 classes: chance 0.1 and dead up to 0.1 + 0.02. The DLN (no accuracy) is dead when its final train
    loss is not below its step-0 loss; log_final_loss is log10 of a positive final loss."""
    cells = [cell("chance"), cell("learnt", seed=1), cell("div", status="diverged", seed=2), cell("gone", status="diverged", seed=3),
             cell("flat", "dln", "dln"), cell("fit", "dln", "dln", seed=1), cell("zero", "dln", "dln", seed=2),
             cell("untested", "dln", "dln", seed=3)]
    evals = [*train("chance", "vgg", [(10, 2.3, 0.11), (0, 2.3, 0.1)]), *train("learnt", "vgg", [(10, 0.5, 0.9), (0, 2.3, 0.1)]),
             *train("div", "vgg", [(0, 2.3, 0.1), (10, 2.3, 0.5)]),
             *train("flat", "dln", [(20, 1.0, None), (0, 1.0, None), (10, 0.5, None)]),
             *train("fit", "dln", [(10, 0.01, None), (0, 1.0, None)]), *train("zero", "dln", [(10, 0.0, None), (0, 1.0, None)]),
             *train("untested", "dln", [(10, 0.5, None)], "test")]
    got = per_cell(cells, evals)
    cols = ("diverged", "dead", "trained")
    assert {k: tuple(v[c] for c in cols) for k, v in got.items()} == {
        "chance": (0, 1, 0), "learnt": (0, 0, 1), "div": (1, 0, 0), "gone": (1, 0, 0),
        "flat": (0, 1, 0), "fit": (0, 0, 1), "zero": (0, 0, 1),
        "untested": (0, 0, 1),  # no train evaluation: nothing says it did not train
    }
    # a diverged cell has no final metrics, and no area even where it was evaluated
    assert [got["div"][c] for c in ("final_accuracy", "auc_accuracy", "log_final_loss")] == [None, None, None]
    assert got["learnt"]["final_accuracy"] == 0.9 and got["learnt"]["auc_accuracy"] == pytest.approx(0.5)
    assert got["fit"]["log_final_loss"] == pytest.approx(-2.0) and got["flat"]["log_final_loss"] == pytest.approx(0.0)
    assert got["zero"]["log_final_loss"] is None  # log10(0) is no value
    assert got["fit"]["auc_accuracy"] is None and got["untested"]["auc_accuracy"] is None  # no accuracy, no area


def test_the_settings_reach_the_dead_band_and_the_target():
    """dead_band 0.15: dead up to 0.1 + 0.15 = 0.25 (exactly, in floating point) inclusive; target_fraction 0.5: the
    target is half the best final accuracy (0.8), first reached at step 10 by b."""
    assert 0.1 + 0.15 == 0.25
    cells = [cell("a"), cell("b", seed=1)]
    evals = [*train("a", "vgg", [(0, 2.3, 0.1), (10, 2.3, 0.25)]), *train("b", "vgg", [(0, 2.3, 0.1), (10, 1.0, 0.5), (20, 0.5, 0.8)])]
    got = per_cell(cells, evals, Settings(dead_band=0.15, target_fraction=0.5))
    assert (got["a"]["dead"], got["b"]["dead"]) == (1, 0)
    assert (got["a"]["target"], got["b"]["steps_to_target"]) == (pytest.approx(0.4), 10)


def test_cells_come_sorted_by_arch_norm_lr_setting_and_seed():
    order = [("dln", "none", 1.0, "", 0), ("vgg", "batch", 0.1, "b", 0), ("vgg", "batch", 1.0, "a", 1), ("vgg", "batch", 1.0, "b", 0),
             *(("vgg", "none", 0.5, "", seed) for seed in range(5))]
    # each key decides somewhere: without the arch, batch would come before dln's none; without the norm, vgg lr 0.5
    # before lr 1.0; without the lr, setting a before b; without the setting, seed 0 before seed 1; without the seed,
    # the last five tie, and their ids (c7, c4, c8, c5, c6) follow neither their seeds nor the order they come in
    ids = ["c0", "c1", "c2", "c3", "c7", "c4", "c8", "c5", "c6"]
    cells = [cell(i, arch, "cifar10", "done", norm, lr, setting, seed) for i, (arch, norm, lr, setting, seed) in zip(ids, order)]
    shuffled = [cells[k] for k in (6, 2, 4, 0, 8, 3, 5, 1, 7)]
    out = outcomes.per_cell(pl.DataFrame(shuffled).lazy(), pl.DataFrame([], schema=EVALS).lazy())
    assert out["cell_id"].to_list() == ids
