"""The paper's claims (docs/protocol.md), each checked against a sweep's summaries.

    claims.check(robustness, ranges, smooth)   # -> [Claim], one per entry of CLAIMS

A verdict is `supported`, `not supported`, or `not measured in this output` with what is missing:
a comparison needs at least Settings.min_seeds finished seeds on each side, and is never made
from fewer. "Lower" / "beats" means the 95 % bootstrap CIs over seeds do not overlap; "similar"
means the means are within the tolerance (Settings.accuracy_tolerance, or a factor of
Settings.loss_factor for a loss). Ranking metric: final train accuracy, or train loss without accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from analysis.settings import DEFAULT, Settings
from analysis.stats import fmt_ci
from bnsweep.console import fmt

SUPPORTED, NOT_SUPPORTED, NOT_MEASURED = "supported", "not supported", "not measured in this output"


@dataclass
class Claim:
    id: str
    figure: str
    text: str
    verdict: str = NOT_MEASURED
    evidence: list[str] = field(default_factory=list)  # the numbers behind the verdict, each with its seeds
    missing: str = ""  # what this output lacks for a verdict


@dataclass
class Data:
    robustness: pl.DataFrame  # summaries.lr_robustness
    ranges: pl.DataFrame  # summaries.robust_range
    smooth: pl.DataFrame  # summaries.smoothness
    settings: Settings = DEFAULT

    def rob(self, arch: str, norm: str, lr: float) -> dict:
        """The robustness row of (arch, norm, lr)."""
        return self.robustness.filter(arch=arch, norm=norm, lr=lr).to_dicts()[0]

    def pairs(self, norms: tuple[str, ...], values: bool = False) -> list[tuple[str, float]]:
        """(arch, lr) where every norm in `norms` has >= min_seeds finished seeds (with a final value, if `values`)."""
        n = pl.col("value_n" if values else "seeds")
        ok = self.robustness.filter(n >= self.settings.min_seeds, pl.col("norm").is_in(norms))
        both = ok.group_by("arch", "lr").agg(pl.col("norm").n_unique().alias("k")).filter(pl.col("k") == len(norms))
        return sorted(both.select("arch", "lr").iter_rows())

    def quantity(self, arch: str, norm: str, lr: float, quantity: str, layer=None, window: str = "overall") -> dict | None:
        """A smoothness row with a CI (min_seeds seeds), else None."""
        f = self.smooth.filter(arch=arch, norm=norm, lr=lr, quantity=quantity, window=window)
        f = f.filter(pl.col("layer").is_null() if layer is None else pl.col("layer") == layer)
        rows = f.to_dicts()
        return rows[0] if rows and rows[0]["seeds"] >= self.settings.min_seeds else None


def value(row: dict) -> str:
    return fmt_ci(row["value"], row["value_lo"], row["value_hi"], row["value_n"])


def q(row: dict) -> str:
    return fmt_ci(row["median"], row["lo"], row["hi"], row["seeds"])


def below(a: dict, b: dict, est: str = "median") -> bool:
    """a's CI lies entirely below b's."""
    lo, hi = ("lo", "hi") if est == "median" else (f"{est}_lo", f"{est}_hi")
    return a[hi] is not None and b[lo] is not None and a[hi] < b[lo]


def similar(a: dict, b: dict, s: Settings) -> bool:
    """The ranking metric's means are within the tolerance of each other."""
    x, y = a["value"], b["value"]
    if x is None or y is None:
        return False
    if a["classification"]:
        return abs(x - y) <= s.accuracy_tolerance
    return max(x, y) <= s.loss_factor * min(x, y)


def beats(a: dict, b: dict) -> bool:
    """a's ranking metric is better than b's with non-overlapping CIs (higher accuracy, lower loss)."""
    if a["value"] is None or b["value"] is None:
        return False
    return below(b, a, "value") if a["classification"] else below(a, b, "value")


def need(norms: str, what: str, s: Settings) -> str:
    return f"needs {norms} at the same arch and lr, each with >= {s.min_seeds} finished seeds{what}"


def verdict(c: Claim, ok: list[bool], missing: str) -> Claim:
    """Supported if every comparison in `ok` holds; with no comparison, not measured, saying what is `missing`."""
    if ok:
        c.verdict = SUPPORTED if all(ok) else NOT_SUPPORTED
    else:
        c.missing = missing
    return c


def bn_tolerates_lr(d: Data) -> Claim:
    c = Claim("bn_tolerates_lr", "Fig. 1", "Where the unnormalised network diverges, BatchNorm does not.")
    pairs, ok = d.pairs(("none", "batch")), []
    for arch, lr in pairs:
        none, bn = d.rob(arch, "none", lr), d.rob(arch, "batch", lr)
        if none["divergence_rate"] >= 0.5:
            ok.append(bn["divergence_rate"] == 0)
            c.evidence.append(f"{arch} lr={lr:g}: none diverged in {round(none['divergence_rate'] * none['seeds'])}/{none['seeds']} seeds, "
                              f"batch in {round(bn['divergence_rate'] * bn['seeds'])}/{bn['seeds']}")
    grid = "no learning rate here makes `none` diverge in at least half its seeds: add larger learning rates"
    return verdict(c, ok, grid if pairs else need("none and batch", "", d.settings))


def bn_widens_range(d: Data) -> Claim:
    c = Claim("bn_widens_range", "Fig. 1", "BatchNorm widens the range of learning rates that train within the tolerance of the best.")
    ok = []
    for arch in sorted(set(d.ranges["arch"])):
        r = {row["norm"]: row for row in d.ranges.filter(arch=arch).to_dicts()}
        if not {"none", "batch"} <= set(r) or sum(a == arch for a, _ in d.pairs(("none", "batch"))) < 2:
            continue
        none, bn = r["none"], r["batch"]
        if min(none["min_seeds_in_range"] or 0, bn["min_seeds_in_range"] or 0) < d.settings.min_seeds:
            continue
        wider = bn["width_decades"] - none["width_decades"]
        ok.append(wider > 0)
        edge = "; batch's range reaches the edge of the grid, so it may be wider" if bn["at_edge"] else ""
        c.evidence.append(f"{arch} ({bn['metric']}): batch {bn['lr_min']:g}..{bn['lr_max']:g} = {fmt(bn['width_decades'])} decades, "
                          f"none {none['lr_min']:g}..{none['lr_max']:g} = {fmt(none['width_decades'])} decades: "
                          f"{'+' if wider >= 0 else ''}{fmt(wider)} decades for batch{edge}")
    return verdict(c, ok, need("none and batch", " at two or more learning rates", d.settings))


def noisy_bn(d: Data) -> Claim:
    c = Claim("noisy_bn", "Fig. 2", "Noisy BatchNorm trains like BatchNorm, and both beat no normalisation.")
    ok = []
    for arch, lr in d.pairs(("none", "batch", "noisy_batch"), values=True):
        none, bn, noisy = (d.rob(arch, n, lr) for n in ("none", "batch", "noisy_batch"))
        ok.append(similar(noisy, bn, d.settings) and beats(bn, none) and beats(noisy, none))
        c.evidence.append(f"{arch} lr={lr:g} {bn['metric']}: noisy_batch {value(noisy)}, batch {value(bn)}, none {value(none)}")
    return verdict(c, ok, need("none, batch and noisy_batch", " and final values (not diverged)", d.settings))


def ics_not_reduced(d: Data) -> Claim:
    c = Claim("ics_not_reduced", "Fig. 3", "BatchNorm does not reduce internal covariate shift: its ICS l2 is not lower than without it.")
    ok = []
    layers = d.smooth.filter(quantity="ics_l2", window="overall").select("arch", "lr", "layer").unique().sort("arch", "lr", "layer")
    for arch, lr, layer in layers.iter_rows():
        rows = {n: (d.quantity(arch, n, lr, "ics_l2", layer), d.quantity(arch, n, lr, "ics_cosine", layer)) for n in ("none", "batch")}
        if None in (rows["none"][0], rows["batch"][0]):
            continue
        (nl2, ncos), (bl2, bcos) = rows["none"], rows["batch"]
        ok.append(not below(bl2, nl2))
        cos = f"; cosine: batch {q(bcos)}, none {q(ncos)}" if bcos and ncos else ""
        c.evidence.append(f"{arch} lr={lr:g} layer #{layer}: ICS l2 batch {q(bl2)}, none {q(nl2)} (median over seeds){cos}")
    return verdict(c, ok, need("ics rows for none and batch", "", d.settings))


def _lower_with_bn(d: Data, c: Claim, quantities: tuple[str, ...], window: str) -> Claim:
    ok = []
    for arch, lr in d.smooth.filter(quantity=quantities[0], window=window).select("arch", "lr").unique().sort("arch", "lr").iter_rows():
        rows = {(n, x): d.quantity(arch, n, lr, x, window=window) for n in ("none", "batch") for x in quantities}
        if None in rows.values():
            continue
        ok.append(all(below(rows["batch", x], rows["none", x]) for x in quantities))
        c.evidence.extend(f"{arch} lr={lr:g} {x} ({window}): batch {q(rows['batch', x])}, none {q(rows['none', x])}" for x in quantities)
    return verdict(c, ok, need("landscape rows for none and batch", "", d.settings))


def bn_smoother(d: Data) -> Claim:
    c = Claim("bn_smoother", "Figs. 4, 10", "BatchNorm gives a lower effective beta-smoothness and a narrower loss band.")
    return _lower_with_bn(d, c, ("beta_eff", "loss_band"), "overall")


def bn_predictive(d: Data) -> Claim:
    c = Claim("bn_predictive", "Figs. 4, 10", "Early in training, BatchNorm's gradients change less along the gradient (gradient predictiveness).")
    return _lower_with_bn(d, c, ("grad_predictiveness",), "early")


def lp_like_bn(d: Data) -> Claim:
    c = Claim("lp_like_bn", "Fig. 5", "l1, l2 and l-infinity normalisation train like BatchNorm; on the DLN, l1 beats BatchNorm.")
    ok = []
    for p in ("l1", "l2", "linf"):
        for arch, lr in d.pairs(("batch", p), values=True):
            bn, lp = d.rob(arch, "batch", lr), d.rob(arch, p, lr)
            dln = not bn["classification"]
            if dln and p != "l1":
                continue  # the paper makes no claim for l2 and linf on the DLN
            ok.append(beats(lp, bn) if dln else similar(lp, bn, d.settings))
            c.evidence.append(f"{arch} lr={lr:g} {bn['metric']}: {p} {value(lp)}, batch {value(bn)}")
    return verdict(c, ok, need("batch and l1, l2 or linf", " and final values (not diverged)", d.settings))


CLAIMS = {f.__name__: f for f in (bn_tolerates_lr, bn_widens_range, noisy_bn, ics_not_reduced, bn_smoother, bn_predictive, lp_like_bn)}


def check(robustness: pl.DataFrame, ranges: pl.DataFrame, smooth: pl.DataFrame, settings: Settings = DEFAULT) -> list[Claim]:
    """Every claim of CLAIMS, with its verdict from these summaries."""
    d = Data(robustness, ranges, smooth, settings)
    return [f(d) for f in CLAIMS.values()]


def frame(claims: list[Claim]) -> pl.DataFrame:
    """The claims as a table (evidence joined with '; ')."""
    return pl.DataFrame([{"id": c.id, "figure": c.figure, "claim": c.text, "verdict": c.verdict,
                          "evidence": "; ".join(c.evidence), "missing": c.missing} for c in claims],
                        schema={k: pl.String for k in ("id", "figure", "claim", "verdict", "evidence", "missing")})
