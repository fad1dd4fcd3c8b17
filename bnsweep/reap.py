"""End what is left of the Ray instance this driver started: nothing of a run outlives its driver.

`ray.shutdown()` stops the processes it knows, but Ray's dashboard and runtime-env agents (started by
the raylet), and everything when `ray.init` was interrupted half-way or the driver exits at once on a
second signal, were seen to live on for about a minute. Every process of a local Ray instance carries
its session folder in its command line, and the session's name ends in the pid of the driver that
started it (`session_<date>_<time>_<usec>_<pid>`), so they are found by that name (Linux /proc), and
only those: a cluster joined with `--address` has a session of its own, never touched here. Nothing is
ended unless this driver started a local instance (`own`): a cluster started by the same process (Ray's
`cluster_utils.Cluster` in a test or a notebook) shares the session name, and must outlive the run.
"""

from __future__ import annotations

import os
import re
import signal
import time


def session_pattern(pid: int | None = None) -> re.Pattern:
    return re.compile(rf"session_\d{{4}}-\d\d-\d\d_\d\d-\d\d-\d\d_\d+_{pid or os.getpid()}(?!\d)")


def processes(pid: int | None = None) -> list[int]:
    """Pids of the processes of the local Ray instance started by driver `pid` (default: this process)."""
    pattern, me, found = session_pattern(pid), os.getpid(), []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if pattern.search(cmdline):
            found.append(int(entry))
    return found


def _signal(pids: list[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except (ProcessLookupError, PermissionError):
            pass


_owned = {"local": False}


def own(local: bool = True) -> None:
    """Whether this driver started the local Ray instance that `now` and `leftovers` may end."""
    _owned["local"] = local


def now() -> None:
    """SIGKILL every process of this driver's Ray instance (the exit-at-once path), if it started one."""
    if _owned["local"]:
        _signal(processes(), signal.SIGKILL)


def leftovers(grace_s: float = 3.0) -> list[int]:
    """After `ray.shutdown()`: SIGTERM what is left of this driver's Ray instance, SIGKILL what is still there after
    `grace_s`; returns the pids that were found."""
    found = processes() if _owned["local"] else []
    if not found:
        return []
    _signal(found, signal.SIGTERM)
    end = time.monotonic() + grace_s
    while time.monotonic() < end and any(_running(p) for p in found):
        time.sleep(0.1)
    _signal([p for p in found if _running(p)], signal.SIGKILL)
    return found


def _running(pid: int) -> bool:
    """Alive and not a zombie (a zombie child of this process waits only to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
