"""The output store: one Parquet file per cell per table, written atomically, read back checked.

The layout (schemas, paths, statuses) is `bnsweep.layout`'s. Read a whole sweep with
`polars.scan_parquet("<output>/steps/**/*.parquet", hive_partitioning=True)`, or through
`Store.scan`, which leaves out damaged and stray files with a warning that names them.
A file appears whole or not at all (write to a hidden temporary name, then rename; on object stores
a single PUT). The `cells` table is written last: a cell is finished once its `cells` row says so.
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

from bnsweep import layout
from bnsweep.layout import KEY_NAMES, RESULT, RESULT_TABLES, SCHEMAS, TABLES

if TYPE_CHECKING:
    import polars as pl

_checked: dict[tuple, str | None] = {}  # (path, size, mtime) -> why the file is damaged, or None
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
              pack: tuple[int, int] = (1, 0)) -> dict:
    """The `cells` row of `cell` (a CellConfig) after training gave `res` (a TrainResult, or None if it failed);
    `pack`: (size of the pack it trained in, its index there)."""
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
        self.fs.create_dir(parent, recursive=True)
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
        self.fs.create_dir(dest.rsplit("/", 1)[0], recursive=True)
        self.fs.move(path, dest)
        print(f"moved damaged {path} to {dest}: {why}", file=sys.stderr, flush=True)
        return dest

    def write(self, name: str, cell, t: pa.Table) -> None:
        """Write one cell's table atomically."""
        buf = pa.BufferOutputStream()
        pq.write_table(t, buf)
        self.put(self.path(name, cell), buf.getvalue().to_pybytes())

    def delete(self, name: str, cell) -> None:
        self.remove(self.path(name, cell))

    # --- reading ---------------------------------------------------------------------------
    def damage(self, info: pafs.FileInfo, name: str) -> str | None:
        """Why the Parquet file `info` of table `name` cannot be trusted, or None if it reads whole."""
        key = (info.path, info.size, info.mtime_ns)
        if key not in _checked:
            try:
                with self.fs.open_input_file(info.path) as f:
                    meta = pq.read_metadata(f)
                have = meta.schema.to_arrow_schema()
                missing = [k for k in KEY_NAMES if k not in have.names]
                bad = [f.name for f in SCHEMAS[name] if f.name in have.names and not have.field(f.name).type.equals(f.type)]
                _checked[key] = (f"not a {name} table: lacks key columns {', '.join(missing)}" if missing else
                                 f"columns {', '.join(bad)} have the wrong type" if bad else None)
            except (OSError, pa.ArrowException) as e:  # truncated, garbage, unreadable
                _checked[key] = f"unreadable Parquet ({str(e).splitlines()[0][:120]})"
        return _checked[key]

    def files(self, name: str, sweep: str | None = None) -> tuple[list[str], dict[str, str]]:
        """(paths of the readable cell files of table `name`, {damaged or stray path: why}).

        Hidden files (a write in progress, `.DS_Store`) are passed over silently.
        """
        folder = layout.table_dir(self.root, name, sweep)
        if self.fs.get_file_info(folder).type != pafs.FileType.Directory:
            return [], {}
        good, bad = [], {}
        for info in self.fs.get_file_info(pafs.FileSelector(folder, recursive=True)):
            if info.type != pafs.FileType.File or info.base_name.startswith("."):
                continue
            if not layout.CELL_FILE.match(info.base_name):
                bad[info.path] = "not a cell file of this table (stray)"
            elif why := self.damage(info, name):
                bad[info.path] = why
            else:
                good.append(info.path)
        return sorted(good), bad

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

    def finished(self, sweep: str, required: dict[str, list[str]] | None = None) -> dict[str, str]:
        """cell_id -> status for every cell of `sweep` that has a trusted result (done or diverged).

        With `required` ({cell_id: tables its result must have}), this is the check a re-run makes:
        a damaged file of a cell (truncated, garbage, wrong schema) is moved aside under `_damaged/`,
        and a cell with a damaged or missing result file does not count as finished (its `cells`
        file is moved aside too, so no reader sees a result without its rows).
        """
        import polars as pl

        fix = required is not None
        listed = {name: self.files(name, sweep) for name in TABLES}  # one listing per table
        damaged: set[str] = set()
        for _, bad in listed.values():
            for path, why in bad.items():
                if not fix or not layout.CELL_FILE.match(path.rsplit("/", 1)[-1]):
                    warn(f"skipped {path}: {why}")
                else:
                    self.move_aside(path, why)
                    damaged.add(path.rsplit("/", 1)[-1].removesuffix(".parquet"))
        cells = self.scan("cells", sweep, quiet=True, listed=listed["cells"])
        t = cells.filter(pl.col("status").is_in(RESULT)).select("cell_id", "status").collect()
        done = dict(zip(t["cell_id"], t["status"]))
        if not fix:
            return done
        stem = lambda path: path.rsplit("/", 1)[-1].removesuffix(".parquet")
        have = {name: {stem(p) for p in listed[name][0]} for name in RESULT_TABLES}
        cells_file = {stem(p): p for p in listed["cells"][0]}
        for cell_id in [c for c in done if c in required]:
            missing = [name for name in required[cell_id] if cell_id not in have[name]]
            if cell_id in damaged or missing:
                del done[cell_id]
                self.move_aside(cells_file[cell_id], f"its result lacks {', '.join(missing)}" if missing
                                else "a file of its result was damaged")
        return done
        have = {name: {p.rsplit("/", 1)[-1].removesuffix(".parquet") for p in self.files(name, sweep)[0]}
                for name in RESULT_TABLES}
        for cell_id in [c for c in done if c in required]:
            missing = [name for name in required[cell_id] if cell_id not in have[name]]
            if cell_id in damaged or missing:
                del done[cell_id]
                cells_file = next(p for p in self.files("cells", sweep)[0] if p.endswith(f"/{cell_id}.parquet"))
                self.move_aside(cells_file, f"its result lacks {', '.join(missing)}" if missing else "a file of its result was damaged")
        return done
