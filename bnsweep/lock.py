"""One driver per sweep and output: the run lock is a lease that cannot be held twice.

The lease is a small JSON record in the output store (`_locks/<sweep>.json`), so it works on a
shared mount and on object stores alike:

    {"id": <this driver>, "generation": <n>, "host", "boot_id", "pid", "pid_start", "started", "heartbeat", "beat"}

Taking the lease writes generation n+1 and reads it back; its holder renews it every HEARTBEAT_S
and checks, before each renewal and before every write of the run (the `Store` guard, in the
driver and in every cell's process), that the record still carries its id and generation. A
driver that lost the lease (paused longer than STALE_S, a suspended machine, cut off from the
store) therefore notices before it writes anything, and stops with one line (`LeaseLost`).

A lease is stale, and a new run takes it over, when
- its heartbeat is older than STALE_S (any host), or
- it was written on this machine (same host name and boot id) by a process that is gone: its pid
  is free or belongs to another process (the pid's start time differs: pid reuse, or a restarted
  container whose driver got the same pid and host name).
A heartbeat in the future (the writer's clock runs ahead) says nothing about age: the record is
then watched for STALE_S on this machine's monotonic clock, and taken over if it does not change.
A record that is not the lease's own (torn, foreign, "pid": "abc") counts as no lock.

The read-back leaves one window: a holder whose renewal lands just after a new driver's read-back.
Both then run until the next check of either, which finds the other's id and stops that driver
before its next write. Even then no row is duplicated (one file per cell per table, written whole
under a fixed name); the lease saves the wasted work and keeps two drivers off one checkpoint.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass

from bnsweep.errors import UserError
from bnsweep.layout import lock_file
from bnsweep.records import Store

STALE_S = float(os.environ.get("BNSWEEP_LOCK_STALE_S", 60.0))  # a lease not renewed this long is taken over
HEARTBEAT_S = STALE_S / 6
SKEW_S = 5.0  # a heartbeat at most this far in the future is clock jitter, not a clock that runs ahead
SETTLE_S = 0.3  # read back after writing: of two drivers that raced, the later writer wins


class LeaseLost(Exception):
    """This driver's lease was taken over: it must not write anything more."""


def boot_id() -> str | None:
    """This machine's boot id (Linux): tells a rebooted machine, or another one with the same host name, apart."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return None


def process_start(pid: int) -> int | None:
    """When process `pid` started, in clock ticks since boot (Linux /proc), or None where that cannot be read."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    try:
        return int(stat.rsplit(")", 1)[1].split()[19])  # field 22; the name before ')' may hold spaces
    except (IndexError, ValueError):
        return None


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OverflowError, ValueError, OSError):
        return False
    return True


@dataclass(frozen=True)
class Lease:
    """A lock record that parses as the lease's own."""

    id: str
    generation: int
    host: str
    pid: int
    heartbeat: float
    started: str = "an unknown time"
    boot_id: str | None = None
    pid_start: int | None = None
    beat: int = 0

    @classmethod
    def parse(cls, rec: dict | None) -> Lease | None:
        """The lease in `rec`, or None for no record and for a torn or foreign one."""
        if not isinstance(rec, dict):
            return None
        ints = lambda v: isinstance(v, int) and not isinstance(v, bool)
        num = lambda v: (isinstance(v, (int, float)) and not isinstance(v, bool)) and v == v and abs(v) < 1e12
        opt = lambda v, ok: v is None or ok(v)
        if not (isinstance(rec.get("id"), str) and isinstance(rec.get("host"), str) and ints(rec.get("pid"))
                and 0 < rec["pid"] < 2**31 and num(rec.get("heartbeat")) and ints(rec.get("generation", 0))
                and opt(rec.get("pid_start"), ints) and opt(rec.get("boot_id"), lambda v: isinstance(v, str))
                and ints(rec.get("beat", 0)) and isinstance(rec.get("started", ""), str)):
            return None
        return cls(rec["id"], rec.get("generation", 0), rec["host"], rec["pid"], float(rec["heartbeat"]),
                   rec.get("started") or "an unknown time", rec.get("boot_id"), rec.get("pid_start"), rec.get("beat", 0))

    def here(self) -> bool:
        """Written on this machine (same host name, and same boot where both are known)."""
        return self.host == socket.gethostname() and (self.boot_id is None or self.boot_id == boot_id())

    def process_gone(self) -> bool:
        """Its driver's process no longer exists here: the pid is free, or taken by a process started at another time."""
        if not _pid_exists(self.pid):
            return True
        now = process_start(self.pid)
        return self.pid_start is not None and now is not None and now != self.pid_start

    def age(self) -> float | None:
        """Seconds since its last heartbeat by this machine's clock; None when the heartbeat is in the future."""
        age = time.time() - self.heartbeat
        return None if age < -SKEW_S else max(age, 0.0)

    def alive(self) -> bool | None:
        """True: a driver holds it; False: stale; None: cannot tell without watching it (heartbeat in the future)."""
        if self.here() and self.process_gone():
            return False
        age = self.age()
        return None if age is None else age < STALE_S

    def who(self) -> str:
        return f"host {self.host}, pid {self.pid}, since {self.started}"


def _json(blob: bytes | None):
    try:
        return json.loads(blob) if blob else None
    except ValueError:  # torn, not UTF-8, not JSON
        return None


def read(store: Store, path: str) -> Lease | None:
    try:
        return Lease.parse(_json(store.get(path)))
    except OSError:  # `_locks` unreadable, or a folder where the record goes: no lease to honour
        return None


def holder(store: Store, sweep: str) -> dict | None:
    """The lock record of the living driver that runs `sweep` now (host, pid, started), or None (a reader's
    question: `ls`, `report`; a heartbeat in the future counts as living, as nothing here waits to tell)."""
    lease = read(store, lock_file(store.root, sweep))
    if lease is None or lease.alive() is False:
        return None
    return {"host": lease.host, "pid": lease.pid, "started": lease.started, "heartbeat": lease.heartbeat}


@functools.cache
def _reader(uri: str) -> Store:
    """An unguarded store to read lock records at `uri` through (one filesystem per output and process)."""
    return Store(uri)


@dataclass(frozen=True)
class Fence:
    """A write guard for `Store`: raises LeaseLost unless the lock record at `path` still names lease `id`,
    generation `generation`. Picklable: cells' processes check it before each of their writes."""

    uri: str
    path: str
    id: str
    generation: int

    def __call__(self) -> None:
        now = read(_reader(self.uri), self.path)
        if now is None or now.id != self.id or now.generation != self.generation:
            taker = (f"to another driver ({now.who()})" if now is not None else
                     "(the record is gone: another driver took it over and finished, or it was removed)")
            raise LeaseLost(f"this run lost its lock {self.path} {taker}; it stopped without writing more")


class RunLock:
    def __init__(self, store: Store, sweep: str):
        self.store, self.sweep = Store(store.uri), sweep  # unguarded: the lease's own writes are not fenced by it
        self.path = lock_file(self.store.root, sweep)
        self.record = {"id": uuid.uuid4().hex, "generation": 0, "host": socket.gethostname(), "boot_id": boot_id(),
                       "pid": os.getpid(), "pid_start": process_start(os.getpid()),
                       "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "beat": 0}
        self.lost: LeaseLost | None = None
        self.on_lost = None  # called from the heartbeat thread when the lease is lost (the runner stops the run)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._held = False

    @property
    def fence(self) -> Fence:
        return Fence(self.store.uri, self.path, self.record["id"], self.record["generation"])

    def _write(self) -> None:
        self.record["beat"] += 1
        self.store.put(self.path, json.dumps({**self.record, "heartbeat": time.time()}).encode())

    def _refuse(self, lease: Lease | None) -> UserError:
        if lease is None:
            return UserError(f"sweep {self.sweep!r}: another driver took the lock {self.path} at the same moment; "
                             "wait for it to finish or stop it, then run again")
        age = lease.age()
        seen = f"last seen {age:.0f} s ago" if age is not None else "its heartbeat is in the future (clock skew)"
        return UserError(f"sweep {self.sweep!r} is already running on {self.store.uri} ({lease.who()}, {seen}); "
                         "wait for it to finish or stop it, then run again")

    def _watch(self, lease: Lease) -> bool:
        """Whether a lease whose heartbeat is in the future is renewed within STALE_S (by this machine's clock)."""
        print(f"lock {self.path}: its heartbeat is in the future ({lease.who()}: clock skew); "
              f"watching it for up to {STALE_S:.0f} s to see whether its driver lives", file=sys.stderr, flush=True)
        end = time.monotonic() + STALE_S
        while time.monotonic() < end:
            time.sleep(min(HEARTBEAT_S / 2, max(0.0, end - time.monotonic())))
            now = read(self.store, self.path)
            if now != lease:
                return now is not None
        return False

    def acquire(self) -> None:
        try:
            blob = self.store.get(self.path)
        except OSError as e:
            raise UserError(f"output {self.store.uri}: cannot read the run lock {self.path}: {e}") from None
        held = Lease.parse(_json(blob))
        if held is not None:
            alive = held.alive()
            if alive is None:
                alive = self._watch(held)
                held = read(self.store, self.path) if alive else held
            if alive and held is not None:
                raise self._refuse(held)
        elif blob is not None:
            print(f"lock {self.path}: not a lock record of bnsweep (torn or foreign); replacing it",
                  file=sys.stderr, flush=True)
        self.record["generation"] = (held.generation if held else 0) + 1
        try:
            self._write()
        except (OSError, ValueError) as e:
            raise UserError(f"output {self.store.uri} is not writable: {e}") from None
        time.sleep(SETTLE_S)
        now = read(self.store, self.path)
        if now is None or now.id != self.record["id"]:
            raise self._refuse(now)
        self._held = True
        self._thread = threading.Thread(target=self._beat, name="bnsweep-lease", daemon=True)
        self._thread.start()

    def check(self) -> None:
        """Raise LeaseLost if the lease is no longer this driver's (also the guard of the driver's own writes)."""
        if self.lost is None:
            try:
                self.fence()
            except LeaseLost as e:
                self.lost = e
        if self.lost is not None:
            raise self.lost

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self.check()
                self._write()
            except LeaseLost:
                self._held = False
                if self.on_lost is not None:
                    self.on_lost(self.lost)
                return
            except OSError:
                pass  # a missed heartbeat only makes the lease look older; the next check says whether it is still ours

    def release(self) -> str | None:
        """Stop renewing and remove the record if it is still this driver's; returns a warning line if it could not."""
        self._stop.set()
        if self._thread and self._thread is not threading.current_thread():
            self._thread.join()
        if not self._held:
            return None
        self._held = False
        try:
            now = read(self.store, self.path)
            if now is not None and now.id == self.record["id"]:
                self.store.remove(self.path)
        except OSError as e:
            return (f"could not remove the run lock {self.path} ({e.strerror or e}); the next run takes it over "
                    f"once it is {STALE_S:.0f} s old")
        return None

    def __enter__(self) -> RunLock:
        try:
            self.acquire()
        except BaseException:  # Ctrl-C between writing the lock and reading it back: take it away again
            self._held = self.record["generation"] > 0
            self.release()
            raise
        return self

    def __exit__(self, *_exc) -> None:
        if warning := self.release():
            print(f"warning: {warning}", file=sys.stderr, flush=True)
