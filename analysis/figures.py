"""The paper's figures. Altair only draws: each function encodes a frame made by analysis.curves.

    from analysis import figures, load
    chart, data = figures.build("fig1_accuracy", load.tables("runs/quickstart", "quickstart"))
    chart.save("fig1.html")

Seeds are drawn as a mean line with a min-max band; the tooltip gives the seed count per point.
`FIGURES` lists every figure with the tables it needs; `build` raises `Skipped` with a note when
they are absent or hold no matching rows.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from functools import cache, partial

import altair as alt
import polars as pl
import polars.selectors as cs

from analysis import curves
from analysis.settings import DEFAULT, Settings

W, H = 180, 130  # one panel, px
LOG = alt.Scale(type="log")
LR_LABEL = "datum.value < 1e-3 ? format(datum.value, '.0e') : format(datum.value, '~g')"
SIG_FIGS = 6  # of a drawn value: a panel is 180 px, tooltips show 4; the tables keep every digit
NORM = alt.Color("norm:N", title="norm", sort=["none", "batch", "noisy_batch", "l1", "l2", "linf"])


# While spec() builds a chart: {dataset name: rows} of the data that values() names instead of inlining
_held: ContextVar[dict[str, list[dict]] | None] = ContextVar("held_rows", default=None)


def values(df: pl.DataFrame) -> dict:
    """Inline rows for a spec; NaN and infinities become nulls (JSON has neither).

    Floats keep SIG_FIGS significant digits and rows are sorted, so the same tables give the same spec byte for
    byte (parallel group-bys sum in varying order, which moves the last bits and the row order), and its drawn
    files can be cached by content. A plain dict, not alt.InlineData: Altair would validate every row on
    construction (seconds for 10^4 rows). Inside spec() the rows are held aside and only their name goes into
    the chart (see spec()).
    """
    finite = pl.when(cs.float().is_finite()).then(cs.float().round_sig_figs(SIG_FIGS))
    clean = df.with_columns(finite.name.keep()).drop(cs.list(), cs.struct())
    rows = clean.sort(clean.columns, nulls_last=True).to_dicts()
    held = _held.get()
    if held is None:
        return {"values": rows}
    name = dataset_name(rows)
    held[name] = rows
    return {"name": name}


def dataset_name(rows: list[dict]) -> str:
    """The name Altair gives inline rows when it moves them to the spec's `datasets` (a hash of their JSON)."""
    if rows == [{}]:
        return "empty"
    return "data-" + hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()[:32]


NOMINAL = ("norm", "panel", "split", "quantity", "arch")


def tips(*fields: str) -> list[alt.Tooltip]:
    return [alt.Tooltip(f"{f}:N") if f in NOMINAL else alt.Tooltip(f"{f}:Q", format=".4~g") for f in fields]


def panels(df: pl.DataFrame) -> list[str]:
    """Panel labels in (arch, lr, layer) order, for the facet sort."""
    keys = [k for k in ("arch", "lr", "layer") if k in df.columns]
    return df.sort(keys)["panel"].unique(maintain_order=True).to_list()


def column(df: pl.DataFrame) -> alt.Column:
    return alt.Column("panel:N", title=None, sort=panels(df))


def line_band(x: alt.X, y: str, title: str, scale=alt.Undefined, color=NORM, more: tuple[str, ...] = ()) -> alt.LayerChart:
    """Mean line over a min-max seed band, for use with .facet() (data goes on the layer); `more`: tooltip columns."""
    base = alt.Chart().encode(x=x, color=color)
    band = base.mark_area(opacity=0.25).encode(y=alt.Y("lo:Q", title=title, scale=scale), y2="hi:Q")
    line = base.mark_line().encode(y=alt.Y(f"{y}:Q", scale=scale), tooltip=tips("norm", "step", y, "lo", "hi", "seeds", *more))
    return alt.layer(band, line)


STEP = alt.X("step:Q", title="step")
EOS_NOTE = "dashed: 2/lr, the edge of stability of full-batch gradient descent"


def eos_rule() -> alt.Chart:
    """A dashed rule at 2/lr per panel (the frame's `eos` column), for beta_eff and lambda_max."""
    return alt.Chart().mark_rule(strokeDash=[4, 3], color="black").encode(
        y=alt.Y("min(eos):Q"), tooltip=[alt.Tooltip("min(eos):Q", title="2/lr", format=".3~g")])


def step_panels(chart: alt.LayerChart, share_y: bool = False, **facet) -> alt.FacetChart:
    """`chart` faceted by `facet`, each panel with its own step axis (a VGG cell's 1,500 steps beside the DLN's
    10,000) and, unless `share_y`, its own y axis."""
    return chart.facet(**facet).resolve_scale(x="independent", y="shared" if share_y else "independent")


def accuracy(df: pl.DataFrame) -> alt.FacetChart:
    """Figs. 1, 2: train and test accuracy vs step, one panel per (arch, lr), one line per norm."""
    chart = line_band(STEP, "mean", "accuracy (eval mode)").properties(width=W, height=H)
    return step_panels(alt.layer(chart, data=values(df)), share_y=True, row=alt.Row("split:N"), column=column(df))


def distributions(df: pl.DataFrame) -> alt.FacetChart:
    """Figs. 1c, 2: one unit's activation quantiles (5-95 %, 25-75 %) and its median's seed band vs step."""
    base = alt.Chart().encode(x=STEP)
    outer = base.mark_area(opacity=0.2).encode(y=alt.Y("q05:Q", title="activation"), y2="q95:Q")
    inner = base.mark_area(opacity=0.4).encode(y="q25:Q", y2="q75:Q")
    seeds = base.mark_area(opacity=0.6, color="black").encode(y="lo:Q", y2="hi:Q")
    median = base.mark_line(color="black").encode(y="mean:Q", tooltip=tips("step", "mean", "q05", "q25", "q75", "q95", "seeds"))
    layers = alt.layer(outer, inner, seeds, median, data=values(df)).properties(width=W, height=H)
    return step_panels(layers, share_y=True, row=alt.Row("norm:N"), column=column(df))


def by_quantity(df: pl.DataFrame, title: str = "") -> alt.FacetChart:
    """Figs. 3, 8: one row per quantity, one panel per (arch, lr, layer), one line per norm."""
    chart = line_band(STEP, "mean", title).properties(width=W, height=H)
    return step_panels(alt.layer(chart, data=values(df)), row=alt.Row("quantity:N"), column=column(df))


def training_loss(df: pl.DataFrame) -> alt.VConcatChart:
    """Figs. 3b, 5: training loss (batch, binned) vs step, log scale, one line per norm; one row of lrs per arch."""
    def one(d: pl.DataFrame) -> alt.FacetChart:
        chart = line_band(STEP, "mean", "training loss", scale=LOG).properties(width=W, height=H)
        return step_panels(alt.layer(chart, data=values(d)), column=column(d))
    return alt.vconcat(*(one(df.filter(arch=a)) for a in sorted(set(df["arch"]))))


def landscape(df: pl.DataFrame) -> alt.VConcatChart:
    """Figs. 4, 10: loss band and gradient-change band over eta, and beta_eff with its seed band and 2/lr, vs step."""
    def band(lo: str, hi: str, title: str, line: str | None = None) -> alt.FacetChart:
        base = alt.Chart().encode(x=STEP, color=NORM)
        layers = [base.mark_area(opacity=0.3).encode(y=alt.Y(f"{lo}:Q", title=title, scale=LOG), y2=f"{hi}:Q",
                                                     tooltip=tips("norm", "step", lo, hi, "seeds"))]
        if line:
            layers += [base.mark_line().encode(y=alt.Y(f"{line}:Q", scale=LOG)), eos_rule()]
        return step_panels(alt.layer(*layers, data=values(df)).properties(width=W, height=H), column=column(df))
    return alt.vconcat(band("loss_lo", "loss_hi", "loss over eta"), band("grad_lo", "grad_hi", "gradient change over eta"),
                       band("beta_lo", "beta_hi", "beta_eff", line="beta_eff"))


def grad_vs_eta(df: pl.DataFrame) -> alt.FacetChart:
    """Fig. 11: gradient change vs eta (relative to lr), one line per probed step (seed mean, band)."""
    color = alt.Color("step:O", scale=alt.Scale(scheme="viridis"))
    chart = line_band(alt.X("eta_rel:Q", title="eta / lr", scale=LOG), "mean", "||grad(w) - grad(w - eta g)||", scale=LOG, color=color)
    return (alt.layer(chart.properties(width=W, height=H), data=values(df))
            .facet(row=alt.Row("norm:N"), column=column(df))
            .resolve_scale(y="independent"))


def lr_robustness(df: pl.DataFrame) -> alt.HConcatChart:
    """Final metric vs lr (log x), one line per norm with its 95 % CI; a cross marks lrs where seeds diverged."""
    def one(arch: str) -> alt.LayerChart:
        d = df.filter(arch=arch)
        scale = alt.Undefined if d["classification"].any() else LOG
        lr = alt.X("lr:Q", scale=alt.Scale(type="log", nice=False, padding=12),
                   axis=alt.Axis(values=sorted(set(d["lr"])), labelExpr=LR_LABEL))  # a tick per lr tried
        base = alt.Chart(values(d)).encode(x=lr, color=NORM)
        band = base.mark_area(opacity=0.2).encode(y=alt.Y("value_lo:Q", title=f"final {d['metric'][0]}", scale=scale), y2="value_hi:Q")
        line = base.mark_line(point=True).encode(
            y=alt.Y("value:Q", scale=scale), tooltip=tips("norm", "lr", "value", "value_lo", "value_hi", "value_n", "diverged", "seeds")
        )
        cross = base.mark_point(shape="cross", size=140, filled=True).encode(y="marker:Q", tooltip=tips("norm", "lr", "diverged", "seeds"))
        return alt.layer(band, line, cross).properties(title=arch, width=2 * W, height=H + 40)

    return alt.hconcat(*(one(a) for a in sorted(set(df["arch"]))))


def curvature(df: pl.DataFrame) -> alt.HConcatChart:
    """lambda_max (top Hessian eigenvalue) beside beta_eff vs step, one line per norm, log scale, with 2/lr."""

    def one(quantity: str) -> alt.FacetChart:
        chart = alt.layer(line_band(STEP, "mean", quantity, scale=LOG, more=("left_out",)), eos_rule()).properties(width=W, height=H)
        return step_panels(alt.layer(chart, data=values(df.filter(quantity=quantity))),
                           row=alt.Row("panel:N", title=None, sort=panels(df)))

    shown = [q for q in ("lambda_max", "beta_eff") if q in set(df["quantity"])]
    return alt.hconcat(*(one(q) for q in shown))


def ics(df: pl.DataFrame) -> alt.VConcatChart:
    """Fig. 3: ICS l2 (log scale, geometric mean over seeds) above ICS cosine, one panel per (arch, lr, layer)."""

    def one(quantity: str, scale) -> alt.FacetChart:
        d = df.filter(quantity=quantity)
        chart = line_band(STEP, "mean", f"ICS {quantity}", scale=scale).properties(width=W, height=H)
        return step_panels(alt.layer(chart, data=values(d)), column=column(d))

    return alt.vconcat(*(one(q, s) for q, s in (("l2", LOG), ("cosine", alt.Undefined)) if q in set(df["quantity"])))


@dataclass(frozen=True)
class Figure:
    title: str
    needs: tuple[str, ...]  # tables
    data: Callable[..., pl.LazyFrame]  # (tables, settings) -> the frame's plan
    draw: Callable[[pl.DataFrame], alt.TopLevelMixin]
    any_norm: tuple[str, ...] = ()  # drawn only if one of these norms has rows
    caption: str = "lines: mean over seeds; bands: range over seeds (min to max)"


DIST = "shaded: the unit's 5-95 % and 25-75 % quantiles over the batch (means over seeds); black: its median, mean and range over seeds"
NB, NBN, LP = ("none", "batch"), ("none", "batch", "noisy_batch"), ("none", "batch", "l1", "l2", "linf")
FIGURES: dict[str, Figure] = {
    "lr_robustness": Figure(
        "Learning-rate robustness: final metric vs learning rate",
        ("cells", "evals"),
        curves.lr_points,
        lr_robustness,
        caption="lines: mean over the seeds that did not diverge; bands: 95 % bootstrap CI; "
        "crosses: learning rates where seeds diverged (at the worst value when all did)",
    ),
    "training_loss": Figure("Training loss vs step", ("cells", "steps"), curves.training_loss, training_loss),
    "fig1_accuracy": Figure("Fig. 1: accuracy vs step, none vs batch", ("cells", "evals"), partial(curves.accuracy, norms=NB), accuracy),
    "fig1_activations": Figure(
        "Fig. 1c: activation distributions, none vs batch",
        ("cells", "activations"),
        partial(curves.activations, norms=NB),
        distributions,
        caption=DIST,
    ),
    "fig2_accuracy": Figure(
        "Fig. 2: noisy BatchNorm, accuracy vs step", ("cells", "evals"), partial(curves.accuracy, norms=NBN), accuracy, ("noisy_batch",)
    ),
    "fig2_activations": Figure(
        "Fig. 2: noisy BatchNorm, activation distributions",
        ("cells", "activations"),
        partial(curves.activations, norms=NBN[1:]),
        distributions,
        ("noisy_batch",),
        DIST,
    ),
    "fig8_moments": Figure(
        "Fig. 8: drift of one unit's mean and variance",
        ("cells", "activations"),
        curves.moment_drift,
        partial(by_quantity, title="|change|"),
    ),
    "fig3_ics": Figure(
        "Fig. 3: internal covariate shift (l2 and cosine) vs step",
        ("cells", "ics"),
        curves.ics,
        ics,
        caption="lines: geometric mean over seeds (l2, log scale), mean (cosine); bands: range over seeds",
    ),
    "fig4_landscape": Figure(
        "Figs. 4, 10: loss landscape, gradient predictiveness, beta_eff",
        ("cells", "landscape"),
        curves.landscape,
        landscape,
        caption="loss and gradient-change bands: min to max over eta (geometric means over seeds); "
        f"beta_eff: geometric mean, range over seeds; {EOS_NOTE}",
    ),
    "fig5_lp": Figure(
        "Fig. 5: l_p normalisation, training loss vs step",
        ("cells", "steps"),
        partial(curves.training_loss, norms=LP),
        training_loss,
        LP[2:],
    ),
    "fig11_grad_eta": Figure(
        "Fig. 11: gradient change vs eta, one line per probed step", ("cells", "landscape"), curves.grad_vs_eta, grad_vs_eta
    ),
    "curvature": Figure(
        "lambda_max beside beta_eff",
        ("cells", "curvature"),
        curves.curvature,
        curvature,
        caption=f"lines: geometric mean over seeds; bands: range over seeds; {EOS_NOTE}; lambda_max: the largest "
        "algebraic Hessian eigenvalue, converged probes only; left_out (tooltip): seeds at a point with no "
        "value a log axis can place (not positive, or an unconverged probe)",
    ),
}


class Skipped(Exception):
    """A figure that cannot be drawn from this output; the message says why."""


def frames(tables: dict[str, pl.LazyFrame], settings: Settings = DEFAULT,
           names: Iterable[str] = FIGURES) -> dict[str, pl.DataFrame | Skipped]:
    """{name: the frame figure `name` draws, or Skipped with a note}; the figures' Polars plans run together
    (pl.collect_all: in parallel, reading each table once where their plans share the scan)."""
    out: dict[str, pl.DataFrame | Skipped] = {}
    plans: dict[str, pl.LazyFrame] = {}
    norms = cache(lambda: set(tables["cells"].select(pl.col("norm").unique()).collect()["norm"]))
    names = list(names)
    for name in names:
        fig = FIGURES[name]
        if absent := [t for t in fig.needs if t not in tables]:
            out[name] = Skipped(f"needs the {' and '.join(absent)} table{'s' if len(absent) > 1 else ''}, absent from this output")
        elif fig.any_norm and not set(fig.any_norm) & norms():  # none of its norms: skipped before reading its data
            out[name] = _no_norm(fig)
        else:
            plans[name] = fig.data(tables, settings)
    for name, df in zip(plans, pl.collect_all(list(plans.values()))):
        fig = FIGURES[name]
        out[name] = (_no_norm(fig) if fig.any_norm and not set(fig.any_norm) & set(df["norm"])
                     else Skipped("no rows to draw in this output") if df.is_empty() else df)
    return {name: out[name] for name in names}  # in the order asked


def _no_norm(fig: Figure) -> Skipped:
    return Skipped(f"no cells with norm {' or '.join(fig.any_norm)} in this output")


def frame(name: str, tables: dict[str, pl.LazyFrame], settings: Settings = DEFAULT) -> pl.DataFrame:
    """The frame figure `name` draws, or Skipped with a note."""
    df = frames(tables, settings, [name])[name]
    if isinstance(df, Skipped):
        raise df
    return df


def chart(name: str, df: pl.DataFrame) -> alt.TopLevelMixin:
    """Figure `name` drawn from its frame `df`."""
    return FIGURES[name].draw(df).configure_axis(tickCount=5)  # log axes: a gridline per decade, not nine


def build(name: str, tables: dict[str, pl.LazyFrame], settings: Settings = DEFAULT) -> tuple[alt.TopLevelMixin, pl.DataFrame]:
    """(chart, the frame it draws) for figure `name`, or Skipped with a note."""
    df = frame(name, tables, settings)
    return chart(name, df), df


def spec(name: str, df: pl.DataFrame) -> dict:
    """The Vega-Lite spec of figure `name` drawn from `df`: `chart(name, df).to_dict(validate=False)`, made faster.

    Altair copies a chart's data each time it combines or converts the chart (a layer, a facet, a concat): for a
    figure of 10^4 rows that is most of the time it takes. So the chart is built with each frame's rows named
    only, by the name Altair gives them, and the rows go into the spec's `datasets` at the end, where Altair
    puts them. Not validated against the Vega-Lite schema (seconds per figure; the tests validate every figure).
    """
    held: dict[str, list[dict]] = {}
    token = _held.set(held)
    try:
        out = chart(name, df).to_dict(validate=False)
    finally:
        _held.reset(token)
    return {**out, "datasets": {**out.get("datasets", {}), **held}} if held else out
