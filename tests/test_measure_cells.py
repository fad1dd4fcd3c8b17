"""Measurements inside real cells: training is unchanged, tables and costs are written, specs validated."""

import polars as pl
import pytest
from conftest import MEASURE_ALL, TINY_DLN, tiny_spec, write_spec
from test_train import cell

from bnsweep.cell import run_cell
from bnsweep.cli import main
from bnsweep.layout import SCHEMAS
from bnsweep.measure import MEASURES
from bnsweep.norms import NORMS
from bnsweep.records import Store
from bnsweep.spec import CellConfig
from bnsweep.specfile import load_cells
from bnsweep.train import train_cell

ALL_ON = MEASURE_ALL


def with_measure(c: CellConfig, measure: dict) -> CellConfig:
    return CellConfig.model_validate({**c.model_dump(by_alias=True), "measure": measure})


@pytest.mark.slow
@pytest.mark.parametrize("norm", NORMS)
def test_measurements_never_change_training(norm):
    base = cell("vgg_mini", norm, 0.1, steps=12, eval_every=4)
    off, on = train_cell(base), train_cell(with_measure(base, ALL_ON))
    assert on.steps == off.steps  # bit-identical losses and accuracies, every step
    assert on.evals == off.evals
    assert {k: len(v) > 0 for k, v in on.measure_rows.items()} == {k: True for k in MEASURES}
    assert off.measure_rows == {}


def test_measurement_tables_and_costs_are_written(tmp_path):
    c = with_measure(
        cell("dln", "batch", 1e-4, steps=20, eval_every=10),
        {"ics": {"every": 5, "layers": [2, 3]}, "landscape": {"log": {"points": 3}}, "activations": {"steps": [7], "layers": [1]}},
    )
    store = Store(str(tmp_path))
    assert run_cell(c, store)["status"] == "done"
    ics = pl.from_arrow(store.read("ics", "t"))
    assert sorted(set(ics["step"])) == [0, 5, 10, 15, 19] and set(ics["layer"]) == {2, 3}
    assert set(ics["mode"]) == {"train"} and set(ics["definition"]) == {1}
    land = pl.from_arrow(store.read("landscape", "t"))
    assert len(land) == len(set(land["step"])) * 8  # 8 etas per probed step by default
    assert land.group_by("step").agg(pl.col("beta_eff").n_unique())["beta_eff"].max() == 1
    acts = pl.from_arrow(store.read("activations", "t"))
    assert sorted(acts["step"]) == [0, 7, 19]
    cells = pl.from_arrow(store.read("cells", "t")).row(0, named=True)
    assert cells["ics_s"] > 0 and cells["landscape_s"] > 0 and cells["activations_s"] > 0 and cells["curvature_s"] is None
    for name in ("ics", "landscape", "activations"):
        assert store.read(name, "t").schema == SCHEMAS[name]
    assert store.read("curvature", "t").num_rows == 0  # not measured: no file


def test_measure_block_changes_the_cell_id_and_nothing_else_does():
    base = cell("dln", "batch", 1e-4)
    assert with_measure(base, {}).cell_id == base.cell_id
    assert with_measure(base, {"ics": {"every": 5, "layers": [2]}}).cell_id != base.cell_id


@pytest.mark.parametrize(
    "measure,message",
    [
        ({"ics": {"every": 5, "layers": [9]}}, "measure.ics.layers: [9] out of range for arch 'dln', whose weight layers are #1..#4"),
        ({"activations": {"layers": [1]}}, "measure.activations: a schedule needs exactly one of every, log, steps (got none)"),
        ({"landscape": {"every": 5, "eta": {"from": 4, "to": 1}}}, "eta.to (1) must be >= eta.from (4)"),
        ({"ics": {"every": 5, "layers": [1], "colour": 1}}, "measure.ics.colour: unknown key"),
        ({"hessian": {"every": 5}}, "measure.hessian: unknown key; allowed: ics, landscape, activations, curvature"),
    ],
)
def test_bad_measure_blocks(measure, message, tmp_path, capsys):
    spec = write_spec(tmp_path / "s.yaml", tiny_spec(tmp_path / "out", grids=[TINY_DLN], measure=measure))
    assert main(["validate", str(spec)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "path",
    ["sweeps/noisy_bn.yaml", "sweeps/ics.yaml", "sweeps/landscape.yaml", "sweeps/lp_norms.yaml", "sweeps/dln.yaml", "sweeps/paper.yaml"],
)
def test_figure_sweeps_validate_and_measure(path):
    from conftest import ROOT

    spec, cells = load_cells(ROOT / path)
    assert cells and all(any(getattr(c.measure, m) is not None for m in MEASURES) for c in cells)


@pytest.mark.slow
@pytest.mark.parametrize("name", MEASURES)
def test_every_registered_measurement_runs_from_its_example(name, tmp_path):
    """A measurement added to MEASURES is tested here with no edit: its example options run in a real
    cell without changing training, fill its table with the table's schema, cost time, and its
    summary rule (if any) gives long rows."""
    base = cell("vgg_mini", "batch", 0.1, steps=12, eval_every=6)
    c = with_measure(base, {name: MEASURES[name].example})
    assert train_cell(c).steps == train_cell(base).steps
    store = Store(str(tmp_path))
    assert run_cell(c, store)["status"] == "done"
    t = store.read(name, "t")
    assert t.num_rows > 0 and t.schema == SCHEMAS[name]
    assert store.read("cells", "t")[f"{name}_s"].to_pylist()[0] > 0
    if MEASURES[name].summary is not None:
        long = MEASURES[name].summary(pl.from_arrow(t).lazy()).collect()
        assert {"cell_id", "step", "quantity", "value"} <= set(long.columns) and long.height > 0
        assert long["value"].is_finite().any()
