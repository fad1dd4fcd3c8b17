"""Is a learning rate inside a norm's robust range? Decided per lr by the verdict rule, for `bn_widens_range`.

The robust range (summaries.robust_range) holds the lrs where no seed diverged whose mean ranking
metric is within the tolerance of the best lr's. Its width is a point estimate; whether BatchNorm's
range is wider is decided lr by lr, on the ranked scale (accuracy, or -log10 of the final loss):

    best        the norm's best lr (the reference)
    out         a seed diverged, or compare.not_lower(values, best's, tolerance) is contradicted
    in          compare.not_lower(values, best's, tolerance) is supported
    unsure      otherwise (with its Comparison, which estimates the seeds that would settle it)

The width then lies between that of the `best` and `in` lrs and that of the `best`, `in` and
`unsure` lrs, so the difference of two widths has an interval [narrowest a - widest b, widest a -
narrowest b], each end decided by the same rule as every other verdict.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from analysis import compare
from analysis.compare import CONTRADICTED, SUPPORTED, Comparison
from analysis.quantities import margin
from analysis.settings import DEFAULT, Settings
from bnsweep.layout import DIVERGED, DONE

BEST, IN, OUT, UNSURE = "best", "in", "out", "unsure"


def _ranked(results: pl.DataFrame) -> dict[float, tuple[bool, np.ndarray]]:
    """Per lr: (a seed diverged, the ranked values of the seeds that did not)."""
    classification = bool(results["classification"].any())
    out = {}
    for (lr,), g in results.sort("lr").group_by("lr", maintain_order=True):
        v = g.filter(status=DONE)["value"].drop_nulls().to_numpy().astype(float)
        out[lr] = ((g["status"] == DIVERGED).any(), v if classification else -np.log10(v))
    return out


def status(
    results: pl.DataFrame, best_lr: float | None, s: Settings = DEFAULT
) -> dict[float, tuple[str, Comparison | None]]:
    """Per lr of one (arch, norm, setting)'s cell_results: best, in, out or unsure, and the comparison behind it."""
    values = _ranked(results)
    tol = margin(not bool(results["classification"].any()), s)
    found: dict[float, tuple[str, Comparison | None]] = {}
    for lr, (diverged, v) in values.items():
        if lr == best_lr:
            found[lr] = (BEST, None)
        elif diverged:
            found[lr] = (OUT, None)
        elif best_lr is None or min(len(v), len(values[best_lr][1])) < max(s.min_seeds, 2):
            found[lr] = (UNSURE, None)
        else:
            c = compare.not_lower(v, values[best_lr][1], tol, s)
            found[lr] = ({SUPPORTED: IN, CONTRADICTED: OUT}.get(c.outcome, UNSURE), c)
    return found


def width(found: dict[float, tuple[str, Comparison | None]], unsure: bool) -> float:
    """log10(max / min) of the lrs in the range (the unsure ones too, if `unsure`); 0 for one lr, NaN for none."""
    keep = {BEST, IN, UNSURE} if unsure else {BEST, IN}
    lrs = [lr for lr, (st, _) in found.items() if st in keep]
    return float(np.log10(max(lrs) / min(lrs))) if lrs else float("nan")


def difference(a: dict, b: dict) -> tuple[float, float]:
    """(lo, hi) of width(a) - width(b) in decades, over every placement of the unsure lrs."""
    return width(a, False) - width(b, True), width(a, True) - width(b, False)


def text(found: dict[float, tuple[str, Comparison | None]]) -> str:
    """'0.05 best, 0.2 in, 1 out'."""
    return ", ".join(f"{lr:g} {st}" for lr, (st, _) in found.items())
