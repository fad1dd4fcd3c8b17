"""What `bnsweep.verify` decides, and the reason it gives, on hand-built files with known answers.

No training: each test writes a cell's `cells`, `steps` and `evals` files itself (three steps, evals at
steps 0 and 2 on two splits) with a record computed from the bytes written, damages one thing, and
compares what `survey` trusts and the exact reason it gives for each file it does not trust.
"""

import hashlib
import json
import os
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bnsweep import verify
from bnsweep.layout import SCHEMAS, cell_file
from bnsweep.records import Store

A = SimpleNamespace(cell_id="a0", sweep="s", arch="dln", norm="batch", lr=0.1, seed=0)
B = SimpleNamespace(cell_id="b1", sweep="s", arch="dln", norm="batch", lr=0.1, seed=1)
A_KEYS = "cell_id=a0, sweep=s, arch=dln, norm=batch, lr=0.1, seed=0"
B_KEYS = "cell_id=b1, sweep=s, arch=dln, norm=batch, lr=0.1, seed=1"
NOT_A = "its cell's result does not verify ({})"  # what the cell's other files are told


def keys(c) -> dict:
    return {"cell_id": c.cell_id, "sweep": c.sweep, "arch": c.arch, "norm": c.norm, "lr": c.lr, "seed": c.seed}


def table(name: str, c, n: int = 1, **cols) -> pa.Table:
    """`n` rows of table `name` carrying the keys of `c`, `cols` as given, every other column null."""
    data = {k: [v] * n for k, v in keys(c).items()} | cols
    return pa.Table.from_pydict({f.name: data.get(f.name, [None] * n) for f in SCHEMAS[name]}, schema=SCHEMAS[name])


def steps_of(c, steps=(0, 1, 2)) -> pa.Table:
    return table("steps", c, len(steps), step=list(steps), loss=[1.0] * len(steps), accuracy=[0.5] * len(steps))


def evals_of(c) -> pa.Table:
    return table("evals", c, 4, step=[0, 0, 2, 2], split=["train", "test"] * 2, loss=[1.0] * 4, accuracy=[0.5] * 4)


def put(store: Store, name: str, c, t: pa.Table, path: str | None = None) -> dict:
    """Write `t` at the place of `c` in table `name`; its record, from the bytes on disk and the rows written."""
    path = path or cell_file(store.root, name, c)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(t, path)
    data = open(path, "rb").read()
    steps = len(set(t["step"].to_pylist())) if "step" in t.column_names else None
    return {"file": os.path.basename(path), "rows": t.num_rows, "steps": steps, "sha256": hashlib.sha256(data).hexdigest()}


def finished(store: Store, c=A, steps: pa.Table | None = None, record=None, **row) -> dict:
    """A finished cell `c`: its steps (3 rows unless given) and evals, then its `cells` row recording them.

    `record(rec) -> files_json` edits the record ({table: {file, rows, steps, sha256}}) before it is written;
    `row` overrides columns of the `cells` row."""
    rec = {"steps": put(store, "steps", c, steps if steps is not None else steps_of(c)), "evals": put(store, "evals", c, evals_of(c))}
    files_json = record(rec) if record else json.dumps(rec)
    cells = {"status": ["done"], "steps_done": [3], "files_json": [files_json]} | {k: [v] for k, v in row.items()}
    put(store, "cells", c, table("cells", c, **cells))
    return rec


def judged(store: Store, **kw) -> tuple[dict, dict]:
    """({cell_id: status} of the verified cells, {path under the output: why} of every file not trusted)."""
    found = verify.survey(store, **kw)
    bad = {os.path.relpath(p, store.root): why for table in found.bad.values() for p, why in table.items()}
    return {cid: s for (_, cid), s in found.status.items()}, bad


def at(name: str, c=A) -> str:
    return f"{name}/sweep={c.sweep}/arch={c.arch}/norm={c.norm}/{c.cell_id}.parquet"


def all_untrusted(why: str, culprit: str = "cells", own: str | None = None, c=A) -> dict:
    """Every file of cell `c` untrusted: the culprit says its own fault, the others the cell's."""
    return {at(n, c): NOT_A.format(why) for n in ("cells", "steps", "evals")} | {at(culprit, c): own or why}


@pytest.fixture
def store(tmp_path):
    return Store(str(tmp_path / "out"))


def test_a_whole_cell_verifies_with_nothing_left_out(store):
    finished(store)
    assert judged(store) == ({"a0": "done"}, {})


def test_a_surveys_digest_is_the_hash_of_every_trusted_files_path_and_bytes(store):
    """Survey.sha256 holds each trusted file's sha256 of its bytes, and no other file; digest() is the sha256 of
    the sorted "path NUL hash" lines, so it changes with any trusted file's bytes or place and with nothing else."""
    finished(store)
    finished(store, B, status="diverged")
    stray = os.path.join(store.root, "steps", "stray.parquet")
    pq.write_table(steps_of(A), stray)
    found = verify.survey(store)
    trusted = sorted(p for paths in found.good.values() for p in paths)
    assert sorted(found.sha256) == trusted and len(trusted) == 6 and stray not in found.sha256
    assert all(h == hashlib.sha256(open(p, "rb").read()).hexdigest() for p, h in found.sha256.items())
    lines = "".join(f"{p}\0{found.sha256[p]}\n" for p in trusted)
    assert found.digest() == hashlib.sha256(lines.encode()).hexdigest()
    assert verify.survey(store).digest() == found.digest()  # the same files: the same digest
    one = verify.Survey(sha256={"x": "1", "y": "2"})
    assert one.digest() != verify.Survey(sha256={"x": "1", "y": "3"}).digest() != verify.Survey(sha256={"x": "1", "z": "2"}).digest()
    assert one.digest() == verify.Survey(sha256={"y": "2", "x": "1"}).digest()  # order does not matter


# --- the `cells` file itself -------------------------------------------------------------------------

def test_a_cells_file_that_is_not_a_cells_table_says_which_columns_do_not_fit(store):
    finished(store)
    put(store, "cells", A, steps_of(A))  # a steps file under the cells name
    assert judged(store) == ({}, all_untrusted("not a cells table: has columns step, loss, accuracy that it lacks"))


def test_a_cells_file_of_two_rows_is_no_cells_row(store):
    finished(store)
    two = pa.concat_tables([table("cells", A, status=["done"], steps_done=[3])] * 2)
    put(store, "cells", A, two)
    assert judged(store) == ({}, all_untrusted("holds 2 rows, not the one row of its cell"))


def test_a_cells_row_away_from_its_place_names_both_by_their_first_four_keys(store):
    finished(store, arch="vgg")  # the row says arch vgg, its place says dln
    why = "holds the row of cell_id=a0, sweep=s, arch=vgg, norm=batch, not of its place (cell_id=a0, sweep=s, arch=dln, norm=batch)"
    assert judged(store) == ({}, all_untrusted(why))


def test_a_cell_whose_keys_are_not_the_specs_names_both_in_full(store):
    finished(store)
    why = f"its keys ({A_KEYS}) are not the spec's (cell_id=a0, sweep=s, arch=dln, norm=batch, lr=0.1, seed=5)"
    assert judged(store, expect={"a0": keys(A) | {"seed": 5}}) == ({}, all_untrusted(why))
    assert judged(store, expect={"a0": keys(A), "b1": keys(A) | {"seed": 5}}) == ({"a0": "done"}, {})  # by cell_id


def test_an_unknown_status_is_named_with_the_known_ones(store):
    finished(store, status="running")
    assert judged(store) == ({}, all_untrusted("status 'running' is none of done, diverged, failed"))


def test_a_failed_cell_is_trusted_and_the_files_beside_it_are_not(store):
    finished(store, status="failed")
    why = "left beside a failed cell's row"
    assert judged(store) == ({"a0": "failed"}, {at("steps"): why, at("evals"): why})


# --- its record of the files it wrote ----------------------------------------------------------------

@pytest.mark.parametrize("files_json", ["{not json", '{"steps": 3, "evals": 4}', "[1, 2]", '"steps"'])
def test_a_record_that_is_not_an_object_of_tables_is_refused(store, files_json):
    finished(store, record=lambda rec: files_json)
    assert judged(store) == ({}, all_untrusted("its files_json record is not a JSON object of tables"))


def test_a_record_naming_a_table_that_holds_no_results_is_refused(store):
    finished(store, record=lambda rec: json.dumps({"cells": rec["steps"], **rec}))
    assert judged(store) == ({}, all_untrusted("its record names 'cells', not a result table"))


def test_a_recorded_file_that_is_missing_fails_the_cell(store):
    finished(store, record=lambda rec: json.dumps({"curvature": rec["steps"], **rec}))
    assert judged(store) == ({}, all_untrusted("its curvature file is missing"))


def test_a_result_file_the_record_does_not_name_is_left_out_and_the_cell_stands(store):
    finished(store)
    put(store, "ics", A, table("ics", A))
    assert judged(store) == ({"a0": "done"}, {at("ics"): "not in its cell's record of the files it wrote"})


def test_a_result_lacking_required_tables_names_them_in_order(store):
    finished(store)
    required = {"a0": ["steps", "ics", "evals", "curvature"], "b1": ["landscape"]}  # b1 has no cells file
    assert judged(store, required=required) == ({}, all_untrusted("its result lacks ics, curvature"))
    assert judged(store, required={"b1": ["ics"]}) == ({"a0": "done"}, {})  # by cell_id


def test_an_empty_record_lacks_the_steps_and_evals_every_finished_cell_writes(store):
    finished(store, record=lambda rec: "{}")
    assert judged(store) == ({}, all_untrusted("its result lacks steps, evals"))


# --- a result file against its cell ------------------------------------------------------------------

def steps_fault(why: str) -> dict:
    return all_untrusted(f"its steps file: {why}", "steps", why)


def test_a_steps_file_with_another_cells_rows_beside_its_own_says_so(store):
    finished(store, steps=pa.concat_tables([steps_of(A), steps_of(B, [0, 1])]))
    assert judged(store) == ({}, steps_fault(f"holds rows of another cell ({B_KEYS}) beside its own"))


def test_a_steps_file_of_another_cell_only_names_it(store):
    finished(store, steps=steps_of(B))
    assert judged(store) == ({}, steps_fault(f"holds rows of another cell ({B_KEYS})"))


def test_a_file_recorded_under_another_name_shows_that_name(store):
    finished(store, record=lambda rec: json.dumps(rec | {"steps": rec["steps"] | {"file": "b1.parquet"}}))
    assert judged(store) == ({}, steps_fault("is recorded under another name ('b1.parquet')"))


def test_a_hash_mismatch_shows_the_rows_found_and_recorded(store):
    finished(store, record=lambda rec: json.dumps(rec | {"steps": rec["steps"] | {"sha256": "0" * 64, "rows": 7}}))
    assert judged(store) == ({}, steps_fault("does not match its recorded hash (3 rows, recorded 7)"))


def test_a_record_with_the_right_hash_but_other_counts_shows_both(store):
    finished(store, record=lambda rec: json.dumps(rec | {"steps": rec["steps"] | {"rows": 4, "steps": 2}}))
    assert judged(store) == ({}, steps_fault("holds 3 rows over 3 steps, recorded 4 over 2"))


# --- cells written before the record ----------------------------------------------------------------

def test_an_older_cell_needs_no_evals_file(store):
    """Before the record, a cell's result was whatever files it had: steps alone verify."""
    finished(store, record=lambda rec: None)
    os.remove(os.path.join(store.root, at("evals")))
    assert judged(store) == ({"a0": "done"}, {})
    assert judged(store, required={"a0": ["steps", "evals"]}) == ({}, {at("cells"): "its result lacks evals",
                                                                          at("steps"): NOT_A.format("its result lacks evals")})


def test_an_older_cells_steps_must_be_one_row_per_step_done(store):
    finished(store, record=lambda rec: None, steps_done=4)
    assert judged(store) == ({}, steps_fault("holds 3 rows over 3 steps where the cell did 4 steps"))


# --- what survey looks at ----------------------------------------------------------------------------

def test_hidden_files_are_passed_over_and_other_files_are_strays(store):
    finished(store)
    folder = os.path.dirname(os.path.join(store.root, at("cells")))
    for name in (".a0.parquet.1234.tmp", "notes.txt"):
        open(os.path.join(folder, name), "w").write("x")
    assert judged(store) == ({"a0": "done"}, {"cells/sweep=s/arch=dln/norm=batch/notes.txt": "not a cell file of this table (stray)"})


def test_result_files_no_cells_row_records_are_named_even_without_a_cells_folder(store):
    put(store, "evals", B, evals_of(B))
    why = "no cells row records it (an interrupted write, or a file from elsewhere)"
    assert judged(store) == ({}, {at("evals", B): why})


def test_a_survey_of_one_sweep_sees_only_that_sweep(store):
    other = SimpleNamespace(**vars(B) | {"sweep": "t"})
    finished(store)
    finished(store, other, status="running")
    assert judged(store, sweep="s") == ({"a0": "done"}, {})
    assert judged(store, sweep="t") == ({}, all_untrusted("status 'running' is none of done, diverged, failed", c=other))


# --- the facts read from one file --------------------------------------------------------------------

@pytest.mark.parametrize("other", [B, SimpleNamespace(cell_id="c2", sweep="t", arch="vgg", norm="none", lr=0.2, seed=2)],
                         ids=["another seed", "every key another"])
def test_the_facts_of_a_file_holding_two_cells(store, other):
    path = os.path.join(store.root, "x.parquet")
    put(store, "steps", A, pa.concat_tables([steps_of(other, [0, 1]), steps_of(A)]), path)
    f = verify._read(store, path, "steps")
    assert (f.rows, f.steps, f.row, f.problem) == (5, 3, None, None)
    assert f.keys == (tuple(keys(A).values()), tuple(keys(other).values()))  # sorted, each once
    assert f.sha256 == hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_the_facts_of_a_cells_file_carry_its_first_row_and_no_steps(store):
    path = os.path.join(store.root, "x.parquet")
    put(store, "cells", A, pa.concat_tables([table("cells", c, status=[s], steps_done=[n])
                                             for c, s, n in [(B, "failed", 0), (A, "done", 3)]]), path)
    f = verify._read(store, path, "cells")
    assert (f.rows, f.steps) == (2, None)
    assert {k: f.row[k] for k in [*keys(B), "status", "steps_done", "files_json"]} == keys(B) | {
        "status": "failed", "steps_done": 0, "files_json": None}


@pytest.mark.parametrize("name", ["cells", "steps"])
def test_an_empty_file_has_no_rows_keys_or_first_row(store, name):
    path = os.path.join(store.root, "x.parquet")
    put(store, name, A, SCHEMAS[name].empty_table(), path)
    f = verify._read(store, path, name)
    assert (f.rows, f.keys, f.row, f.problem) == (0, (), None, None)
    assert f.steps == (None if name == "cells" else 0)


def test_a_steps_file_has_no_first_row(store):
    path = os.path.join(store.root, "x.parquet")
    put(store, "steps", A, steps_of(A), path)
    f = verify._read(store, path, "steps")
    assert (f.rows, f.steps, f.keys, f.row) == (3, 3, (tuple(keys(A).values()),), None)


def test_an_unreadable_parquet_file_says_the_first_line_of_why_cut_at_120_characters(store, monkeypatch):
    path = os.path.join(store.root, "x.parquet")
    put(store, "steps", A, steps_of(A), path)

    def torn(*args, **kwargs):
        raise pa.ArrowInvalid("y" * 130 + "\nsecond line")
    monkeypatch.setattr(pq, "ParquetFile", torn)
    f = verify._read(store, path, "steps")
    assert f.problem == f"unreadable Parquet ({'y' * 120})" and f.rows == 0


# --- schemas ----------------------------------------------------------------------------------------

def schema(name: str, *extra: tuple, drop: tuple = (), retype: dict | None = None) -> pa.Schema:
    fields = [pa.field(f.name, (retype or {}).get(f.name, f.type)) for f in SCHEMAS[name] if f.name not in drop]
    return pa.schema(fields + [pa.field(n, t) for n, t in extra])


@pytest.mark.parametrize(("name", "have", "why"), [
    ("steps", schema("steps", *[(f"f{i}", pa.int64()) for i in range(1, 8)]),
     "not a steps table: has columns f1, f2, f3, f4, f5, f6 that it lacks"),  # six named, of seven
    ("cells", schema("cells", drop=("status", "steps_done", "files_json")), "not a cells table: lacks columns status, steps_done"),
    ("cells", schema("cells", drop=("files_json", "precision")), None),  # columns added since may be missing
    ("steps", schema("steps", retype={"loss": pa.string(), "accuracy": pa.float32()}),
     "columns loss, accuracy have the wrong type for the steps table"),
    ("curvature", schema("curvature", ("iterations", pa.int64()), ("rel_change", pa.float64())), None),  # retired, kept
    ("curvature", schema("curvature", ("iterations", pa.string())), "columns iterations have the wrong type for the curvature table"),
    ("steps", schema("steps", ("iterations", pa.int64())), "not a steps table: has columns iterations that it lacks"),
])
def test_schema_problems_are_named_exactly(name, have, why):
    assert verify.schema_problem(have, name) == why
