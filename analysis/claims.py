"""The paper's claims (analysis/declared.py), checked against a sweep's per-seed values.

    found = claims.check(outcomes, smooth_cells)   # -> [Verdict], one per claim of declared.CLAIMS
    claims.frame(found)                            # claims.csv: one row per comparison, with its claim's verdict

The declarations say what each claim compares; this module finds those comparisons in the tables
(which lrs, layers and settings are present), counts each side's seeds, dead and diverged seeds,
and hands the per-seed values to the verdict rule (analysis/verdicts.py). Groups pair only when
they share arch, lr and setting (analysis/groups.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import polars as pl

from analysis import verdicts
from analysis.declared import CLAIMS, FAMILIES, METRICS, STANDARD_LR, ClaimSpec, Declared
from analysis.settings import DEFAULT, Settings
from analysis.verdicts import (  # noqa: F401  (re-exported: the report and tests name verdicts through here)
    CONTRADICTED,
    INCONCLUSIVE,
    NOT_MEASURED,
    SUPPORTED,
    VERDICTS,
    Key,
    Side,
    Verdict,
)

GROUP = ["arch", "norm", "lr", "setting"]


@dataclass
class Data:
    outcomes: pl.DataFrame  # outcomes.per_cell: one row per finished cell
    smooth: pl.DataFrame  # smoothness.per_cell
    settings: Settings = DEFAULT

    def first(self, n: int) -> Data:
        """Only the n lowest seeds of each group (a look of the sequential mode)."""
        o = self.outcomes.filter(pl.col("seed").rank("ordinal").over(GROUP) <= n)
        return Data(o, self.smooth.filter(pl.col("cell_id").is_in(o["cell_id"].to_list())), self.settings)

    def group(self, arch: str, norm: str, lr: float, setting: str) -> pl.DataFrame:
        return self.outcomes.filter(arch=arch, norm=norm, lr=lr, setting=setting)

    def side(self, g: pl.DataFrame, values, saturates: bool) -> Side:
        sat = int(np.sum(np.asarray(values) >= self.settings.saturation)) if saturates else 0
        return Side(len(g), int(g["diverged"].sum()), int(g["dead"].sum()), sat)

    def smooth_values(self, d: Declared, arch: str, norm: str, lr: float, setting: str, layer: int | None) -> np.ndarray:
        m = METRICS[d.metric]
        f = self.smooth.filter(arch=arch, norm=norm, lr=lr, setting=setting, quantity=m.column, window=d.window,
                               statistic=m.statistic)
        f = f.filter(pl.col("layer").is_null() if layer is None else pl.col("layer") == layer)
        v = f["value"].to_numpy().astype(float)
        v = np.log10(v[v > 0]) if m.log else v
        return v[np.isfinite(v)]

    def values(self, d: Declared, key: Key, norm: str):
        """Per seed on the analysis scale, or (k, n) for a rate."""
        m = METRICS[d.metric]
        g = self.group(key.arch, norm, key.lr, key.setting)
        if m.source == "rate":
            return int(g[m.column].sum()), len(g)
        if m.source == "smooth":
            return self.smooth_values(d, key.arch, norm, key.lr, key.setting, key.layer)
        v = g[m.column].drop_nulls().to_numpy().astype(float)
        return v[np.isfinite(v)]


def _share(g: pl.DataFrame, col: str) -> float:
    """The share of g's seeds with `col` set; g is never empty (keys() reads its lr and setting from g's own rows)."""
    return float(g[col].sum()) / len(g)


def keys(d: Declared, data: Data) -> list[Key]:
    """Where in this output `d` can be read: (arch, lr, setting[, layer]) with both norms present, by its lr rule."""
    o = data.outcomes
    found = []
    for arch in FAMILIES[d.arch]:
        pairs = (o.filter(arch=arch, norm=d.a).select("lr", "setting").unique()
                 .join(o.filter(arch=arch, norm=d.b).select("lr", "setting").unique(), on=["lr", "setting"]))
        for setting in sorted(set(pairs["setting"])):
            lrs = [lr for lr in sorted(pairs.filter(setting=setting)["lr"]) if _layers(d, data, arch, lr, setting)]
            if not lrs:
                continue
            if d.lrs == "standard":
                target = math.log10(STANDARD_LR[arch])
                lrs = [min(lrs, key=lambda lr: (abs(math.log10(lr) - target), lr))]
            elif d.lrs in ("b_diverges", "b_fails"):
                cols = ["diverged"] if d.lrs == "b_diverges" else ["diverged", "dead"]
                lrs = [lr for lr in lrs if sum(_share(data.group(arch, d.b, lr, setting), c) for c in cols) > 0.5]
            for lr in lrs:
                found += [Key(arch, lr, setting, layer) for layer in _layers(d, data, arch, lr, setting)]
    return found


def _layers(d: Declared, data: Data, arch: str, lr: float, setting: str) -> list[int | None]:
    m = METRICS[d.metric]
    if m.source != "smooth":
        return [None]
    f = data.smooth.filter(arch=arch, lr=lr, setting=setting, quantity=m.column, window=d.window, statistic=m.statistic)
    per = [set(f.filter(norm=n)["layer"].to_list()) for n in (d.a, d.b)]
    both = sorted((per[0] & per[1]) - {None}) or ([None] if None in per[0] & per[1] else [])
    return both[:1] if d.layer == "first" else both


def rows(spec: ClaimSpec, data: Data, alpha: float | None = None, estimate: bool = True) -> list[verdicts.Row]:
    """The claim's comparisons found in `data`: the primary first (absent if it cannot be read), then the secondaries."""
    found: list[verdicts.Row] = []
    primary = keys(spec.primary, data)
    if d := (spec.primary if primary else None):
        key = primary[0]  # the smallest lr of a b_* rule; the first arch and setting present
        found.append(_row(spec, "primary", d, key, data, alpha, estimate))
    what = lambda d, key: (d.a, d.b, d.metric, d.window, key)  # the same comparison, whichever rule found it
    seen = {what(spec.primary, found[0].key)} if found else set()
    for d in spec.secondary:
        for key in keys(d, data):
            if what(d, key) in seen:
                continue
            seen.add(what(d, key))
            found.append(_row(spec, "secondary", d, key, data, alpha, estimate))
    return found


def _row(spec: ClaimSpec, role: str, d: Declared, key: Key, data: Data, alpha: float | None, estimate: bool) -> verdicts.Row:
    m = METRICS[d.metric]
    a, b = data.values(d, key, d.a), data.values(d, key, d.b)
    # a rate's (k, n) is handed to side() as well: it reads values only for a metric with a saturation band, and no rate has one
    sides = tuple(data.side(data.group(key.arch, n, key.lr, key.setting), v, m.saturates) for n, v in ((d.a, a), (d.b, b)))
    return verdicts.comparison(spec.id, role, d, key, a, b, sides, spec.about_training, data.settings, alpha, estimate)


def check(outcomes: pl.DataFrame, smooth: pl.DataFrame, settings: Settings = DEFAULT) -> list[Verdict]:
    """Every claim of declared.CLAIMS, decided by the fixed-n rule on every seed present."""
    data = Data(outcomes, smooth, settings)
    return [verdicts.judge(spec, rows(spec, data), settings) for spec in CLAIMS.values()]


COLUMNS = {
    "claim": pl.String, "figure": pl.String, "claim_verdict": pl.String, "claim_reason": pl.String, "look": pl.Int64,
    "role": pl.String, "arch": pl.String, "norm_a": pl.String, "norm_b": pl.String, "lr": pl.Float64,
    "setting": pl.String, "metric": pl.String, "window": pl.String, "layer": pl.Int64, "test": pl.String,
    "scale": pl.String, "n_a": pl.Int64, "n_b": pl.Int64, "effect": pl.Float64, "effect_lo": pl.Float64,
    "effect_hi": pl.Float64, "p_value": pl.Float64, "p_adjusted": pl.Float64, "p_against": pl.Float64,
    "p_against_adjusted": pl.Float64, "informative": pl.Boolean, "reason": pl.String, "verdict": pl.String,
    "seeds_needed": pl.Int64,
}


def _scale(d: Declared) -> str:
    m = METRICS[d.metric]
    return "log10 ratio" if m.log else "rate difference" if m.source == "rate" else "difference"


def frame(found: list[Verdict]) -> pl.DataFrame:
    """claims.csv: per comparison its numbers and outcome (`verdict`), with its claim's verdict and reason; a claim
    without comparisons has one row of its own. The effect is mean(a) - mean(b) on the metric's scale (`scale`)."""
    out = []
    for v in found:
        head = {"claim": v.spec.id, "figure": v.spec.figure, "claim_verdict": v.verdict, "claim_reason": v.reason,
                "look": v.look}
        if not v.rows:
            out.append(head)
        for r in v.rows:
            d, res = r.declared, r.result
            nums = {} if res is None else {"n_a": res.n_a, "n_b": res.n_b, "effect": res.estimate, "effect_lo": res.lo,
                                           "effect_hi": res.hi, "p_value": _num(res.p), "p_against": _num(res.p_against)}
            out.append({**head, "role": r.role, "arch": r.key.arch, "norm_a": d.a, "norm_b": d.b, "lr": r.key.lr,
                        "setting": r.key.setting, "metric": d.metric,
                        "window": d.window if METRICS[d.metric].source == "smooth" else "final",
                        "layer": r.key.layer, "test": d.test, "scale": _scale(d), **nums,
                        "p_adjusted": _num(r.p_adjusted), "p_against_adjusted": _num(r.p_against_adjusted),
                        "informative": r.informative, "reason": r.reason, "verdict": r.outcome if r.informative else "-",
                        "seeds_needed": r.seeds_needed})
    return pl.DataFrame(out, schema=COLUMNS)


def _num(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def verdict_frame(found: list[Verdict]) -> pl.DataFrame:
    """claim_verdicts.csv: one row per claim."""
    return pl.DataFrame([{"claim": v.spec.id, "figure": v.spec.figure, "text": v.spec.text, "verdict": v.verdict,
                          "reason": v.reason, "look": v.look,
                          "comparisons": len(v.rows), "informative": sum(r.informative for r in v.rows)} for v in found],
                        schema={"claim": pl.String, "figure": pl.String, "text": pl.String, "verdict": pl.String,
                                "reason": pl.String, "look": pl.Int64, "comparisons": pl.Int64, "informative": pl.Int64})
