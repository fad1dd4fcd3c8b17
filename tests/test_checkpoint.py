"""A cell interrupted at any point resumes from its checkpoint and ends exactly as an uninterrupted run."""

import io

import pytest
import torch
from conftest import TIMING
from test_measure_cells import ALL_ON, with_measure
from test_train import cell

from bnsweep.cell import run_cell
from bnsweep.layout import SCHEMAS
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
