"""Which result files are trusted: a cell's files count only if they prove they are that cell's result.

When a cell finishes, its `cells` row records in `files_json`, per table it wrote, the file's name, row
count, distinct steps and the sha256 of its bytes. A cell is verified when

- its `cells` file sits where its one row's keys put it (`cells/sweep=/arch=/norm=/<cell_id>.parquet`),
  has the `cells` schema, one row and a known status;
- every file its record names is where the cell's keys put it, has its own table's schema (no foreign
  column, no required column missing, no wrong type), carries the cell's keys on every row, and agrees
  with the record (hash, rows, distinct steps);
- (for a run) it has every table its spec turns on, and its keys are the spec's.

A failed cell's `cells` row is trusted (it says the cell failed); result files beside it are not. Files of
an unverified cell, result files no `cells` row records (an interrupted write, a copy, a file moved from
another partition) and files away from their place are not trusted: readers leave them out and name
them, `run` moves them aside and runs their cells again. The driver (`Store.finished`), the worker
(`bnsweep.cell.has_result`) and the readers (`Store.files`) all decide through `judge`.

Cells written before the record existed (`files_json` null) are checked for everything but the record:
place, schema, keys on every row, and the steps table's rows (one per step, `steps_done` of them).
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from bnsweep import layout
from bnsweep.layout import KEY_NAMES, REQUIRED, RESULT_TABLES, RETIRED, SCHEMAS, STATUSES, TABLES

if TYPE_CHECKING:
    from bnsweep.records import Store


@dataclass(frozen=True)
class Facts:
    """What one Parquet file holds, as far as verification asks."""

    sha256: str
    rows: int = 0
    steps: int | None = None  # distinct values of `step`
    keys: tuple[tuple, ...] = ()  # its distinct (cell_id, sweep, arch, norm, lr, seed)
    row: dict | None = None  # a cells file's first row
    problem: str | None = None  # why it is not a file of its table


_facts: dict[tuple, Facts] = {}  # (path, size, mtime, table) -> its facts, once per process
READERS = 4  # threads reading files' facts: pyarrow reads and hashes without holding the GIL


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def distinct_steps(t: pa.Table) -> int | None:
    """How many distinct values its `step` column holds (None for a table without one: `cells`)."""
    return len(pc.unique(t["step"])) if "step" in t.column_names else None


def summary(t: pa.Table, data: bytes) -> dict:
    """The record of one written file: what `files_json` holds for its table."""
    return {"rows": t.num_rows, "steps": distinct_steps(t), "sha256": digest(data)}


def schema_problem(have: pa.Schema, name: str) -> str | None:
    """Why a file of schema `have` is not a `name` table, or None."""
    want, old = SCHEMAS[name], RETIRED.get(name, pa.schema([]))
    if missing := [k for k in KEY_NAMES if k not in have.names]:
        return f"not a {name} table: lacks key columns {', '.join(missing)}"
    if foreign := [c for c in have.names if c not in want.names and c not in old.names]:
        return f"not a {name} table: has columns {', '.join(foreign[:6])} that it lacks"
    if missing := [c for c in REQUIRED[name] if c not in have.names]:
        return f"not a {name} table: lacks columns {', '.join(missing)}"
    if bad := [c for c in have.names if not have.field(c).type.equals((want if c in want.names else old).field(c).type)]:
        return f"columns {', '.join(bad)} have the wrong type for the {name} table"
    return None


def facts(store: Store, info: pafs.FileInfo, name: str) -> Facts:
    """The facts of the Parquet file `info` read as table `name` (cached while the file is unchanged)."""
    key = (info.path, info.size, info.mtime_ns, name)
    if key not in _facts:
        _facts[key] = _read(store, info.path, name)
    return _facts[key]


def _read(store: Store, path: str, name: str) -> Facts:
    try:
        with store.fs.open_input_stream(path) as f:
            data = f.read()
    except OSError as e:
        return Facts("", problem=f"unreadable ({str(e).splitlines()[0][:120]})")
    sha = digest(data)
    try:
        pf = pq.ParquetFile(pa.BufferReader(data))
        if problem := schema_problem(pf.schema_arrow, name):
            return Facts(sha, problem=problem)
        cols = KEY_NAMES + [c for c in ("step", "status", "steps_done", "files_json") if c in pf.schema_arrow.names]
        t = pf.read(columns=cols)
    except (OSError, pa.ArrowException) as e:  # truncated, garbage
        return Facts(sha, problem=f"unreadable Parquet ({str(e).splitlines()[0][:120]})")
    return Facts(sha, rows=t.num_rows, keys=_keys(t), steps=distinct_steps(t),
                 row=t.to_pylist()[0] if name == "cells" and t.num_rows else None)


def _keys(t: pa.Table) -> tuple[tuple, ...]:
    """The distinct key tuples of `t`, sorted. A cell's file has one value per key column, which settles it without
    a group-by (that, and importing pyarrow's group-by engine, took most of a survey's time)."""
    distinct = [pc.unique(t[k]) for k in KEY_NAMES]
    if all(len(d) == 1 for d in distinct):
        return (tuple(d[0].as_py() for d in distinct),)
    return tuple(sorted(tuple(r.values()) for r in t.group_by(KEY_NAMES).aggregate([]).select(KEY_NAMES).to_pylist()))


def expected(keys: dict) -> tuple:
    return tuple(keys[k] for k in KEY_NAMES)


def _show(keys: tuple) -> str:
    return ", ".join(f"{k}={v}" for k, v in zip(KEY_NAMES, keys))


def judge(store: Store, cells: pafs.FileInfo, results: dict[str, pafs.FileInfo], required: list[str] | None = None,
          expect: dict | None = None) -> tuple[str | None, dict[str, str]]:
    """(status, {path: why it is not trusted}) of the cell whose `cells` file is `cells`.

    `results`: {table: the file at that cell's place in the table}; `required`: tables its result must have;
    `expect`: its key columns as the spec says. status is None unless the `cells` file verifies; `done` or
    `diverged` only if the whole result does.
    """
    def untrusted(why: str, culprit: pafs.FileInfo = cells, own: str | None = None) -> tuple[None, dict[str, str]]:
        """Nothing of the cell is trusted: the file at fault says its own fault, the others the cell's."""
        return None, ({i.path: f"its cell's result does not verify ({why})" for i in [cells, *results.values()]}
                      | {culprit.path: own or why})

    f, at = facts(store, cells, "cells"), layout.place(store.root, cells.path)
    if f.problem:
        return untrusted(f.problem)
    if f.rows != 1:
        return untrusted(f"holds {f.rows} rows, not the one row of its cell")
    row, here = f.row, expected({**f.row, **at})
    if expected(row)[:4] != here[:4]:
        return untrusted(f"holds the row of {_show(expected(row)[:4])}, not of its place ({_show(here[:4])})")
    if expect is not None and expected(row) != expected(expect):
        return untrusted(f"its keys ({_show(expected(row))}) are not the spec's ({_show(expected(expect))})")
    if row["status"] not in STATUSES:
        return untrusted(f"status {row['status']!r} is none of {', '.join(STATUSES)}")
    if row["status"] == layout.FAILED:
        return row["status"], {i.path: "left beside a failed cell's row" for i in results.values()}
    try:
        record = json.loads(row["files_json"]) if row.get("files_json") is not None else None
    except ValueError:
        record = []
    if record is not None and not (isinstance(record, dict) and all(isinstance(r, dict) for r in record.values())):
        return untrusted("its files_json record is not a JSON object of tables")
    bad = {i.path: "not in its cell's record of the files it wrote" for n, i in results.items()
           if record is not None and n not in record}
    for name in record if record is not None else [n for n in results if n in RESULT_TABLES]:
        if name not in RESULT_TABLES:
            return untrusted(f"its record names {name!r}, not a result table")
        if name not in results:
            return untrusted(f"its {name} file is missing")
        got = facts(store, results[name], name)
        if why := got.problem or _disagrees(got, name, expected(row), row, (record or {}).get(name)):
            return untrusted(f"its {name} file: {why}", results[name], why)
    need = [*(["steps", "evals"] if record is not None else []), *(required or [])]  # every finished cell writes these
    if missing := [n for n in dict.fromkeys(need) if n not in (record if record is not None else results)]:
        return untrusted(f"its result lacks {', '.join(missing)}")
    return row["status"], bad


def _disagrees(got: Facts, name: str, keys: tuple, row: dict, rec: dict | None) -> str | None:
    """Why a readable result file does not agree with its cell (keys on every row, its record), or None."""
    if got.keys and got.keys != (keys,):
        other = next(k for k in got.keys if k != keys)
        return f"holds rows of another cell ({_show(other)})" + (" beside its own" if keys in got.keys else "")
    if rec is not None:
        if rec.get("file") != f"{keys[0]}.parquet":
            return f"is recorded under another name ({rec.get('file')!r})"
        if got.sha256 != rec.get("sha256"):
            return f"does not match its recorded hash ({got.rows} rows, recorded {rec.get('rows')})"
        if (got.rows, got.steps) != (rec.get("rows"), rec.get("steps")):
            return f"holds {got.rows} rows over {got.steps} steps, recorded {rec.get('rows')} over {rec.get('steps')}"
    elif name == "steps" and not got.rows == got.steps == row["steps_done"]:
        return f"holds {got.rows} rows over {got.steps} steps where the cell did {row['steps_done']} steps"
    return None


@dataclass
class Survey:
    """What `survey` found under one output (one sweep of it, or all)."""

    good: dict[str, list[str]] = field(default_factory=lambda: {n: [] for n in TABLES})  # table -> trusted paths
    bad: dict[str, dict[str, str]] = field(default_factory=lambda: {n: {} for n in TABLES})  # table -> {path: why}
    status: dict[tuple[str, str], str] = field(default_factory=dict)  # (sweep, cell_id) -> status, verified cells
    sha256: dict[str, str] = field(default_factory=dict)  # trusted path -> the sha256 of its bytes

    def digest(self) -> str:
        """One sha256 over every trusted file's path and hash: equal exactly when the trusted data is the same."""
        return digest("".join(f"{p}\0{h}\n" for p, h in sorted(self.sha256.items())).encode())

    def listed(self, name: str) -> tuple[list[str], dict[str, str]]:
        return sorted(self.good[name]), self.bad[name]


def survey(store: Store, sweep: str | None = None, required: dict[str, list[str]] | None = None,
           expect: dict[str, dict] | None = None) -> Survey:
    """Judge every file of every table (of one sweep, if given). `required` and `expect`: by cell_id, as in `judge`.

    Hidden files (a write in progress, `.DS_Store`) are passed over silently.
    """
    out = Survey()
    cells: list[pafs.FileInfo] = []
    results: dict[tuple, pafs.FileInfo] = {}  # (table, sweep, arch, norm, cell_id) -> file
    for name in TABLES:
        folder = layout.table_dir(store.root, name, sweep)
        if store.fs.get_file_info(folder).type != pafs.FileType.Directory:
            continue
        for info in store.fs.get_file_info(pafs.FileSelector(folder, recursive=True)):
            if info.type != pafs.FileType.File or info.base_name.startswith("."):
                continue
            at = layout.place(store.root, info.path)
            if at is None or at["table"] != name:
                out.bad[name][info.path] = "not a cell file of this table (stray)"
            elif name == "cells":
                cells.append(info)
            else:
                results[tuple(at.values())] = info
    with ThreadPoolExecutor(READERS) as pool:  # read every file's facts first, several at a time; judge reads them back
        list(pool.map(lambda job: facts(store, *job), [(i, "cells") for i in cells] + [(i, k[0]) for k, i in results.items()]))
    for info in cells:
        at = layout.place(store.root, info.path)
        mine = {n: results.pop((n, *list(at.values())[1:])) for n in RESULT_TABLES if (n, *list(at.values())[1:]) in results}
        status, bad = judge(store, info, mine, (required or {}).get(at["cell_id"]), (expect or {}).get(at["cell_id"]))
        if status is not None:
            out.status[(at["sweep"], at["cell_id"])] = status
        for i in [info, *mine.values()]:
            name = layout.place(store.root, i.path)["table"]
            if i.path in bad:
                out.bad[name][i.path] = bad[i.path]
            else:
                out.good[name].append(i.path)
                out.sha256[i.path] = facts(store, i, name).sha256
    for (name, *_), info in results.items():
        out.bad[name][info.path] = "no cells row records it (an interrupted write, or a file from elsewhere)"
    return out
