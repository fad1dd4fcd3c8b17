"""A cell interrupted at any point resumes from its checkpoint and ends exactly as an uninterrupted run."""

import io
import os

import polars as pl
import pytest
import torch
from conftest import TIMING
from polars.testing import assert_frame_equal
from test_measure_cells import ALL_ON, with_measure
from test_train import cell

from bnsweep.cell import run_cell, run_pack
from bnsweep.layout import SCHEMAS, damaged_dir
from bnsweep.norms import NORMS
from bnsweep.records import Store
from bnsweep.spec import CellConfig
from bnsweep.train import TrainState, train_cell


class Stop(Exception):
    pass


def interrupted(c: CellConfig, at: int) -> dict:
    """Train `c` with checkpoints, 'crash' right after the checkpoint at step `at`; return that state."""
    saved = {}

    def save(blob: bytes, step: int):
        saved["state"] = state = TrainState.read(blob)  # through bytes, as in the store
        assert state["step"] == step
        if state["step"] == at:
            raise Stop

    with pytest.raises(Stop):
        train_cell(c, checkpoint=save, checkpoint_every=c.checkpoint_every)
    return saved["state"]


def _bytes(state):
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


@pytest.mark.slow
@pytest.mark.parametrize("norm", NORMS)
def test_resume_is_bit_identical(norm):
    c = with_measure(cell("vgg_mini", norm, 0.1, steps=24, eval_every=5), ALL_ON)
    c = CellConfig.model_validate({**c.model_dump(by_alias=True), "checkpoint_every": 8})
    whole = train_cell(c)
    resumed = train_cell(c, resume=interrupted(c, at=16))
    assert resumed.resumed_from == 16
    assert resumed.steps == whole.steps and resumed.evals == whole.evals and resumed.measure_rows == whole.measure_rows


def test_run_cell_resumes_from_the_store_and_cleans_up(tmp_path):
    c = CellConfig.model_validate({**cell("dln", "noisy_batch", 1e-4, steps=30, eval_every=7).model_dump(), "checkpoint_every": 10})
    ref, store = Store(str(tmp_path / "ref")), Store(str(tmp_path / "out"))
    run_cell(c, ref)
    store.put(store.checkpoint_path(c), _bytes(interrupted(c, at=20)))  # what a killed attempt leaves
    run_cell(c, store)
    for name in ("cells", "steps", "evals"):
        a, b = ref.read(name, "t"), store.read(name, "t")
        keep = [f.name for f in SCHEMAS[name] if f.name not in TIMING]
        assert a.select(keep).equals(b.select(keep)), name
    assert store.read("cells", "t").column("resumed_from").to_pylist() == [20]
    assert store.get(store.checkpoint_path(c)) is None


def test_checkpoints_do_not_change_the_cell_id():
    c = cell("dln")
    assert CellConfig.model_validate({**c.model_dump(), "checkpoint_every": 5}).cell_id == c.cell_id


def _aside(store: Store) -> list[str]:
    return [f for _, _, fs in os.walk(damaged_dir(store.root)) for f in fs]


def _same_result(ref: Store, store: Store) -> None:
    for name in ("steps", "evals"):
        assert ref.read(name, "t").equals(store.read(name, "t")), name


def _resumable(c: CellConfig) -> CellConfig:
    return CellConfig.model_validate({**c.model_dump(), "checkpoint_every": 10})


@pytest.mark.parametrize("case", ["another seed", "another norm, forged ids", "older version", "past the end"])
def test_a_checkpoint_not_provably_the_cells_is_moved_aside_and_the_cell_starts_afresh(tmp_path, case, capsys):
    """Another cell's checkpoint under this cell's name (same arch and norm, other seed), one that loads but does
    not fit (another norm's state carrying this cell's ids), one without ids, or one past the cell's end."""
    c = _resumable(cell("dln", "batch", 1e-4, seed=0, steps=30, eval_every=10))
    ref, store = Store(str(tmp_path / "ref")), Store(str(tmp_path / "out"))
    run_cell(c, ref)
    other = {"another seed": _resumable(cell("dln", "batch", 1e-4, seed=1, steps=30, eval_every=10)),
             "another norm, forged ids": _resumable(cell("dln", "none", 1e-4, seed=0, steps=30, eval_every=10))}.get(case, c)
    state = interrupted(other, at=20)
    if case == "another norm, forged ids":
        state |= {"cell_id": c.cell_id, "spec_hash": c.spec_hash}
    elif case == "older version":
        del state["cell_id"], state["spec_hash"]
    elif case == "past the end":
        state["step"] = 31
    store.put(store.checkpoint_path(c), _bytes(state))
    assert run_cell(c, store)["status"] == "done"
    err = capsys.readouterr().err
    assert "starts afresh from step 0" in err
    assert store.read("cells", "t")["resumed_from"].to_pylist() == [None]
    _same_result(ref, store)  # nothing of the other state leaked in
    assert [f.split(".pt.")[0] for f in _aside(store)] == [c.cell_id]  # moved aside, never deleted


def test_a_checkpoint_records_its_cell_and_spec_hash():
    c = _resumable(cell("dln", "batch", 1e-4, steps=30, eval_every=10))
    state = interrupted(c, at=10)
    assert (state["cell_id"], state["spec_hash"]) == (c.cell_id, c.spec_hash) and c.spec_hash.startswith(c.cell_id)


def test_a_pack_member_with_a_checkpoint_that_does_not_fit_starts_afresh(tmp_path, capsys):
    cells = [CellConfig.model_validate({**_resumable(cell("dln", "batch", lr, seed=0, steps=30, eval_every=10)).model_dump(),
                                        "execution": {"pack": 2}}) for lr in (1e-4, 2e-4)]
    ref, store = Store(str(tmp_path / "ref")), Store(str(tmp_path / "out"))
    run_pack(cells, ref)
    wrong = _resumable(cell("dln", "none", 1e-4, seed=0, steps=30, eval_every=10))
    store.put(store.checkpoint_path(cells[1]), _bytes(interrupted(wrong, at=20) | {"cell_id": cells[1].cell_id,
                                                                                   "spec_hash": cells[1].spec_hash}))
    assert [o["status"] for o in run_pack(cells, store)] == ["done", "done"]
    assert "checkpoint does not fit the cell" in capsys.readouterr().err
    assert [f.split(".pt.")[0] for f in _aside(store)] == [cells[1].cell_id]
    order = lambda s: pl.from_arrow(s.read("steps", "t")).select("cell_id", "step", "loss").sort("cell_id", "step")
    assert_frame_equal(order(ref), order(store), rtol=1e-5)  # the other state left no trace (packed vs alone: float32)
