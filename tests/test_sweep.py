"""A real sweep through Ray, end to end: tables, re-runs, determinism, a SIGKILL half way."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile

import duckdb
import polars as pl
import pyarrow.parquet as pq
import pytest
from conftest import MEASURE_ALL, ROOT, TIMING, TINY_DLN, TINY_VGG, tiny_spec, tree_digest, write_spec
from waiting import holders, wait_until

from bnsweep.cli import main
from bnsweep.layout import KEYS, SCHEMAS
from bnsweep.records import Store
from bnsweep.specfile import load_cells

pytestmark = pytest.mark.ray
KEY_NAMES = [f.name for f in KEYS]
# every measurement, cheaply: so every table is written through Ray too
MEASURE = MEASURE_ALL


def scan(out, name):
    return pl.scan_parquet(f"{out}/{name}/**/*.parquet", hive_partitioning=True).collect()


def assert_complete(out, cells):
    """Every cell has a result, and every (cell_id, step) appears exactly once in every table."""
    c, s, e = scan(out, "cells"), scan(out, "steps"), scan(out, "evals")
    assert sorted(c["cell_id"]) == sorted(x.cell_id for x in cells)
    assert set(c["status"]) <= {"done", "diverged"}
    assert s.group_by("cell_id", "step").len()["len"].max() == 1
    assert e.group_by("cell_id", "step", "split").len()["len"].max() == 1
    steps_per_cell = dict(s.group_by("cell_id").len().iter_rows())
    assert steps_per_cell == dict(c.select("cell_id", "steps_done").iter_rows())
    for name, key in (("ics", ["layer"]), ("landscape", ["eta"]), ("activations", ["layer"]), ("curvature", [])):
        if (out / name).exists():  # measurement rows: exactly once per (cell, step, what)
            m = scan(out, name)
            assert m.group_by("cell_id", "step", *key).len()["len"].max() == 1, name
            assert set(m["cell_id"]) <= set(c["cell_id"])
    return c, s, e


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One tiny sweep (12 cells: DLN and VGG, none and batch), run once through `bnsweep run`."""
    tmp = tmp_path_factory.mktemp("sweep")
    spec = write_spec(tmp / "spec.yaml", tiny_spec(tmp / "out", measure=MEASURE))
    assert main(["run", str(spec)]) == 0
    return spec, tmp / "out"


@pytest.fixture
def own(finished, tmp_path):
    """A private copy of `finished` (its output and a spec pointing at it), for a test that runs on it or changes it:
    the shared output stays as the fixture made it, so no test sees another's cells, in any order."""
    out = tmp_path / "out"
    shutil.copytree(finished[1], out)
    return write_spec(tmp_path / "spec.yaml", tiny_spec(out, measure=MEASURE)), out


@pytest.mark.slow
def test_tables_are_complete_typed_and_carry_their_keys(finished):
    spec, out = finished
    _, cells = load_cells(spec)
    c, s, e = assert_complete(out, cells)
    assert len(cells) == 12 and (c["status"] == "diverged").sum() == 2  # DLN, none, lr 3e-3, both seeds
    for name in SCHEMAS:
        for f in (out / name).rglob("*.parquet"):
            assert pq.read_schema(f).remove_metadata() == SCHEMAS[name]  # fixed schema per table
        df = scan(out, name)
        for k in KEY_NAMES:
            assert df[k].null_count() == 0
    assert set(e["split"]) == {"train", "test"}
    dln = s.filter(pl.col("arch") == "dln")
    assert dln["accuracy"].null_count() == len(dln)
    row = c.row(0, named=True)
    assert row["torch_version"] and row["bnsweep_version"] and row["device"] == "cpu" and row["node_id"] != "local"
    assert row["wall_s"] > 0 and row["finished_at"] >= row["started_at"]


def test_duckdb_reads_the_same_rows(finished):
    _, out = finished
    n = duckdb.sql(
        f"select count(*), count(distinct cell_id) from read_parquet('{out}/steps/**/*.parquet', hive_partitioning=true)"
    ).fetchall()[0]
    assert n == (len(scan(out, "steps")), 12)
    joined = duckdb.sql(f"""select c.status, count(*) from read_parquet('{out}/steps/**/*.parquet', hive_partitioning=true) s
                            join read_parquet('{out}/cells/**/*.parquet', hive_partitioning=true) c
                            using (cell_id) group by all""").fetchall()
    assert dict(joined).keys() == {"done", "diverged"}


def test_second_run_executes_nothing(own, capsys):
    spec, out = own
    before = tree_digest(out)
    capsys.readouterr()
    assert main(["run", str(spec)]) == 0
    text = capsys.readouterr().out
    assert "12 cells: 12 already have results, 0 to run" in text and "nothing to run" in text
    assert "dln       batch" in text  # the summary is still shown
    assert tree_digest(out) == before


@pytest.mark.slow  # over 10 s in CI
def test_a_new_seed_runs_only_the_new_cells(own, tmp_path, capsys):
    spec, out = own
    before = scan(out, "cells").select("cell_id", "started_at")
    grown = tiny_spec(out, grids=[{**TINY_DLN, "seed": [0, 1, 2]}, TINY_VGG], measure=MEASURE)
    capsys.readouterr()
    assert main(["run", str(write_spec(tmp_path / "grown.yaml", grown))]) == 0
    assert "16 cells: 12 already have results, 4 to run" in capsys.readouterr().out
    after = scan(out, "cells").select("cell_id", "started_at")
    assert len(after) == 16 and before.join(after, on="cell_id").filter(pl.col("started_at") != pl.col("started_at_right")).is_empty()


@pytest.mark.slow
def test_same_spec_same_seed_identical_tables(finished, tmp_path):
    spec, out = finished
    again = tmp_path / "again"
    assert main(["run", str(write_spec(tmp_path / "again.yaml", tiny_spec(again, measure=MEASURE)))]) == 0
    for name in SCHEMAS:
        a = scan(out, name).drop(TIMING, strict=False).sort(pl.all())
        b = scan(again, name).drop(TIMING, strict=False).sort(pl.all())
        assert a.equals(b), name


def test_hidden_temporary_files_are_invisible_to_readers(own):
    _, out = own
    n = len(scan(out, "steps"))
    some = next((out / "steps").rglob("*.parquet"))
    half = some.parent / f".{some.stem}.deadbeef.tmp"
    half.write_bytes(some.read_bytes()[:100])  # what a killed writer leaves behind
    assert len(scan(out, "steps")) == n
    assert duckdb.sql(f"select count(*) from read_parquet('{out}/steps/**/*.parquet')").fetchall()[0][0] == n
    assert len(Store(str(out)).read("steps", "tiny")) == n


@pytest.mark.slow
def test_sigkill_half_way_then_rerun_finishes_exactly_once(tmp_path):
    slow = {
        **TINY_VGG,
        "seed": [0, 1, 2, 3],
        "lr": [0.05, 0.1],
        "overrides": {**TINY_VGG["overrides"], "train": {"steps": 1500, "batch_size": 32, "eval_every": 100}},
    }
    sparse = {k: {**v, "every": 100} if "every" in v else v for k, v in MEASURE.items()}
    spec = write_spec(tmp_path / "spec.yaml", tiny_spec(tmp_path / "out", grids=[slow], name="killed", measure=sparse))
    _, cells = load_cells(spec)
    cmd = [sys.executable, "-m", "bnsweep", "run", str(spec)]
    tmp = tempfile.mkdtemp(prefix="kill-", dir="/tmp")  # this run's Ray session (short: socket paths)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "TMPDIR": tmp})
    out = tmp_path / "out"
    wait_until(lambda: len(list((out / "cells").rglob("*.parquet"))) >= 2, "two finished cells")
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything in its process group
    proc.wait()
    # Ray's workers are in other process groups and outlive the driver until they notice: wait until
    # no process of this run holds a file of its Ray session (each keeps its log files there open)
    wait_until(lambda: not holders(tmp), "the killed run's Ray processes to end")
    shutil.rmtree(tmp, ignore_errors=True)
    partial = len(list((out / "cells").rglob("*.parquet")))
    assert 2 <= partial < len(cells), "the kill should land half way"
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    assert f"{len(cells)} cells: {partial} already have results, {len(cells) - partial} to run" in p.stdout
    assert_complete(out, cells)
