"""How each measured quantity is summarised, drawn and compared: the statistics of the report, stated once.

Heavy-tailed quantities (beta_eff, gradient predictiveness, loss band, ICS l2, lambda_max) span
decades within one cell: a mean over probed steps is a few spikes, and a mean over seeds is one
seed. So each is summarised per cell by robust statistics over its probed steps, in two windows
(`early`: the first Settings.early_fraction of the cell's steps; `overall`):

    median      the median over probed steps (the typical value)
    upper       the Settings.upper_quantile (0.9) quantile over probed steps (how far the spikes go)
    above_eos   beta_eff and lambda_max only: the share of probed steps above 2/lr (of those with a finite
                value: a non-positive sharpness counts, as below 2/lr)
    probes      the probed steps in the window; left_out: those not in median and upper (a value that is not
                finite, such as an unconverged curvature probe, or not positive for a log-scale quantity),
                summed over seeds in the smoothness table, never dropped unseen

With at least 11 probed steps a single spike cannot move the upper statistic beyond the next-highest
probed value (the 0.9 quantile interpolates between order statistics below the largest).

and compared on a log10 scale: over seeds, the geometric mean (mean of log10) of the per-cell
statistic with its bootstrap CI; between groups, the difference of those log10 means with its own
interval (analysis/compare.py), shown as a ratio. Bounded quantities (ICS cosine, shares, accuracy,
divergence rate) stay on a linear scale (mean over seeds). Final losses are compared in log10.

Edge of stability: full-batch gradient descent with step size lr raises its sharpness to 2/lr and
hovers there (Cohen et al., ICLR 2021). A median beta_eff near 2/lr says "at the edge of
stability", not "smooth"; the variants differ early and in how far and how often they exceed it.
Every beta_eff and lambda_max figure draws 2/lr as a rule per lr, on a log axis.

Which statistic a claim uses is fixed here, not per result: smoothness claims (beta_eff and loss
band: Figs. 4, 10; gradient predictiveness early: Fig. 4) compare the `upper` statistic, because
beta-smoothness is a Lipschitz constant, a supremum, of which an upper quantile is the robust
estimate; the ICS claim (Fig. 3) compares the `median`, the typical shift. The equality margin of a
log-scale comparison is a factor of Settings.factor_tolerance (2x); of accuracy, Settings.accuracy_tolerance.
Figures draw log-scale quantities as the geometric mean over seeds with the min-max band.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from analysis.settings import Settings


@dataclass(frozen=True)
class Quantity:
    table: str  # the measurement table it comes from
    log: bool  # compared and averaged on a log10 scale
    eos: bool = False  # a sharpness: compared with 2/lr


QUANTITIES: dict[str, Quantity] = {
    "beta_eff": Quantity("landscape", log=True, eos=True),
    "grad_predictiveness": Quantity("landscape", log=True),
    "loss_band": Quantity("landscape", log=True),
    "ics_l2": Quantity("ics", log=True),
    "ics_cosine": Quantity("ics", log=False),
    "lambda_max": Quantity("curvature", log=True, eos=True),
}
SHARE = "above_eos"
PROBES, LEFT_OUT = "probes", "left_out"  # probed steps, and those not in median and upper (not finite; not positive on a log scale)
COUNTS = (PROBES, LEFT_OUT)
LOG_QUANTITIES = tuple(q for q, v in QUANTITIES.items() if v.log)
EOS_QUANTITIES = tuple(q for q, v in QUANTITIES.items() if v.eos)


def margin(log: bool, s: Settings) -> float:
    """The difference that matters on the analysis scale: log10 of the factor, or accuracy points."""
    return math.log10(s.factor_tolerance) if log else s.accuracy_tolerance


def edge_of_stability(lr):
    """2/lr: where full-batch gradient descent's sharpness settles (a float or a Polars expression)."""
    return 2.0 / lr
