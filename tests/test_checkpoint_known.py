"""The checkpoint guard rails with known answers: which saved state a cell resumes from, the exact reason a state
is refused, where a refused one goes, what the progress sidecar says, and when a stored result counts as done.

The states are built by hand (plain dicts through torch.save, as a checkpoint is stored), so each case names
its expected outcome outright; the results are one tiny trained DLN cell, edited file by file.
"""

import io
import json
import os
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from test_train import cell

from bnsweep.cell import has_result, load_checkpoint, not_its, resume_point, run_cell
from bnsweep.layout import damaged_dir, progress_file
from bnsweep.records import Store
from bnsweep.spec import CellConfig

STEPS = 30


def resumable(every: int = 10, **kw) -> CellConfig:
    c = cell("dln", "batch", 1e-4, steps=STEPS, eval_every=10, **kw)
    return CellConfig.model_validate({**c.model_dump(), "checkpoint_every": every})


def blob(state) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def own(c: CellConfig, step: int = 10, **extra) -> dict:
    """A state that names `c` as its owner at `step`."""
    return {"cell_id": c.cell_id, "spec_hash": c.spec_hash, "step": step, **extra}


def sidecar(store: Store, c: CellConfig) -> dict:
    rec = json.loads(store.get(progress_file(store.root, c.sweep, c.cell_id)))
    return {k: rec[k] for k in ("cell_id", "step", "steps", "checkpointed")}


def aside(store: Store) -> list[str]:
    return sorted(f for _, _, fs in os.walk(damaged_dir(store.root)) for f in fs)


# --- not_its: the reason, word for word ---------------------------------------------------------------------------


def test_a_state_of_this_cell_inside_its_steps_is_its_own():
    c = resumable()
    for step in (1, 10, STEPS - 1):  # both ends of 1..steps-1
        assert not_its(own(c, step), c) is None
    assert not_its({**own(c), "spec_hash": c.spec_hash, "extra": 1}, c) is None


@pytest.mark.parametrize("state", [[1, 2], "cell", None, {"spec_hash": "x", "step": 3}])
def test_a_state_without_a_cell_id_is_refused(state):
    assert not_its(state, resumable()) == "checkpoint records no cell id (written by an older version, or not a checkpoint)"


def test_another_cells_state_is_refused_naming_both_ids():
    c = resumable()
    assert not_its({**own(c), "cell_id": "abc"}, c) == f"checkpoint of cell 'abc', not of {c.cell_id}"
    long = "x" * 45  # shown to its first 40 characters
    assert not_its({**own(c), "cell_id": long}, c) == f"checkpoint of cell {'x' * 40!r}, not of {c.cell_id}"


def with_field(state: dict, key: str, value) -> dict:
    """`state` with `key` set to `value`, or without `key` where value is "missing"."""
    if value == "missing":
        del state[key]
    else:
        state[key] = value
    return state


@pytest.mark.parametrize("spec_hash", ["0" * 16, None, "missing"])
def test_another_spec_of_the_same_cell_is_refused(spec_hash):
    c = resumable()
    assert not_its(with_field(own(c), "spec_hash", spec_hash), c) == "checkpoint of another spec of this cell id (its spec hash differs)"


@pytest.mark.parametrize(("step", "shown"), [(0, "0"), (STEPS, str(STEPS)), (-3, "-3"), (10.0, "10.0"), ("10", "10"),
                                             (None, "None"), ("9" * 25, "9" * 20), ("missing", "None")])
def test_a_step_outside_one_to_the_last_is_refused(step, shown):
    c = resumable()
    assert not_its(with_field(own(c), "step", step), c) == f"checkpoint at step {shown}, outside 1..{STEPS - 1}"


# --- load_checkpoint and resume_point: what resumes, what is moved aside, what the sidecar says --------------------


def test_no_checkpoint_loads_as_none_and_the_cell_starts_at_step_zero(tmp_path):
    store, c = Store(str(tmp_path)), resumable()
    assert load_checkpoint(store, c) is None and aside(store) == []
    assert resume_point(store, c) is None
    assert sidecar(store, c) == {"cell_id": c.cell_id, "step": 0, "steps": STEPS, "checkpointed": False}


def test_the_cells_own_state_is_returned_and_its_step_recorded(tmp_path):
    store, c = Store(str(tmp_path)), resumable()
    store.put(store.checkpoint_path(c), blob(own(c, 20, weights=torch.arange(3.0))))
    state = resume_point(store, c)
    assert state["step"] == 20 and state["cell_id"] == c.cell_id and torch.equal(state["weights"], torch.arange(3.0))
    assert sidecar(store, c) == {"cell_id": c.cell_id, "step": 20, "steps": STEPS, "checkpointed": True}
    assert store.get(store.checkpoint_path(c)) is not None and aside(store) == []  # kept: it resumes from it


def test_a_cell_without_checkpoints_ignores_a_stored_state(tmp_path):
    store, c = Store(str(tmp_path)), resumable(every=0)
    store.put(store.checkpoint_path(c), blob(own(c, 20)))
    assert resume_point(store, c) is None
    assert sidecar(store, c) == {"cell_id": c.cell_id, "step": 0, "steps": STEPS, "checkpointed": False}


@pytest.mark.parametrize(("data", "why"), [
    (b"", "EOFError: "),  # a zero-length file (a torn write): an error without a message
    (b"garbage", "UnpicklingError: Weights only load failed. In PyTorch 2.6, we changed the default value of the "
                 "`weights_only` argument in `torch.load` from `False` to `True`. Re-running `torch."),
    (blob({"x": torch.zeros(3)})[:200], "RuntimeError: PytorchStreamReader failed reading zip archive: failed finding "
                                         "central directory. This is an internal miniz error. If you are seeing this error, "
                                         "there is a high"),
])
def test_a_state_that_does_not_load_is_moved_aside_saying_why(tmp_path, capsys, data, why):
    """The reason is the error's type and the first 160 characters of its first line."""
    store, c = Store(str(tmp_path)), resumable()
    store.put(store.checkpoint_path(c), data)
    assert resume_point(store, c) is None
    assert store.get(store.checkpoint_path(c)) is None and [f.split(".pt.")[0] for f in aside(store)] == [c.cell_id]
    err = capsys.readouterr().err
    assert f": checkpoint does not load safely ({why}); cell {c.cell_id} starts afresh from step 0\n" in err
    assert sidecar(store, c) == {"cell_id": c.cell_id, "step": 0, "steps": STEPS, "checkpointed": False}


def test_a_state_that_is_not_the_cells_is_moved_aside_with_the_reason(tmp_path, capsys):
    store, c = Store(str(tmp_path)), resumable()
    store.put(store.checkpoint_path(c), blob({**own(c), "cell_id": "abc"}))
    assert load_checkpoint(store, c) is None
    assert [f.split(".pt.")[0] for f in aside(store)] == [c.cell_id]
    assert (f": checkpoint of cell 'abc', not of {c.cell_id}; cell {c.cell_id} starts afresh from step 0\n"
            in capsys.readouterr().err)
    assert sidecar(store, c)["checkpointed"] is False and sidecar(store, c)["step"] == 0


# --- has_result: done or diverged only when the whole result verifies ----------------------------------------------


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One tiny DLN cell with an ICS measurement, trained to the end once; each test edits a copy."""
    c = CellConfig.model_validate({**cell("dln", "batch", 1e-4, steps=12, eval_every=6).model_dump(by_alias=True),
                                   "measure": {"ics": {"every": 6, "layers": [2]}}})
    root = tmp_path_factory.mktemp("finished") / "out"
    assert run_cell(c, Store(str(root)))["status"] == "done"
    return root, c


@pytest.fixture
def result(finished, tmp_path):
    root, c = finished
    shutil.copytree(root, tmp_path / "out")
    return Store(str(tmp_path / "out")), c


def rewrite(path: str, **columns) -> None:
    """The Parquet file at `path` with `columns` replaced (each by one value repeated)."""
    t = pq.read_table(path)
    for name, value in columns.items():
        i = t.schema.get_field_index(name)
        t = t.set_column(i, t.schema.field(i), pa.array([value] * t.num_rows, t.schema.field(i).type))
    pq.write_table(t, path)


def test_a_verified_result_is_done(result):
    store, c = result
    assert has_result(store, c) == "done"


def test_no_cells_file_is_no_result(result):
    store, c = result
    os.remove(store.path("cells", c))
    assert has_result(store, c) is None


@pytest.mark.parametrize(("status", "expected"), [("diverged", "diverged"), ("failed", None)])
def test_only_done_and_diverged_are_results(result, status, expected):
    store, c = result
    rewrite(store.path("cells", c), status=status)
    assert has_result(store, c) == expected


def test_a_missing_result_file_is_no_result(result):
    store, c = result
    os.remove(store.path("evals", c))
    assert has_result(store, c) is None


def test_an_older_result_without_its_measurement_table_is_no_result(result):
    """Without a record of its files (an older version's row), the result must still hold every table its cell
    turns on: steps, evals and ics here."""
    store, c = result
    rewrite(store.path("cells", c), files_json=None)
    assert has_result(store, c) == "done"
    os.remove(store.path("ics", c))
    assert has_result(store, c) is None


def test_an_older_result_of_another_learning_rate_at_this_cells_place_is_no_result(result):
    """Every file of the result says lr 2e-4 (consistently, so each file agrees with the `cells` row): the keys are
    not this cell's spec's."""
    store, c = result
    rewrite(store.path("cells", c), files_json=None)
    for name in ("cells", "steps", "evals", "ics"):
        rewrite(store.path(name, c), lr=2e-4)
    assert has_result(store, c) is None
    for name in ("cells", "steps", "evals", "ics"):
        rewrite(store.path(name, c), lr=1e-4)
    assert has_result(store, c) == "done"
