"""The table layout's one owner, torch-free readers, damaged outputs and unsafe checkpoints."""

import os
import pickle
import subprocess
import sys

import polars as pl
import pytest
from conftest import ROOT
from synthetic import write_runs
from test_train import cell

from bnsweep import layout
from bnsweep.cell import run_cell
from bnsweep.cli import main
from bnsweep.records import Store
from bnsweep.runner import pending_cells


def python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)


def test_analysis_imports_no_torch():
    p = python("import sys, analysis, analysis.load, analysis.query, analysis.summaries, analysis.claims, "
               "analysis.figures, analysis.report, bnsweep.layout, bnsweep.records\n"
               "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"


@pytest.mark.parametrize("argv", [["ls", "{out}"], ["query", "{out}", "SELECT count(*) FROM cells"]])
def test_ls_and_query_import_no_torch(tmp_path, argv):
    write_runs(str(tmp_path / "out"))
    args = [a.format(out=tmp_path / "out") for a in argv]
    p = python(f"import sys\nfrom bnsweep.cli import main\nrc = main({args!r})\n"
               "print('TORCH' if 'torch' in sys.modules else 'NO TORCH', rc)")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().endswith("NO TORCH 0")


def test_every_table_has_the_key_columns_and_paths_are_the_writers():
    for name, schema in layout.SCHEMAS.items():
        assert schema.names[: len(layout.KEY_NAMES)] == layout.KEY_NAMES, name
    c = cell("dln")
    store = Store("/tmp/x")
    assert store.path("steps", c) == f"/tmp/x/steps/sweep=t/arch=dln/norm=batch/{c.cell_id}.parquet"
    assert layout.RESULT == ("done", "diverged") and set(layout.RESULT) < set(layout.STATUSES)


@pytest.fixture
def two_cells(tmp_path):
    """Two finished tiny DLN cells in a real store."""
    store = Store(str(tmp_path / "out"))
    cells = [cell("dln", "batch", 1e-4, seed=s, steps=20, eval_every=10) for s in (0, 1)]
    for c in cells:
        assert run_cell(c, store)["status"] == "done"
    return store, cells


def damage(store, cells, kind):
    """Damage the first cell's files in one way; returns the damaged path (or None)."""
    c = cells[0]
    if kind == "truncated steps":
        p = store.path("steps", c)
        blob = open(p, "rb").read()
        open(p, "wb").write(blob[: len(blob) // 2])
        return p
    if kind == "garbage cells":
        p = store.path("cells", c)
        open(p, "wb").write(b"this is not parquet" * 10)
        return p
    if kind == "missing steps":
        os.remove(store.path("steps", c))
        return None
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["truncated steps", "garbage cells", "missing steps"])
def test_a_rerun_moves_damaged_files_aside_and_runs_the_cell_again(two_cells, kind, capsys):
    store, cells = two_cells
    path = damage(store, cells, kind)
    todo = pending_cells(cells, store)
    assert [c.cell_id for c in todo] == [cells[0].cell_id]  # the other cell is trusted
    err = capsys.readouterr().err
    assert "moved damaged" in err
    if path:
        assert not os.path.exists(path) and path.removeprefix(store.root) in err
    moved = [os.path.join(d, f) for d, _, fs in os.walk(layout.damaged_dir(store.root)) for f in fs]
    assert moved, "damaged files are moved aside, never deleted"
    run_cell(todo[0], store)
    assert pending_cells(cells, store) == []


def test_readers_skip_damaged_and_stray_files_with_a_warning(two_cells, capsys):
    store, cells = two_cells
    truncated = damage(store, cells, "truncated steps")
    folder = os.path.dirname(store.path("cells", cells[0]))
    open(os.path.join(folder, "notes.txt"), "w").write("my notes")
    open(os.path.join(folder, ".DS_Store"), "wb").write(b"\0\1")
    capsys.readouterr()
    assert main(["ls", store.root]) == 0  # reads the cells table: the stray file there is named
    out, err = capsys.readouterr()
    assert "notes.txt: not a cell file" in err and ".DS_Store" not in err and cells[1].cell_id in out
    assert main(["query", store.root, "SELECT count(*) AS n FROM steps"]) == 0  # reads steps: the damaged file is named
    out, err = capsys.readouterr()
    assert f"skipped {truncated}: unreadable Parquet" in err
    assert "20" in out.split()  # the other cell's 20 steps rows, and none of the damaged one's
    steps = store.scan("steps").collect()
    assert steps["cell_id"].unique().to_list() == [cells[1].cell_id]


class Exploit:
    """A pickle that runs code when loaded, as a tampered checkpoint would."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_checkpoint_carrying_code_is_never_run_and_the_cell_restarts(tmp_path, capsys):
    c = cell("dln", "batch", 1e-4, steps=20, eval_every=10)
    ref, store = Store(str(tmp_path / "ref")), Store(str(tmp_path / "out"))
    run_cell(c, ref)
    marker = tmp_path / "pwned"
    store.put(store.checkpoint_path(c), pickle.dumps({"step": 10, "model": Exploit(str(marker))}))
    assert run_cell(c, store)["status"] == "done"
    assert not marker.exists()  # the payload never ran
    assert "checkpoint does not load safely" in capsys.readouterr().err
    assert store.read("cells", "t")["resumed_from"].to_pylist() == [None]  # restarted from step 0
    assert pl.from_arrow(store.read("steps", "t"))["loss"].to_list() == pl.from_arrow(ref.read("steps", "t"))["loss"].to_list()
    aside = [f for _, _, fs in os.walk(layout.damaged_dir(store.root)) for f in fs]
    assert len(aside) == 1 and aside[0].startswith(f"{c.cell_id}.pt.")


def test_a_truncated_checkpoint_restarts_the_cell_in_the_same_run(tmp_path):
    c = cell("dln", "batch", 1e-4, steps=20, eval_every=10)
    store = Store(str(tmp_path / "out"))
    store.put(store.checkpoint_path(c), b"PK\x03\x04 truncated")
    assert run_cell(c, store)["status"] == "done"
    assert store.read("cells", "t")["status"].to_pylist() == ["done"]
