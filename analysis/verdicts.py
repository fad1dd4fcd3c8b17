"""The verdict rule: a claim's verdict from its primary comparison, withheld only by significant contradiction.

    row = verdicts.comparison(claim, "primary", declared, key, a_values, b_values, conditions, settings, alpha)
    verdicts.judge(spec, rows, settings, alpha)     # -> Verdict(verdict, reason, code, rows)

Per comparison (analysis/compare.py): the effect with its 95 % interval, n per side, the claim's
one-sided p and its negation's. A comparison is **not informative**, shown with its reason and
counted towards nothing, when (analysis/declared.py names the claims these apply to):

    dead        a side did not train in more than half its seeds (final train accuracy within
                Settings.dead_band of chance, or final train loss not below its step-0 loss)
    diverged    a side diverged in more than half its seeds
    ceiling     both sides sit in the metric's saturation band (train accuracy >= Settings.saturation)
                in more than half their seeds, where the metric cannot separate them
    floor or    a rate (diverged, trained) is 0 of n on both sides, or n of n on both: the metric cannot
    ceiling     separate them (this applies to every claim, those about training and divergence too)
    too few     fewer than max(Settings.min_seeds, 2) values on a side

The claim's verdict (no other rule):

    the primary is absent                        not measured in this output (what is missing)
    the primary is not informative               inconclusive: no informative comparison (its reason)
    primary p <= alpha                           supported
    primary p_against <= alpha                   contradicted
    neither                                      inconclusive: too few seeds (seeds per side for 80 % power, an estimate)
    supported or contradicted, and an informative secondary significantly says the opposite after Holm's
    correction over the informative secondaries (statsmodels multipletests, at alpha)
                                                 inconclusive: contradicted by the named comparisons

The primary is tested alone at alpha and the secondaries, Holm-corrected among themselves, only
after it (serial gatekeeping): a claim with many comparisons keeps its power, and no secondary can
make a verdict, only withhold one, so the chance of a wrong verdict is that of the primary's test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from analysis import compare
from analysis.declared import METRICS, ClaimSpec, Declared
from analysis.settings import DEFAULT, Settings

SUPPORTED, CONTRADICTED, INCONCLUSIVE = "supported", "contradicted", "inconclusive"
NOT_MEASURED = "not measured in this output"
VERDICTS = (SUPPORTED, CONTRADICTED, INCONCLUSIVE, NOT_MEASURED)
# the fixed list of reasons for an inconclusive verdict
TOO_FEW, NOT_INFORMATIVE, CONTRADICTED_BY = "too few seeds", "no informative comparison", "contradicted by"


@dataclass(frozen=True)
class Key:
    arch: str
    lr: float
    setting: str = ""
    layer: int | None = None

    def text(self) -> str:
        return (f"{self.arch} lr={self.lr:g}" + (f" layer #{self.layer}" if self.layer is not None else "")
                + (f" [{self.setting}]" if self.setting else ""))


@dataclass(frozen=True)
class Side:
    """What the conditions need to know about one group: its seeds, and how many diverged, died, or saturate."""

    seeds: int
    diverged: int = 0
    dead: int = 0
    saturated: int = 0  # of its values, how many sit in the metric's saturation band


@dataclass(frozen=True)
class Row:
    claim: str
    role: str  # primary | secondary
    declared: Declared
    key: Key
    result: compare.Result | None  # None where it could not be computed (too few values)
    informative: bool
    reason: str  # why not informative, or the outcome's reason
    outcome: str = INCONCLUSIVE
    p_adjusted: float = math.nan  # Holm over the informative secondaries (the primary: its own p)
    p_against_adjusted: float = math.nan
    seeds_needed: int | None = None

    def name(self) -> str:
        d = self.declared
        return f"{d.a} vs {d.b} {d.metric} at {self.key.text()}"

    def effect(self) -> str:
        """'x0.53 [x0.45, x0.62]' (log-scale metrics: the ratio of geometric means) or '+0.058 [-0.01, +0.12]'."""
        r = self.result
        if r is None:
            return "-"
        if METRICS[self.declared.metric].log:
            return f"x{10 ** r.estimate:.3g} [x{10 ** r.lo:.3g}, x{10 ** r.hi:.3g}]"
        return f"{r.estimate:+.3g} [{r.lo:+.3g}, {r.hi:+.3g}]"


@dataclass
class Verdict:
    spec: ClaimSpec
    verdict: str
    reason: str  # for supported / contradicted: the primary's clause; otherwise the fixed-list reason with its numbers
    code: str = ""  # TOO_FEW, NOT_INFORMATIVE, CONTRADICTED_BY, or "" for a verdict
    rows: list[Row] = field(default_factory=list)
    look: int | None = None  # sequential mode: the look at which it was decided (0-based)


def conditions(sides: dict[str, Side], about_training: bool, saturates: bool) -> str:
    """Why a comparison is not informative ('' when it is); `sides`: norm -> Side."""
    if about_training:
        return ""
    why = [f"{n} dead in {x.dead}/{x.seeds} seeds" for n, x in sides.items() if 2 * x.dead > x.seeds]
    why += [f"{n} diverged in {x.diverged}/{x.seeds} seeds" for n, x in sides.items() if 2 * x.diverged > x.seeds]
    if saturates and all(2 * x.saturated > max(x.seeds - x.diverged, 0) for x in sides.values()):
        why.append("ceiling: both sides in the metric's saturation band in most seeds")
    return "; ".join(why)


def comparison(claim: str, role: str, d: Declared, key: Key, a, b, sides: tuple[Side, Side], about_training: bool,
               s: Settings = DEFAULT, alpha: float | None = None, estimate: bool = True) -> Row:
    """One comparison: its conditions, then its test (values a and b per seed, or (k, n) counts for a rate).

    `estimate`: for an informative inconclusive outcome, solve for the seeds that would settle it."""
    metric, alpha = METRICS[d.metric], s.alpha if alpha is None else alpha
    why = conditions({d.a: sides[0], d.b: sides[1]}, about_training, metric.saturates)
    need = max(s.min_seeds, 2)
    rate = metric.source == "rate"
    na, nb = (a[1], b[1]) if rate else (len(a), len(b))
    if min(na, nb) < need:
        return Row(claim, role, d, key, None, False, f"{TOO_FEW}: n = {na}, {nb}; a test needs {need} a side")
    m = metric.margin_of(s)
    # compare.means has no use for alpha (it gives p-values and an interval); rates needs it for its seeds estimate
    r = compare.rates(*a, *b, d.test, m, alpha, s.confidence) if rate else compare.means(a, b, d.test, m, confidence=s.confidence)
    if rate and (a[0] == b[0] == 0 or (a[0] == a[1] and b[0] == b[1])):
        level = "floor" if a[0] == 0 else "ceiling"
        why = "; ".join(filter(None, [why, f"{level}: {metric.column} in {a[0]}/{a[1]} and {b[0]}/{b[1]} seeds"]))
    if why:
        return Row(claim, role, d, key, r, False, why)
    if r.p <= alpha:
        return Row(claim, role, d, key, r, True, f"p = {r.p:.2g} <= {alpha:.2g}: the 95 % interval lies on the claim's side",
                   SUPPORTED)
    if r.p_against <= alpha:
        return Row(claim, role, d, key, r, True, f"p against = {r.p_against:.2g} <= {alpha:.2g}: its negation holds "
                   "beyond the margin", CONTRADICTED)
    n = (r.seeds_needed if rate else compare.seeds_needed(a, b, d.test, m, alpha)) if estimate else None
    why = ("neither the claim nor its negation is significant" if math.isfinite(r.p) else
           "no spread on either side: a t-test is undefined")
    return Row(claim, role, d, key, r, True, why, INCONCLUSIVE, seeds_needed=n)


def judge(spec: ClaimSpec, rows: list[Row], s: Settings = DEFAULT, alpha: float | None = None) -> Verdict:
    """The claim's verdict from its rows (the primary first, if present)."""
    alpha = s.alpha if alpha is None else alpha
    if not rows or rows[0].role != "primary":
        p = spec.primary
        return Verdict(spec, NOT_MEASURED, f"needs {p.a} and {p.b} on the {p.arch} ({p.metric}) at the lrs the claim "
                       f"names ({p.lrs}), with >= {max(s.min_seeds, 2)} finished seeds a side", rows=rows)
    primary, secondary = rows[0], rows[1:]
    informative = [i for i, r in enumerate(secondary) if r.informative and r.result is not None]
    adj_p = compare.holm([secondary[i].result.p for i in informative], alpha)[1]
    adj_a = compare.holm([secondary[i].result.p_against for i in informative], alpha)[1]
    for j, i in enumerate(informative):
        secondary[i] = replace(secondary[i], p_adjusted=adj_p[j], p_against_adjusted=adj_a[j])
    if primary.result is not None:
        primary = replace(primary, p_adjusted=primary.result.p, p_against_adjusted=primary.result.p_against)
    rows = [primary, *secondary]
    if not primary.informative:
        code = TOO_FEW if primary.reason.startswith(TOO_FEW) else NOT_INFORMATIVE
        text = primary.reason if code == TOO_FEW else f"{NOT_INFORMATIVE}: the primary ({primary.name()}): {primary.reason}"
        return Verdict(spec, INCONCLUSIVE, text, code, rows)
    if primary.outcome == INCONCLUSIVE:
        n = primary.seeds_needed
        est = (f"more than {compare.MAX_SEEDS}" if n and n > compare.MAX_SEEDS else f"about {n}") if n else None
        text = (f"{TOO_FEW}: {est} seeds per side would give 80 % power at alpha {alpha:.2g} at the observed spread and "
                f"effect (an estimate; now n = {primary.result.n_a}, {primary.result.n_b})" if est else
                f"{TOO_FEW}: n = {primary.result.n_a}, {primary.result.n_b}; no estimate (no spread, or an effect at the "
                "boundary of both tests)")
        return Verdict(spec, INCONCLUSIVE, text, TOO_FEW, rows)
    against = "p_against_adjusted" if primary.outcome == SUPPORTED else "p_adjusted"
    contra = [r for r in secondary if r.informative and getattr(r, against) <= alpha]
    if contra:
        names = "; ".join(f"{r.name()} ({r.effect()}, adjusted p {getattr(r, against):.2g})" for r in contra)
        return Verdict(spec, INCONCLUSIVE, f"{CONTRADICTED_BY}: {names}", CONTRADICTED_BY, rows)
    return Verdict(spec, primary.outcome, f"the primary ({primary.name()}): {primary.effect()}; {primary.reason}", "", rows)
