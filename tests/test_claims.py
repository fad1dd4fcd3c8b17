"""Claim verdicts on tables with known answers: supported, not supported, and never a verdict from too few seeds."""

import pytest

from analysis import claims, load, summaries
from analysis.claims import NOT_MEASURED, NOT_SUPPORTED, SUPPORTED
from synthetic import SWEEP, write_measurements, write_runs


def check(out, **kw):
    tables = load.tables(out, SWEEP)
    rob = summaries.lr_robustness(tables["cells"], tables["evals"])
    found = claims.check(rob, summaries.robust_range(rob), summaries.smoothness(tables), **kw)
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
        "bn_tolerates_lr": NOT_SUPPORTED,  # vgg lr 10: none diverges in 2/2 seeds, batch in 1/2
        "bn_widens_range": SUPPORTED,  # vgg: 2 vs 1 decades; dln: 1 vs 0
        "noisy_bn": SUPPORTED,  # 0.98 vs 0.98, both above none's 0.9325 with disjoint CIs
        "ics_not_reduced": SUPPORTED,  # batch's ICS l2 is higher
        "bn_smoother": SUPPORTED,  # beta_eff 2.75 vs 27.5, loss band 4 vs 100
        "bn_predictive": SUPPORTED,  # early gradient change [0.3, 2.3] vs [3, 23]
        "lp_like_bn": NOT_MEASURED,  # l1 has one seed
    }


def test_evidence_gives_numbers_and_seed_counts(found):
    ev = " | ".join(found["bn_tolerates_lr"].evidence)
    assert "vgg lr=10: none diverged in 2/2 seeds, batch in 1/2" in ev and "dln lr=1e-05: none diverged in 2/2 seeds, batch in 0/2" in ev
    assert any("+1.00 decades" in e and "2.00 decades" in e for e in found["bn_widens_range"].evidence)
    assert "noisy_batch 0.980 [0.975, 0.985] (n=2), batch 0.980 [0.970, 0.990] (n=2), none 0.933 [0.930, 0.935] (n=2)" in found["noisy_bn"].evidence[0]
    assert "beta_eff (overall): batch 2.75 [2.50, 3.00] (n=3), none 27.5 [25.0, 30.0] (n=3)" in found["bn_smoother"].evidence[0]


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
    assert c["bn_widens_range"].verdict == SUPPORTED
