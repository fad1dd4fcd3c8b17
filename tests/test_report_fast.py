"""The report's faster paths give what the plain ones give: figure specs, figure data collected together, the tables."""

import json
import sys

import polars as pl
import pytest
from conftest import ROOT
from polars.testing import assert_frame_equal

from analysis import curves, draw, figures, groups, load, report, spec_cache

sys.path.insert(0, str(ROOT / "bench"))
from report_query import synthesise  # noqa: E402

SWEEP = "bench"


@pytest.fixture(scope="module")
def output(tmp_path_factory) -> str:
    """100 cells with every table (5,000 `steps` rows): every figure but the noisy and l_p ones."""
    out = str(tmp_path_factory.mktemp("fast") / "out")
    synthesise(out, 5_000)
    return out


@pytest.fixture(scope="module")
def tables(output) -> dict[str, pl.LazyFrame]:
    t = load.tables(output, SWEEP)
    t["cells"] = groups.label(t["cells"])
    return t


def test_specs_are_altairs_own_byte_for_byte(tables):
    """figures.spec (the rows named while the chart is built, put in at the end) == Altair's to_dict, in order too."""
    drawn = 0
    for name, df in figures.frames(tables).items():
        if isinstance(df, figures.Skipped):
            continue
        plain = figures.chart(name, df).to_dict(validate=False)
        fast = figures.spec(name, df)
        assert json.dumps(fast) == json.dumps(plain), name
        assert plain["datasets"] and all(json.dumps(rows) in json.dumps(fast) for rows in plain["datasets"].values())
        drawn += 1
    assert drawn == 9
    assert figures.values(pl.DataFrame({"a": [1.0]})) == {"values": [{"a": 1.0}]}  # outside spec(): inline, as before


def test_figure_data_collected_together_equal_each_collected_alone(tables):
    together = figures.frames(tables)
    for name, fig in figures.FIGURES.items():
        got = together[name]
        if isinstance(got, figures.Skipped):
            with pytest.raises(figures.Skipped, match=str(got)):
                _check(fig, fig.data(tables).collect())
            continue
        alone = fig.data(tables).collect()
        assert_frame_equal(got, alone, rel_tol=1e-12, abs_tol=0)  # parallel sums may differ in the last bits, run to run


def _check(fig: figures.Figure, df: pl.DataFrame) -> None:
    """build's checks on a frame (the plain way: the data computed first)."""
    if fig.any_norm and not set(fig.any_norm) & set(df["norm"]):
        raise figures.Skipped(f"no cells with norm {' or '.join(fig.any_norm)} in this output")
    if df.is_empty():
        raise figures.Skipped("no rows to draw in this output")


def test_a_figure_for_norms_the_output_lacks_is_skipped_before_its_data(tables, monkeypatch):
    def never(*_):
        raise AssertionError("read the data of a figure none of whose norms ran")
    monkeypatch.setitem(figures.FIGURES, "fig5_lp", figures.Figure("l_p", ("cells", "steps"), never, figures.training_loss,
                                                                   figures.LP[2:]))
    assert "no cells with norm l1 or l2 or linf" in str(figures.frames(tables, names=["fig5_lp"])["fig5_lp"])
    assert isinstance(curves.training_loss(tables), pl.LazyFrame)


@pytest.mark.slow  # about 10 s on a loaded 2-core machine
def test_report_tables_and_specs_equal_the_plain_computation(output, tables, tmp_path):
    """The report's files against each piece computed the plain way (one figure after another, Altair's to_dict)."""
    [w] = report.write(output, tmp_path / "rep", files=draw.Files((), None))
    assert sorted(w.drawn) == sorted(n for n, df in figures.frames(tables).items() if not isinstance(df, figures.Skipped))
    for name in w.drawn:
        chart, _ = figures.build(name, tables)
        assert json.loads((w.folder / "figures" / f"{name}.vl.json").read_text()) == chart.to_dict(validate=False), name
    html = (w.folder / "report.html").read_text()
    assert html.count("class='chart'") == len(w.drawn) and html.count("Skipped: ") == len(w.skipped)
    from analysis import summaries

    rob = pl.read_parquet(w.folder / "tables" / "lr_robustness.parquet")
    assert rob.equals(summaries.lr_robustness(tables["cells"], tables["evals"]))


def test_spec_cache_serves_the_same_frame_and_only_it(tables, tmp_path):
    df = figures.frame("fig1_accuracy", tables)
    built = spec_cache.cached("fig1_accuracy", df, tmp_path)
    assert built == figures.spec("fig1_accuracy", df) and len(list(tmp_path.glob("*.vl.json"))) == 1
    [kept] = tmp_path.glob("*.vl.json")
    kept.write_text(json.dumps({**built, "description": "from the cache"}))
    assert spec_cache.cached("fig1_accuracy", df, tmp_path)["description"] == "from the cache"
    # the last bits of a float (parallel sums) do not matter: the spec inlines 6 significant digits
    jitter = df.with_columns(pl.col("mean") * (1 + 1e-15))
    assert spec_cache.key("fig1_accuracy", jitter) == spec_cache.key("fig1_accuracy", df)
    # any change the spec shows does, and so do the exact lr, the figure and the row order
    for other in (df.with_columns(pl.col("mean") * 1.001), df.with_columns(pl.col("lr") * (1 + 1e-12)), df.reverse(),
                  df.with_columns(pl.col("panel").str.replace("vgg16", "VGG16"))):
        assert spec_cache.key("fig1_accuracy", other) != spec_cache.key("fig1_accuracy", df)
    assert spec_cache.key("fig2_accuracy", df) != spec_cache.key("fig1_accuracy", df)
    assert spec_cache.cached("fig1_accuracy", df, None) == built  # no cache: built


@pytest.mark.slow  # draws every figure twice: 35 s on a loaded 2-core machine
def test_a_report_from_the_caches_equals_one_without_them(output, tmp_path):
    """Figures and specs from a warm cache, against a report with no cache at all: the same files."""
    cache = tmp_path / "cache"
    report.write(output, tmp_path / "cold", files=draw.Files(("svg",), cache))
    [warm] = report.write(output, tmp_path / "warm", files=draw.Files(("svg",), cache))
    [plain] = report.write(output, tmp_path / "plain", files=draw.Files(("svg",), None, processes=1))
    assert warm.cached == len(warm.drawn) == len(plain.drawn)
    for name in plain.drawn:
        for suffix in ("vl.json", "svg"):
            a, b = (r.folder / "figures" / f"{name}.{suffix}" for r in (warm, plain))
            assert a.read_bytes() == b.read_bytes(), (name, suffix)
    assert (warm.folder / "report.html").read_text() == (plain.folder / "report.html").read_text()


@pytest.mark.slow  # over 10 s in CI
def test_summaries_cache_serves_this_datas_summaries_and_only_them(output, tables, tmp_path, monkeypatch):
    """A report on unchanged data reads its summaries back; other data, settings or cells miss the cache."""
    import shutil

    from analysis.settings import DEFAULT

    cache = tmp_path / "cache"
    computed = report.summarise_cached(output, SWEEP, tables, DEFAULT, None, cache)
    [kept] = cache.glob("*.summaries.pkl")
    assert kept.name == f"{report.summaries_key(output, SWEEP, DEFAULT, None)}.summaries.pkl"

    def never(*_):
        raise AssertionError("computed the summaries the cache holds")
    plain = report.summarise
    monkeypatch.setattr(report, "summarise", never)
    back = report.summarise_cached(output, SWEEP, tables, DEFAULT, None, cache)
    assert back.frames.keys() == computed.frames.keys() and repr(back.found) == repr(computed.found)  # NaN != NaN
    for name, df in computed.frames.items():
        assert_frame_equal(back.frames[name], df)
    monkeypatch.setattr(report, "summarise", plain)

    key = report.summaries_key(output, SWEEP, DEFAULT, None)
    from dataclasses import replace
    assert report.summaries_key(output, SWEEP, replace(DEFAULT, accuracy_tolerance=0.05), None) != key
    some = sorted(tables["cells"].collect()["cell_id"])[:3]
    assert report.summaries_key(output, SWEEP, DEFAULT, some) != key
    copy = str(tmp_path / "copy")
    shutil.copytree(output, copy)
    assert report.summaries_key(copy, SWEEP, DEFAULT, None) != key  # the paths are part of the data's identity
    before = report.summaries_key(copy, SWEEP, DEFAULT, None)
    [evals] = list((tmp_path / "copy").rglob(f"evals/**/{some[1]}.parquet"))
    evals.unlink()  # that cell's evaluations no longer count
    assert report.summaries_key(copy, SWEEP, DEFAULT, None) != before

    kept.write_bytes(b"not a pickle")  # cut short or foreign: computed again and kept again
    again = report.summarise_cached(output, SWEEP, tables, DEFAULT, None, cache)
    assert repr(again.found) == repr(computed.found) and kept.read_bytes() != b"not a pickle"
    assert repr(report.summarise_cached(output, SWEEP, tables, DEFAULT, None, None).found) == repr(computed.found)  # no cache
    assert list(cache.glob("*.summaries.pkl")) == [kept]

    def meanwhile(*args):  # a running sweep changes the data while the summaries are computed: they are not kept
        summed = plain(*args)
        [steps] = list((tmp_path / "copy").rglob(f"steps/**/{some[2]}.parquet"))
        steps.unlink()
        return summed
    monkeypatch.setattr(report, "summarise", meanwhile)
    copied = load.tables(copy, SWEEP)
    copied["cells"] = groups.label(copied["cells"])
    fresh = tmp_path / "fresh"
    report.summarise_cached(copy, SWEEP, copied, DEFAULT, None, fresh, key=report.summaries_key(copy, SWEEP, DEFAULT, None))
    assert not list(fresh.glob("*.summaries.pkl"))
