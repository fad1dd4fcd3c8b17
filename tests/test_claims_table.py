"""How analysis/claims.py reads a sweep's tables, on hand-made tables with known answers: which groups, seeds, lrs,
settings and layers a comparison reads, the values it takes from them, the settings and alpha it passes on, and the
two CSVs (claims.csv, claim_verdicts.csv) written out cell by cell."""

import math
import warnings

import polars as pl
import pytest
from polars.testing import assert_frame_equal
from scipy import stats

from analysis import claims, compare, smoothness
from analysis.claims import CONTRADICTED, INCONCLUSIVE, NOT_MEASURED, SUPPORTED, Key, Side, Verdict
from analysis.declared import CLAIMS, METRICS, ClaimSpec, Declared, Metric
from analysis.settings import Settings
from analysis.verdicts import TOO_FEW, Row


def seeds(arch: str, norm: str, lr: float, n: int = 4, *, setting: str = "", diverged: int = 0, dead: int = 0,
          auc: list | None = None, ids: list[int] | None = None) -> list[dict]:
    """One group of finished cells (analysis/outcomes.py's columns): the first `diverged` seeds diverged, the next
    `dead` did not train; `auc` per seed (None where it diverged)."""
    rows = []
    for i, seed in enumerate(ids or range(n)):
        div, is_dead = i < diverged, diverged <= i < diverged + dead
        acc = None if div else (auc[i] if auc else 0.9)
        rows.append({"arch": arch, "norm": norm, "lr": lr, "setting": setting, "seed": seed,
                     "cell_id": f"{arch}-{norm}-{lr}-{setting}-{seed}", "diverged": float(div), "dead": float(is_dead),
                     "trained": float(not div and not is_dead), "auc_accuracy": acc, "final_accuracy": acc,
                     "log_final_loss": None if div else -1.0})
    return rows


def smooth(arch: str, norm: str, lr: float, value: float, *, setting: str = "", layer: int | None = None, seed: int = 0,
           quantity: str = "beta_eff", window: str = "overall", statistic: str = "upper") -> dict:
    """One row of smoothness.per_cell."""
    return {"arch": arch, "norm": norm, "lr": lr, "setting": setting, "seed": seed,
            "cell_id": f"{arch}-{norm}-{lr}-{setting}-{seed}", "quantity": quantity, "layer": layer, "window": window,
            "statistic": statistic, "value": value}


def data(*groups: list[dict], smooth_rows: list[dict] = (), settings: Settings = Settings()) -> claims.Data:
    o = pl.DataFrame([r for g in groups for r in g])
    return claims.Data(o, pl.DataFrame(list(smooth_rows), schema=smoothness.PER_CELL_SCHEMA), settings)


# --- the groups and the values a comparison reads


def test_first_keeps_the_n_lowest_seeds_of_each_group_and_their_smoothness():
    s = Settings(alpha=0.1)
    full = data(seeds("vgg", "batch", 0.1, ids=[5, 2, 9, 1]), seeds("vgg", "none", 0.1, ids=[3, 0, 7]),
                seeds("vgg", "batch", 0.1, setting="wide", ids=[8, 4]), seeds("vgg", "batch", 0.2, ids=[6]),
                smooth_rows=[smooth("vgg", "batch", 0.1, 1.0, seed=k) for k in (5, 2, 9, 1)], settings=s)
    first = full.first(2)
    assert sorted(first.outcomes["cell_id"]) == sorted([
        "vgg-batch-0.1--1", "vgg-batch-0.1--2", "vgg-none-0.1--0", "vgg-none-0.1--3", "vgg-batch-0.1-wide-4",
        "vgg-batch-0.1-wide-8", "vgg-batch-0.2--6"])
    assert sorted(first.smooth["cell_id"]) == ["vgg-batch-0.1--1", "vgg-batch-0.1--2"]
    assert first.settings is s
    assert sorted(full.first(1).outcomes["seed"]) == [0, 1, 4, 6]


def test_a_group_is_one_arch_norm_lr_and_setting_and_its_side_counts_its_seeds():
    d = data(seeds("vgg", "batch", 0.1, 5, diverged=1, dead=2), seeds("vgg_mini", "batch", 0.1, 2),
             seeds("vgg", "batch", 0.1, 3, setting="wide"), seeds("vgg", "batch", 0.2, 2), seeds("vgg", "none", 0.1, 2))
    g = d.group("vgg", "batch", 0.1, "")
    assert sorted(g["cell_id"]) == [f"vgg-batch-0.1--{s}" for s in range(5)]
    # saturated: the values at or above Settings.saturation (0.99), only for a metric that saturates
    assert d.side(g, [0.995, 0.99, 0.5, 0.989], True) == Side(5, 1, 2, 2)
    assert d.side(g, [0.995, 0.99, 1.0], False) == Side(5, 1, 2, 0)
    assert d.side(g, [0.5, 0.9], True) == Side(5, 1, 2, 0)
    assert data(seeds("vgg", "batch", 0.1), settings=Settings(saturation=0.9)).side(g, [0.9, 0.89], True).saturated == 1


def test_no_rate_has_a_saturation_band():
    """A rate's values are its (k, n) counts, not per-seed values that could sit in a band (claims._row hands them on)."""
    assert [name for name, m in METRICS.items() if m.source == "rate" and m.saturates] == []


BETA = Declared("vgg", "batch", "none", "beta_eff", "lower")
# beta_eff of vgg batch at lr 0.1: per layer its values, and decoys that differ from it in one field each (a power of ten
# of their own, so a value read from the wrong rows shows which)
SMOOTH = [
    *(smooth("vgg", "batch", 0.1, v, seed=s) for s, v in enumerate([10.0, 100.0, 0.0, -5.0, math.nan])),
    smooth("vgg", "batch", 0.1, 1e3, layer=2), smooth("vgg", "batch", 0.1, 1e4, layer=5),
    smooth("vgg_mini", "batch", 0.1, 1e5), smooth("vgg", "batch", 0.2, 1e6), smooth("vgg", "batch", 0.1, 1e7, setting="wide"),
    smooth("vgg", "batch", 0.1, 1e8, quantity="loss_band"), smooth("vgg", "batch", 0.1, 1e9, window="early"),
    smooth("vgg", "batch", 0.1, 1e10, statistic="median"), smooth("vgg", "none", 0.1, 1e11),
]


def test_smooth_values_are_read_from_their_own_rows_on_the_log_scale():
    """log10 of the positive values (10, 100 -> 1, 2); zero, negative and NaN values are dropped, without a warning."""
    d = data(seeds("vgg", "batch", 0.1), smooth_rows=SMOOTH)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert list(d.values(BETA, Key("vgg", 0.1), "batch")) == [1.0, 2.0]
        assert list(d.smooth_values(BETA, "vgg", "batch", 0.1, "", None)) == [1.0, 2.0]
    assert list(d.values(BETA, Key("vgg", 0.1, "", 2), "batch")) == [3.0]
    assert list(d.values(BETA, Key("vgg", 0.1, "", 5), "batch")) == [4.0]
    assert list(d.values(BETA, Key("vgg", 0.1, "", 3), "batch")) == []


def test_a_smooth_metric_on_the_linear_scale_keeps_its_values(monkeypatch):
    monkeypatch.setitem(METRICS, "beta_linear", Metric("smooth", "beta_eff", "upper"))
    d = data(seeds("vgg", "batch", 0.1), smooth_rows=SMOOTH)
    assert list(d.values(Declared("vgg", "batch", "none", "beta_linear", "lower"), Key("vgg", 0.1), "batch")) == [10.0, 100.0, 0.0, -5.0]


def test_outcome_values_drop_missing_and_rates_count_their_seeds():
    d = data(seeds("vgg", "batch", 0.1, 5, diverged=1, auc=[None, 0.8, math.nan, 0.7, math.inf]), seeds("vgg", "batch", 0.2, 2))
    assert list(d.values(Declared("vgg", "batch", "none", "auc_accuracy", "higher"), Key("vgg", 0.1), "batch")) == [0.8, 0.7]
    assert d.values(Declared("vgg", "batch", "none", "divergence", "lower"), Key("vgg", 0.1), "batch") == (1, 5)


# --- where a comparison is read: keys()


AUC_ALL = Declared("vgg", "batch", "none", "auc_accuracy", "higher", "all")


def test_the_standard_rule_reads_the_lr_nearest_the_standard_on_a_log_scale():
    """vgg_mini's standard lr is 0.2: of 0.05, 0.15 and 1.0 the nearest on a log scale is 0.15 (x1.33; 1.0 is x5)."""
    d = data(*(seeds("vgg_mini", n, lr) for n in ("batch", "none") for lr in (0.05, 0.15, 1.0)))
    assert claims.keys(Declared("vgg", "batch", "none", "auc_accuracy", "higher"), d) == [Key("vgg_mini", 0.15)]
    assert claims.keys(AUC_ALL, d) == [Key("vgg_mini", lr) for lr in (0.05, 0.15, 1.0)]


def test_both_norms_must_be_present_in_the_same_arch():
    """vgg has batch at 0.1 and none at 0.5, vgg_mini the reverse: only vgg_mini's 0.2, where both are, pairs."""
    d = data(seeds("vgg", "batch", 0.1), seeds("vgg", "none", 0.5), seeds("vgg_mini", "batch", 0.5),
             seeds("vgg_mini", "none", 0.1), seeds("vgg_mini", "batch", 0.2), seeds("vgg_mini", "none", 0.2))
    assert claims.keys(AUC_ALL, d) == [Key("vgg_mini", 0.2)]


# none at each lr: (diverged, dead) of 4 seeds; batch trains everywhere
FAILURES = {0.5: (0, 0), 1.0: (3, 0), 2.0: (2, 0), 3.0: (0, 3), 4.0: (1, 2), 5.0: (0, 2)}


@pytest.mark.parametrize("rule, lrs", [
    ("b_diverges", [1.0]),  # diverged in more than half: 3/4, not 2/4
    ("b_fails", [1.0, 3.0, 4.0]),  # diverged or dead in more than half: 3/4, 3/4, 1/4 + 2/4; not 2/4
    ("all", [0.5, 1.0, 2.0, 3.0, 4.0, 5.0]),
])
def test_the_b_rules_read_the_lrs_where_b_fails_in_more_than_half_its_seeds(rule, lrs):
    d = data(*(seeds("vgg", "batch", lr) for lr in FAILURES),
             *(seeds("vgg", "none", lr, diverged=div, dead=dead) for lr, (div, dead) in FAILURES.items()))
    assert claims.keys(Declared("vgg", "batch", "none", "divergence", "lower", rule), d) == [Key("vgg", lr) for lr in lrs]


@pytest.mark.parametrize("batch, none, layers", [
    ({1, 2, 3}, {2, 3, 4}, [2, 3]),  # the layers both measured
    ({None, 1}, {None, 1}, [1]),  # per-layer rows first
    ({None}, {None}, [None]),  # a quantity without layers
    ({None}, {4}, []),
    ({4}, {None}, []),
])
def test_the_layers_read_are_those_both_sides_measured(batch, none, layers):
    rows = [smooth("vgg", n, 0.1, 1.0, layer=k) for n, ks in (("batch", batch), ("none", none)) for k in ks]
    d = data(seeds("vgg", "batch", 0.1), seeds("vgg", "none", 0.1), smooth_rows=rows)
    all_layers = Declared("vgg", "batch", "none", "beta_eff", "lower", "all", layer="all")
    assert claims.keys(all_layers, d) == [Key("vgg", 0.1, "", k) for k in layers]
    first = Declared("vgg", "batch", "none", "beta_eff", "lower", "all", layer="first")
    assert claims.keys(first, d) == [Key("vgg", 0.1, "", k) for k in layers[:1]]


def test_only_the_smooth_rows_of_the_arch_setting_window_and_statistic_count():
    """Outcomes at vgg_mini lr 0.1 in settings a and b, and at vgg lr 0.1 in b; beta_eff is measured only at vgg_mini
    in b (layers 2 and 3 on both sides), plus rows that differ in window, statistic or quantity (layers 5, 6, 7)."""
    groups = [seeds(a, n, 0.1, setting=s) for a, s in (("vgg_mini", "a"), ("vgg_mini", "b"), ("vgg", "b"))
              for n in ("batch", "none")]
    rows = [smooth("vgg_mini", n, 0.1, 1.0, setting="b", layer=k, **other) for n in ("batch", "none")
            for k, other in ((2, {}), (3, {}), (5, {"window": "early"}), (6, {"statistic": "median"}), (7, {"quantity": "loss_band"}))]
    d = data(*groups, smooth_rows=rows)
    assert claims.keys(Declared("vgg", "batch", "none", "beta_eff", "lower", "all", layer="all"), d) == [
        Key("vgg_mini", 0.1, "b", 2), Key("vgg_mini", 0.1, "b", 3)]
    assert claims.keys(Declared("vgg", "batch", "none", "beta_eff", "lower", "all", layer="first"), d) == [Key("vgg_mini", 0.1, "b", 2)]
    assert claims.keys(AUC_ALL, d) == [Key("vgg", 0.1, "b"), Key("vgg_mini", 0.1, "a"), Key("vgg_mini", 0.1, "b")]


# --- rows(): what each comparison is handed


# vgg_mini at lr 0.2 (its standard) and 0.4: batch a point above none, with a spread of two points
BATCH, NONE = [0.90, 0.92, 0.94], [0.89, 0.91, 0.93]
HIGHER = ClaimSpec("test_higher", "-", "batch trains better", Declared("vgg", "batch", "none", "auc_accuracy", "higher"),
                   (Declared("vgg", "batch", "none", "auc_accuracy", "higher", "all"),))


def higher_data() -> claims.Data:
    return data(*(g for lr in (0.2, 0.4) for g in (seeds("vgg_mini", "batch", lr, 3, auc=BATCH),
                                                    seeds("vgg_mini", "none", lr, 3, auc=NONE))))


def test_rows_test_every_comparison_at_the_alpha_given():
    """Welch's t by hand: difference 0.01, standard error sqrt(2 * 0.0004 / 3) = 0.01633, t = 0.612 at 4 df, p = 0.29:
    supported at alpha 0.5, not at the default 0.025."""
    se = math.sqrt(2 * 0.02**2 / 3)
    p = float(stats.t.sf(0.01 / se, 4))
    assert p == pytest.approx(0.287, abs=1e-3)
    found = claims.rows(HIGHER, higher_data(), alpha=0.5)
    assert [(r.claim, r.role, r.key, r.outcome) for r in found] == [
        ("test_higher", "primary", Key("vgg_mini", 0.2), SUPPORTED), ("test_higher", "secondary", Key("vgg_mini", 0.4), SUPPORTED)]
    assert all(r.result.p == pytest.approx(p, rel=1e-6) and r.reason.startswith(f"p = {p:.2g} <= 0.5") for r in found)
    assert [r.outcome for r in claims.rows(HIGHER, higher_data())] == [INCONCLUSIVE, INCONCLUSIVE]


def test_rows_estimate_the_seeds_needed_only_when_asked():
    estimated = claims.rows(HIGHER, higher_data())
    needed = compare.seeds_needed(BATCH, NONE, "higher", 0.02)
    assert needed > 3 and [r.seeds_needed for r in estimated] == [needed, needed]
    assert [r.seeds_needed for r in claims.rows(HIGHER, higher_data(), estimate=False)] == [None, None]


def test_a_comparison_found_by_two_rules_is_one_row():
    """Divergence at every lr and where none diverges (lr 1.0) find lr 1.0 twice: it is one row."""
    spec = ClaimSpec("test_twice", "-", "found twice", Declared("vgg", "batch", "none", "training", "higher"),
                     (Declared("vgg", "batch", "none", "divergence", "lower", "all"),
                      Declared("vgg", "batch", "none", "divergence", "lower", "b_diverges")))
    d = data(seeds("vgg_mini", "batch", 0.5), seeds("vgg_mini", "none", 0.5), seeds("vgg_mini", "batch", 1.0),
             seeds("vgg_mini", "none", 1.0, diverged=4))
    assert [(r.role, r.declared.metric, r.key.lr) for r in claims.rows(spec, d)] == [
        ("primary", "training", 0.5), ("secondary", "divergence", 0.5), ("secondary", "divergence", 1.0)]


def test_check_decides_with_the_settings_given():
    """Two seeds a side where the settings ask for three: every comparison has too few, and a claim absent from the
    output says how many it needs."""
    o = pl.DataFrame([r for n in ("noisy_batch", "batch", "none") for r in seeds("vgg_mini", n, 0.2, 2, auc=[0.9, 0.95])])
    found = {v.spec.id: v for v in claims.check(o, pl.DataFrame(schema=smoothness.PER_CELL_SCHEMA), Settings(min_seeds=3))}
    assert (found["noisy_bn"].verdict, found["noisy_bn"].reason) == (INCONCLUSIVE, f"{TOO_FEW}: n = 2, 2; a test needs 3 a side")
    assert (found["ics_not_reduced"].verdict, found["ics_not_reduced"].reason) == (
        NOT_MEASURED, "needs batch and none on the dln (ics_l2) at the lrs the claim names (standard), with >= 3 finished seeds a side")


# --- the CSVs, cell by cell


SMOOTHER, TOLERATES, NOISY, ICS = (CLAIMS[c] for c in ("bn_smoother", "bn_tolerates_lr", "noisy_bn", "ics_not_reduced"))
LOSS_BAND_DLN = Declared("dln", "batch", "none", "loss_band", "lower", "all", "early")
FOUND = [
    Verdict(SMOOTHER, SUPPORTED, "smoother: the primary", "", look=2, rows=[
        Row("bn_smoother", "primary", SMOOTHER.primary, Key("vgg_mini", 0.2, "", 3), compare.Result(-1.0, -1.25, -0.75, 4, 5, 0.001, 0.75),
            True, "p = 0.001", SUPPORTED, p_adjusted=0.002, p_against_adjusted=0.8),
        Row("bn_smoother", "secondary", LOSS_BAND_DLN, Key("dln", 1e-6, "wide"), None, False, "too few seeds: n = 1, 4"),
    ]),
    Verdict(TOLERATES, INCONCLUSIVE, "tolerates: too few", TOO_FEW, rows=[
        Row("bn_tolerates_lr", "primary", TOLERATES.primary, Key("vgg", 1.0), compare.Result(-0.5, -0.8, -0.1, 6, 7, math.nan, 0.3, 12),
            True, "neither", INCONCLUSIVE, p_against_adjusted=0.35, seeds_needed=12),
    ]),
    Verdict(NOISY, CONTRADICTED, "noisy: the primary", "", look=0, rows=[
        Row("noisy_bn", "primary", NOISY.primary, Key("vgg", 0.1), compare.Result(0.05, 0.03, 0.07, 8, 9, 0.6, 0.01),
            True, "p against = 0.01", CONTRADICTED, p_adjusted=0.65, p_against_adjusted=0.015),
    ]),
    Verdict(ICS, NOT_MEASURED, "ics: needs the dln"),
]


def test_the_claims_csv_has_one_row_per_comparison_and_one_per_claim_without_any():
    head = lambda v, c: {"claim": c, "claim_verdict": v, "look": None}
    expected = [
        {**head(SUPPORTED, "bn_smoother"), "figure": "Figs. 4, 10", "claim_reason": "smoother: the primary", "look": 2,
         "role": "primary", "arch": "vgg_mini", "norm_a": "batch", "norm_b": "none", "lr": 0.2, "setting": "",
         "metric": "beta_eff", "window": "overall", "layer": 3, "test": "lower", "scale": "log10 ratio", "n_a": 4, "n_b": 5,
         "effect": -1.0, "effect_lo": -1.25, "effect_hi": -0.75, "p_value": 0.001, "p_adjusted": 0.002, "p_against": 0.75,
         "p_against_adjusted": 0.8, "informative": True, "reason": "p = 0.001", "verdict": SUPPORTED, "seeds_needed": None},
        {**head(SUPPORTED, "bn_smoother"), "figure": "Figs. 4, 10", "claim_reason": "smoother: the primary", "look": 2,
         "role": "secondary", "arch": "dln", "norm_a": "batch", "norm_b": "none", "lr": 1e-6, "setting": "wide",
         "metric": "loss_band", "window": "early", "layer": None, "test": "lower", "scale": "log10 ratio",
         "informative": False, "reason": "too few seeds: n = 1, 4", "verdict": "-"},
        {**head(INCONCLUSIVE, "bn_tolerates_lr"), "figure": "Fig. 1", "claim_reason": "tolerates: too few",
         "role": "primary", "arch": "vgg", "norm_a": "batch", "norm_b": "none", "lr": 1.0, "setting": "",
         "metric": "divergence", "window": "final", "test": "lower", "scale": "rate difference", "n_a": 6, "n_b": 7,
         "effect": -0.5, "effect_lo": -0.8, "effect_hi": -0.1, "p_value": None, "p_against": 0.3, "p_against_adjusted": 0.35,
         "informative": True, "reason": "neither", "verdict": INCONCLUSIVE, "seeds_needed": 12},
        {**head(CONTRADICTED, "noisy_bn"), "figure": "Fig. 2", "claim_reason": "noisy: the primary", "look": 0,
         "role": "primary", "arch": "vgg", "norm_a": "noisy_batch", "norm_b": "batch", "lr": 0.1, "setting": "",
         "metric": "auc_accuracy", "window": "final", "test": "equivalent", "scale": "difference", "n_a": 8, "n_b": 9,
         "effect": 0.05, "effect_lo": 0.03, "effect_hi": 0.07, "p_value": 0.6, "p_adjusted": 0.65, "p_against": 0.01,
         "p_against_adjusted": 0.015, "informative": True, "reason": "p against = 0.01", "verdict": CONTRADICTED},
        {**head(NOT_MEASURED, "ics_not_reduced"), "figure": "Fig. 3", "claim_reason": "ics: needs the dln"},
    ]
    assert_frame_equal(claims.frame(FOUND), pl.DataFrame(expected, schema=claims.COLUMNS))
    assert claims.frame([]).schema == pl.Schema(claims.COLUMNS)


VERDICT_SCHEMA = {"claim": pl.String, "figure": pl.String, "text": pl.String, "verdict": pl.String, "reason": pl.String,
                  "look": pl.Int64, "comparisons": pl.Int64, "informative": pl.Int64}


def test_the_verdicts_csv_has_one_row_per_claim():
    expected = [
        ("bn_smoother", "Figs. 4, 10", "BatchNorm gives a lower effective beta-smoothness and a narrower loss band.", SUPPORTED,
         "smoother: the primary", 2, 2, 1),
        ("bn_tolerates_lr", "Fig. 1", "Where the unnormalised network diverges, BatchNorm does not.", INCONCLUSIVE,
         "tolerates: too few", None, 1, 1),
        ("noisy_bn", "Fig. 2", "Noisy BatchNorm trains like BatchNorm, and both beat no normalisation.", CONTRADICTED,
         "noisy: the primary", 0, 1, 1),
        ("ics_not_reduced", "Fig. 3", "BatchNorm does not reduce internal covariate shift: its ICS l2 is not lower than without it.",
         NOT_MEASURED, "ics: needs the dln", None, 0, 0),
    ]
    assert_frame_equal(claims.verdict_frame(FOUND), pl.DataFrame(expected, schema=VERDICT_SCHEMA, orient="row"))
    # the types hold where every look is empty (a fixed-n report) and where there is no claim at all
    assert claims.verdict_frame(FOUND[1:2]).schema == pl.Schema(VERDICT_SCHEMA)
    assert claims.verdict_frame([]).schema == pl.Schema(VERDICT_SCHEMA)

