"""Before a run writes: a file where one of the run's folders belongs is moved aside, never deleted.

A file named like a partition folder (`steps/sweep=s/arch=dln`), `_runs`, `_locks` or `_damaged`
made every write below it fail: Tune retried the cell, and every later run failed the same way. The
driver now checks each folder it and its cells will write under, once per folder, and moves such a
file under `<output>/_damaged/` (`_damaged` itself, when it is a file, is renamed beside it to
`_damaged.<utc time>`), saying so in one line.
"""

from __future__ import annotations

import datetime as dt
import sys

import pyarrow.fs as pafs

from bnsweep import layout
from bnsweep.records import Store


def _stamp() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")


def damaged_folder(store: Store) -> None:
    """Make sure `_damaged` can be a folder: a file there is renamed beside it."""
    path = layout.damaged_dir(store.root)
    if store.fs.get_file_info(path).type == pafs.FileType.File:
        dest = f"{path}.{_stamp()}"
        store.fs.move(path, dest)
        print(f"moved {path} to {dest}: a file where the folder of damaged files belongs", file=sys.stderr, flush=True)


def folders(store: Store, paths: set[str]) -> None:
    """Move aside every file that stands where a folder of `paths` (folders under the output) belongs."""
    if not store.local:
        return  # an object store has no folders: a key never stands in the way of keys below it
    damaged_folder(store)
    seen: set[str] = set()
    for path in sorted(paths):
        rel = path.removeprefix(store.root + "/").split("/")
        for i in range(1, len(rel) + 1):
            folder = "/".join([store.root, *rel[:i]])
            if folder in seen:
                continue
            seen.add(folder)
            kind = store.fs.get_file_info(folder).type
            if kind == pafs.FileType.NotFound:
                break  # nothing below it either
            if kind == pafs.FileType.File:
                store.move_aside(folder, "a file where a folder of the output belongs")
                break


def of_run(store: Store, sweep: str, cells) -> set[str]:
    """The folders `run` of `cells` writes under: the lock's, the run file's, checkpoints', each table partition's."""
    out = {layout.lock_file(store.root, sweep).rsplit("/", 1)[0], layout.runs_dir(store.root),
           layout.progress_dir(store.root, sweep), layout.damaged_dir(store.root)}
    for c in cells:
        out |= {layout.cell_file(store.root, name, c).rsplit("/", 1)[0] for name in layout.TABLES}
        out.add(store.checkpoint_path(c).rsplit("/", 1)[0])
    return out
