"""Claim verdicts on tables with known answers: supported, contradicted, inconclusive, never one from too few seeds."""

import numpy as np
import polars as pl
import pytest
from synthetic import SWEEP, write_measurements, write_runs

from analysis import claims, load, ranges, smoothness, summaries
from analysis.claims import CONTRADICTED, INCONCLUSIVE, NOT_MEASURED, SUPPORTED


def check(out, **kw):
    tables = load.tables(out, SWEEP)
    res = summaries.cell_results(tables["cells"], tables["evals"])
    rob = summaries.lr_robustness(tables["cells"], tables["evals"])
    found = claims.check(res, rob, summaries.robust_range(rob), smoothness.per_cell(tables), **kw)
    assert [c.id for c in found] == list(claims.CLAIMS)
    return {c.id: c for c in found}


@pytest.fixture(scope="module")
def found(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn") / "out"
    write_measurements(write_runs(str(out)))
    return check(str(out))


def test_verdicts(found):
    verdicts = {k: c.verdict for k, c in found.items()}
    assert verdicts == {
        "bn_tolerates_lr": INCONCLUSIVE,  # dln: none 2/2 vs batch 0/2 (supported); vgg lr 10: 2/2 vs 1/2 (inconclusive)
        "bn_widens_range": INCONCLUSIVE,  # dln +1 [0, +1] decades, vgg +1 [-2, +2]: lrs 2 seeds cannot place
        "noisy_bn": INCONCLUSIVE,  # two seeds each: 0.98 vs 0.98 is not yet "equal within 0.02"
        "ics_not_reduced": SUPPORTED,  # batch's ICS l2 is higher: ratio 3.3, interval above 1/2
        "bn_smoother": SUPPORTED,  # upper beta_eff and loss band 10x and 25x lower, every seed
        "bn_predictive": INCONCLUSIVE,  # early gradient change 0.3..2.3 vs 3..23: 10x lower, too spread for 3 seeds
        "lp_like_bn": NOT_MEASURED,  # l1 has one seed
    }
    assert "seeds per side would likely settle it" in found["bn_predictive"].note


def test_evidence_gives_numbers_and_seed_counts(found):
    ev = " | ".join(found["bn_tolerates_lr"].evidence)
    assert "vgg lr=10: none diverged in 2/2 seeds, batch in 1/2" in ev
    assert "dln lr=1e-05: none diverged in 2/2 seeds, batch in 0/2" in ev
    dln = found["bn_widens_range"].evidence[0]
    # batch at 1e-6 (90, 100) vs its best 1e-5 (50, 60): 2 seeds cannot place it; so the width is 0 or 1 decade
    assert "+1.00 [+0.00, +1.00] decades for batch" in dln and "batch 1e-06 unsure, 1e-05 best, 0.0001 out" in dln
    assert "noisy_batch 0.980 (n=2), batch 0.980 (n=2), none 0.933 (n=2)" in found["noisy_bn"].evidence[0]
    beta = found["bn_smoother"].evidence[0]
    # per seed s, beta_eff at the probes is (4 + s, 2, 2, 2) x (1 batch, 10 none): its 0.9 quantile 2 + 0.7 (2 + s)
    geo = 10 ** np.mean(np.log10([2 + 0.7 * (2 + s) for s in range(3)]))
    assert f"batch {geo:.3g} (n=3), none {10 * geo:.3g} (n=3); batch/none ratio x0.100" in beta
    assert "share of probed steps above 2/lr = 4.00: batch 0.167, none 1.00" in beta  # 0, 1/4, 1/4 (5 > 4, 6 > 4)


def test_too_few_seeds_is_not_a_verdict(found):
    c = found["lp_like_bn"]
    assert not c.evidence and ">= 2 finished seeds" in c.missing


def test_a_stricter_seed_minimum_withholds_every_verdict(tmp_path):
    from analysis.settings import Settings

    write_measurements(write_runs(str(tmp_path)))
    strict = check(str(tmp_path), settings=Settings(min_seeds=4))
    assert {c.verdict for c in strict.values()} == {NOT_MEASURED}
    assert all(">= 4 finished seeds" in c.missing for c in strict.values())


def test_absent_measurements_are_not_measured(tmp_path):
    write_runs(str(tmp_path))
    c = check(str(tmp_path))
    for k in ("ics_not_reduced", "bn_smoother", "bn_predictive"):
        assert c[k].verdict == NOT_MEASURED and c[k].missing, k


def smooth_cells(batch: list[float], none: list[float], quantity: str = "beta_eff",
                 statistic: str = "upper") -> pl.DataFrame:
    """A smoothness.per_cell frame: one value per seed for batch and none (vgg, lr 0.5, overall)."""
    rows = [{"arch": "vgg", "norm": n, "lr": 0.5, "setting": "", "seed": s, "cell_id": f"{n}{s}", "quantity": q,
             "layer": None, "window": "overall", "statistic": statistic, "value": v}
            for n, vals in (("batch", batch), ("none", none)) for s, v in enumerate(vals)
            for q in (quantity, "loss_band")]
    return pl.DataFrame(rows, schema=smoothness.PER_CELL_SCHEMA)


def verdict(batch, none) -> claims.Claim:
    empty = pl.DataFrame(schema={"arch": pl.String, "norm": pl.String, "lr": pl.Float64, "setting": pl.String,
                                 "seeds": pl.Int64, "value_n": pl.Int64})
    return claims.bn_smoother(claims.Data(pl.DataFrame(), empty, empty, smooth_cells(batch, none)))


def test_three_outcomes_from_the_interval_of_the_difference():
    c = verdict([2.0, 2.2, 2.1], [40.0, 44.0, 38.0])  # 20x lower, tight
    assert c.verdict == SUPPORTED and "ratio x0.05" in c.evidence[0]
    c = verdict([40.0, 44.0, 38.0], [2.0, 2.2, 2.1])  # the opposite
    assert c.verdict == CONTRADICTED and "the opposite holds" in c.evidence[0]
    c = verdict([2.0, 2.05, 1.95, 2.0, 2.02, 1.98], [2.1, 2.0, 2.05, 1.97, 2.03, 2.0])  # equal within a factor 2
    assert c.verdict == CONTRADICTED and "equal within +-0.301" in c.evidence[0]
    c = verdict([2.0, 20.0, 3.0], [30.0, 4.0, 50.0])  # lower on average, but the seeds overlap
    assert c.verdict == INCONCLUSIVE and "seeds per side would likely settle it" in c.note
    # overlapping per-group CIs do not make a verdict; the difference does: 3 vs 3 from disjoint ranges, 2x apart
    c = verdict([1.0, 1.1, 1.2], [2.0, 2.2, 2.4])
    assert c.verdict == SUPPORTED


def results(norm: str, values: dict[float, list[float | None]]) -> list[dict]:
    """cell_results rows (classification): None = a diverged seed."""
    return [{"arch": "vgg", "norm": norm, "lr": lr, "setting": "", "seed": i, "classification": True,
             "status": "diverged" if v is None else "done", "value": v}
            for lr, vs in values.items() for i, v in enumerate(vs)]


BEST = [0.99, 0.99, 0.98]


@pytest.mark.parametrize("none, verdict", [  # batch: 2 decades for sure
    ({0.01: [0.90, 0.91, 0.90], 0.1: BEST, 1.0: [None, None, None]}, SUPPORTED),  # none: 0 decades
    ({0.01: [0.985, 0.985, 0.99], 0.1: BEST, 1.0: [0.985, 0.99, 0.985]}, CONTRADICTED),  # none: 2 decades
    ({0.01: [0.90, 0.99, 0.95], 0.1: BEST, 1.0: [None, None, None]}, SUPPORTED),  # none: 0.01 unsure, 1 decade at most
    ({0.01: [0.90, 0.99, 0.95], 0.1: BEST, 1.0: [0.95, 0.99, 0.90]}, INCONCLUSIVE),  # none: 0 to 2 decades
])
def test_widens_range_places_each_lr_by_the_rule(none, verdict):
    batch = {0.01: [0.98, 0.98, 0.985], 0.1: [0.99, 0.99, 0.985], 1.0: [0.985, 0.98, 0.98]}
    res = pl.DataFrame(results("batch", batch) + results("none", none))
    assert [k for k, _ in ranges.status(res.filter(norm="batch"), 0.1).values()] == ["in", "best", "in"]
    rows = [{"arch": "vgg", "norm": n, "setting": "", "best_lr": 0.1, "lr_min": 0.01, "lr_max": 1.0,
             "width_decades": 2.0, "at_edge": True, "metric": "train_accuracy"} for n in ("none", "batch")]
    rob = pl.DataFrame([{"arch": "vgg", "norm": n, "lr": lr, "setting": "", "seeds": 3, "value_n": 3}
                        for n in ("none", "batch") for lr in (0.01, 0.1, 1.0)])
    c = claims.bn_widens_range(claims.Data(res, rob, pl.DataFrame(rows), pl.DataFrame()))
    assert c.verdict == verdict, c.evidence
