"""The paper's claims, declared before any data is read: what each compares, how, and where it is primary.

    CLAIMS["bn_smoother"].primary    # Declared(arch="vgg", a="batch", b="none", metric="beta_eff", ...)

Each claim names one **primary** comparison, whose outcome is the claim's verdict, and its
**secondary** comparisons, which can only withhold that verdict when they significantly contradict
it after Holm's correction (analysis/verdicts.py). Why each choice is what it is: docs/verdicts.md.

A comparison is (arch family, norm a tested against norm b, metric, window, layer, test, which lrs):

    arch    "vgg" (vgg, vgg_mini) or "dln"
    lrs     "standard"     the arch's standard lr (STANDARD_LR; the nearest lr present, on a log scale)
            "b_diverges"   every lr where b diverged in more than half its seeds (primary: the smallest)
            "b_fails"      every lr where b diverged or is dead in more than half its seeds (primary: the smallest)
            "all"          every lr present
    layer   "first" (the lowest layer measured) or "all" (each measured layer), for per-layer quantities

Metrics (METRICS) say their scale, their equality margin and their saturation band. Conditions
that make a comparison non-informative (dead side, diverged side, ceiling) apply to every claim
except the two whose metric is itself divergence or training (`about_training`): there a dead or
diverged side is the measurement, not a defect of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from analysis.settings import Settings

# The lr each claim's primary comparison is read at: the paper's lr for VGG-16 on CIFAR-10 (0.1) and the DLN
# (1e-6) [P]; for vgg_mini on the digits, 0.2, the lr at which sweeps/claims_cpu.yaml runs the paper's lr-0.1
# experiments (noisy BatchNorm and l_p, Figs. 2 and 5), fixed in that file before these rules existed.
STANDARD_LR = {"vgg": 0.1, "vgg_mini": 0.2, "dln": 1e-6}
FAMILIES = {"vgg": ("vgg", "vgg_mini"), "dln": ("dln",)}


@dataclass(frozen=True)
class Metric:
    source: str  # "outcomes" (analysis/outcomes.py column), "smooth" (smoothness.per_cell), "rate" (a 0/1 column)
    column: str  # outcomes column, or the smoothness quantity
    statistic: str = ""  # smoothness: the per-cell statistic (analysis/quantities.py)
    log: bool = False  # per-seed values compared in log10 (the effect shown as a ratio)
    margin: str = "factor"  # "factor" (log10 Settings.factor_tolerance), "accuracy" (Settings.accuracy_tolerance), "rate"
    saturates: bool = False  # has a ceiling: Settings.saturation (accuracy), where the metric cannot separate two groups

    def margin_of(self, s: Settings) -> float:
        return {"factor": math.log10(s.factor_tolerance), "accuracy": s.accuracy_tolerance, "rate": s.rate_margin}[self.margin]


METRICS: dict[str, Metric] = {
    "divergence": Metric("rate", "diverged", margin="rate"),
    "training": Metric("rate", "trained", margin="rate"),
    "auc_accuracy": Metric("outcomes", "auc_accuracy", margin="accuracy", saturates=True),
    "final_accuracy": Metric("outcomes", "final_accuracy", margin="accuracy", saturates=True),
    "final_loss": Metric("outcomes", "log_final_loss", log=True),
    "beta_eff": Metric("smooth", "beta_eff", "upper", log=True),
    "loss_band": Metric("smooth", "loss_band", "upper", log=True),
    "grad_predictiveness": Metric("smooth", "grad_predictiveness", "upper", log=True),
    "ics_l2": Metric("smooth", "ics_l2", "median", log=True),
}


@dataclass(frozen=True)
class Declared:
    arch: str
    a: str
    b: str
    metric: str
    test: str  # compare.TESTS
    lrs: str = "standard"
    window: str = "overall"  # smoothness window: "overall" or "early" (the first Settings.early_fraction of steps)
    layer: str | None = None  # "first" or "all" for per-layer quantities

    def text(self) -> str:
        w = f" ({self.window})" if METRICS[self.metric].source == "smooth" else ""
        return f"{self.arch}: {self.a} vs {self.b}, {self.metric}{w}, {self.test}"


@dataclass(frozen=True)
class ClaimSpec:
    id: str
    figure: str
    text: str
    primary: Declared
    secondary: tuple[Declared, ...] = ()
    about_training: bool = False  # its metric is divergence or training: the dead and diverged conditions are its data


def _both(metric: str, test: str, window: str = "overall", layer: str | None = None, a: str = "batch",
          b: str = "none") -> tuple[Declared, tuple[Declared, ...]]:
    """Primary on the VGG at its standard lr; secondary at every lr of the VGG and the DLN."""
    return (Declared("vgg", a, b, metric, test, "standard", window, layer),
            (Declared("vgg", a, b, metric, test, "all", window, layer), Declared("dln", a, b, metric, test, "all", window, layer)))


_smooth_p, _smooth_s = _both("beta_eff", "lower")
_pred_p, _pred_s = _both("grad_predictiveness", "lower", "early")
CLAIMS: dict[str, ClaimSpec] = {c.id: c for c in (
    ClaimSpec(
        "bn_tolerates_lr", "Fig. 1", "Where the unnormalised network diverges, BatchNorm does not.",
        Declared("vgg", "batch", "none", "divergence", "lower", "b_diverges"),
        (Declared("vgg", "batch", "none", "divergence", "lower", "b_diverges"),
         Declared("dln", "batch", "none", "divergence", "lower", "b_diverges")),
        about_training=True,
    ),
    ClaimSpec(
        "bn_widens_range", "Fig. 1",
        "BatchNorm trains at learning rates where the unnormalised network does not (it widens the range that trains).",
        Declared("vgg", "batch", "none", "training", "higher", "b_fails"),
        (Declared("vgg", "batch", "none", "training", "higher", "b_fails"),
         Declared("dln", "batch", "none", "training", "higher", "b_fails")),
        about_training=True,
    ),
    ClaimSpec(
        "noisy_bn", "Fig. 2", "Noisy BatchNorm trains like BatchNorm, and both beat no normalisation.",
        Declared("vgg", "noisy_batch", "batch", "auc_accuracy", "equivalent"),
        (Declared("vgg", "batch", "none", "auc_accuracy", "higher"),
         Declared("vgg", "noisy_batch", "none", "auc_accuracy", "higher"),
         Declared("vgg", "noisy_batch", "batch", "auc_accuracy", "equivalent", "all")),
    ),
    ClaimSpec(
        "ics_not_reduced", "Fig. 3",
        "BatchNorm does not reduce internal covariate shift: its ICS l2 is not lower than without it.",
        Declared("dln", "batch", "none", "ics_l2", "not_lower", "standard", layer="first"),
        (Declared("dln", "batch", "none", "ics_l2", "not_lower", "all", layer="all"),
         Declared("vgg", "batch", "none", "ics_l2", "not_lower", "all", layer="all")),
    ),
    ClaimSpec(
        "bn_smoother", "Figs. 4, 10", "BatchNorm gives a lower effective beta-smoothness and a narrower loss band.",
        _smooth_p, (*_smooth_s, *_both("loss_band", "lower")[1]),
    ),
    ClaimSpec(
        "bn_predictive", "Figs. 4, 10",
        "Early in training, BatchNorm's gradients change less along the gradient (gradient predictiveness).",
        _pred_p, _pred_s,
    ),
    ClaimSpec(
        "lp_like_bn", "Fig. 5", "l1, l2 and l-infinity normalisation train like BatchNorm; on the DLN, l1 beats BatchNorm.",
        Declared("vgg", "l1", "batch", "auc_accuracy", "equivalent"),
        (Declared("vgg", "l2", "batch", "auc_accuracy", "equivalent"),
         Declared("vgg", "linf", "batch", "auc_accuracy", "equivalent"),
         Declared("dln", "l1", "batch", "final_loss", "lower", "all")),
    ),
)}
