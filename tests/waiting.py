"""Waiting for a condition in tests: polled, with a generous hang guard that fails with a message.

A hang guard bounds how long a broken build may hang the suite; it is never a statement about speed
(speed is the benchmarks' job), so it is minutes, not seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable

HANG_S = 300.0  # a bound on a hang, not a speed test


def wait_until(condition: Callable[[], object], what: str, hang_s: float = HANG_S, poll_s: float = 0.01):
    """Poll `condition` until it is truthy and return its value; fail naming `what` after `hang_s` seconds."""
    end = time.monotonic() + hang_s
    while not (value := condition()):
        if time.monotonic() > end:
            raise AssertionError(f"still waiting after {hang_s:.0f} s for {what}")
        time.sleep(poll_s)
    return value


def holders(folder) -> list[int]:
    """Pids of live processes with a file open under `folder` (from /proc; a Ray process keeps its session's logs open)."""
    from pathlib import Path

    root, found = str(Path(folder).resolve()), []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if any(str((fd).readlink()).startswith(root) for fd in (proc / "fd").iterdir()):
                found.append(int(proc.name))
        except OSError:  # gone, or not ours to read
            continue
    return found
