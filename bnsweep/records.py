"""The output tables: fixed pyarrow schemas, one Parquet file per cell per table, written atomically.

Layout (Hive partitions; every row also carries the key columns itself):

    <output>/<table>/sweep=<name>/arch=<arch>/norm=<norm>/<cell_id>.parquet

Read a whole sweep with `polars.scan_parquet("<output>/steps/**/*.parquet", hive_partitioning=True)`.
A file appears whole or not at all (write to a hidden temporary name, then rename; on object stores
a single PUT). The `cells` table is written last: a cell is done once its `cells` row says so.
"""

from __future__ import annotations

import os
import uuid
from urllib.parse import parse_qs, urlsplit

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from bnsweep.measure import MEASURES, ROW_COLUMNS

KEYS = [
    pa.field("cell_id", pa.string(), nullable=False),
    pa.field("sweep", pa.string(), nullable=False),
    pa.field("arch", pa.string(), nullable=False),
    pa.field("norm", pa.string(), nullable=False),
    pa.field("lr", pa.float64(), nullable=False),
    pa.field("seed", pa.int64(), nullable=False),
]

_ts = pa.timestamp("us", tz="UTC")
SCHEMAS: dict[str, pa.Schema] = {
    "cells": pa.schema(KEYS + [
        ("dataset", pa.string()), ("steps", pa.int64()), ("batch_size", pa.int64()),
        ("momentum", pa.float64()), ("weight_decay", pa.float64()), ("augment", pa.bool_()),
        ("status", pa.string()),  # done | diverged | failed
        ("steps_done", pa.int64()), ("diverged_step", pa.int64()), ("error", pa.string()),
        ("resumed_from", pa.int64()),  # step at which a checkpoint of an interrupted attempt was resumed
        ("started_at", _ts), ("finished_at", _ts), ("wall_s", pa.float64()),
        ("train_s", pa.float64()), ("eval_s", pa.float64()),
        ("node_id", pa.string()), ("hostname", pa.string()), ("device", pa.string()),
        ("torch_version", pa.string()), ("cuda_version", pa.string()),
        ("bnsweep_version", pa.string()), ("python_version", pa.string()),
        ("config_json", pa.string()),
    ]),
    "steps": pa.schema(KEYS + [("step", pa.int64()), ("loss", pa.float64()), ("accuracy", pa.float64())]),
    "evals": pa.schema(KEYS + [("step", pa.int64()), ("split", pa.string()), ("loss", pa.float64()), ("accuracy", pa.float64())]),
}
# the `lr` key column doubles as the steps table's per-step learning rate (constant schedule)

for _name, _cls in MEASURES.items():  # one table per measurement, and its cost on the cells row
    SCHEMAS[_name] = pa.schema(KEYS + ROW_COLUMNS + _cls.columns)
    SCHEMAS["cells"] = SCHEMAS["cells"].append(pa.field(f"{_name}_s", pa.float64()))

DONE = ("done", "diverged")  # statuses that are results; `failed` cells run again


def key_columns(cell) -> dict:
    return {"cell_id": cell.cell_id, "sweep": cell.sweep, "arch": cell.arch, "norm": cell.norm,
            "lr": float(cell.lr), "seed": int(cell.seed)}


def table(name: str, cell, columns: dict[str, list]) -> pa.Table:
    """A table of `name`'s schema for one cell: `columns` plus the cell's key columns on every row."""
    n = len(next(iter(columns.values()))) if columns else 1
    data = {k: [v] * n for k, v in key_columns(cell).items()} | columns
    return pa.Table.from_pydict({f.name: data.get(f.name, [None] * n) for f in SCHEMAS[name]}, schema=SCHEMAS[name])


class Store:
    """An output location (local path or URI) seen through a pyarrow filesystem."""

    def __init__(self, output: str):
        if "://" not in output:
            output = os.path.abspath(os.path.expanduser(output))
        self.uri = output
        self.fs, self.root = pafs.FileSystem.from_uri(output)
        self.root = self.root.rstrip("/")
        self.local = isinstance(self.fs, pafs.LocalFileSystem)

    def __reduce__(self):  # ship the URI to workers, not the filesystem object
        return (Store, (self.uri,))

    def scan_target(self, rel: str) -> tuple[str, dict | None]:
        """(path, storage_options) for Polars to read `rel` below the output, on any filesystem."""
        if self.local:
            return f"{self.root}/{rel}", None
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
        return f"{scheme}://{self.root}/{rel}", opts or None

    def folder(self, name: str, sweep: str) -> str:
        return f"{self.root}/{name}/sweep={sweep}"

    def path(self, name: str, cell) -> str:
        return f"{self.folder(name, cell.sweep)}/arch={cell.arch}/norm={cell.norm}/{cell.cell_id}.parquet"

    def put(self, path: str, data: bytes) -> None:
        """Write `data` at `path` so that readers see the whole file or nothing."""
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

    def remove(self, path: str) -> None:
        if self.fs.get_file_info(path).type == pafs.FileType.File:
            self.fs.delete_file(path)

    def write(self, name: str, cell, t: pa.Table) -> None:
        """Write one cell's table atomically."""
        buf = pa.BufferOutputStream()
        pq.write_table(t, buf)
        self.put(self.path(name, cell), buf.getvalue().to_pybytes())

    def delete(self, name: str, cell) -> None:
        self.remove(self.path(name, cell))

    def checkpoint_path(self, cell) -> str:
        """Where a running cell keeps its resumable state (removed once its tables are written)."""
        return f"{self.root}/_checkpoints/sweep={cell.sweep}/{cell.cell_id}.pt"

    def read(self, name: str, sweep: str) -> pa.Table:
        """One table of one sweep (empty if none was written yet)."""
        folder = self.folder(name, sweep)
        if self.fs.get_file_info(folder).type != pafs.FileType.Directory:
            return SCHEMAS[name].empty_table()
        ds = pads.dataset(folder, filesystem=self.fs, format="parquet", schema=SCHEMAS[name])
        return ds.to_table()

    def finished(self, sweep: str) -> dict[str, str]:
        """cell_id -> status for every cell of `sweep` that has a result (done or diverged)."""
        t = self.read("cells", sweep).select(["cell_id", "status"]).to_pylist()
        return {r["cell_id"]: r["status"] for r in t if r["status"] in DONE}
