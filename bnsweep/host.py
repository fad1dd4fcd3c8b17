"""Checks of this machine before an embedded Ray starts on it: what would otherwise end in Ray's
C++ stack traces or a socket error, with a lock left behind, is one line (exit 2) instead."""

from __future__ import annotations

import os
import resource
import shutil

from bnsweep.errors import UserError

SOCKET_PATH_MAX = 107  # bytes of an AF_UNIX path on Linux (108 with the NUL); Ray checks the same
RAY_SOCKET_SUFFIX = "/ray/session_2026-01-01_00-00-00_000000_4194304/sockets/plasma_store"  # the longest Ray makes
MIN_TMP_FREE = 64 * 2**20  # bytes: Ray's session folder (logs, sockets, spilled metadata) at start
MIN_ADDRESS_SPACE = 2 * 2**30  # bytes (ulimit -v): Ray 2.60.0 started under 2 GiB, died in C++ under 1 GiB


def ray_temp_dir() -> str:
    """Where Ray puts its session (RAY_TMPDIR, else TMPDIR, else /tmp), as `ray._common.utils` decides."""
    return os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp"


def check_local_ray() -> None:
    """Refuse, in one line, a machine an embedded Ray cannot start on."""
    tmp = ray_temp_dir()
    where = "RAY_TMPDIR" if os.environ.get("RAY_TMPDIR") else "TMPDIR"
    if not os.path.isdir(tmp) or not os.access(tmp, os.W_OK | os.X_OK):
        raise UserError(f"{where} {tmp}: not a writable folder; Ray keeps its session there")
    if (free := shutil.disk_usage(tmp).free) < MIN_TMP_FREE:
        raise UserError(f"{where} {tmp}: {free / 2**20:.0f} MiB free; Ray needs at least {MIN_TMP_FREE // 2**20} MiB "
                        "there to start (free some, or point TMPDIR elsewhere)")
    if len(os.fsencode(tmp + RAY_SOCKET_SUFFIX)) > SOCKET_PATH_MAX:
        room = SOCKET_PATH_MAX - len(RAY_SOCKET_SUFFIX)
        raise UserError(f"{where} {tmp}: {len(os.fsencode(tmp))} bytes; Ray's sockets under it would pass the "
                        f"{SOCKET_PATH_MAX}-byte limit of socket paths: use a folder of at most {room} bytes (e.g. TMPDIR=/tmp)")
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY and soft < MIN_ADDRESS_SPACE:
        raise UserError(f"ulimit -v {soft // 1024}: {soft / 2**30:.1f} GiB of virtual memory; Ray needs at least "
                        f"{MIN_ADDRESS_SPACE / 2**30:.0f} GiB to start (raise it, e.g. ulimit -v unlimited)")
