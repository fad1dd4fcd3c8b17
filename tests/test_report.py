"""Figures, the report and the report / query / ls commands on a tiny real sweep (conftest.measured_output)."""

import json
import re

import polars as pl
import pytest
import vl_convert as vlc
from synthetic import write_runs

from analysis import figures, load, report
from analysis.html import VL_VERSION
from bnsweep.cli import main

pytestmark = pytest.mark.ray


@pytest.mark.parametrize("name", list(figures.FIGURES))
def test_every_figure_renders_to_vega_lite_and_svg(measured_output, name):
    chart, df = figures.build(name, load.tables(str(measured_output), "measured"))
    spec = chart.to_dict()  # validates against the Vega-Lite schema
    assert f"/v{VL_VERSION}" in spec["$schema"]
    assert not df.is_empty()
    svg = vlc.vegalite_to_svg(spec, vl_version=VL_VERSION)
    assert svg.startswith("<svg") and len(re.findall(r'class="mark-(line|area|symbol)', svg)) > 0
    assert "NaN" not in json.dumps(spec)


def test_figure_seed_bands_agree_with_the_tables(measured_output):
    """The accuracy band is the mean, min and max over seeds of the eval table, point by point."""
    tables = load.tables(str(measured_output), "measured")
    _, df = figures.build("fig1_accuracy", tables)
    evals = tables["evals"].collect()
    for r in df.sample(5, seed=0).iter_rows(named=True):
        sel = evals.filter(arch=r["arch"], norm=r["norm"], lr=r["lr"], split=r["split"], step=r["step"])["accuracy"]
        assert (r["mean"], r["lo"], r["hi"], r["seeds"]) == pytest.approx((sel.mean(), sel.min(), sel.max(), len(sel)))


def _facets(spec):
    """Every faceted sub-spec of a Vega-Lite spec."""
    if isinstance(spec, dict):
        if "facet" in spec:
            yield spec
        for v in spec.values():
            yield from _facets(v)
    elif isinstance(spec, list):
        for v in spec:
            yield from _facets(v)


def test_step_panels_each_get_their_own_step_axis(measured_output):
    """Cells of different lengths (the DLN's and the VGG's) side by side: no panel is squeezed into another's steps."""
    tables = load.tables(str(measured_output), "measured")
    checked = 0
    for name in figures.FIGURES:
        for f in _facets(figures.build(name, tables)[0].to_dict()):
            if '"x": {"field": "step"' in json.dumps(f["spec"]):
                assert f.get("resolve", {}).get("scale", {}).get("x") == "independent", name
                checked += 1
    assert checked >= 5


def test_report_writes_every_file_offline(measured_report):
    folder, written = measured_report
    assert len(written) == 1 and sorted(written[0].drawn) == sorted(figures.FIGURES) and not written[0].skipped
    html = (folder / "report.html").read_text()
    assert not re.search(r"<script[^>]*\bsrc=", html) and "cdn." not in html  # the JavaScript is inlined
    assert html.count("class='chart'") == len(figures.FIGURES) and "vegaEmbed" in html
    for name in figures.FIGURES:  # the default formats: SVG only (tests/test_draw.py: the others, the cache)
        assert (folder / "figures" / f"{name}.svg").read_text().startswith("<svg")
        assert not (folder / "figures" / f"{name}.png").exists()
    for name in ("lr_robustness", "robust_range", "smoothness", "smoothness_cells", "claims"):
        a, b = pl.read_csv(folder / "tables" / f"{name}.csv"), pl.read_parquet(folder / "tables" / f"{name}.parquet")
        assert len(a) == len(b) > 0 and a.columns == b.columns, name
    assert "(n=2)" in html  # numbers carry their seed counts
    spans = ("supported", "contradicted", "inconclusive", "not-measured-in-this-output")
    assert sum(html.count(f"<span class='{v}'>") for v in spans) == 7
    assert "How the numbers are computed" in html and "edge of stability" in html  # the method, shown once
    for name in ("fig4_landscape", "curvature"):  # 2/lr drawn as a rule where beta_eff or lambda_max is
        assert '"type": "rule"' in (folder / "figures" / f"{name}.vl.json").read_text(), name
    assert '"type": "rule"' not in (folder / "figures" / "fig1_accuracy.vl.json").read_text()


def test_absent_tables_skip_figures_with_a_note(tmp_path):
    write_runs(str(tmp_path / "out"))  # cells and evals only (classification on vgg, with noisy_batch)
    [w] = report.write(str(tmp_path / "out"), tmp_path / "rep")
    assert w.drawn == ["lr_robustness", "fig1_accuracy", "fig2_accuracy"]
    assert w.skipped["fig3_ics"] == "needs the ics table, absent from this output"
    assert w.skipped["training_loss"] == "needs the steps table, absent from this output"
    html = (w.folder / "report.html").read_text()
    assert "Skipped: needs the ics table, absent from this output." in html
    assert "Not measured in this output" in html


def test_cli_report(measured_output, tmp_path, capsys):
    assert main(["report", str(measured_output), "-o", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"{tmp_path / 'measured' / 'report.html'}: {len(figures.FIGURES)} figures drawn, 0 skipped" in out
    assert (tmp_path / "measured" / "tables" / "claims.csv").exists()


def test_cli_query_formats_agree(measured_output, tmp_path, capsys):
    sql = ("SELECT steps.norm, status, count(*) AS n, avg(loss) AS loss FROM steps JOIN cells USING (cell_id) "
           "WHERE steps.arch = 'dln' GROUP BY ALL ORDER BY ALL")
    expect = pl.read_parquet(f"{measured_output}/steps/**/*.parquet").join(
        pl.read_parquet(f"{measured_output}/cells/**/*.parquet").select("cell_id", "status"), on="cell_id"
    ).filter(arch="dln").group_by("norm", "status").agg(n=pl.len(), loss=pl.col("loss").mean()).sort("norm", "status")
    for fmt in ("csv", "json", "parquet"):
        f = tmp_path / f"q.{fmt}"
        assert main(["query", str(measured_output), sql, "--format", fmt, "-o", str(f)]) == 0
        got = {"csv": pl.read_csv, "json": pl.read_json, "parquet": pl.read_parquet}[fmt](f)
        assert got.select("norm", "status", "n").rows() == expect.select("norm", "status", "n").rows(), fmt
        assert got["loss"].to_list() == pytest.approx(expect["loss"].to_list(), nan_ok=True)
    capsys.readouterr()
    assert main(["query", str(measured_output), sql]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0].split() == ["norm", "status", "n", "loss"] and f"({len(expect)} rows)" in text
    assert main(["query", str(measured_output), "SELECT count(*) AS n FROM steps JOIN cells USING (cell_id, sweep, arch, norm, lr, seed)",
                 "--format", "csv"]) == 0
    assert capsys.readouterr().out.split() == ["n", str(len(pl.read_parquet(f"{measured_output}/steps/**/*.parquet")))]


def test_cli_ls(measured_output, capsys):
    assert main(["ls", str(measured_output)]) == 0
    out = capsys.readouterr().out
    cells = pl.read_parquet(f"{measured_output}/cells/**/*.parquet")
    assert out.startswith(f"sweep measured: {len(cells)} cells, {(cells['status'] == 'done').sum()} done, "
                          f"{(cells['status'] == 'diverged').sum()} diverged, 0 failed; wall time")
    assert all(cid in out for cid in cells["cell_id"])
    rows = [line.split() for line in out.splitlines()[4:]]
    dln_none = [float(r[4]) for r in rows if r[2:4] == ["dln", "none"]]
    assert dln_none == sorted(dln_none) and len(dln_none) == 4  # lrs in numeric order, seeds after


@pytest.mark.parametrize("argv, says", [
    (["query", "{out}", "SELECT nope FROM steps"], 'Referenced column "nope" not found'),
    (["query", "{out}", "SELECT * FROM nope"], "Table with name nope does not exist!; tables here: cells, steps, evals, ics"),
    (["query", "{out}", "SELEC 1"], 'Parser Error: syntax error at or near "SELEC"'),
    (["query", "{out}", "SELECT norm FROM steps JOIN cells USING (cell_id)"], "qualify the column (steps.norm)"),
    (["query", "{missing}", "SELECT 1"], "does not exist"),
    (["ls", "{missing}"], "does not exist"),
    (["report", "{missing}"], "does not exist"),
    (["report", "{out}", "--formats", "svg,gif"], "--formats 'svg,gif': give comma-separated formats from svg, png, pdf, or none"),
    (["report", "{empty}"], "no bnsweep tables under"),
])
def test_bad_input_is_one_line_and_exit_2(measured_output, tmp_path, capsys, argv, says):
    (tmp_path / "empty").mkdir()
    subst = {"out": str(measured_output), "missing": str(tmp_path / "missing"), "empty": str(tmp_path / "empty")}
    capsys.readouterr()
    assert main([a.format(**subst) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and says in err, err
