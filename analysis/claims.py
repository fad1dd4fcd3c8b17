"""The paper's claims (docs/protocol.md), each checked against a sweep's per-seed values.

    claims.check(results, robustness, ranges, smooth_cells)   # -> [Claim], one per entry of CLAIMS

Verdicts: `supported`, `contradicted`, `inconclusive`, or `not measured in this output` with what
is missing. A comparison needs at least Settings.min_seeds (and 2) finished seeds on each side, and
pairs groups with the same arch, lr and setting (analysis/groups.py). Each comparison is decided by the
interval of a DIFFERENCE over seeds (analysis/compare.py): of the ranking metric (accuracy points,
or log10 of the final train loss), of log10 of the per-cell smoothness statistic
(analysis/quantities.py), of divergence rates (Newcombe's interval), or of robust-range widths
(bounded by placing each lr in or out of a range with the same rule: analysis/ranges.py). A
claim with several comparisons (archs, lrs, layers) is supported if every comparison is, contradicted
if one is and none is supported, and otherwise inconclusive, with the seeds per side that would
likely settle its comparisons (an estimate from the observed spread).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl

from analysis import compare, ranges
from analysis.compare import CONTRADICTED, INCONCLUSIVE, SUPPORTED, Comparison
from analysis.quantities import QUANTITIES, margin, on_log_scale
from analysis.settings import DEFAULT, Settings
from bnsweep.console import fmt
from bnsweep.layout import DONE

NOT_MEASURED = "not measured in this output"
VERDICTS = (SUPPORTED, CONTRADICTED, INCONCLUSIVE, NOT_MEASURED)


@dataclass
class Claim:
    id: str
    figure: str
    text: str
    verdict: str = NOT_MEASURED
    evidence: list[str] = field(default_factory=list)  # the numbers behind the verdict, each with its seeds
    missing: str = ""  # what this output lacks for a verdict
    note: str = ""  # for an inconclusive verdict: the seeds that would likely settle it


@dataclass
class Data:
    results: pl.DataFrame  # summaries.cell_results, collected: one row per finished cell
    robustness: pl.DataFrame  # summaries.lr_robustness
    ranges: pl.DataFrame  # summaries.robust_range
    smooth: pl.DataFrame  # smoothness.per_cell
    settings: Settings = DEFAULT

    def rob(self, arch: str, norm: str, lr: float, setting: str) -> dict:
        """The robustness row of a group."""
        return self.robustness.filter(arch=arch, norm=norm, lr=lr, setting=setting).to_dicts()[0]

    def pairs(self, norms: tuple[str, ...], values: bool = False) -> list[tuple[str, float, str]]:
        """(arch, lr, setting) where every norm in `norms` has >= min_seeds finished seeds (with a final value, if
        `values`)."""
        n = pl.col("value_n" if values else "seeds")
        ok = self.robustness.filter(n >= self.settings.min_seeds, pl.col("norm").is_in(norms))
        keys = ["arch", "lr", "setting"]
        both = ok.group_by(keys).agg(pl.col("norm").n_unique().alias("k")).filter(pl.col("k") == len(norms))
        return sorted(both.select(keys).iter_rows())

    def ranked(self, arch: str, norm: str, lr: float, setting: str) -> np.ndarray:
        """Per seed that did not diverge: the ranking metric as compared (accuracy, or log10 train loss)."""
        r = self.results.filter(arch=arch, norm=norm, lr=lr, setting=setting, status=DONE)
        v = r["value"].drop_nulls().to_numpy().astype(float)
        with np.errstate(divide="ignore", invalid="ignore"):
            v = v if r["classification"].any() else np.log10(v)
        return v[np.isfinite(v)]

    def per_seed(
        self,
        arch: str,
        norm: str,
        lr: float,
        setting: str,
        quantity: str,
        statistic: str,
        window: str = "overall",
        layer: int | None = None,
    ) -> np.ndarray | None:
        """Per seed: the cell's `statistic` of `quantity`, on its analysis scale; None below min_seeds."""
        f = self.smooth.filter(
            arch=arch, norm=norm, lr=lr, setting=setting, quantity=quantity, window=window, statistic=statistic
        )
        f = f.filter(pl.col("layer").is_null() if layer is None else pl.col("layer") == layer)
        v = f["value"].to_numpy().astype(float)
        v = np.log10(v) if on_log_scale(quantity, statistic) else v  # per_cell keeps only positive log-scale values
        v = v[np.isfinite(v)]
        return v if len(v) >= max(self.settings.min_seeds, 2) else None  # a comparison needs 2 seeds a side


def where(arch: str, lr: float, setting: str) -> str:
    return f"{arch} lr={lr:g}" + (f" [{setting}]" if setting else "")


def centre(v: np.ndarray, log: bool) -> str:
    """'2.07e+06 (n=3)': the geometric mean of log10 values, else the mean."""
    return f"{fmt(10 ** v.mean() if log else v.mean())} (n={len(v)})"


def said(c: Comparison, log: bool) -> str:
    """'ratio x0.05 [x0.01, x0.2]: supported (the interval ...)'."""
    head = "ratio " if log else "difference "
    return f"{head}{c.interval(ratio=log)}: {c.outcome} ({c.note()})"


def need(norms: str, what: str, s: Settings) -> str:
    return f"needs {norms} at the same arch, lr and setting, each with >= {s.min_seeds} finished seeds{what}"


def verdict(c: Claim, found: list[Comparison], missing: str) -> Claim:
    """Combine the comparisons: all supported -> supported; one contradicted and none supported -> contradicted."""
    if not found:
        c.missing = missing
        return c
    outcomes = {x.outcome for x in found}
    c.verdict = (
        SUPPORTED
        if outcomes == {SUPPORTED}
        else CONTRADICTED
        if CONTRADICTED in outcomes and SUPPORTED not in outcomes
        else INCONCLUSIVE
    )
    if c.verdict == INCONCLUSIVE:
        needed = [x.seeds_needed for x in found if x.outcome == INCONCLUSIVE and x.seeds_needed]
        mixed = "the comparisons disagree" if {SUPPORTED, CONTRADICTED} <= outcomes else ""
        settle = f"about {max(needed)} seeds per side would likely settle it (estimate)" if needed else ""
        c.note = "; ".join(x for x in (mixed, settle) if x) or "no estimate of the seeds needed"
    return c


def bn_tolerates_lr(d: Data) -> Claim:
    c = Claim("bn_tolerates_lr", "Fig. 1", "Where the unnormalised network diverges, BatchNorm does not.")
    pairs, found = d.pairs(("none", "batch")), []
    for arch, lr, setting in pairs:
        none, bn = d.rob(arch, "none", lr, setting), d.rob(arch, "batch", lr, setting)
        kn, kb = round(none["divergence_rate"] * none["seeds"]), round(bn["divergence_rate"] * bn["seeds"])
        if kn * 2 < none["seeds"]:
            continue
        est, lo, hi = compare.rates(kn, none["seeds"], kb, bn["seeds"], d.settings)
        if lo > 0:
            outcome, why = SUPPORTED, "batch diverges less often: the interval lies above 0"
        elif hi < 0:
            outcome, why = CONTRADICTED, "batch diverges more often: the interval lies below 0"
        else:
            outcome, why = INCONCLUSIVE, "the interval of the difference includes 0"
        found.append(
            Comparison(
                outcome,
                est,
                lo,
                hi,
                none["seeds"],
                bn["seeds"],
                why,
                _rate_seeds(kn / none["seeds"], kb / bn["seeds"], d.settings),
            )
        )
        c.evidence.append(
            f"{where(arch, lr, setting)}: none diverged in {kn}/{none['seeds']} seeds, batch in {kb}/{bn['seeds']}; "
            f"difference of rates {est:+.2f} [{lo:+.2f}, {hi:+.2f}] (Newcombe): {outcome} ({why})"
        )
    grid = "no learning rate here makes `none` diverge in at least half its seeds: add larger learning rates"
    return verdict(c, found, grid if pairs else need("none and batch", "", d.settings))


def _rate_seeds(pa: float, pb: float, s: Settings) -> int | None:
    """Seeds per side at which Newcombe's interval of the difference would exclude 0, were the rates as observed."""
    if pa == pb:
        return None
    for n in range(2, compare.MAX_SEEDS + 2):
        _, lo, hi = compare.rates(round(pa * n), n, round(pb * n), n, s)
        if lo > 0 or hi < 0:
            return n
    return compare.MAX_SEEDS + 1


def bn_widens_range(d: Data) -> Claim:
    c = Claim(
        "bn_widens_range",
        "Fig. 1",
        "BatchNorm widens the range of learning rates that train within the tolerance of the best.",
    )
    found = []
    for arch, setting in sorted(d.ranges.select("arch", "setting").unique().iter_rows()):
        r = {row["norm"]: row for row in d.ranges.filter(arch=arch, setting=setting).to_dicts()}
        if (
            not {"none", "batch"} <= set(r)
            or sum(a == arch and s == setting for a, _, s in d.pairs(("none", "batch"))) < 2
        ):
            continue
        cells = d.results.filter(arch=arch, setting=setting)
        st = {n: ranges.status(cells.filter(norm=n), r[n]["best_lr"], d.settings) for n in ("none", "batch")}
        lo, hi = ranges.difference(st["batch"], st["none"])
        if lo > 0:
            outcome, why = SUPPORTED, "batch's range is wider however the unsure lrs fall"
        elif hi <= 0:
            outcome, why = CONTRADICTED, "batch's range is not wider however the unsure lrs fall"
        else:
            outcome, why = INCONCLUSIVE, "it depends on lrs that cannot yet be placed in or out of a range"
        unsure = [x for n in st for _, (kind, x) in st[n].items() if kind == ranges.UNSURE and x is not None]
        needed = [x.seeds_needed for x in unsure if x.seeds_needed]
        est = r["batch"]["width_decades"] - r["none"]["width_decades"]
        found.append(Comparison(outcome, est, lo, hi, 0, 0, why, max(needed) if needed else None))
        none, bn = r["none"], r["batch"]
        edge = "; batch's range reaches the edge of the grid, so it may be wider" if bn["at_edge"] else ""
        c.evidence.append(
            f"{arch}{f' [{setting}]' if setting else ''} ({bn['metric']}): batch {bn['lr_min']:g}..{bn['lr_max']:g} = "
            f"{fmt(bn['width_decades'])} decades, none {none['lr_min']:g}..{none['lr_max']:g} = "
            f"{fmt(none['width_decades'])} decades: {est:+.2f} [{lo:+.2f}, {hi:+.2f}] decades for batch; each lr "
            f"against the norm's best (not lower by more than the tolerance): batch {ranges.text(st['batch'])}; "
            f"none {ranges.text(st['none'])}: {outcome} ({why}){edge}"
        )
    return verdict(c, found, need("none and batch", " at two or more learning rates", d.settings))


def _metric(d: Data, arch: str, lr: float, setting: str, norm: str) -> tuple[np.ndarray, bool, str]:
    row = d.rob(arch, norm, lr, setting)
    return d.ranked(arch, norm, lr, setting), not row["classification"], row["metric"]


def noisy_bn(d: Data) -> Claim:
    c = Claim("noisy_bn", "Fig. 2", "Noisy BatchNorm trains like BatchNorm, and both beat no normalisation.")
    found = []
    for arch, lr, setting in d.pairs(("none", "batch", "noisy_batch"), values=True):
        (none, log, metric), (bn, _, _), (noisy, _, _) = (
            _metric(d, arch, lr, setting, n) for n in ("none", "batch", "noisy_batch")
        )
        if min(len(none), len(bn), len(noisy)) < 2:
            continue  # a final loss that is not a positive number (min_seeds 1, or a loss of 0)
        m = margin(log, d.settings)
        beats = compare.lower if log else compare.higher  # lower log10 loss, higher accuracy
        parts = [
            ("noisy_batch vs batch", compare.similar(noisy, bn, m, d.settings)),
            ("batch beats none", beats(bn, none, m, d.settings)),
            ("noisy_batch beats none", beats(noisy, none, m, d.settings)),
        ]
        found += [x for _, x in parts]
        c.evidence.append(
            f"{where(arch, lr, setting)} {metric}: noisy_batch {centre(noisy, log)}, batch {centre(bn, log)}, "
            f"none {centre(none, log)}; " + "; ".join(f"{name}: {said(x, log)}" for name, x in parts)
        )
    return verdict(c, found, need("none, batch and noisy_batch", " and final values (not diverged)", d.settings))


def ics_not_reduced(d: Data) -> Claim:
    c = Claim(
        "ics_not_reduced",
        "Fig. 3",
        "BatchNorm does not reduce internal covariate shift: its ICS l2 is not lower than without it.",
    )
    found = []
    stat = QUANTITIES["ics_l2"].claim_statistic
    layers = (
        d.smooth.filter(quantity="ics_l2", window="overall", statistic=stat)
        .select("arch", "lr", "setting", "layer")
        .unique()
        .sort("arch", "lr", "setting", "layer")
    )
    for arch, lr, setting, layer in layers.iter_rows():
        bn, none = (d.per_seed(arch, n, lr, setting, "ics_l2", stat, layer=layer) for n in ("batch", "none"))
        if bn is None or none is None:
            continue
        x = compare.not_lower(bn, none, margin(True, d.settings), d.settings)
        found.append(x)
        c.evidence.append(
            f"{where(arch, lr, setting)} layer #{layer}: ICS l2 ({stat} over probed steps, geometric mean over "
            f"seeds) batch {centre(bn, True)}, none {centre(none, True)}; batch/none {said(x, True)}"
        )
    return verdict(c, found, need("ics rows for none and batch", "", d.settings))


def _lower_with_bn(d: Data, c: Claim, quantities: tuple[str, ...], window: str) -> Claim:
    found = []
    first = quantities[0]
    keys = (
        d.smooth.filter(quantity=first, window=window)
        .select("arch", "lr", "setting")
        .unique()
        .sort("arch", "lr", "setting")
    )
    for arch, lr, setting in keys.iter_rows():
        got = {
            (n, q): d.per_seed(arch, n, lr, setting, q, QUANTITIES[q].claim_statistic, window)
            for n in ("none", "batch")
            for q in quantities
        }
        if any(v is None for v in got.values()):
            continue
        for q in quantities:
            stat = QUANTITIES[q].claim_statistic
            x = compare.lower(got["batch", q], got["none", q], margin(True, d.settings), d.settings)
            found.append(x)
            eos = ""
            if QUANTITIES[q].eos:
                shares = {n: d.per_seed(arch, n, lr, setting, q, "above_eos", window) for n in ("batch", "none")}
                eos = (
                    "; share of probed steps above 2/lr = "
                    + fmt(2 / lr)
                    + ": "
                    + ", ".join(f"{n} {fmt(float(v.mean()))}" for n, v in shares.items() if v is not None)
                )
                med = {n: d.per_seed(arch, n, lr, setting, q, "median", window) for n in ("batch", "none")}
                eos += "; median over probed steps: " + ", ".join(
                    f"{n} {centre(v, True)}" for n, v in med.items() if v is not None
                )
            c.evidence.append(
                f"{where(arch, lr, setting)} {q} ({window}, {stat} over probed steps, geometric mean over seeds): "
                f"batch {centre(got['batch', q], True)}, none {centre(got['none', q], True)}; "
                f"batch/none {said(x, True)}{eos}"
            )
    return verdict(c, found, need("landscape rows for none and batch", "", d.settings))


def bn_smoother(d: Data) -> Claim:
    c = Claim(
        "bn_smoother", "Figs. 4, 10", "BatchNorm gives a lower effective beta-smoothness and a narrower loss band."
    )
    return _lower_with_bn(d, c, ("beta_eff", "loss_band"), "overall")


def bn_predictive(d: Data) -> Claim:
    c = Claim(
        "bn_predictive",
        "Figs. 4, 10",
        "Early in training, BatchNorm's gradients change less along the gradient (gradient predictiveness).",
    )
    return _lower_with_bn(d, c, ("grad_predictiveness",), "early")


def lp_like_bn(d: Data) -> Claim:
    c = Claim(
        "lp_like_bn",
        "Fig. 5",
        "l1, l2 and l-infinity normalisation train like BatchNorm; on the DLN, l1 beats BatchNorm.",
    )
    found = []
    for p in ("l1", "l2", "linf"):
        for arch, lr, setting in d.pairs(("batch", p), values=True):
            (bn, log, metric), (lp, _, _) = (_metric(d, arch, lr, setting, n) for n in ("batch", p))
            if (log and p != "l1") or min(len(bn), len(lp)) < 2:
                continue  # the paper makes no claim for l2 and linf on the DLN; a comparison needs 2 seeds a side
            m = margin(log, d.settings)
            x = compare.lower(lp, bn, m, d.settings) if log else compare.similar(lp, bn, m, d.settings)
            found.append(x)
            what = f"{p} beats batch" if log else f"{p} vs batch"
            c.evidence.append(
                f"{where(arch, lr, setting)} {metric}: {p} {centre(lp, log)}, batch {centre(bn, log)}; "
                f"{what}: {said(x, log)}"
            )
    return verdict(c, found, need("batch and l1, l2 or linf", " and final values (not diverged)", d.settings))


CLAIMS = {
    f.__name__: f
    for f in (bn_tolerates_lr, bn_widens_range, noisy_bn, ics_not_reduced, bn_smoother, bn_predictive, lp_like_bn)
}


def check(
    results: pl.DataFrame | pl.LazyFrame,
    robustness: pl.DataFrame,
    ranges: pl.DataFrame,
    smooth: pl.DataFrame,
    settings: Settings = DEFAULT,
) -> list[Claim]:
    """Every claim of CLAIMS, with its verdict from the per-cell results and smoothness and the summaries."""
    results = results.collect() if isinstance(results, pl.LazyFrame) else results
    d = Data(results, robustness, ranges, smooth, settings)
    return [f(d) for f in CLAIMS.values()]


def frame(claims: list[Claim]) -> pl.DataFrame:
    """The claims as a table (evidence joined with '; ')."""
    cols = ("id", "figure", "claim", "verdict", "evidence", "missing", "note")
    return pl.DataFrame(
        [
            {
                "id": c.id,
                "figure": c.figure,
                "claim": c.text,
                "verdict": c.verdict,
                "evidence": "; ".join(c.evidence),
                "missing": c.missing,
                "note": c.note,
            }
            for c in claims
        ],
        schema={k: pl.String for k in cols},
    )
