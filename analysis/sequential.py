"""Verdicts under optional stopping: `bnsweep run SPEC --until-decided` looks at the claims after each round of seeds.

    design = Design(first=8, step=8, max_seeds=32)   # looks at 8, 16, 24, 32 seeds per group
    sequential.decide(spec, rows_at, design)          # the verdict of one claim: its first look that decides

Error control: group-sequential alpha spending. Each look k (at n_k seeds per group, fixed by the
design before any data) tests at its own level alpha_k = f(t_k) - f(t_k-1), t = n / max_seeds, with
the Lan-DeMets Pocock-type spending function f(t) = alpha ln(1 + (e - 1) t), so that
sum_k alpha_k = f(1) = alpha (Settings.alpha, per one-sided test). A claim is decided at its first
look whose primary crosses (p <= alpha_k, or p_against <= alpha_k) with no secondary contradicting
it; it is never re-decided by later seeds that other claims asked for. By Bonferroni's inequality
over looks, the chance of a wrong verdict at any look is at most alpha whatever the stopping rule
and whatever the dependence between looks; this costs power against exact group-sequential
boundaries (which need the joint law of the statistics, not available for Welch's t and score tests
under a data-dependent choice of groups), and is chosen because it stays valid for every test the
claims use. Measured: bench/verdict_calibration.py.

The design is stored beside the run file (`_runs/<sweep>.sequential.json`), so `report` applies
the same looks: a sweep extended by --until-decided is never judged by the fixed-n rule, which
would not hold its error rate after optional stopping.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import polars as pl

from analysis import claims, verdicts
from analysis.declared import CLAIMS, ClaimSpec
from analysis.settings import DEFAULT, Settings
from bnsweep.layout import runs_dir


@dataclass(frozen=True)
class Design:
    first: int  # seeds per group at look 0 (the spec's)
    step: int  # seeds each round adds to a group an undecided claim needs
    max_seeds: int  # the last look

    def looks(self) -> list[int]:
        """Seeds per group at each look: first, first + step, ..., max_seeds."""
        n = list(range(self.first, self.max_seeds, self.step)) + [self.max_seeds]
        return sorted(set(n))

    def alphas(self, alpha: float) -> list[float]:
        """Each look's level: the increments of alpha ln(1 + (e - 1) t), t = n / max_seeds; they sum to alpha."""
        f = [alpha * math.log(1 + (math.e - 1) * n / self.max_seeds) for n in self.looks()]
        return [b - a for a, b in zip([0.0, *f], f)]


def design_file(root: str, sweep: str) -> str:
    return f"{runs_dir(root)}/{sweep}.sequential.json"


def read_design(store, sweep: str) -> Design | None:
    rec = store.get_record(design_file(store.root, sweep))
    try:
        return Design(**rec) if rec else None
    except TypeError:  # a foreign file: no design rather than a crash
        return None


def write_design(store, sweep: str, design: Design) -> None:
    store.put(design_file(store.root, sweep), json.dumps(asdict(design)).encode())


def _n(v: verdicts.Verdict) -> tuple:
    """The primary's seeds at a look (what a later look must add to be a new look)."""
    r = v.rows[0].result if v.rows and v.rows[0].role == "primary" else None
    return (r.n_a, r.n_b) if r is not None else ()


def decide(spec: ClaimSpec, rows_at, design: Design, s: Settings = DEFAULT) -> verdicts.Verdict:
    """The claim's verdict at its first deciding look; undecided: at the last look its primary's groups reached.

    `rows_at(n, alpha)`: the claim's comparisons on the first n seeds of each group, tested at `alpha`."""
    last = None
    for k, (n, alpha) in enumerate(zip(design.looks(), design.alphas(s.alpha))):
        v = verdicts.judge(spec, rows_at(n, alpha), s, alpha)
        v.look = k
        if last is not None and _n(v) == _n(last):  # no seeds came for this look: the claim stopped before it
            return last
        if v.verdict in (verdicts.SUPPORTED, verdicts.CONTRADICTED, verdicts.NOT_MEASURED):
            return v
        last = v
    return last


def verdicts_of(outcomes: pl.DataFrame, smooth: pl.DataFrame, design: Design, s: Settings = DEFAULT) -> list[verdicts.Verdict]:
    data = claims.Data(outcomes, smooth, s)
    return [decide(spec, lambda n, alpha, spec=spec: claims.rows(spec, data.first(n), alpha), design, s)
            for spec in CLAIMS.values()]


def report_verdicts(outcomes: pl.DataFrame, smooth: pl.DataFrame, store, sweep: str,
                    s: Settings = DEFAULT) -> tuple[list[verdicts.Verdict], Design | None]:
    """The report's verdicts: by the sweep's sequential design if it was run --until-decided, else the fixed-n rule."""
    design = read_design(store, sweep)
    if design is None:
        return claims.check(outcomes, smooth, s), None
    return verdicts_of(outcomes, smooth, design, s), design
