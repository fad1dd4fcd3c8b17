"""Guard rails with known answers: the divergence check at every position of its window, and which options
change a cell's identity."""

import math
from types import SimpleNamespace

import pytest
import torch

from bnsweep.spec import CellConfig
from bnsweep.train import check_divergence

BAD = [float("nan"), float("inf"), -float("inf")]


def state(losses, checked=0, limit=0.0):
    return SimpleNamespace(losses=torch.tensor(losses, dtype=torch.float32), checked=checked, limit=limit)


@pytest.mark.parametrize("bad", BAD, ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("at", range(6))
def test_a_non_finite_loss_anywhere_in_the_first_window_is_the_diverged_step(bad, at):
    losses = [1.0, 2.0, 1.5, 0.5, 0.7, 0.9]
    losses[at] = bad
    st = state(losses)
    assert check_divergence(st, 1000.0, len(losses)) == at
    assert st.checked == 0  # a diverged window is not counted as checked


@pytest.mark.parametrize("bad", BAD, ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("at", range(3, 8))
def test_a_non_finite_loss_in_a_later_window_is_found_at_its_own_step(bad, at):
    losses = [1.0, 2.0, 1.5, 0.5, 0.7, 0.9, 0.4, 0.3]
    st = state(losses)
    assert check_divergence(st, 1000.0, 3) is None and st.checked == 3 and st.limit == 1000.0
    losses[at] = bad
    st.losses = torch.tensor(losses)
    assert check_divergence(st, 1000.0, len(losses)) == at


def test_the_limit_is_the_factor_times_the_first_loss_and_only_a_larger_loss_diverges():
    st = state([-2.0, 1999.0, 2000.0, -5000.0])  # |first| x 1000 = 2000: equal is not above it; a negative loss is finite
    assert check_divergence(st, 1000.0, 4) is None and st.checked == 4 and st.limit == 2000.0
    st = state([2.0, 1999.0, 2000.5, 1.0])
    assert check_divergence(st, 1000.0, 4) == 2


def test_a_finite_window_advances_the_checked_mark_and_the_first_bad_step_wins():
    st = state([1.0, 1.0, float("nan"), float("inf"), 5000.0])
    assert check_divergence(st, 1000.0, 2) is None and st.checked == 2
    assert check_divergence(st, 1000.0, 5) == 2


def cifar_cell(**change) -> CellConfig:
    d = {"sweep": "t", "arch": "vgg11", "norm": "batch", "lr": 0.1, "seed": 0, "device": "cpu", "resources": {"cpu": 1},
         "dataset": {"name": "cifar10", "root": "data", "download": False}, "model": {}, "norm_options": {},
         "train": {"steps": 100, "batch_size": 16, "eval_every": 50}}
    for key, value in change.items():
        section, _, field = key.partition(".")
        if field:
            d[section] = {**d[section], field: value}
        else:
            d[section] = value
    return CellConfig.model_validate(d)


@pytest.mark.parametrize("change", [
    {"dataset.root": "/mnt/elsewhere/cifar"}, {"dataset.download": True}, {"device": "cuda"}, {"resources": {"cpu": 4, "gpu": 1}},
    {"checkpoint_every": 7}, {"execution": {"pack": 4}}, {"performance": {"channels_last": True}},
    {"performance": {"cudnn_benchmark": False}}, {"performance": {"precision": "highest"}},
], ids=lambda c: next(iter(c)))
def test_where_a_cell_runs_and_where_its_data_sits_keep_its_id(change):
    assert cifar_cell(**change).cell_id == cifar_cell().cell_id


@pytest.mark.parametrize("change", [
    {"lr": 0.2}, {"seed": 1}, {"norm": "none"}, {"arch": "vgg13"}, {"train.steps": 101}, {"train.batch_size": 32},
    {"train.momentum": 0.9}, {"train.weight_decay": 5e-4}, {"train.augment": True}, {"train.divergence_factor": 10.0},
    {"model": {"width": 0.5}}, {"norm_options": {"eps": 1e-3}}, {"measure": {"ics": {"every": 10, "layers": [1]}}},
    {"performance": {"precision": "high"}},
], ids=lambda c: next(iter(c)))
def test_anything_that_changes_results_changes_the_id(change):
    assert cifar_cell(**change).cell_id != cifar_cell().cell_id


# what a cell's id hashes, written out by hand: the fields that change a result and nothing else
CIFAR_IDENTITY = {
    "sweep": "t", "arch": "vgg11", "norm": "batch", "lr": 0.1, "seed": 0, "dataset": {"name": "cifar10"},
    "model": {"width": 1.0, "head": "linear", "mlp_hidden": 512}, "norm_options": {"momentum": 0.1, "eps": 1e-05},
    "train": {"steps": 100, "batch_size": 16, "eval_every": 50, "momentum": 0.0, "weight_decay": 0.0, "augment": False,
              "divergence_factor": 1000.0, "eval_batch_size": 1000},
    "train_version": 1,
}


def test_a_cells_identity_is_its_result_fields_and_the_training_version():
    assert cifar_cell().identity() == CIFAR_IDENTITY  # no measure section, no precision at its default
    digits = cifar_cell(arch="vgg_mini", dataset={"name": "digits"})  # a data set with no root to drop
    assert digits.identity()["dataset"] == {"name": "digits", "test_fraction": 0.2, "split_seed": 0}


def test_measurements_and_tf32_enter_the_identity_as_a_sweep_file_spells_them():
    """Options as the YAML names them (`from`, not the Python field `from_`), unset ones left out; TF32 by its name."""
    c = cifar_cell(measure={"landscape": {"every": 5, "eta": {"points": 3}}, "ics": {"every": 10, "layers": [1]}},
                   performance={"precision": "high"})
    assert c.identity() == {**CIFAR_IDENTITY, "precision": "high", "measure": {
        "ics": {"every": 10, "layers": [1]},
        "landscape": {"every": 5, "eta": {"from": 0.5, "to": 4.0, "points": 3, "spacing": "log", "relative_to": "lr"}}}}


def test_the_id_is_the_first_16_hex_digits_of_the_sha256_of_the_sorted_compact_json():
    """Recomputed by hand from the identity above: the ids results and checkpoints already on disk carry."""
    import hashlib
    import json

    blob = json.dumps(CIFAR_IDENTITY, sort_keys=True, separators=(",", ":")).encode()
    assert cifar_cell().spec_hash == hashlib.sha256(blob).hexdigest()
    assert cifar_cell().cell_id == hashlib.sha256(blob).hexdigest()[:16] == "2056086c7b342145"


def test_newcombes_interval_matches_his_1998_worked_example():
    """Newcombe (1998), Stat. Med. 17:873, Table II, method 10: 56/70 - 48/80 = 0.2000, 95% CI (0.0524, 0.3339)."""
    from analysis.compare import rates

    for test in ("higher", "lower"):  # the interval does not depend on the claim's direction
        r = rates(56, 70, 48, 80, test, 0.1)
        assert r.estimate == pytest.approx(0.2) and (round(r.lo, 4), round(r.hi, 4)) == (0.0524, 0.3339)
    r = rates(3, 3, 1, 3, "higher", 0.1)  # the arms' Wilson intervals are not interchangeable: swapped, this is [+0.04, 1.13]
    assert (round(r.lo, 2), round(r.hi, 2)) == (-0.06, 0.94)
    r = rates(1, 3, 3, 3, "lower", 0.1)  # the mirror image
    assert (round(r.lo, 2), round(r.hi, 2)) == (-0.94, 0.06)


def test_the_rate_tests_p_values_are_the_score_tests_one_sided():
    """3/8 against 7/8: the claim 'a is lower' has Miettinen-Nurminen score p < 0.025 one-sided, 'higher' has p > 0.5."""
    from statsmodels.stats.proportion import test_proportions_2indep

    from analysis.compare import rates

    want = test_proportions_2indep(3, 8, 7, 8, method="score", compare="diff", alternative="smaller").pvalue
    assert rates(3, 8, 7, 8, "lower", 0.1).p == pytest.approx(want) and want < 0.05
    assert rates(3, 8, 7, 8, "higher", 0.1).p > 0.5


@pytest.mark.parametrize("k_a, n_a, k_b, n_b, test, margin", [
    (1, 3, 3, 3, "lower", 0.5), (0, 8, 7, 8, "lower", 0.3), (5, 6, 1, 6, "higher", 0.2), (2, 5, 2, 5, "higher", 0.4),
])
def test_the_rate_tests_are_score_tests_of_the_claim_and_of_its_negation_beyond_the_margin(k_a, n_a, k_b, n_b, test, margin):
    """p: 'a - b is above 0' (higher) or below; p_against: 'a - b is not beyond the margin the other way'; both
    Miettinen-Nurminen score tests as statsmodels computes them (at 1/3 vs 3/3 the default method gives 0.079, not 0.057)."""
    from statsmodels.stats.proportion import test_proportions_2indep

    from analysis.compare import rates

    sign, (claim, against) = (1, ("larger", "smaller")) if test == "higher" else (-1, ("smaller", "larger"))
    score = lambda value, alt: test_proportions_2indep(k_a, n_a, k_b, n_b, value=value, method="score", compare="diff",
                                                       alternative=alt).pvalue
    r = rates(k_a, n_a, k_b, n_b, test, margin)
    assert r.p == pytest.approx(score(0.0, claim)) and r.p_against == pytest.approx(score(sign * margin, against))
    assert (r.n_a, r.n_b, r.estimate) == (n_a, n_b, pytest.approx(k_a / n_a - k_b / n_b))


def test_a_rate_needs_a_direction_and_one_seed_a_side():
    from analysis.compare import rates

    assert rates(1, 1, 0, 1, "higher", 0.5).estimate == 1.0  # one seed a side is enough
    with pytest.raises(ValueError, match=r"^rates take a direction test \(lower, higher\), not 'equivalent'$"):
        rates(1, 3, 2, 3, "equivalent", 0.1)
    for n_a, n_b in ((0, 3), (3, 0)):
        with pytest.raises(ValueError, match="^a rate needs at least one seed on each side$"):
            rates(0, n_a, 0, n_b, "lower", 0.1)


def test_seeds_needed_for_a_rate_is_the_normal_power_of_cohens_h_at_alpha():
    """1/3 vs 3/3, 'lower': the favoured test is the claim's, at Cohen's h = 2 asin(sqrt(1/3)) - 2 asin(1) = -1.91063;
    two equal groups: n = 2 ((z_0.975 + z_0.8) / h)^2 = 2 ((1.95996 + 0.84162) / 1.91063)^2 = 4.30, so 5 seeds a side;
    at alpha 0.005, 2 ((2.57583 + 0.84162) / 1.91063)^2 = 6.40, so 7."""
    from analysis.compare import rates

    assert rates(1, 3, 3, 3, "lower", 0.5).seeds_needed == 5
    assert rates(1, 3, 3, 3, "lower", 0.5, alpha=0.005).seeds_needed == 7


@pytest.mark.parametrize("k_a, n_a, k_b, n_b, test, want", [
    (3, 3, 3, 3, "lower", 7),  # no difference: the negation is favoured, at h = 2 asin(1) - 2 asin(sqrt(0.5)) = pi/2: 6.36
    (4, 5, 4, 5, "higher", 19),  # the negation shifts 0.8 by 0.5 past 1, held at 1: h = 2 asin(sqrt(0.8)) - pi: 18.26
])
def test_seeds_needed_for_a_rate_the_negation_favours_tests_it_against_the_shifted_rate(k_a, n_a, k_b, n_b, test, want):
    from analysis.compare import rates

    assert rates(k_a, n_a, k_b, n_b, test, 0.5).seeds_needed == want


def test_the_rate_interval_is_at_the_confidence_asked_for():
    from statsmodels.stats.proportion import confint_proportions_2indep

    from analysis.compare import rates

    r = rates(56, 70, 48, 80, "higher", 0.1, confidence=0.9)
    want = confint_proportions_2indep(56, 70, 48, 80, method="newcomb", compare="diff", alpha=0.1)
    assert (r.lo, r.hi) == pytest.approx(want) and 0.0524 < r.lo < r.hi < 0.3339  # inside the 95 % interval


def test_seeds_needed_for_means_is_the_t_tests_power_at_the_pooled_spread():
    """[0, 1, 2] vs [2, 3, 4], 'lower': d = -2, pooled sd 1, so Cohen's d = 2 for the claim; statsmodels' two-sample
    t power solves n = 5.09 at alpha 0.025 (6 seeds a side) and 7.66 at 0.005 (8); the normal approximation,
    2 ((1.960 + 0.842) / 2)^2 = 3.93, is the floor a t test must stay above."""
    from analysis.compare import seeds_needed

    assert seeds_needed([0, 1, 2], [2, 3, 4], "lower", 0.5) == 6
    assert seeds_needed([0, 1, 2], [2, 3, 4], "lower", 0.5, alpha=0.005) == 8
    assert seeds_needed([1, 1], [2, 2], "lower", 0.5) is None  # no spread: nothing to solve with


@pytest.mark.parametrize("test, d, want", [
    ("lower", -0.3, (0.3, 0.2)),  # claim d < 0: 0.3 inside; negation d >= -m: 0.2 inside
    ("lower", 0.1, (-0.1, 0.6)),
    ("higher", 0.3, (0.3, 0.2)),  # claim d > 0; negation d <= m
    ("higher", -0.1, (-0.1, 0.6)),
    ("not_lower", -0.3, (0.2, -0.2)),  # claim d > -m; negation d <= -m
    ("not_lower", -0.7, (-0.2, 0.2)),
    ("equivalent", 0.3, (0.2, -0.2)),  # claim |d| < m; negation |d| >= m
    ("equivalent", -0.6, (-0.1, 0.1)),
])
def test_how_far_a_difference_lies_inside_the_claim_and_its_negation(test, d, want):
    """At margin 0.5, by hand: positive inside the hypothesis, negative outside (what seeds_needed solves for)."""
    from analysis.compare import _distances

    assert _distances(test, d, 0.5) == pytest.approx(want)


def test_seeds_needed_solves_for_the_largest_positive_finite_effect_capped_past_1000():
    """Cohen (1988): d = 0.5 at alpha 0.05 two-sided (0.025 one-sided), power 0.8, needs 64 a group."""
    from statsmodels.stats.power import TTestIndPower

    from analysis.compare import MAX_SEEDS, _needed

    power = TTestIndPower()
    assert _needed(power, [0.5], 0.025) == _needed(power, [-2.0, 0.2, 0.5, float("nan")], 0.025) == 64
    assert _needed(power, [1e-4], 0.025) == MAX_SEEDS + 1  # "more than 1000"
    assert _needed(power, [1e-300], 0.025) == MAX_SEEDS + 1  # the root finder returns NaN
    gives_up = SimpleNamespace(solve_power=lambda **kw: 1 / 0)  # or raises
    assert _needed(gives_up, [0.5], 0.025) == MAX_SEEDS + 1
    for nothing in ([], [0.0], [-1.0], [float("inf")], [float("nan")]):
        assert _needed(power, nothing, 0.025) is None


def test_means_without_spread_have_a_point_interval_and_no_p_and_two_values_a_side_are_needed():
    from analysis.compare import means

    r = means([1.0, 1.0], [2.0, 2.0], "lower", 0.5)
    assert (r.estimate, r.lo, r.hi, r.n_a, r.n_b) == (-1.0, -1.0, -1.0, 2, 2)
    assert math.isnan(r.p) and math.isnan(r.p_against)  # no spread: no t statistic
    for a, b in (([1.0], [1.0, 2.0]), ([1.0, 2.0], [])):
        with pytest.raises(ValueError, match="^a comparison needs at least 2 finite values on each side$"):
            means(a, b, "lower", 0.5)


def test_higher_is_welchs_one_sided_test_and_its_negation_is_shifted_by_the_margin():
    """Claim a > b: scipy's Welch test with alternative 'greater'; its negation within the margin (a - b < m): the same
    test of a - m against b with alternative 'less'."""
    from scipy import stats

    from analysis.compare import means

    a, b, m = [1.2, 2.9, 2.1, 3.3], [0.4, 1.1, 0.2], 0.5
    r = means(a, b, "higher", m)
    shifted = [x - m for x in a]
    assert r.p == pytest.approx(stats.ttest_ind(a, b, equal_var=False, alternative="greater").pvalue)
    assert r.p_against == pytest.approx(stats.ttest_ind(shifted, b, equal_var=False, alternative="less").pvalue)
    with pytest.raises(ValueError, match="^unknown test 'sideways'; known: lower, higher, not_lower, equivalent$"):
        means(a, b, "sideways", m)


def test_holm_over_one_test_is_that_test_and_a_missing_p_counts_as_one():
    """Holm (1979): with one p there is nothing to correct; p = alpha rejects (p <= alpha). Over 0.01, 0.03 and a NaN
    (read as 1): the step-down adjusts to 3 x 0.01 = 0.03, max(0.03, 2 x 0.03) = 0.06 and 1."""
    from analysis.compare import holm

    assert holm([], 0.05) == ([], [])
    assert holm([0.025], 0.025) == ([True], [0.025]) and holm([0.03], 0.025) == ([False], [0.03])
    assert holm([float("nan")], 0.05) == ([False], [1.0])
    reject, adjusted = holm([float("nan"), 0.01, 0.03], 0.05)
    assert reject == [False, True, False] and adjusted == pytest.approx([1.0, 0.03, 0.06])
    assert holm([float("nan"), 0.01, 0.03], 0.025)[0] == [False, False, False]  # 0.03 > 0.025: at the level asked for
