"""The output store: one Parquet file per cell per table, written atomically, read back checked.

The layout (schemas, paths, statuses) is `bnsweep.layout`'s. Read a whole sweep with
`polars.scan_parquet("<output>/steps/**/*.parquet", hive_partitioning=True)`, or through
`Store.scan`, which reads only files that verify as their cell's result (`bnsweep.verify`) and names
the others in a warning line. A file appears whole or not at all (write to a hidden temporary name,
then rename; on object stores a single PUT). The `cells` table is written last, recording each file
the cell wrote (name, rows, distinct steps, sha256): a cell is finished once that row says so and its
files agree with it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from bnsweep import layout, verify
from bnsweep.layout import KEY_NAMES, RESULT, SCHEMAS

if TYPE_CHECKING:
    import polars as pl

_warned: set[str] = set()


def table(name: str, cell, columns: dict[str, list]) -> pa.Table:
    """A table of `name`'s schema for one cell: `columns` plus the cell's key columns on every row."""
    n = len(next(iter(columns.values()))) if columns else 1
    data = {k: [v] * n for k, v in layout.key_columns(cell).items()} | columns
    return pa.Table.from_pydict({f.name: data.get(f.name, [None] * n) for f in SCHEMAS[name]}, schema=SCHEMAS[name])


def columns(rows: list[dict], name: str) -> dict[str, list]:
    """Row dicts -> the columns of table `name` (key columns are added by `table`)."""
    return {f.name: [r.get(f.name) for r in rows] for f in SCHEMAS[name] if f.name not in KEY_NAMES}


def cells_row(cell, res, started: dt.datetime, wall_s: float, provenance: dict, error: str | None,
              pack: tuple[int, int] = (1, 0), files: dict[str, dict] | None = None) -> dict:
    """The `cells` row of `cell` (a CellConfig) after training gave `res` (a TrainResult, or None if it failed);
    `pack`: (size of the pack it trained in, its index there); `files`: {table: `Store.write`'s record} of
    the result files it wrote."""
    t = cell.train
    return {
        "dataset": cell.dataset.name, "steps": t.steps, "batch_size": t.batch_size,
        "momentum": t.momentum, "weight_decay": t.weight_decay, "augment": t.augment,
        "status": res.status if res else layout.FAILED,
        "steps_done": len(res.steps["step"]) if res else 0,
        "diverged_step": res.diverged_step if res else None, "error": error,
        "resumed_from": res.resumed_from if res else None,
        "pack_size": pack[0], "pack_index": pack[1],
        "started_at": started, "finished_at": started + dt.timedelta(seconds=wall_s), "wall_s": wall_s,
        "train_s": res.train_s if res else None, "eval_s": res.eval_s if res else None,
        **provenance,
        "config_json": cell.model_dump_json(),
        "precision": cell.performance.precision, **(res.performance if res else {}),
        **{f"{name}_s": s for name, s in (res.measure_s if res else {}).items()},
        "files_json": json.dumps(files or {}, sort_keys=True),
    }


def warn(message: str) -> None:
    """One warning line on stderr, once per process."""
    if message not in _warned:
        _warned.add(message)
        print(f"warning: {message}", file=sys.stderr, flush=True)


class Store:
    """An output location (local path or URI) seen through a pyarrow filesystem."""

    def __init__(self, output: str, guard: Callable[[], None] | None = None):
        self.guard = guard  # called before every write; raises to refuse it (the run lock's fence, bnsweep.lock)
        if "://" not in output:
            output = os.path.abspath(os.path.expanduser(output))
        self.uri = output
        self.fs, self.root = pafs.FileSystem.from_uri(output)
        self.root = self.root.rstrip("/")
        self.local = isinstance(self.fs, pafs.LocalFileSystem)

    def __reduce__(self):  # ship the URI to workers, not the filesystem object
        return (Store, (self.uri, self.guard))

    def scan_target(self, path: str) -> tuple[str, dict | None]:
        """(address, storage_options) for Polars to read `path` (a path of this store's filesystem)."""
        if self.local:
            return path, None
        scheme = self.uri.split("://", 1)[0]
        query = parse_qs(urlsplit(self.uri).query)
        opts = {}
        if scheme == "s3" and "endpoint_override" in query:
            http = query.get("scheme", ["https"])[0]
            opts["aws_endpoint_url"] = f"{http}://{query['endpoint_override'][0]}"
            if http == "http":
                opts["aws_allow_http"] = "true"
        if scheme == "s3" and "region" in query:
            opts["aws_region"] = query["region"][0]
        return f"{scheme}://{path}", opts or None

    def folder(self, name: str, sweep: str) -> str:
        return layout.table_dir(self.root, name, sweep)

    def path(self, name: str, cell) -> str:
        return layout.cell_file(self.root, name, cell)

    def checkpoint_path(self, cell) -> str:
        """Where a running cell keeps its resumable state (removed once its tables are written)."""
        return layout.checkpoint_file(self.root, cell.sweep, cell.cell_id)

    # --- writing ---------------------------------------------------------------------------
    def put(self, path: str, data: bytes) -> None:
        """Write `data` at `path` so that readers see the whole file or nothing."""
        if self.guard:
            self.guard()
        parent, base = path.rsplit("/", 1)
        self.fs.create_dir(parent)  # and its parents (pyarrow's default)
        if not self.local:  # an object store PUT is atomic
            with self.fs.open_output_stream(path) as f:
                f.write(data)
            return
        tmp = f"{parent}/.{base}.{uuid.uuid4().hex}.tmp"  # hidden from readers
        try:
            with self.fs.open_output_stream(tmp) as f:
                f.write(data)
            self.fs.move(tmp, path)  # rename: atomic on POSIX
        finally:
            if self.fs.get_file_info(tmp).type != pafs.FileType.NotFound:
                self.fs.delete_file(tmp)

    def get(self, path: str) -> bytes | None:
        """The bytes at `path`, or None if there is no such file."""
        try:
            with self.fs.open_input_stream(path) as f:
                return f.read()
        except (FileNotFoundError, OSError) as e:
            if self.fs.get_file_info(path).type == pafs.FileType.NotFound:
                return None
            raise e

    def get_record(self, path: str) -> dict | None:
        """The JSON object at `path` (a lock, a run file, a progress sidecar), or None: absent, torn or not an object."""
        blob = self.get(path)
        try:
            rec = json.loads(blob) if blob else None
        except ValueError:
            return None
        return rec if isinstance(rec, dict) else None

    def remove(self, path: str) -> None:
        if self.guard:
            self.guard()
        if self.fs.get_file_info(path).type == pafs.FileType.File:
            self.fs.delete_file(path)

    def move_aside(self, path: str, why: str) -> str:
        """Move a damaged file under <output>/_damaged/ (never deleted) and say so; returns its new path."""
        if self.guard:
            self.guard()
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        dest = f"{layout.damaged_dir(self.root)}/{path.removeprefix(self.root + '/')}.{stamp}"
        self.fs.create_dir(dest.rsplit("/", 1)[0])
        self.fs.move(path, dest)
        print(f"moved damaged {path} to {dest}: {why}", file=sys.stderr, flush=True)
        return dest

    def write(self, name: str, cell, t: pa.Table) -> dict:
        """Write one cell's table atomically; returns the record its `cells` row keeps of it (`bnsweep.verify`)."""
        buf = pa.BufferOutputStream()
        pq.write_table(t, buf)
        data = buf.getvalue().to_pybytes()
        path = self.path(name, cell)
        self.put(path, data)
        return {"file": path.rsplit("/", 1)[-1], **verify.summary(t, data)}

    def delete(self, name: str, cell) -> None:
        self.remove(self.path(name, cell))

    # --- reading ---------------------------------------------------------------------------
    def survey(self, sweep: str | None = None) -> verify.Survey:
        """Every file of every table (of one sweep, if given), judged: which are trusted, and why the others are not."""
        return verify.survey(self, sweep)

    def files(self, name: str, sweep: str | None = None) -> tuple[list[str], dict[str, str]]:
        """(paths of the trusted cell files of table `name`, {untrusted or stray path: why}); see `bnsweep.verify`."""
        return self.survey(sweep).listed(name)

    def scan(self, name: str, sweep: str | None = None, quiet: bool = False,
             listed: tuple[list[str], dict[str, str]] | None = None) -> pl.LazyFrame:
        """Every trusted row of table `name` (of one sweep, if given) as a lazy, schema-fixed Polars scan.

        Damaged and stray files are left out with a warning line naming each (unless `quiet`); `listed`
        is `files(name, sweep)` when the caller has it already. Files written before a column existed
        read with nulls there.
        """
        import polars as pl

        good, bad = listed if listed is not None else self.files(name, sweep)
        if not quiet:
            for path, why in bad.items():
                warn(f"skipped {path}: {why}")
        schema = pl.from_arrow(SCHEMAS[name].empty_table()).schema
        if not good:
            return pl.LazyFrame(schema=schema)
        targets = [self.scan_target(p) for p in good]
        return pl.scan_parquet([t for t, _ in targets], schema=schema, storage_options=targets[0][1],
                               missing_columns="insert", extra_columns="ignore")

    def read(self, name: str, sweep: str) -> pa.Table:
        """One table of one sweep, trusted rows only (empty if none was written yet)."""
        return self.scan(name, sweep).collect().to_arrow().cast(SCHEMAS[name])

    def finished(self, sweep: str, required: dict[str, list[str]] | None = None,
                 expect: dict[str, dict] | None = None) -> dict[str, str]:
        """cell_id -> status for every cell of `sweep` with a verified result (done or diverged).

        With `required` ({cell_id: tables its result must have}) and `expect` ({cell_id: its key columns}), this
        is the check a run makes: every Parquet file that does not verify is moved aside under `_damaged/` (its
        cell runs again), and the cells of `required` that lost their result are named. Other stray files
        (`notes.txt`) are named and left where they are: no reader takes them for a result.
        """
        found = verify.survey(self, sweep, required, expect)
        done = {cid: s for (_, cid), s in found.status.items() if s in RESULT}
        fix = required is not None
        for bad in found.bad.values():
            for path, why in bad.items():
                if fix and path.endswith(".parquet"):
                    self.move_aside(path, why)
                    cid = path.rsplit("/", 1)[-1].removesuffix(".parquet")
                    if cid in required and cid not in done and path.startswith(layout.table_dir(self.root, "cells")):
                        print(f"cell {cid} runs again: its result did not verify", file=sys.stderr, flush=True)
                else:
                    warn(f"skipped {path}: {why}")
        return done
