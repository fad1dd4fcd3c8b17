"""One driver per sweep and output: a second `run` of the same sweep is refused while the first lives.

The lock is a small JSON record in the output store (`_locks/<sweep>.json`), so it works on a
shared mount and on object stores alike. Its holder rewrites it every HEARTBEAT_S; a holder is
dead when its process is gone (same host) or its heartbeat is older than STALE_S (another host),
and a new run then takes the lock over. Writing the lock is also the check that the output is
writable. Even without the lock, two drivers could not duplicate rows (one file per cell per
table, written whole under a fixed name); the lock saves the wasted work and says what is going on.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import threading
import time
import uuid

from bnsweep.errors import UserError
from bnsweep.layout import lock_file
from bnsweep.records import Store

HEARTBEAT_S = 10.0
STALE_S = 60.0
SETTLE_S = 0.3  # read back after writing: of two drivers that raced, the later writer wins


def _alive(rec: dict) -> bool:
    if rec.get("host") == socket.gethostname():
        try:
            os.kill(int(rec["pid"]), 0)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
    return time.time() - float(rec.get("heartbeat", 0)) < STALE_S


def holder(store: Store, sweep: str) -> dict | None:
    """The lock record of the living driver that runs `sweep` now (host, pid, started), or None (a reader's
    question: `ls`, `report`)."""
    rec = store.get_record(lock_file(store.root, sweep))
    return rec if rec is not None and _alive(rec) else None


class RunLock:
    def __init__(self, store: Store, sweep: str):
        self.store, self.sweep = store, sweep
        self.path = lock_file(store.root, sweep)
        self.record = {"id": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(),
                       "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read(self) -> dict | None:
        return self.store.get_record(self.path)

    def _write(self) -> None:
        self.store.put(self.path, json.dumps({**self.record, "heartbeat": time.time()}).encode())

    def _refuse(self, rec: dict) -> UserError:
        seen = time.time() - float(rec.get("heartbeat", 0))
        return UserError(
            f"sweep {self.sweep!r} is already running on {self.store.uri} (host {rec.get('host')}, pid {rec.get('pid')}, "
            f"since {rec.get('started', 'an unknown time')}, last seen {seen:.0f} s ago); wait for it to finish or stop it, then run again"
        )

    def acquire(self) -> None:
        held = self._read()
        if held and held.get("id") != self.record["id"] and _alive(held):
            raise self._refuse(held)
        try:
            self._write()
        except (OSError, ValueError) as e:
            raise UserError(f"output {self.store.uri} is not writable: {e}") from None
        time.sleep(SETTLE_S)
        now = self._read()
        if now is None or now.get("id") != self.record["id"]:
            raise self._refuse(now or {})
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self._write()
            except OSError:
                pass  # a missed heartbeat only makes the lock look older

    def release(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        held = self._read()
        if held and held.get("id") == self.record["id"]:
            self.store.remove(self.path)

    def __enter__(self) -> RunLock:
        try:
            self.acquire()
        except BaseException:  # Ctrl-C between writing the lock and reading it back: take it away again
            self.release()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.release()
