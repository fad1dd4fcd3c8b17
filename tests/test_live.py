"""The live view without Ray: the evaluation hook and its measurement summaries, and progress sidecars."""

import json
import math

import pytest
from test_measure_cells import with_measure
from test_train import cell

from bnsweep import layout, running
from bnsweep.cell import run_cell, run_pack
from bnsweep.measure.session import summarise
from bnsweep.records import Store
from bnsweep.spec import CellConfig
from bnsweep.train import TrainState, train_cell


def recorder():
    calls = []
    return calls, lambda step, rows, latest: calls.append((step, [dict(r) for r in rows], summarise(latest)))


def test_on_eval_sees_every_evaluation_and_never_changes_training():
    c = with_measure(cell("dln", "batch", 1e-4, steps=30, eval_every=10),
                     {"ics": {"every": 4, "layers": [2, 3]}, "landscape": {"every": 7, "eta": {"points": 3}}})
    calls, hook = recorder()
    on, off = train_cell(c, on_eval=hook), train_cell(c)
    assert on.steps == off.steps and on.evals == off.evals and on.measure_rows == off.measure_rows
    assert [s for s, _, _ in calls] == [0, 10, 20, 30]
    for step, rows, latest in calls:
        assert rows == [r for r in on.evals if r["step"] == step] and [r["split"] for r in rows] == ["train", "test"]
        # brute force from the rows recorded up to this evaluation: the latest probed step of each measurement
        ics = [r for r in on.measure_rows["ics"] if r["step"] < step]
        land = [r for r in on.measure_rows["landscape"] if r["step"] < step]
        if not ics:
            assert latest == {}
            continue
        last = max(r["step"] for r in ics)
        assert latest["ics/step"] == last
        for r in (r for r in ics if r["step"] == last):
            assert latest[f"ics/ics_l2/layer{r['layer']}"] == pytest.approx(r["l2"])
            assert latest[f"ics/ics_cosine/layer{r['layer']}"] == pytest.approx(r["cosine"])
        last = max(r["step"] for r in land)
        at = [r for r in land if r["step"] == last and math.isfinite(r["loss"]) and math.isfinite(r["grad_diff_l2"])]
        assert latest["landscape/step"] == last
        assert latest["landscape/grad_predictiveness"] == pytest.approx(max(r["grad_diff_l2"] for r in at))
        assert latest["landscape/loss_band"] == pytest.approx(max(r["loss"] for r in at) / min(r["loss"] for r in at))


def test_a_diverged_cell_reports_its_evaluations_until_it_stops():
    c = cell("dln", "none", 10.0, steps=40, eval_every=5)
    calls, hook = recorder()
    res = train_cell(c, on_eval=hook)
    assert res.status == "diverged"
    assert [s for s, _, _ in calls] == sorted({r["step"] for r in res.evals})


def test_each_pack_member_reports_its_own_evaluations(tmp_path):
    cells = [cell("dln", "batch", lr, seed=s, steps=20, eval_every=10) for lr, s in ((1e-4, 0), (3e-4, 1), (10.0, 0))]
    seen: dict[str, list] = {c.cell_id: [] for c in cells}
    store = Store(str(tmp_path))

    def hooks(c):
        return lambda step, rows, latest: seen[c.cell_id].append([dict(r) for r in rows])

    outs = run_pack(cells, store, hooks=hooks)
    assert [o["status"] for o in outs] == ["done", "done", "diverged"]
    for c in cells:
        evals = [r for r in store.read("evals", "t").to_pylist() if r["cell_id"] == c.cell_id]
        want = [[{k: r[k] for k in ("step", "split", "loss", "accuracy")} for r in evals[i : i + 2]] for i in range(0, len(evals), 2)]
        assert seen[c.cell_id] == want


def test_progress_sidecar_follows_the_checkpoint_and_goes_with_it(tmp_path):
    c = CellConfig.model_validate({**cell("dln", "batch", 1e-4, steps=30, eval_every=5).model_dump(), "checkpoint_every": 10})
    store = Store(str(tmp_path))
    side, ckpt = layout.progress_file(store.root, "t", c.cell_id), store.checkpoint_path(c)
    seen = []

    def look(step, rows, latest):  # what a reader sees at each evaluation, while the cell runs
        rec = json.loads(store.get(side))
        blob = store.get(ckpt)
        seen.append((step, rec["step"], rec["checkpointed"], TrainState.read(blob)["step"] if blob else None))

    assert run_cell(c, store, on_eval=look)["status"] == "done"
    # the evaluation at a step comes before that step's checkpoint; no checkpoint at the last step
    assert seen == [(0, 0, False, None), (5, 0, False, None), (10, 0, False, None), (15, 10, True, 10),
                    (20, 10, True, 10), (25, 20, True, 20), (30, 20, True, 20)]
    assert store.get(side) is None and store.get(ckpt) is None
    assert running.progress(store) == []
