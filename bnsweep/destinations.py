"""Checks on where a command writes (a sweep's `output`, `report -o`, `query -o`), before anything is computed or written.

A destination that cannot work (a folder where a file is, a file in a missing folder) is the
user's mistake: one line, exit 2, instead of an OSError traceback halfway through.
"""

from __future__ import annotations

import os
from pathlib import Path

from bnsweep.errors import UserError
from bnsweep.limits import MAX_OUTPUT_PATH, REACH_TIMEOUT_S, short

SYSTEM = ("proc", "sys", "dev")  # top-level folders of the kernel's file systems: nothing of ours goes there


def _not_system(label: str, p: Path) -> None:
    if Path(os.path.abspath(p)).resolve().parts[1:2] in [(name,) for name in SYSTEM]:
        raise UserError(f"{label}: {Path(os.path.abspath(p)).resolve()} is on a system file system (/proc, /sys, /dev); "
                        "give a folder of your own")


def folder(dest: str | Path) -> Path:
    """A folder to write into: absent (made later) or a folder; every existing ancestor a folder."""
    p = Path(dest)
    _not_system(f"-o {dest}", p)
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
    _not_system(f"-o {dest}", p)
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


_PROBE = """
import sys
import pyarrow.fs as pafs
print("imported", flush=True)  # the clock starts here: a slow import on a busy machine is no unreachable endpoint
fs, root = pafs.FileSystem.from_uri(sys.argv[1])
root = root.rstrip("/")
if fs.get_file_info(root.split("/")[0]).type == pafs.FileType.NotFound:
    sys.exit("its bucket does not exist")
if fs.get_file_info(root).type == pafs.FileType.File:
    sys.exit("it is a file, not a folder")
"""
IMPORT_TIMEOUT_S = 120.0  # the probe's own start (Python and pyarrow), not counted in the endpoint's timeout


def output(uri: str, timeout_s: float = REACH_TIMEOUT_S) -> None:
    """Refuse an output `run` could not write into, before anything runs.

    Local: not an existing file (`/dev/null` included), no file on the way, not under /proc, /sys or
    /dev, its path within MAX_OUTPUT_PATH bytes, and a missing one creatable. Remote (s3://, gs://):
    its bucket answers within `timeout_s`, asked by a child process that is killed after it, so
    neither an unreachable endpoint nor a region lookup without network holds a command up.
    """
    if "://" in uri and not uri.lower().startswith("file://"):
        _answers(uri, timeout_s)
        return
    path = Path(os.path.abspath(os.path.expanduser(uri[len("file://"):] if "://" in uri else uri)))
    if len(os.fsencode(path)) > MAX_OUTPUT_PATH:
        raise UserError(f"output {short(uri)}: its full path is {len(os.fsencode(path)):,} bytes; at most {MAX_OUTPUT_PATH:,}")
    _not_system(f"output {uri}", path)
    if path.exists():
        if not path.is_dir():
            raise UserError(f"output {uri}: exists and is not a folder; give a folder (it is created if missing)")
        return
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"output {uri}: {parent} is a file, so the folder cannot be made")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise UserError(f"output {uri}: the folder cannot be made: {parent} is not writable")
            return


def _answers(uri: str, timeout_s: float) -> None:
    """An object-store output's bucket exists and answers within `timeout_s` of the probe's start."""
    import select
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-c", _PROBE, uri], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        if select.select([p.stdout], [], [], IMPORT_TIMEOUT_S)[0]:
            p.stdout.readline()
        err = p.communicate(timeout=timeout_s)[1]
    except subprocess.TimeoutExpired:
        raise UserError(f"output {short(uri)}: no answer within {timeout_s:g} s (no network, or the endpoint is unreachable)") from None
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    if p.returncode:
        lines = [line for line in err.splitlines() if line.strip()]
        why = lines[-1].removeprefix("OSError: ") if lines else f"exit status {p.returncode}"
        raise UserError(f"output {short(uri)}: cannot use it: {' '.join(why.split())[:200]}")


def outside(dest: str | Path, output: str) -> None:
    """Refuse a destination inside the output folder `output` (a local one): a query's file there could
    overwrite a result, or be read back as one. Links are followed, so no alias of the output slips through."""
    if "://" in output:  # an object store: a local -o cannot be inside it
        return
    root, p = os.path.realpath(os.path.expanduser(output)), os.path.realpath(dest)
    if os.path.commonpath([root, p]) == root:
        raise UserError(f"-o {dest}: is inside the output {output}, whose files are results; write the query's result elsewhere")
