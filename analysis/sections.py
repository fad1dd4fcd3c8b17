"""The report's sections as HTML: every number with its 95 % CI and the seeds behind it."""

from __future__ import annotations

import polars as pl

from analysis import compare, quantities, sequential, verdicts
from analysis.figures import Figure
from analysis.groups import GROUP
from analysis.html import esc, table
from analysis.progress import STARTED, SweepState
from analysis.quantities import COUNTS, LEFT_OUT, PROBES
from analysis.settings import Settings
from analysis.stats import fmt_ci
from analysis.verdicts import Verdict
from bnsweep.console import fmt

SETTING = ("setting", lambda r: r["setting"] or "-")


def ci_of(col: str):
    """Column function: 'mean [lo, hi] (n=k)' of `col` from a summary row."""
    return lambda r: fmt_ci(r[col], r[f"{col}_lo"], r[f"{col}_hi"], r[f"{col}_n"])


def yes(col: str):
    return lambda r: "yes" if r[col] else ("no" if r[col] is not None else "-")


def overview(sweep: str, output: str, cells: pl.LazyFrame, tables: dict[str, pl.LazyFrame], s: Settings) -> str:
    status = cells.group_by("status").agg(pl.len()).collect()
    counts = ", ".join(f"{n} {st}" for st, n in sorted(status.iter_rows()))
    per = (cells.group_by(GROUP).agg(pl.col("seed").n_unique().alias("n"))
           .select(pl.col("n").min().alias("lo"), pl.col("n").max().alias("hi")).collect())
    seeds = f"{per['lo'][0]}" if per["lo"][0] == per["hi"][0] else f"{per['lo'][0]}-{per['hi'][0]}"
    settings = sorted(x for x in cells.select("setting").unique().collect()["setting"] if x)
    varied = (f" Settings differ among cells of one (arch, norm, lr), so they are kept apart, never pooled: "
              f"{'; '.join(settings)}." if settings else "")
    rows = [{"table": name, "rows": t.select(pl.len()).collect().item()} for name, t in tables.items()]
    return (f"<h1>bnsweep report: {esc(sweep)}</h1>"
            f"<p>Output <code>{esc(output)}</code>. Cells: {esc(counts or 'none')}; {esc(seeds)} seeds per "
            f"(arch, norm, lr, setting).{esc(varied)} "
            f"Intervals are {s.confidence:.0%} percentile-bootstrap CIs over seeds ({s.resamples} resamples, seed {s.seed}); "
            f"<i>n</i> is the number of seeds behind each number. Bands in the figures span the seeds (min to max).</p>"
            + table(rows, [("table", lambda r: r["table"]), ("rows", lambda r: r["rows"])]))


def progress_section(st: SweepState) -> str:
    """For a sweep still running (or interrupted): how many cells are still to come, and which."""
    if not st.line():
        return ""
    head = ("<h2 id='progress'>Sweep still running</h2>" if st.live else
            "<h2 id='progress'>Sweep incomplete (no run in progress: run the same command again to finish it)</h2>")
    total = (f"{st.to_come} of {st.total} cells still to come" if st.total is not None else
             f"{len(st.unfinished)} cells started without a result (this output has no run file, so the total is unknown)")

    def label(u: dict) -> str:
        if u["state"] not in STARTED:
            return u["state"]
        return f"{u['state']} at step {u['step']} / {u['steps']}" + ("" if u["checkpointed"] else " (no checkpoint yet)")

    cols = [("cell_id", lambda u: u["cell_id"]), ("arch", lambda u: u["arch"]), ("norm", lambda u: u["norm"]),
            ("lr", lambda u: f"{u['lr']:g}"), ("seed", lambda u: u["seed"]), ("state (last checkpointed step)", label)]
    return (head + f"<p>{esc(total)}. Every number and figure below covers only the cells with a result so far, "
            "and will change as the others finish.</p>" + table(st.unfinished, cols))


def claims_section(found: list[Verdict], design=None) -> str:
    """Per claim its verdict and reason, then every comparison: role, where, n, effect [95 % interval], p, outcome."""
    how = (f"Sequential seeds (<code>run --until-decided</code>): looks at {esc(', '.join(map(str, design.looks())))} seeds "
           "per group, each at its share of alpha (<a href='#method'>method</a>); a claim is decided at its first deciding "
           "look. " if design is not None else "")
    cols = [("role", lambda r: r.role), ("comparison", lambda r: r.name()), ("test", lambda r: r.declared.test),
            ("n", lambda r: f"{r.result.n_a}, {r.result.n_b}" if r.result else "-"),
            ("effect [95 % interval]", lambda r: r.effect()),
            ("p (adjusted)", lambda r: _p(r.result.p if r.result else None, r.p_adjusted)),
            ("p against (adjusted)", lambda r: _p(r.result.p_against if r.result else None, r.p_against_adjusted)),
            ("outcome", lambda r: r.outcome if r.informative else "not informative"), ("reason", lambda r: r.reason)]
    blocks = "".join(
        f"<h3 id='claim-{esc(v.spec.id)}'>{esc(v.spec.id)} ({esc(v.spec.figure)}): "
        f"<span class='{v.verdict.replace(' ', '-')}'>{esc(v.verdict)}</span></h3>"
        f"<p>{esc(v.spec.text)}</p><p class='note'>{esc(v.reason)}"
        + (f" (decided at look {v.look})" if design is not None and v.look is not None else "") + "</p>"
        + (table(v.rows, cols) if v.rows else "")
        for v in found)
    return ("<h2 id='claims'>The paper's claims, checked against this sweep</h2>"
            f"<p>{how}Each claim is declared in <code>analysis/declared.py</code> before any data is read: its primary "
            "comparison decides it (one-sided tests at alpha 0.025, so a verdict agrees with the 95 % interval shown; "
            "TOST for equality claims); an informative secondary that significantly says the opposite after Holm's "
            "correction withholds it. A comparison with a dead or diverged side, or with both sides at the metric's "
            "ceiling, is not informative and counts towards nothing. Effects are mean(a) - mean(b) on the metric's scale; "
            "log-scale metrics show the ratio of geometric means. See docs/verdicts.md.</p>" + blocks)


def _p(p: float | None, adjusted: float) -> str:
    if p is None or p != p:
        return "-"
    return f"{p:.2g}" + (f" ({adjusted:.2g})" if adjusted == adjusted and abs(adjusted - p) > 1e-12 else "")


def method_section(s: Settings) -> str:
    """The statistics, as stated once in analysis/quantities.py, compare.py, verdicts.py and sequential.py."""
    used = (f"This report: confidence {s.confidence:.0%}, {s.resamples} resamples (generator seed {s.seed}), "
            f"upper quantile {s.upper_quantile:g}, early window the first {s.early_fraction:.0%} of steps, margins "
            f"{s.accuracy_tolerance:g} accuracy points, a factor {s.factor_tolerance:g} and {s.rate_margin:g} of a rate, "
            f"each one-sided test at {s.alpha:g}, at least {max(s.min_seeds, 2)} seeds per side.")
    return ("<h2 id='method'>How the numbers are computed</h2>"
            f"<p>{esc(used)}</p><pre>{esc(quantities.__doc__)}</pre><pre>{esc(compare.__doc__)}</pre>"
            f"<pre>{esc(verdicts.__doc__)}</pre><pre>{esc(sequential.__doc__)}</pre>")


def range_section(ranges: pl.DataFrame) -> str:
    cols = [
        ("arch", lambda r: r["arch"]),
        ("norm", lambda r: r["norm"]),
        SETTING,
        ("metric", lambda r: r["metric"]),
        ("best lr", lambda r: f"{r['best_lr']:g}" if r["best_lr"] else "-"),
        ("best value", lambda r: fmt_ci(r["best_value"], r["best_value_lo"], r["best_value_hi"], r["best_value_n"])),
        ("robust range", lambda r: f"{r['lr_min']:g} .. {r['lr_max']:g}" if r["lr_min"] else "-"),
        ("width (decades)", lambda r: fmt(r["width_decades"])),
        ("lrs in range / tried", lambda r: f"{r['lrs_in_range'] or 0} / {r['lrs_tried']}"),
        ("fewest seeds in range", lambda r: r["min_seeds_in_range"]),
        ("at grid edge", yes("at_edge")),
        ("contiguous", yes("contiguous")),
    ]
    return (
        "<h2 id='robust-range'>Robust learning-rate range</h2>"
        "<p>The learning rates, among those where no seed diverged, whose mean final metric is within the tolerance of "
        "the best; width = log10(max/min). At a grid edge the true range may be wider.</p>" + table(ranges.to_dicts(), cols)
    )


def robustness_section(rob: pl.DataFrame, s: Settings) -> str:
    targets = rob.group_by("arch").agg(pl.col("target").first(), pl.col("metric").first()).sort("arch")
    text = "; ".join(f"{a}: {m.replace('_', ' ')} {'≥' if m.endswith('accuracy') else '≤'} {fmt(t)}" for a, t, m in targets.iter_rows())
    cols = [
        ("arch", lambda r: r["arch"]),
        ("norm", lambda r: r["norm"]),
        ("lr", lambda r: f"{r['lr']:g}"),
        SETTING,
        ("seeds", lambda r: r["seeds"]),
        ("failed", lambda r: r["failed"]),
        ("divergence rate", ci_of("divergence_rate")),
        ("final train loss", ci_of("train_loss")),
        ("final train acc", ci_of("train_accuracy")),
        ("final test acc", ci_of("test_accuracy")),
        ("steps to target (n = seeds reaching it)", ci_of("steps_to_target")),
        ("in range", yes("in_range")),
        ("best", yes("best")),
    ]
    return (
        "<h2 id='lr-robustness'>Learning-rate robustness</h2>"
        f"<p>Final metrics of the seeds that did not diverge (last evaluation, eval mode). Target: {esc(text)} "
        f"({s.target_fraction:.0%} of the arch's best final value), first evaluation that reaches it.</p>" + table(rob.to_dicts(), cols)
    )


def smoothness_section(smooth: pl.DataFrame, s: Settings) -> str:
    head = "<h2 id='smoothness'>Smoothness and internal covariate shift</h2>"
    if smooth.is_empty():
        return head + "<p class='note'>Not measured in this output: add a <code>measure:</code> block with landscape, ics or curvature.</p>"
    ci = pl.struct("estimate", "lo", "hi", "seeds").map_elements(lambda r: fmt_ci(*r.values()), return_dtype=pl.String)
    text = pl.when(pl.col("statistic").is_in(COUNTS)).then(pl.col("estimate").cast(pl.Int64).cast(pl.String)).otherwise(ci)
    keys = ["arch", "norm", "lr", "setting", "quantity", "layer", "window"]
    wide = (
        smooth.with_columns(text=text)
        .pivot("statistic", index=keys, values="text")
        .sort("arch", "quantity", "layer", "lr", "setting", "window", "norm", nulls_last=True)
    )
    cols = [
        ("arch", lambda r: r["arch"]),
        ("quantity", lambda r: r["quantity"]),
        ("layer", lambda r: r["layer"] if r["layer"] is not None else "-"),
        ("lr", lambda r: f"{r['lr']:g}"),
        SETTING,
        ("norm", lambda r: r["norm"]),
        ("window", lambda r: r["window"]),
        ("median over probed steps", lambda r: r.get("median") or "-"),
        (f"upper ({s.upper_quantile:g} quantile)", lambda r: r.get("upper") or "-"),
        ("share above 2/lr", lambda r: r.get("above_eos") or "-"),
        ("left out / probed steps (all seeds)", lambda r: f"{r.get(LEFT_OUT) or 0} / {r.get(PROBES) or 0}"),
    ]
    return (
        head + f"<p>Per cell, statistics over its probed steps, {esc('early')} (first {s.early_fraction:.0%} of steps) "
        "and overall; then the geometric mean over seeds for log-scale quantities (the mean for ICS cosine and "
        "shares) [95 % CI] (n seeds); see <a href='#method'>method</a>. gradient predictiveness = max over eta of "
        "||grad(w) - grad(w - eta g)||; loss band = max / min loss over eta; ICS per layer; lambda_max = top "
        "Hessian eigenvalue (largest algebraic, converged probes only). Left out of median and upper, and counted: "
        "values that are not finite (an unconverged curvature probe) and non-positive values of log-scale "
        "quantities; the share above 2/lr counts every finite value.</p>" + table(wide.to_dicts(), cols)
    )


def figure_block(name: str, fig: Figure, df: pl.DataFrame) -> str:
    seeds = df["seeds"] if "seeds" in df.columns else df["value_n"]
    lo, hi = seeds.min(), seeds.max()
    n = f"{lo}" if lo == hi else f"{lo}-{hi}"
    return (
        f"<div class='figure'><h3 id='{name}'>{esc(fig.title)}</h3><div id='vis-{name}' class='chart'></div>"
        f"<p class='note'>{esc(n)} seeds per point (see the tooltip); {esc(fig.caption)}. "
        f"<a href='figures/{name}.svg'>SVG</a> · <a href='figures/{name}.png'>PNG</a> · "
        f"<a href='figures/{name}.vl.json'>Vega-Lite</a></p></div>"
    )
