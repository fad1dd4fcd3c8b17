"""The live view without Ray: the evaluation hook and its measurement summaries, progress sidecars,
the reporter that takes reports off the training thread, the progress line, the logger registry, and
`ls` / `report` on a sweep that is still running (or was interrupted)."""

import datetime as dt
import json
import math
import os
import socket
import threading
import time

import polars as pl
import pytest
from conftest import tiny_spec, write_spec
from test_measure_cells import with_measure
from test_train import cell
from waiting import HANG_S, wait_until

from analysis import progress, report
from bnsweep import layout, live, running
from bnsweep.cell import run_cell, run_pack
from bnsweep.cli import main
from bnsweep.errors import UserError
from bnsweep.measure.session import summarise
from bnsweep.progress_line import Line
from bnsweep.records import Store, cells_row, table
from bnsweep.reporter import Evaluation, Reporter
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


@pytest.fixture
def half_run(tmp_path):
    """A sweep of 4 cells part way: 2 finished, 1 started with a checkpoint at step 20, 1 not started."""
    cells = [cell("dln", "batch", lr, seed=s, steps=40, eval_every=20) for lr in (1e-4, 1e-3) for s in (0, 1)]
    store = Store(str(tmp_path / "out"))
    running.write_run(store, "t", cells)
    for c in cells[:2]:
        assert run_cell(c, store)["status"] == "done"
    running.write_progress(store, cells[2], 20, checkpointed=True)
    return store, cells


def hold_lock(store, alive: bool, started: str = "2000-01-01T00:00:00+00:00"):
    rec = {"id": "x", "host": socket.gethostname() if alive else "elsewhere", "pid": os.getpid(),
           "started": started, "heartbeat": time.time() - (0 if alive else 3600)}
    store.put(layout.lock_file(store.root, "t"), json.dumps(rec).encode())


@pytest.mark.parametrize("alive", [True, False])
def test_ls_shows_running_cells_with_their_checkpointed_step(half_run, alive, capsys):
    store, cells = half_run
    hold_lock(store, alive)
    assert main(["ls", store.root]) == 0
    out = capsys.readouterr().out
    word = "running" if alive else "interrupted"
    head = out.splitlines()[0]
    assert head.startswith("sweep t: 2 cells, 2 done, 0 diverged, 0 failed; wall time")
    assert head.endswith(f"1 cell {word}, 2 of 4 cells still to come")
    row = next(line.split() for line in out.splitlines() if cells[2].cell_id in line)
    assert row[6:8] == [word, "20/40"]
    assert cells[3].cell_id not in out  # not started: counted, not listed


def test_a_cell_not_yet_resumed_by_the_run_going_on_is_interrupted(half_run):
    store, cells = half_run
    hold_lock(store, True, started="2999-01-01T00:00:00+00:00")  # the driver started after the cell's last sidecar
    st = progress.state(store, "t", pl.from_arrow(store.read("cells", "t")).select("cell_id", "status"))
    assert st.live and {u["cell_id"]: u["state"] for u in st.unfinished}[cells[2].cell_id] == progress.INTERRUPTED
    assert st.line() == "running: 0 cells running, 1 cell interrupted, 2 of 4 cells still to come"


def test_ls_on_a_sweep_with_no_finished_cell_yet(tmp_path, capsys):
    c = cell("dln", "batch", 1e-4, steps=40)
    store = Store(str(tmp_path / "out"))
    running.write_run(store, "t", [c])
    running.write_progress(store, c, 0, checkpointed=False)
    hold_lock(store, True)
    assert main(["ls", store.root]) == 0
    out = capsys.readouterr().out
    assert out.startswith("sweep t: no cell finished yet; running: 1 cell running, 1 of 1 cells still to come")
    assert c.cell_id in out and "0/40" in out
    assert main(["report", store.root, "-o", str(tmp_path / "rep")]) == 2
    assert "no cell has finished" in capsys.readouterr().err


def test_state_counts_failed_cells_as_still_to_come(half_run):
    store, cells = half_run
    failed = cells[3]
    row = cells_row(failed, None, dt.datetime.now(dt.timezone.utc), 0.5, {}, "RuntimeError: boom")
    store.write("cells", failed, table("cells", failed, {k: [v] for k, v in row.items()}))
    st = progress.state(store, "t", pl.from_arrow(store.read("cells", "t")).select("cell_id", "status"))
    assert st.total == 4 and st.results == 2 and st.to_come == 2 and not st.live
    assert {u["cell_id"]: u["state"] for u in st.unfinished} == {cells[2].cell_id: progress.INTERRUPTED,
                                                                 failed.cell_id: progress.RETRY}


def test_report_on_a_running_sweep_labels_unfinished_cells(half_run, tmp_path, capsys):
    store, cells = half_run
    hold_lock(store, True)
    assert main(["report", store.root, "-o", str(tmp_path / "rep")]) == 0
    assert "  running: 1 cell running, 2 of 4 cells still to come" in capsys.readouterr().out.splitlines()
    html = (tmp_path / "rep" / "t" / "report.html").read_text()
    assert "Sweep still running" in html and "2 of 4 cells still to come" in html
    assert cells[2].cell_id in html and "running at step 20 / 40" in html
    assert cells[3].cell_id in html and "not started" in html
    unfinished = html.split("still to come")[1].split("</table>")[0]
    assert cells[0].cell_id not in unfinished and cells[1].cell_id not in unfinished  # finished: not in that table


def test_report_of_a_finished_sweep_says_nothing_is_to_come(half_run, tmp_path):
    store, cells = half_run
    running.remove_progress(store, cells[2])
    running.write_run(store, "t", cells[:2])  # the latest run had only the finished cells
    [written] = report.write(store.root, tmp_path / "rep")
    html = (written.folder / "report.html").read_text()
    assert written.note == "" and "still to come" not in html and "Sweep still running" not in html


def evaluation(step, steps=40, loss=0.5):
    rows = [{"step": step, "split": "train", "loss": loss, "accuracy": 0.9}, {"step": step, "split": "test", "loss": 0.7, "accuracy": None}]
    return Evaluation(step, steps, rows, {})


def test_an_evaluation_is_flat_numbers_at_its_training_step():
    assert evaluation(20).metrics() == {"step": 20, "steps": 40, "train_loss": 0.5, "train_accuracy": 0.9, "test_loss": 0.7}


def steps(reported: dict[str, list[dict]]) -> dict[str, list[int]]:
    return {k: [m["step"] for m in ms] for k, ms in reported.items()}


class Driver:
    """tune.report's stand-in: records each report and, while not `released`, waits as a lagging driver would."""

    def __init__(self):
        self.got, self.released, self.taking = [], threading.Event(), threading.Event()
        self.released.set()
        self._cond = threading.Condition()

    def __call__(self, result):
        self.taking.set()
        self.released.wait()
        with self._cond:
            self.got.append({k: [m["step"] for m in ms] for k, ms in result["cells"].items()})
            self._cond.notify_all()

    def wait_for(self, n: int) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.got) >= n, timeout=HANG_S), f"the driver got {self.got}, not {n} reports"


def in_thread(fn) -> threading.Thread:
    t = threading.Thread(target=fn, daemon=True)
    t.start()
    return t


def test_reporter_never_waits_for_the_driver_and_keeps_each_cells_newest_evaluations():
    driver = Driver()
    driver.released.clear()  # the driver lags: the first report stays in flight until released
    rep = Reporter(driver, backlog=2)
    rep.put("a", evaluation(0))
    assert driver.taking.wait(HANG_S)

    def train():  # the training thread's puts, while the driver still holds the first report
        for step in (10, 20, 30):
            rep.put("a", evaluation(step))
        rep.put("b", evaluation(30))

    t = in_thread(train)
    t.join(HANG_S)  # a put that waited on the driver would wait forever: the driver is only released below
    assert not t.is_alive(), "Reporter.put waited for the driver"
    assert rep.dropped == 1 and steps({k: [e.metrics() for e in v] for k, v in rep.waiting.items()}) == {"a": [20, 30], "b": [30]}
    driver.released.set()
    driver.wait_for(2)
    assert driver.got == [{"a": [0]}, {"a": [20, 30], "b": [30]}]  # all that waited, a pack's members in one report
    rep.put("a", evaluation(40))  # the last step: kept for the final report, not sent
    left = rep.close()
    assert steps(left) == {"a": [40]} and len(driver.got) == 2 and rep.sent == 4


def test_closing_waits_only_for_the_report_in_flight():
    driver = Driver()
    driver.released.clear()
    rep = Reporter(driver)
    rep.put("a", evaluation(10))
    assert driver.taking.wait(HANG_S)
    rep.put("a", evaluation(20))
    rep.put("a", evaluation(30))
    rep.put("a", evaluation(40))
    left = {}
    closer = in_thread(lambda: left.update(rep.close()))
    wait_until(lambda: rep._closed, "close() to begin")
    assert closer.is_alive() and driver.got == []  # close waits while the report is in flight ...
    driver.released.set()
    closer.join(HANG_S)
    assert not closer.is_alive(), "close() never returned after the driver took the report in flight"
    assert driver.got == [{"a": [10]}] and steps(left) == {"a": [20, 30, 40]}  # ... and sends nothing more


def test_a_failing_report_never_fails_the_cell():
    def broken(result):
        raise RuntimeError("driver gone")

    rep = Reporter(broken)
    rep.put("a", evaluation(10))
    wait_until(lambda: rep.error is not None, "the sending thread to meet the failing driver")
    rep.put("a", evaluation(20))
    rep.put("a", evaluation(40))
    assert isinstance(rep.error, RuntimeError)
    assert steps(rep.close()) == {"a": [20, 40]}


def test_progress_line_shows_each_running_cells_step_and_loss():
    line = Line(5)
    runs_a = [{"cell_id": "a", "name": "dln-batch-lr0.1-s0"}]
    runs_b = [{"cell_id": "b", "name": "dln-none-lr0.1-s0"}, {"cell_id": "c", "name": "dln-none-lr0.1-s1"}]
    line.running = 3
    line.evaluated(runs_a, {"cells": {"a": [{"step": 0, "steps": 40}, {"step": 20, "steps": 40, "train_loss": 0.123456}]}})
    line.evaluated(runs_b, {"cells": {"b": [{"step": 0, "steps": 40, "test_loss": 2.0}], "c": [{"step": 0, "steps": 40}]}})
    assert line.text().startswith("[0/5 cells] running 3,")
    assert line.text().endswith("| dln-batch-lr0.1-s0 20/40 loss 0.1235, dln-none-lr0.1-s0 0/40, dln-none-lr0.1-s1 0/40")
    line.ended(runs_a, {"done": 1, "diverged": 0, "failed": 0})
    assert line.text().startswith("[1/5 cells]") and "dln-batch" not in line.text()


def test_an_evaluation_line_counts_every_running_trial(capsys):
    """Two trials running: the line an evaluation prints says 2, also when the second started after the last line."""
    from types import SimpleNamespace

    from bnsweep.progress_line import callback

    trial = lambda cid, status: SimpleNamespace(status=status, config={"cell": {"runs": [{"cell_id": cid, "name": cid}]}})
    a, b = trial("a", "RUNNING"), trial("b", "PENDING")
    cb = callback(total=4, tty=False, every_s=0.0)
    cb.on_trial_start(0, [a, b], a)
    b.status = "RUNNING"  # started: a non-tty start prints nothing
    cb.on_trial_result(1, [a, b], a, {"cells": {"a": [{"step": 20, "steps": 40, "train_loss": 1.0}]}})
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("[0/4 cells] running 2,")


def test_run_names_carry_arch_norm_lr_seed_and_stay_unique():
    a, b = cell("dln", "batch", 1e-4, seed=3), cell("dln", "batch", 1e-4, seed=3, steps=41)  # same keys, another cell
    got = live.runs([a, b, cell("vgg_mini", "none", 0.1)])
    assert got[2]["name"] == "vgg_mini-none-lr0.1-s0" and got[2]["lr"] == 0.1 and got[2]["seed"] == 0
    assert got[0]["name"] == f"dln-batch-lr0.0001-s3-{a.cell_id}" and got[1]["name"].endswith(b.cell_id)


def test_log_dir_defaults_under_the_output_and_is_needed_for_object_stores(tmp_path):
    assert live.log_dir(str(tmp_path / "out"), "s", None) == f"{tmp_path}/out/_logs/s"
    assert live.log_dir(str(tmp_path / "out"), "s", str(tmp_path / "l")) == str(tmp_path / "l")
    with pytest.raises(UserError, match="--log-dir"):
        live.log_dir("s3://bucket/out", "s", None)


def test_an_unknown_logger_names_the_value_and_the_known_ones(tmp_path, capsys):
    assert main(["run", str(tmp_path / "none.yaml"), "--log", "neptune"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "'neptune'" in err and all(n in err for n in live.LOGGERS)
    assert main(["run", str(tmp_path / "none.yaml"), "--log-dir", str(tmp_path / "logs")]) == 2
    assert capsys.readouterr().err.startswith("error: --log-dir ")
    with pytest.raises(UserError, match="unknown --log value 'neptune'; known: mlflow, tensorboard, wandb"):
        live.check(["tensorboard", "neptune"], str(tmp_path / "logs"))
    assert not (tmp_path / "logs").exists()  # nothing written before every logger passed


def test_wandb_online_without_credentials_is_one_line_before_anything_runs(tmp_path, monkeypatch, capsys):
    pytest.importorskip("wandb")
    for var in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc: not logged in
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    spec = write_spec(tmp_path / "spec.yaml", tiny_spec(tmp_path / "out"))
    assert main(["run", str(spec), "--log", "tensorboard", "--log", "wandb"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == ["error: --log wandb: no W&B credentials; run `wandb login`, set WANDB_API_KEY, "
                                "or set WANDB_MODE=offline"]
    assert not (tmp_path / "out").exists()  # nothing ran, nothing was written
    monkeypatch.setenv("WANDB_MODE", "offline")
    live.check(["wandb", "tensorboard", "mlflow"], str(tmp_path / "logs"))
    assert (tmp_path / "logs" / "mlflow.db").is_file() and (tmp_path / "logs" / "tensorboard").is_dir()


def test_an_mlflow_server_that_does_not_answer_is_one_line(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    with pytest.raises(UserError, match=f"--log mlflow: tracking store http://127.0.0.1:{port} does not answer") as e:
        live.check(["mlflow"], str(tmp_path / "logs"))
    assert "\n" not in str(e.value)
