"""Figure files (analysis/draw.py): formats, worker processes, the cache keyed by content, and stable figure data."""

import polars as pl
import pytest
from synthetic import write_runs

from analysis import draw, figures, report
from analysis.html import VL_VERSION
from bnsweep.errors import UserError

MAGIC = {"svg": b"<svg", "png": b"\x89PNG", "pdf": b"%PDF"}


def spec(y: float) -> dict:
    return {"data": {"values": [{"x": 0, "y": 0.0}, {"x": 1, "y": y}]}, "mark": "line",
            "encoding": {"x": {"field": "x", "type": "quantitative"}, "y": {"field": "y", "type": "quantitative"}}}


def test_workers_draw_every_format_and_the_cache_serves_only_the_same_spec(tmp_path):
    cache, files = tmp_path / "cache", ("svg", "png", "pdf")
    with draw.Drawer(draw.Files(files, cache, processes=2), VL_VERSION) as d:
        for i in range(3):
            d.submit(spec(i + 1.0), tmp_path / f"a{i}")
    assert d.cached == 0 and len(list(cache.iterdir())) == 9
    for i in range(3):
        for fmt in files:
            assert (tmp_path / f"a{i}.{fmt}").read_bytes()[:4] == MAGIC[fmt]
    # the same spec is copied from the cache: a marker planted in the cached SVG comes back
    [svg] = [p for p in cache.iterdir() if p.suffix == ".svg" and p.read_bytes() == (tmp_path / "a0.svg").read_bytes()]
    svg.write_text("<svg>from the cache</svg>")
    with draw.Drawer(draw.Files(files, cache, processes=2), VL_VERSION) as d:
        d.submit(spec(1.0), tmp_path / "b0")
        d.submit(spec(1.0 + 1e-5), tmp_path / "b1")  # one value changed: drawn again
    assert d.cached == 3 and (tmp_path / "b0.svg").read_text() == "<svg>from the cache</svg>"
    assert (tmp_path / "b1.svg").read_bytes()[:4] == b"<svg" and (tmp_path / "b1.svg").read_bytes() != svg.read_bytes()
    # drawn in this process, without a cache: the same file as a worker drew
    with draw.Drawer(draw.Files(("svg",), None, processes=1), VL_VERSION) as d:
        d.submit(spec(2.0), tmp_path / "c1")
    assert (tmp_path / "c1.svg").read_bytes() == (tmp_path / "a1.svg").read_bytes()


def test_a_figure_that_cannot_be_drawn_raises_naming_it(tmp_path):
    with pytest.raises(RuntimeError, match="drawing broken: "):
        with draw.Drawer(draw.Files(("svg",), None, processes=2), VL_VERSION) as d:
            d.submit(spec(1.0), tmp_path / "fine")
            d.submit({**spec(1.0), "mark": {"type": "no-such-mark"}}, tmp_path / "broken")
    assert (tmp_path / "fine.svg").exists() and not (tmp_path / "broken.svg").exists()


def test_formats_parse_and_bad_ones_are_refused():
    assert draw.parse_formats(" svg,png ,svg") == ("svg", "png") and draw.parse_formats("none") == ()
    for bad in ("gif", "", "svg,none"):
        with pytest.raises(UserError, match="give comma-separated formats from svg, png, pdf, or none"):
            draw.parse_formats(bad)
    with pytest.raises(UserError, match="figure formats 'jpg': allowed svg, png, pdf"):
        draw.Files(("jpg",))


def test_prune_keeps_the_most_recently_used(tmp_path):
    import os

    for i in range(5):
        (tmp_path / f"{i}.svg").write_bytes(b"x" * 100)
        os.utime(tmp_path / f"{i}.svg", (1000 + i, 1000 + i))
    os.utime(tmp_path / "0.svg")  # used just now
    draw.prune(tmp_path, keep=250)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.svg", "4.svg"]


def test_report_writes_the_formats_asked_for_and_removes_stale_ones(tmp_path):
    write_runs(str(tmp_path / "out"))
    cache = tmp_path / "cache"
    [w] = report.write(str(tmp_path / "out"), tmp_path / "rep", files=draw.Files(("svg", "png"), cache))
    names = {p.name for p in (w.folder / "figures").iterdir()}
    assert names == {f"{n}.{s}" for n in w.drawn for s in ("svg", "png", "vl.json")} and w.cached == 0
    [again] = report.write(str(tmp_path / "out"), tmp_path / "rep", files=draw.Files(("svg",), cache))
    assert again.cached == len(w.drawn)  # the same tables: every SVG from the cache
    assert {p.name for p in (w.folder / "figures").iterdir()} == {f"{n}.{s}" for n in w.drawn for s in ("svg", "vl.json")}
    assert "figure files from the cache" in again.line()


def test_figure_data_keep_six_significant_digits_in_one_row_order():
    df = pl.DataFrame({"panel": ["b", "a", "a"], "step": [0, 1, 0], "mean": [0.1 + 0.2, 2 / 3, float("nan")]})
    rows = figures.values(df)["values"]
    assert rows == [{"panel": "a", "step": 0, "mean": None}, {"panel": "a", "step": 1, "mean": 0.666667},
                    {"panel": "b", "step": 0, "mean": 0.3}]
    assert figures.values(df.reverse()) == figures.values(df)
