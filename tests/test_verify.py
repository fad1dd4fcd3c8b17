"""Fault tests: a result counts only if it proves it is its cell's (bnsweep/verify.py).

Two finished tiny DLN cells (seeds 0 and 1, same arch and norm) are damaged in one way each: replaced,
halved, doubled, foreign, moved or copied files. The driver and the worker must agree on what runs,
`run` must move every untrusted Parquet file aside (never delete it) and run the cell again, and the
readers must read only verified files, naming what they skip, so that no cell is ever counted twice.
"""

import hashlib
import json
import os
import shutil

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import TINY_DLN, tiny_spec, write_spec
from test_train import cell

from analysis import load
from bnsweep import layout, verify
from bnsweep.cell import has_result, run_cell
from bnsweep.cli import main
from bnsweep.layout import SCHEMAS, TABLES
from bnsweep.records import Store
from bnsweep.runner import pending_cells
from bnsweep.specfile import load_cells

STEPS = 20


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two finished cells, trained once; each test works on a copy."""
    root = tmp_path_factory.mktemp("trained") / "out"
    store = Store(str(root))
    cells = [cell("dln", "batch", 1e-4, seed=s, steps=STEPS, eval_every=10) for s in (0, 1)]
    for c in cells:
        assert run_cell(c, store)["status"] == "done"
    return root, cells


@pytest.fixture
def two_cells(trained, tmp_path):
    root, cells = trained
    shutil.copytree(root, tmp_path / "out")
    return Store(str(tmp_path / "out")), cells


def rewrite(path: str, t: pa.Table) -> None:
    pq.write_table(t, path)


def moved_aside(store: Store) -> list[str]:
    return [os.path.join(d, f) for d, _, fs in os.walk(layout.damaged_dir(store.root)) for f in fs]


def damage(store: Store, cells, kind: str) -> None:
    """Damage the first cell's result (or, for `stray copies`, add copies beside it)."""
    a, b = cells
    p = lambda name, c=a: store.path(name, c)
    steps = pq.read_table(p("steps"))
    if kind == "evals as steps":
        shutil.copy(p("evals"), p("steps"))
    elif kind == "cells as steps":
        shutil.copy(p("cells"), p("steps"))
    elif kind == "half the steps":
        rewrite(p("steps"), steps.slice(0, STEPS // 2))
    elif kind == "steps twice":
        rewrite(p("steps"), pa.concat_tables([steps, steps]))
    elif kind == "another cell's row":  # the seed-1 cell's `cells` file under the seed-0 cell's name
        shutil.copy(p("cells", b), p("cells"))
    elif kind == "another cell's steps":
        shutil.copy(p("steps", b), p("steps"))
    elif kind == "moved to another norm":
        for name in ("cells", "steps", "evals"):
            dest = p(name).replace("/norm=batch/", "/norm=none/")
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            os.replace(p(name), dest)
    elif kind == "wrong column type":
        text = pa.array([str(x) for x in steps["loss"].to_pylist()])
        rewrite(p("steps"), steps.set_column(steps.schema.get_field_index("loss"), "loss", text))
    elif kind == "no key columns":
        rewrite(p("steps"), steps.drop_columns(["cell_id", "seed"]))
    elif kind in ("forged record", "empty record"):  # another hash: the file is not what was written; or no files at all
        t = pq.read_table(p("cells"))
        rec = json.loads(t["files_json"][0].as_py())
        rec["steps"]["sha256"] = "0" * 64
        rec = rec if kind == "forged record" else {}
        rewrite(p("cells"), t.set_column(t.schema.get_field_index("files_json"), "files_json", pa.array([json.dumps(rec)])))
    elif kind == "stray copies":  # what a sync conflict leaves: the result stays, the copies are never read
        for name in ("cells", "steps"):
            shutil.copy(p(name), p(name).replace(f"/{a.cell_id}.parquet", f"/copy-{a.cell_id}.parquet"))
    else:
        raise ValueError(kind)


KINDS = ["evals as steps", "cells as steps", "half the steps", "steps twice", "another cell's row",
         "another cell's steps", "moved to another norm", "wrong column type", "no key columns", "forged record", "empty record"]


@pytest.mark.parametrize("kind", [*KINDS, "stray copies"])
def test_readers_count_each_cell_once_and_only_when_it_verifies(two_cells, kind, capsys):
    store, (a, b) = two_cells
    damage(store, [a, b], kind)
    capsys.readouterr()
    trusted = [b.cell_id] if kind != "stray copies" else sorted([a.cell_id, b.cell_id])
    cells = load.table(store.root, "cells").collect()
    assert sorted(cells["cell_id"].to_list()) == sorted(trusted)  # never twice, never a foreign row
    steps = load.table(store.root, "steps").collect()
    assert steps.group_by("cell_id").len().sort("cell_id").rows() == [(c, STEPS) for c in sorted(trusted)]
    assert "warning: skipped " in capsys.readouterr().err  # what was left out is named
    assert moved_aside(store) == []  # readers move nothing
    seeds = cells.group_by("arch", "norm", "lr").agg(pl.col("seed").n_unique().alias("n"), pl.len().alias("rows"))
    assert seeds["n"].to_list() == seeds["rows"].to_list() == [len(trusted)]  # what a report counts as seeds


@pytest.mark.parametrize("kind", [*KINDS, "stray copies"])
def test_driver_and_worker_agree_and_a_run_heals(two_cells, kind, capsys):
    store, (a, b) = two_cells
    damage(store, [a, b], kind)
    worker = [c.cell_id for c in (a, b) if has_result(store, c) is None]
    todo = pending_cells([a, b], store)
    assert [c.cell_id for c in todo] == worker == ([] if kind == "stray copies" else [a.cell_id])
    err = capsys.readouterr().err
    assert moved_aside(store), "untrusted Parquet files are moved aside, never deleted"
    assert "moved damaged" in err
    for c in todo:
        assert f"cell {c.cell_id} runs again" in err
        run_cell(c, store)
    assert pending_cells([a, b], store) == []
    capsys.readouterr()
    cells = load.table(store.root, "cells").collect()
    assert sorted(cells["cell_id"].to_list()) == sorted([a.cell_id, b.cell_id])
    assert "warning" not in capsys.readouterr().err  # nothing untrusted is left in the tables


def test_ls_lists_a_cell_with_a_foreign_copy_once(two_cells, capsys):
    store, (a, b) = two_cells
    damage(store, [a, b], "stray copies")
    open(os.path.join(os.path.dirname(store.path("cells", a)), "notes.txt"), "w").write("my notes")
    capsys.readouterr()
    assert main(["ls", store.root]) == 0
    out, err = capsys.readouterr()
    assert out.count(a.cell_id) == 1 and out.count(b.cell_id) == 1
    assert f"copy-{a.cell_id}.parquet" in err and "notes.txt" in err
    pending_cells([a, b], store)  # a run moves the Parquet copies aside and leaves the user's notes where they are
    assert os.path.exists(os.path.join(os.path.dirname(store.path("cells", a)), "notes.txt"))
    assert sorted(os.path.basename(p).split(".parquet")[0] for p in moved_aside(store)) == [f"copy-{a.cell_id}"] * 2


def test_the_record_names_every_file_with_its_rows_steps_and_hash(two_cells):
    store, (a, _) = two_cells
    row = pq.read_table(store.path("cells", a)).to_pylist()[0]
    rec = json.loads(row["files_json"])
    assert sorted(rec) == ["evals", "steps"]
    for name, r in rec.items():  # checked against the files themselves, independently of the writer
        data = open(store.path(name, a), "rb").read()
        t = pq.read_table(store.path(name, a))
        assert r == {"file": f"{a.cell_id}.parquet", "rows": t.num_rows, "steps": len(set(t["step"].to_pylist())),
                     "sha256": hashlib.sha256(data).hexdigest()}
    assert rec["steps"]["rows"] == rec["steps"]["steps"] == STEPS and rec["evals"]["steps"] == 3


def test_a_failed_cell_is_listed_but_files_beside_it_are_not_trusted(two_cells):
    store, (a, b) = two_cells
    t = pq.read_table(store.path("cells", a))
    rewrite(store.path("cells", a), t.set_column(t.schema.get_field_index("status"), "status", pa.array(["failed"])))
    assert has_result(store, a) is None
    assert sorted(load.table(store.root, "cells").collect()["cell_id"].to_list()) == sorted([a.cell_id, b.cell_id])
    assert load.table(store.root, "steps").collect()["cell_id"].unique().to_list() == [b.cell_id]


@pytest.mark.parametrize("drop", ["null record", "no record column"])
def test_results_of_older_versions_are_checked_for_all_but_the_record(two_cells, drop):
    """Older files (no files_json) count when their place, schema, keys and step rows are right: re-running
    a whole sweep to add the record would cost its compute, and these checks catch every fault above but a
    same-shaped rewrite of a table other than steps."""
    store, (a, b) = two_cells
    for c in (a, b):
        t = pq.read_table(store.path("cells", c))
        i = t.schema.get_field_index("files_json")
        rewrite(store.path("cells", c), t.drop_columns(["files_json"]) if drop == "no record column"
                else t.set_column(i, "files_json", pa.nulls(1, pa.string())))
    assert pending_cells([a, b], store) == [] and moved_aside(store) == []
    damage(store, [a, b], "steps twice")
    assert has_result(store, a) is None and [c.cell_id for c in pending_cells([a, b], store)] == [a.cell_id]


@pytest.mark.parametrize("name", TABLES)
def test_each_table_accepts_its_own_schema_and_no_other(name):
    assert verify.schema_problem(SCHEMAS[name], name) is None
    for other in TABLES:
        if other != name:
            assert verify.schema_problem(SCHEMAS[other], name), f"a {other} file passes as {name}"


@pytest.mark.parametrize("name", TABLES)
def test_a_wrong_column_type_or_missing_keys_is_not_the_table(name):
    schema = SCHEMAS[name]
    i = schema.get_field_index("lr")
    assert "wrong type" in verify.schema_problem(schema.set(i, pa.field("lr", pa.string())), name)
    assert "lacks key columns cell_id" in verify.schema_problem(schema.remove(0), name)
    extra = schema.append(pa.field("surprise", pa.int64()))
    assert "surprise" in verify.schema_problem(extra, name)


@pytest.mark.ray
@pytest.mark.slow
def test_run_heals_a_cells_file_holding_another_cells_row(tmp_path, capsys):
    """Through Ray: the worker used to skip the cell its driver had just called pending; now both judge alike."""
    grid = {**TINY_DLN, "norm": ["batch"], "lr": [1e-4]}  # two cells: seeds 0 and 1
    spec = write_spec(tmp_path / "spec.yaml", tiny_spec(tmp_path / "out", grids=[grid]))
    assert main(["run", str(spec)]) == 0
    _, (a, b) = load_cells(spec)
    store = Store(str(tmp_path / "out"))
    shutil.copy(store.path("cells", b), store.path("cells", a))
    capsys.readouterr()
    assert main(["run", str(spec)]) == 0
    out, err = capsys.readouterr()
    assert "1 already have results, 1 to run" in out and f"cell {a.cell_id} runs again" in err
    assert main(["run", str(spec)]) == 0
    assert "nothing to run" in capsys.readouterr().out
    cells = load.table(store.root, "cells").collect()
    assert sorted(cells["cell_id"].to_list()) == sorted([a.cell_id, b.cell_id]) and set(cells["status"]) == {"done"}
    aside = sorted(os.path.relpath(p, layout.damaged_dir(store.root)).split("/")[0] for p in moved_aside(store))
    assert aside == ["cells", "evals", "steps"]  # the foreign row and the files it left unproven, all of cell a
    assert all(f"/{a.cell_id}.parquet." in p for p in moved_aside(store))


def test_an_unreadable_file_has_no_hash_and_says_why_in_one_line_of_120_characters(tmp_path):
    store = Store(str(tmp_path))
    path = f"{store.root}/{'a' * 150}.parquet"  # missing, with an error message longer than 120 characters
    with pytest.raises(OSError) as raised:
        store.fs.open_input_stream(path)
    first = str(raised.value).splitlines()[0]
    assert len(first) > 120 and store.root in first
    f = verify._read(store, path, "steps")
    assert f.sha256 == "" and (f.rows, f.steps, f.keys, f.row) == (0, None, (), None)
    assert f.problem == f"unreadable ({first[:120]})"


def test_keys_are_shown_by_name_in_key_order():
    assert verify._show(("c0", "sw", "dln", "batch", 0.1, 2)) == "cell_id=c0, sweep=sw, arch=dln, norm=batch, lr=0.1, seed=2"


def test_a_file_of_another_table_keeps_its_hash_and_says_which_columns_do_not_fit(tmp_path):
    store = Store(str(tmp_path))
    t = pa.table({"cell_id": ["c"], "sweep": ["s"], "loss": [1.0]})  # no arch, norm, lr, seed: not a steps table
    pq.write_table(t, str(tmp_path / "x.parquet"))
    data = (tmp_path / "x.parquet").read_bytes()
    f = verify._read(store, str(tmp_path / "x.parquet"), "steps")
    assert f.sha256 == hashlib.sha256(data).hexdigest() and f.rows == 0
    assert f.problem == "not a steps table: lacks key columns arch, norm, lr, seed"


def test_a_torn_parquet_file_keeps_its_hash_and_says_it_is_unreadable(tmp_path):
    store = Store(str(tmp_path))
    pq.write_table(pa.table({"x": [1.0]}), str(tmp_path / "whole.parquet"))
    torn = (tmp_path / "whole.parquet").read_bytes()[:-20]  # the footer cut off, as a copy interrupted midway
    (tmp_path / "x.parquet").write_bytes(torn)
    f = verify._read(store, str(tmp_path / "x.parquet"), "steps")
    assert f.sha256 == hashlib.sha256(torn).hexdigest() and f.rows == 0
    assert f.problem.startswith("unreadable Parquet (") and f.problem.endswith(")") and "None" not in f.problem


def keys_of(c, n: int = 6) -> str:
    return verify._show((c.cell_id, c.sweep, c.arch, c.norm, c.lr, c.seed)[:n])


# damage -> (the damaged steps or cells file's reason, the reason the cell's other files are given)
REASONS = {
    "evals as steps": ("not a steps table: has columns split that it lacks", "its steps file: {own}"),
    "half the steps": ("does not match its recorded hash (10 rows, recorded 20)", "its steps file: {own}"),
    "another cell's steps": ("holds rows of another cell ({b})", "its steps file: {own}"),
    "wrong column type": ("columns loss have the wrong type for the steps table", "its steps file: {own}"),
    "no key columns": ("not a steps table: lacks key columns cell_id, seed", "its steps file: {own}"),
    "another cell's row": ("holds the row of {b4}, not of its place ({a4})", "{own}"),
    "empty record": ("its result lacks steps, evals", "{own}"),
}


@pytest.mark.parametrize("kind", REASONS)
def test_each_damage_is_named_on_the_file_at_fault_and_the_cells_other_files(two_cells, kind):
    store, (a, b) = two_cells
    damage(store, [a, b], kind)
    own, others = REASONS[kind]
    own = own.format(b=keys_of(b), b4=keys_of(b, 4), a4=keys_of(a, 4))
    culprit = "cells" if kind in ("another cell's row", "empty record") else "steps"
    bad = verify.survey(store).bad
    assert bad[culprit] == {store.path(culprit, a): own}
    for name in {"cells", "steps", "evals"} - {culprit}:
        assert bad[name] == {store.path(name, a): "its cell's result does not verify (" + others.format(own=own) + ")"}
