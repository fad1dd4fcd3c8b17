"""Checks on where a command writes (`report -o`, `query -o`), before anything is computed or written.

A destination that cannot work (a folder where a file is, a file in a missing folder) is the
user's mistake: one line, exit 2, instead of an OSError traceback halfway through.
"""

from __future__ import annotations

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
