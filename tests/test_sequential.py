"""Sequential mode's design (analysis/sequential.py) with known answers: the looks, the alpha spent at each,
the design file, and which look decides a claim."""

import math
from types import SimpleNamespace

import pytest
from synthetic import SWEEP, write_measurements, write_runs

from analysis import claims, load, outcomes, sequential, smoothness, verdicts
from analysis.declared import CLAIMS
from analysis.sequential import Design
from analysis.settings import Settings
from bnsweep.records import Store


@pytest.mark.parametrize("design, looks", [
    (Design(4, 2, 10), [4, 6, 8, 10]), (Design(4, 4, 10), [4, 8, 10]), (Design(5, 5, 10), [5, 10]),
    (Design(10, 3, 10), [10]), (Design(3, 2, 4), [3, 4]),
])
def test_the_looks_step_from_the_first_to_the_last(design, looks):
    assert design.looks() == looks


def test_the_alpha_spent_follows_lan_and_demets_pocock_type_function():
    """alpha ln(1 + (e - 1) t) (Lan & DeMets 1983): at alpha 0.05 and t = 0.4, 0.6, 0.8, 1 the cumulative levels are
    0.026157, 0.035426, 0.043242, 0.05 (worked by hand); at alpha 0.025 and t = 0.5, 1: 0.015503 and 0.025."""
    inc = Design(4, 2, 10).alphas(0.05)
    assert [round(x, 6) for x in inc] == [0.026157, 0.009269, 0.007816, 0.006758]
    assert sum(inc) == pytest.approx(0.05, abs=1e-15)
    assert [round(x, 6) for x in Design(5, 5, 10).alphas(0.025)] == [0.015503, 0.009497]
    assert Design(10, 2, 10).alphas(0.025) == [pytest.approx(0.025, abs=1e-15)]  # one look spends it all


def test_the_design_file_round_trips_and_a_foreign_or_missing_one_is_no_design(tmp_path):
    store = Store(str(tmp_path / "out"))
    assert sequential.read_design(store, "s") is None
    sequential.write_design(store, "s", Design(4, 2, 10))
    assert sequential.design_file(store.root, "s") == f"{tmp_path}/out/_runs/s.sequential.json"
    assert sequential.read_design(store, "s") == Design(4, 2, 10)
    assert sequential.read_design(store, "other") is None
    store.put(sequential.design_file(store.root, "s"), b'{"first": 4, "seeds": 9}')
    assert sequential.read_design(store, "s") is None


SPEC = next(iter(CLAIMS.values()))


def verdict(name: str, n: int, role: str = "primary") -> verdicts.Verdict:
    row = SimpleNamespace(role=role, result=SimpleNamespace(n_a=n, n_b=n))
    return verdicts.Verdict(spec=None, verdict=name, reason="", rows=[row])


def scripted(monkeypatch, script: list[tuple[str, int]]):
    """verdicts.judge answering `script[k]` at look k; returns the (n, alpha) each look asked rows_at for."""
    asked, judged = [], iter(script)

    def judge(spec, rows, s, alpha):
        assert spec is SPEC and rows == ("rows", asked[-1]) and alpha == asked[-1][1] and s.alpha == 0.05
        return verdict(*next(judged))

    monkeypatch.setattr(verdicts, "judge", judge)
    rows_at = lambda n, alpha: asked.append((n, alpha)) or ("rows", (n, alpha))
    return asked, lambda: sequential.decide(SPEC, rows_at, Design(4, 2, 10), Settings(alpha=0.05))


@pytest.mark.parametrize("decided", [verdicts.SUPPORTED, verdicts.CONTRADICTED, verdicts.NOT_MEASURED])
def test_the_first_deciding_look_is_the_verdict(monkeypatch, decided):
    asked, decide = scripted(monkeypatch, [(verdicts.INCONCLUSIVE, 4), (verdicts.INCONCLUSIVE, 6), (decided, 8), ("x", 10)])
    v = decide()
    assert (v.verdict, v.look) == (decided, 2)
    alphas = Design(4, 2, 10).alphas(0.05)
    assert asked == [(4, alphas[0]), (6, alphas[1]), (8, alphas[2])]


def test_undecided_at_every_look_is_the_last_looks_verdict(monkeypatch):
    asked, decide = scripted(monkeypatch, [(verdicts.INCONCLUSIVE, n) for n in (4, 6, 8, 10)])
    v = decide()
    assert (v.verdict, v.look, len(asked)) == (verdicts.INCONCLUSIVE, 3, 4)


def test_a_look_that_got_no_new_seeds_ends_at_the_look_before(monkeypatch):
    """The claim stopped at 6 seeds: look 2 finds the same 6, so look 1's verdict stands, whatever look 2 says."""
    asked, decide = scripted(monkeypatch, [(verdicts.INCONCLUSIVE, 4), (verdicts.INCONCLUSIVE, 6), (verdicts.SUPPORTED, 6)])
    v = decide()
    assert (v.verdict, v.look, len(asked)) == (verdicts.INCONCLUSIVE, 1, 3)
    assert math.isclose(asked[-1][1], Design(4, 2, 10).alphas(0.05)[2])


def test_seeds_are_counted_on_the_primary_only(monkeypatch):
    """A verdict whose first row is a secondary (the primary absent) counts no seeds, so no later look adds any:
    the second look ends the claim at the first, however many seeds its secondaries have."""
    seeds = iter([4, 6, 8, 10])
    monkeypatch.setattr(verdicts, "judge", lambda spec, rows, s, alpha: verdict(verdicts.INCONCLUSIVE, next(seeds), "secondary"))
    v = sequential.decide(None, lambda n, alpha: [], Design(4, 2, 10), Settings())
    assert v.look == 0 and v.rows[0].result.n_a == 4
    assert sequential._n(verdict(verdicts.INCONCLUSIVE, 7)) == (7, 7)
    assert sequential._n(verdicts.Verdict(spec=None, verdict=verdicts.INCONCLUSIVE, reason="")) == ()


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """tests/synthetic.py's sweep (at most 3 seeds a group), read-only: its store and the two tables the verdicts read."""
    store = write_runs(str(tmp_path_factory.mktemp("syn") / "out"))
    write_measurements(store)
    t = load.tables(store.root, SWEEP)
    return store, outcomes.per_cell(t["cells"], t["evals"]), smoothness.per_cell(t)


@pytest.mark.slow  # over 10 s in CI
def test_one_look_at_all_the_seeds_is_the_fixed_n_rule(synthetic):
    """A design whose only look has every seed spends all of alpha there: its verdicts are claims.check's, under the
    same settings (alpha 0.3 supports two claims that 0.025 leaves inconclusive; a saturation band from 0.5 makes
    noisy_bn's accuracy comparison a ceiling, not informative)."""
    _, out, smooth = synthetic
    at = Settings(alpha=0.3, saturation=0.5)
    fixed = claims.check(out, smooth, at)
    one = sequential.verdicts_of(out, smooth, Design(50, 1, 50), at)
    assert [(v.spec.id, v.verdict, v.reason, v.look) for v in one] == [(v.spec.id, v.verdict, v.reason, 0) for v in fixed]
    assert [v.spec.id for v in one] == list(CLAIMS)
    assert [v.code for v in fixed].count(verdicts.NOT_INFORMATIVE) == 1
    assert [v.verdict for v in fixed] != [v.verdict for v in claims.check(out, smooth)]


@pytest.mark.slow  # over 10 s in CI
def test_the_report_follows_the_sweeps_design_file(synthetic, tmp_path):
    _, out, smooth = synthetic
    store = Store(str(tmp_path / "out"))  # where the design file goes (the shared sweep stays as it is)
    at = Settings(alpha=0.45)
    found, design = sequential.report_verdicts(out, smooth, store, SWEEP, at)
    assert design is None  # no design file: the fixed-n rule
    assert [(v.verdict, v.look) for v in found] == [(v.verdict, None) for v in claims.check(out, smooth, at)]
    sequential.write_design(store, SWEEP, Design(1, 1, 2))
    found, design = sequential.report_verdicts(out, smooth, store, SWEEP, at)
    assert design == Design(1, 1, 2)
    want = [(v.spec.id, v.verdict, v.look) for v in sequential.verdicts_of(out, smooth, design, at)]
    assert [(v.spec.id, v.verdict, v.look) for v in found] == want
    assert want != [(v.spec.id, v.verdict, v.look) for v in sequential.verdicts_of(out, smooth, design)]


@pytest.mark.slow  # over 10 s in CI
def test_each_look_tests_at_its_own_share_of_alpha(synthetic):
    """At alpha 0.3 the fixed-n rule supports bn_tolerates_lr and bn_widens_range; two looks spend 0.186 and 0.114 of
    it, and at those levels neither is supported at either look (bn_smoother and bn_predictive still are)."""
    _, out, smooth = synthetic
    at = Settings(alpha=0.3)
    assert [round(a, 3) for a in Design(1, 1, 2).alphas(0.3)] == [0.186, 0.114]
    fixed = {v.spec.id: v.verdict for v in claims.check(out, smooth, at)}
    assert fixed["bn_tolerates_lr"] == fixed["bn_widens_range"] == verdicts.SUPPORTED
    got = {v.spec.id: (v.verdict, v.look) for v in sequential.verdicts_of(out, smooth, Design(1, 1, 2), at)}
    assert got["bn_tolerates_lr"] == got["bn_widens_range"] == (verdicts.INCONCLUSIVE, 1)
    assert got["bn_smoother"] == got["bn_predictive"] == (verdicts.SUPPORTED, 1)
