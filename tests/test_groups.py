"""Cells whose settings differ are never pooled; `report --spec` reports one spec's cells only."""

import json
from types import SimpleNamespace

import polars as pl
import pytest
from synthetic import SWEEP, write_cell

from analysis import groups, load, report, summaries
from bnsweep.cli import main
from bnsweep.records import Store

FINALS = {
    (50, "none"): [0.90, 0.92],
    (50, "batch"): [0.97, 0.99],
    (20, "none"): [0.50, 0.60],
    (20, "batch"): [0.70, 0.80],
}


def cell(norm: str, seed: int, steps: int, **extra) -> SimpleNamespace:
    tag = "-".join(f"{k}{v}" for k, v in extra.items())
    return SimpleNamespace(
        cell_id=f"vgg-{norm}-{seed}-{steps}{tag}", sweep=SWEEP, arch="vgg", norm=norm, lr=0.1, seed=seed
    )


def config(norm: str, seed: int, steps: int, eps: float | None = None) -> str:
    """A config_json as `run` writes it (the fields groups.label reads)."""
    opts = {"eps": eps} if norm == "batch" and eps is not None else {}
    return json.dumps(
        {
            "sweep": SWEEP,
            "arch": "vgg",
            "norm": norm,
            "lr": 0.1,
            "seed": seed,
            "device": "cpu",
            "dataset": {"name": "digits", "root": "/somewhere"},
            "model": {"width": 0.0625},
            "norm_options": opts,
            "train": {"steps": steps, "batch_size": 32},
            "measure": {},
        }
    )


@pytest.fixture(params=["config_json", "columns"])
def two_versions(request, tmp_path):
    """The sweep `syn` run with steps 50, then edited to steps 20 and run again into the same output."""
    store = Store(str(tmp_path / "out"))
    for (steps, norm), finals in FINALS.items():
        for seed, final in enumerate(finals):
            cfg = config(norm, seed, steps) if request.param == "config_json" else None
            write_cell(store, cell(norm, seed, steps), "done", final, steps=steps, config_json=cfg)
    return str(tmp_path / "out")


def test_two_versions_are_not_pooled(two_versions):
    cells, evals = load.table(two_versions, "cells", SWEEP), load.table(two_versions, "evals", SWEEP)
    rob = summaries.lr_robustness(cells, evals)
    assert sorted(rob.select("norm", "setting", "seeds").iter_rows()) == [
        ("batch", "train.steps=20", 2),
        ("batch", "train.steps=50", 2),
        ("none", "train.steps=20", 2),
        ("none", "train.steps=50", 2),
    ]
    for (steps, norm), finals in FINALS.items():
        r = rob.filter(norm=norm, setting=f"train.steps={steps}").row(0, named=True)
        assert r["value"] == pytest.approx(sum(finals) / 2) and r["value_n"] == 2
    fm = summaries.final_metrics(cells, evals)
    assert fm["seeds"].to_list() == [2, 2, 2, 2] and set(fm["setting"]) == {"train.steps=20", "train.steps=50"}
    ranges = summaries.robust_range(rob)
    assert len(ranges) == 4  # one robust range per (arch, norm, setting)


def test_report_shows_the_setting(two_versions, tmp_path):
    [w] = report.write(two_versions, tmp_path / "rep")
    html = (w.folder / "report.html").read_text()
    assert "kept apart, never pooled: train.steps=20; train.steps=50" in html
    assert (
        html.count("<td>train.steps=20</td>") == html.count("<td>train.steps=50</td>") == 4
    )  # robustness 2 + ranges 2
    lr = pl.read_parquet(w.folder / "tables" / "lr_robustness.parquet")
    assert len(lr) == 4 and set(lr["seeds"]) == {2}


def test_nothing_varies_gives_an_empty_setting(tmp_path):
    store = Store(str(tmp_path))
    for norm in ("none", "batch"):
        for seed in (0, 1):
            write_cell(store, cell(norm, seed, 50), "done", 0.9, config_json=config(norm, seed, 50))
    labelled = groups.label(load.table(str(tmp_path), "cells")).collect()
    assert set(labelled["setting"]) == {""} and set(labelled["norm"]) == {"none", "batch"}


def test_varied_norm_options_name_the_norm_not_the_others(tmp_path):
    store = Store(str(tmp_path))
    for eps in (1e-5, 1e-3):
        for seed in (0, 1):
            write_cell(store, cell("batch", seed, 50, eps=eps), "done", 0.9, config_json=config("batch", seed, 50, eps))
    for seed in (0, 1):
        write_cell(store, cell("none", seed, 50), "done", 0.9, config_json=config("none", seed, 50))
    labelled = groups.label(load.table(str(tmp_path), "cells")).collect()
    assert sorted(set(labelled["norm"])) == ["batch[eps=0.001]", "batch[eps=1e-05]", "none"]
    assert set(labelled["setting"]) == {""}  # the data set's root is where it sits, not a setting


def test_report_spec_restricts_to_the_spec_cells(tmp_path, spec_file, capsys):
    from conftest import TINY_DLN, tiny_spec

    out = tmp_path / "out"
    spec = spec_file(tiny_spec(out, grids=[TINY_DLN], name=SWEEP))
    name, ids = report.spec_cells(str(spec))
    assert name == SWEEP and len(ids) == 8
    store = Store(str(out))
    from bnsweep.specfile import load_cells

    for c in load_cells(spec)[1]:
        write_cell(store, c, "done", 100.0 + c.seed, classification=False)
    stray = SimpleNamespace(cell_id="other-version", sweep=SWEEP, arch="dln", norm="none", lr=1e-4, seed=5)
    write_cell(store, stray, "done", 1.0, classification=False)  # a cell of an earlier version of the spec
    assert main(["report", str(out), "--spec", str(spec), "-o", str(tmp_path / "rep")]) == 0
    lr = pl.read_parquet(tmp_path / "rep" / SWEEP / "tables" / "lr_robustness.parquet")
    assert lr.filter(norm="none", lr=1e-4)["seeds"].to_list() == [2]  # seed 5 of the stray cell is left out
    assert lr["seeds"].sum() == 8
    assert main(["report", str(out), "-o", str(tmp_path / "all")]) == 0
    assert pl.read_parquet(tmp_path / "all" / SWEEP / "tables" / "lr_robustness.parquet")["seeds"].sum() == 9
    capsys.readouterr()
    other = spec_file(tiny_spec(out, grids=[TINY_DLN], name="elsewhere"), "other.yaml")
    assert main(["report", str(out), "--spec", str(other)]) == 2
    assert "sweep 'elsewhere'" in capsys.readouterr().err
