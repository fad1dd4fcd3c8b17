"""The output store (bnsweep/records.py): the rows it builds, its paths, its writes, and what readers and runs see.

Every expected value is written out by hand: the row of a cell, the folder of a table, the name a damaged
file is moved to, the options Polars is given for an S3 endpoint, the lines a run prints.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import re
import socket
import sys
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from needs import unavailable

from bnsweep import records
from bnsweep.layout import SCHEMAS
from bnsweep.records import Store, cells_row, columns, table, warn
from bnsweep.spec import CellConfig, TrainSpec
from bnsweep.train import TrainResult

UTC = dt.timezone.utc
STARTED = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def config(**train) -> CellConfig:
    return CellConfig(sweep="t", arch="dln", norm="batch", lr=0.01, seed=3,
                      dataset={"name": "gaussian_regression", "samples": 64, "test_samples": 32}, model={"depth": 4},
                      norm_options={}, device="cpu", resources={"cpu": 1}, train=TrainSpec(steps=40, batch_size=16, **train))


def cell(cell_id: str, sweep: str = "a", lr: float = 0.1, seed: int = 0) -> SimpleNamespace:
    return SimpleNamespace(cell_id=cell_id, sweep=sweep, arch="dln", norm="batch", lr=lr, seed=seed)


def keys(c) -> dict:
    return {"cell_id": c.cell_id, "sweep": c.sweep, "arch": c.arch, "norm": c.norm, "lr": c.lr, "seed": c.seed}


def finish(store: Store, c, steps: int = 2) -> None:
    """A finished cell as older versions wrote it (no files record): checked by place, schema, keys and step rows."""
    store.write("steps", c, table("steps", c, {"step": list(range(steps)), "loss": [1.0] * steps, "accuracy": [0.5] * steps}))
    store.write("cells", c, table("cells", c, {"status": ["done"], "steps_done": [steps]}))


def buffered_stderr(monkeypatch):
    """sys.stderr as a block-buffered stream (as when redirected to a file); returns what was flushed so far, as text.

    Called in the test itself: pytest's capture sets sys.stderr again after fixtures run."""
    stream = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    monkeypatch.setattr(sys, "stderr", stream)
    return lambda: stream.buffer.getvalue().decode()


# --- rows ----------------------------------------------------------------------------------------


def test_a_finished_cells_row_holds_the_cell_its_result_its_place_in_the_pack_and_its_files():
    c = config(momentum=0.9, weight_decay=5e-4)
    res = TrainResult(status="diverged", device="cpu", steps={"step": [0, 1, 2], "loss": [1.0, 2.0, 9.0]}, diverged_step=2,
                      train_s=1.5, eval_s=0.25, measure_s={"ics": 0.5, "landscape": 0.75}, resumed_from=1,
                      performance={"tf32": False, "check_every": 3})
    files = {"steps": {"sha256": "ab", "file": "x.parquet"}, "evals": {"rows": 1}}  # out of order: stored sorted
    row = cells_row(c, res, STARTED, 90.5, {"hostname": "h", "node_id": "n"}, None, pack=(3, 1), files=files)
    assert row == {
        "dataset": "gaussian_regression", "steps": 40, "batch_size": 16, "momentum": 0.9, "weight_decay": 5e-4,
        "augment": False, "status": "diverged", "steps_done": 3, "diverged_step": 2, "error": None, "resumed_from": 1,
        "pack_size": 3, "pack_index": 1, "started_at": STARTED,
        "finished_at": dt.datetime(2026, 1, 2, 3, 5, 35, 500000, tzinfo=UTC), "wall_s": 90.5,
        "train_s": 1.5, "eval_s": 0.25, "hostname": "h", "node_id": "n", "config_json": c.model_dump_json(),
        "precision": "highest", "tf32": False, "check_every": 3, "ics_s": 0.5, "landscape_s": 0.75,
        "files_json": '{"evals": {"rows": 1}, "steps": {"file": "x.parquet", "sha256": "ab"}}',
    }


def test_a_failed_cells_row_says_failed_with_the_error_and_no_result():
    c = config()
    row = cells_row(c, None, STARTED, 2.0, {"hostname": "h"}, "RuntimeError: out of memory")
    assert row == {
        "dataset": "gaussian_regression", "steps": 40, "batch_size": 16, "momentum": 0.0, "weight_decay": 0.0,
        "augment": False, "status": "failed", "steps_done": 0, "diverged_step": None,
        "error": "RuntimeError: out of memory", "resumed_from": None, "pack_size": 1, "pack_index": 0,
        "started_at": STARTED, "finished_at": dt.datetime(2026, 1, 2, 3, 4, 7, tzinfo=UTC), "wall_s": 2.0,
        "train_s": None, "eval_s": None, "hostname": "h", "config_json": c.model_dump_json(), "precision": "highest",
        "files_json": "{}",
    }


def test_row_dicts_become_a_tables_columns_with_the_cells_keys_on_every_row():
    c = cell("c1", lr=0.5, seed=2)
    rows = [{"step": 0, "split": "train", "loss": 2.0}, {"step": 0, "split": "test", "loss": 3.0, "accuracy": 0.25}]
    assert columns(rows, "evals") == {"step": [0, 0], "split": ["train", "test"], "loss": [2.0, 3.0], "accuracy": [None, 0.25]}
    t = table("evals", c, columns(rows, "evals"))
    assert t.schema == SCHEMAS["evals"]
    assert t.to_pylist() == [{**keys(c), "step": 0, "split": "train", "loss": 2.0, "accuracy": None},
                             {**keys(c), "step": 0, "split": "test", "loss": 3.0, "accuracy": 0.25}]
    one = table("cells", c, {})  # no columns: one row of keys
    assert one.num_rows == 1 and one.select(list(keys(c))).to_pylist() == [keys(c)] and one["status"].to_pylist() == [None]


def test_a_warning_is_printed_once_and_at_once(monkeypatch):
    stderr = buffered_stderr(monkeypatch)
    message = "this store's clock runs backwards"
    warn(message)
    assert stderr() == f"warning: {message}\n"  # flushed: on stderr now, even where stderr is buffered
    warn(message)
    warn(message + "!")
    assert stderr() == f"warning: {message}\nwarning: {message}!\n"


# --- where things are ----------------------------------------------------------------------------


def test_the_store_root_is_the_absolute_folder_or_the_uris_path_without_a_trailing_slash(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    out = f"{tmp_path}/out"
    local = {"out": (out, out), "~/out": (f"{tmp_path}/home/out",) * 2, f"{out}/": (out, out),  # output: (uri, root)
             f"file://{out}": (f"file://{out}", out), f"{tmp_path}/boX": (f"{tmp_path}/boX",) * 2,
             f"{out} ": (f"{out} ",) * 2, "/": ("/", "")}
    for output, (uri, root) in local.items():
        store = Store(output)
        assert (store.uri, store.root, store.local) == (uri, root, True), output
    for output, root in {"mock:///a/b/": "a/b", "mock:///a/boX/": "a/boX"}.items():  # an in-memory, non-local filesystem
        store = Store(output)
        assert (store.uri, store.root, store.local) == (output, root, False)


def test_tables_cells_and_checkpoints_have_their_places_under_the_root(tmp_path):
    store, c = Store(str(tmp_path)), cell("c1", sweep="s")
    assert store.folder("steps", "s") == f"{tmp_path}/steps/sweep=s"
    assert store.path("evals", c) == f"{tmp_path}/evals/sweep=s/arch=dln/norm=batch/c1.parquet"
    assert store.checkpoint_path(c) == f"{tmp_path}/_checkpoints/sweep=s/c1.pt"


S3 = "s3://bucket/runs"


@pytest.mark.parametrize("uri, want", [
    (f"{S3}?endpoint_override=127.0.0.1:9000&scheme=http&region=eu-west-1",
     {"aws_endpoint_url": "http://127.0.0.1:9000", "aws_allow_http": "true", "aws_region": "eu-west-1"}),
    (f"{S3}?endpoint_override=minio.lan:9000&scheme=https", {"aws_endpoint_url": "https://minio.lan:9000"}),
    (f"{S3}?endpoint_override=minio.lan:9000", {"aws_endpoint_url": "https://minio.lan:9000"}),  # https unless told
    (f"{S3}?region=us-east-2", {"aws_region": "us-east-2"}),
    ("mock:///runs?endpoint_override=127.0.0.1:9000&scheme=http&region=eu-west-1", None),  # S3 options only for s3://
    ("mock:///runs", None),
])
def test_polars_reads_a_remote_store_with_its_endpoint_and_region(uri, want):
    store = Store(uri)
    assert store.scan_target(f"{store.root}/steps/a b.parquet") == (f"{uri.split(':')[0]}://{store.root}/steps/a b.parquet", want)


def test_a_scan_of_an_s3_store_reads_through_the_endpoint_and_region_its_uri_names(monkeypatch):
    """An S3-compatible server (moto) on loopback; without the URI's endpoint Polars would ask AWS itself."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        unavailable("moto[server] is not installed (pip install -e '.[dev]')")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for k, v in {"AWS_ACCESS_KEY_ID": "test-key", "AWS_SECRET_ACCESS_KEY": "test-secret"}.items():
        monkeypatch.setenv(k, v)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http", region="eu-west-1",
                          allow_bucket_creation=True).create_dir("bnsweep")
        store = Store(f"s3://bnsweep/runs?endpoint_override=127.0.0.1:{port}&scheme=http&region=eu-west-1")
        finish(store, cell("a1"), 3)
        assert store.scan("steps", "a").collect().select("cell_id", "step").rows() == [("a1", 0), ("a1", 1), ("a1", 2)]
    finally:
        server.stop()


def test_the_scheme_is_what_precedes_the_first_separator(tmp_path):
    store = Store("s3://bucket/a://b?region=eu-west-1")  # '://' may appear in an S3 key
    assert store.scan_target("bucket/a://b/x.parquet") == ("s3://bucket/a://b/x.parquet", {"aws_region": "eu-west-1"})
    assert Store(str(tmp_path)).scan_target(f"{tmp_path}/x.parquet") == (f"{tmp_path}/x.parquet", None)


# --- writing -------------------------------------------------------------------------------------


class Spy:
    """A filesystem that does what it wraps does and notes each stream it opens for writing and each rename."""

    def __init__(self, fs):
        self.fs, self.calls = fs, []

    def open_output_stream(self, path):
        self.calls.append(("write", path))
        return self.fs.open_output_stream(path)

    def move(self, src, dest):
        self.calls.append(("move", src, dest))
        return self.fs.move(src, dest)

    def __getattr__(self, name):
        return getattr(self.fs, name)


def test_a_local_write_goes_to_a_hidden_name_then_is_renamed_and_an_object_store_put_is_direct(tmp_path):
    store = Store(str(tmp_path))
    store.fs = spy = Spy(store.fs)
    path = f"{tmp_path}/new/dir/x.bin"
    store.put(path, b"all of it")
    (_, tmp), (_, src, dest) = spy.calls
    assert re.fullmatch(rf"{tmp_path}/new/dir/\.x\.bin\.[0-9a-f]{{32}}\.tmp", tmp) and (src, dest) == (tmp, path)
    assert open(path, "rb").read() == b"all of it" and os.listdir(f"{tmp_path}/new/dir") == ["x.bin"]
    store.local, spy.calls = False, []  # as on an object store, where one PUT is atomic
    store.put(f"{tmp_path}/y/z.bin", b"whole")
    assert spy.calls == [("write", f"{tmp_path}/y/z.bin")] and open(f"{tmp_path}/y/z.bin", "rb").read() == b"whole"


def test_a_write_that_cannot_be_renamed_into_place_fails_and_leaves_no_temporary_file(tmp_path):
    store = Store(str(tmp_path))
    os.makedirs(tmp_path / "x.bin" / "inside")  # a folder where the file should go
    with pytest.raises(OSError):
        store.put(f"{tmp_path}/x.bin", b"data")
    assert os.listdir(tmp_path) == ["x.bin"] and os.listdir(tmp_path / "x.bin") == ["inside"]


def test_a_cells_table_is_written_whole_and_deleted(tmp_path):
    store, c = Store(str(tmp_path)), cell("c1")
    t = table("steps", c, {"step": [0, 1], "loss": [1.0, 0.5], "accuracy": [None, None]})
    rec = store.write("steps", c, t)
    path = f"{tmp_path}/steps/sweep=a/arch=dln/norm=batch/c1.parquet"
    assert pq.read_table(path) == t and rec["file"] == "c1.parquet" and (rec["rows"], rec["steps"]) == (2, 2)
    store.delete("evals", c)  # nothing there: nothing happens
    store.delete("steps", c)
    assert not os.path.exists(path)


@pytest.mark.parametrize("data, want", [
    (b'{"id": "x", "generation": 2}', {"id": "x", "generation": 2}),
    (b"[1, 2]", None),  # JSON, but not an object
    (b'{"id": ', None),  # torn
    (b"", None),
    (None, None),  # absent
])
def test_a_record_is_a_json_object_or_nothing(tmp_path, data, want):
    store = Store(str(tmp_path))
    path = f"{tmp_path}/_locks/s.json"
    if data is not None:
        store.put(path, data)
    assert store.get(path) == data and store.get_record(path) == want


class Clock(dt.datetime):
    """The time is 2026-01-02 03:04:05.678901 UTC; the machine's local clock is 05:45 ahead (Nepal)."""

    @classmethod
    def now(cls, tz=None):
        t = dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
        return t.astimezone(tz) if tz else t.astimezone(dt.timezone(dt.timedelta(hours=5, minutes=45))).replace(tzinfo=None)


def test_a_damaged_file_is_moved_under_damaged_with_its_path_and_the_utc_time(tmp_path, monkeypatch):
    stderr = buffered_stderr(monkeypatch)
    monkeypatch.setattr(records, "dt", SimpleNamespace(datetime=Clock, timezone=dt.timezone))
    store = Store(str(tmp_path / "out"))
    path = f"{store.root}/steps/sweep=a/x.parquet"
    store.put(path, b"not parquet")
    dest = store.move_aside(path, "unreadable")
    assert dest == f"{store.root}/_damaged/steps/sweep=a/x.parquet.20260102T030405678901Z"
    assert open(dest, "rb").read() == b"not parquet" and not os.path.exists(path)
    assert stderr() == f"moved damaged {path} to {dest}: unreadable\n"


# --- reading -------------------------------------------------------------------------------------


def test_a_scan_reads_the_files_it_is_given_with_the_tables_columns(tmp_path, capsys):
    """Older files read with nulls in the columns they lack; columns a table no longer has are dropped."""
    store, c = Store(str(tmp_path / "out")), cell("c1")
    old = pa.table({**{k: [v, v] for k, v in keys(c).items()}, "step": [0, 1], "loss": [2.0, 1.0], "retired": ["x", "y"]})
    pq.write_table(old, tmp_path / "old.parquet")
    lf = store.scan("steps", listed=([str(tmp_path / "old.parquet")], {"elsewhere.parquet": "a reason"}))
    assert lf.collect().to_dicts() == [{**keys(c), "step": 0, "loss": 2.0, "accuracy": None},
                                       {**keys(c), "step": 1, "loss": 1.0, "accuracy": None}]
    assert "warning: skipped elsewhere.parquet: a reason\n" in capsys.readouterr().err


def moved_aside(store: Store) -> list[str]:
    damaged = f"{store.root}/_damaged"
    return sorted(os.path.join(d, f) for d, _, fs in os.walk(damaged) for f in fs)


@pytest.fixture
def two_sweeps(tmp_path):
    """Sweep a: cell a1 with 2 steps; sweep b: cell b1 with 3 steps; every file verifies."""
    store = Store(str(tmp_path / "out"))
    finish(store, cell("a1", "a"), 2)
    finish(store, cell("b1", "b", lr=0.2), 3)
    return store


def test_one_sweeps_files_are_read_without_the_others(two_sweeps):
    store = two_sweeps
    steps = "{}/steps/sweep={}/arch=dln/norm=batch/{}.parquet"
    assert store.files("steps", "a") == ([steps.format(store.root, "a", "a1")], {})
    assert store.files("steps") == ([steps.format(store.root, "a", "a1"), steps.format(store.root, "b", "b1")], {})
    assert store.survey("b").status == {("b", "b1"): "done"}
    assert store.survey().status == {("a", "a1"): "done", ("b", "b1"): "done"}
    assert store.scan("steps", "b").collect()["step"].to_list() == [0, 1, 2]
    cells = store.read("cells", "a")
    assert cells.schema == SCHEMAS["cells"] and cells.select(["cell_id", "status", "steps_done"]).to_pylist() == [
        {"cell_id": "a1", "status": "done", "steps_done": 2}]
    assert store.read("steps", "b")["cell_id"].to_pylist() == ["b1"] * 3
    empty = store.read("evals", "a")
    assert empty.num_rows == 0 and empty.schema == SCHEMAS["evals"]


def test_a_run_keeps_its_sweeps_verified_cells_and_moves_every_other_parquet_file_aside(two_sweeps, monkeypatch):
    """a2 lacks a table its spec turns on, a3's keys are not the spec's: both run again, once each."""
    stderr = buffered_stderr(monkeypatch)
    store = two_sweeps
    a1, a2, a3 = cell("a1"), cell("a2"), cell("a3", lr=0.3)
    finish(store, a2)
    finish(store, a3)
    folder = f"{store.root}/cells/sweep=a/arch=dln/norm=batch"
    store.put(f"{folder}/copy-a1.parquet", store.get(f"{folder}/a1.parquet"))  # a stray copy: no cell of its own
    store.put(f"{folder}/notes.txt", b"mine")
    required = {"a1": ["steps"], "a2": ["steps", "ics"], "a3": ["steps"]}
    expect = {"a1": keys(a1), "a2": keys(a2), "a3": {**keys(a3), "lr": 0.4}}
    assert store.finished("a", required, expect) == {"a1": "done"}
    moved = [os.path.relpath(p, f"{store.root}/_damaged") for p in moved_aside(store)]
    stamp = r"\.\d{8}T\d{12}Z"
    names = ["cells/sweep=a/arch=dln/norm=batch/a2.parquet", "cells/sweep=a/arch=dln/norm=batch/a3.parquet",
             "cells/sweep=a/arch=dln/norm=batch/copy-a1.parquet", "steps/sweep=a/arch=dln/norm=batch/a2.parquet",
             "steps/sweep=a/arch=dln/norm=batch/a3.parquet"]
    assert len(moved) == len(names) and all(re.fullmatch(re.escape(n) + stamp, m) for n, m in zip(names, moved))
    lines = stderr().splitlines()
    ran = [line for line in lines if "runs again" in line]
    assert sorted(ran) == ["cell a2 runs again: its result did not verify", "cell a3 runs again: its result did not verify"]
    why = {"a2": "its result lacks ics", "copy-a1": "holds the row of cell_id=a1, sweep=a, arch=dln, norm=batch, "
                                                    "not of its place (cell_id=copy-a1, sweep=a, arch=dln, norm=batch)",
           "a3": "its keys (cell_id=a3, sweep=a, arch=dln, norm=batch, lr=0.3, seed=0) are not the spec's "
                 "(cell_id=a3, sweep=a, arch=dln, norm=batch, lr=0.4, seed=0)"}
    own = {"a2": "its result lacks ics", "a3": why["a3"]}
    for n, m in zip(names, moved):
        table_name, cid = n.split("/")[0], n.rsplit("/", 1)[1].removesuffix(".parquet")
        reason = why[cid] if table_name == "cells" else f"its cell's result does not verify ({own[cid]})"
        assert f"moved damaged {store.root}/{n} to {store.root}/_damaged/{m}: {reason}" in lines
    assert f"warning: skipped {folder}/notes.txt: not a cell file of this table (stray)" in lines
    assert len(lines) == len(moved) + len(ran) + 1
    assert os.path.exists(f"{folder}/notes.txt")  # not Parquet: named, left where it is


def test_that_a_cell_runs_again_is_on_stderr_at_once(tmp_path, monkeypatch):
    store, c = Store(str(tmp_path / "out")), cell("a1")
    store.write("cells", c, table("cells", c, {"status": ["done"], "steps_done": [2]}))  # its steps file is missing
    stderr = buffered_stderr(monkeypatch)
    assert store.finished("a", {"a1": ["steps"]}) == {}
    (dest,) = moved_aside(store)
    assert stderr() == (f"moved damaged {store.root}/cells/sweep=a/arch=dln/norm=batch/a1.parquet to {dest}: its result lacks steps\n"
                        "cell a1 runs again: its result did not verify\n")  # the last line too: flushed


def test_a_reader_moves_nothing_and_names_what_it_leaves_out(two_sweeps, monkeypatch):
    stderr = buffered_stderr(monkeypatch)
    store = two_sweeps
    folder = f"{store.root}/steps/sweep=a/arch=dln/norm=batch"
    store.put(f"{folder}/a9.parquet", store.get(f"{folder}/a1.parquet"))  # no cells row records it
    assert store.finished("a") == {"a1": "done"}
    assert stderr() == (f"warning: skipped {folder}/a9.parquet: "
                        "no cells row records it (an interrupted write, or a file from elsewhere)\n")
    assert not os.path.exists(f"{store.root}/_damaged")
