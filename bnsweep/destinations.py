"""Checks on where a command writes (`report -o`, `query -o`), before anything is computed or written.

A destination that cannot work (a folder where a file is, a file in a missing folder) is the
user's mistake: one line, exit 2, instead of an OSError traceback halfway through.
"""

from __future__ import annotations

import os
from pathlib import Path

from bnsweep.errors import UserError


def folder(dest: str | Path) -> Path:
    """A folder to write into: absent (made later) or a folder; every existing ancestor a folder."""
    p = Path(dest)
    if p.exists() and not p.is_dir():
        raise UserError(f"-o {dest}: exists and is not a folder; give a folder (it is created if missing)")
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"-o {dest}: {parent} is not a folder")
            break
    return p


def file(dest: str | Path) -> Path:
    """A file to write: its folder exists, and it is not itself a folder."""
    p = Path(dest)
    if p.is_dir():
        raise UserError(f"-o {dest}: is a folder; give a file name")
    parent = p.parent
    if not parent.is_dir():
        raise UserError(
            f"-o {dest}: folder {parent} does not exist"
            if not parent.exists()
            else f"-o {dest}: {parent} is not a folder"
        )
    return p


def outside(dest: str | Path, output: str) -> None:
    """Refuse a destination inside the output folder `output` (a local one): a query's file there could
    overwrite a result, or be read back as one. Links are followed, so no alias of the output slips through."""
    if "://" in output:  # an object store: a local -o cannot be inside it
        return
    root, p = os.path.realpath(os.path.expanduser(output)), os.path.realpath(dest)
    if os.path.commonpath([root, p]) == root:
        raise UserError(f"-o {dest}: is inside the output {output}, whose files are results; write the query's result elsewhere")
