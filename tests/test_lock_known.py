"""The run lock (bnsweep.lock) against answers worked out by hand: exact messages, records, clocks and store traffic.

Time is a fake clock here (`Clock`): ages, the watch of a future heartbeat and the read-back are stepped, not slept,
so boundaries (a heartbeat exactly SKEW_S ahead, exactly STALE_S old) are hit exactly. The takeover rules through
real time and real processes are in test_lock.py.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import uuid

import pytest

from bnsweep import lock as L
from bnsweep.errors import UserError
from bnsweep.records import Store

STARTED = "2026-01-01T00:00:00+00:00"
WAIT_S = 30  # an upper bound on waiting for the heartbeat thread, never reached when the code is right


class Clock:
    """Stands in for the `time` module inside bnsweep.lock: wall time fixed at `now`; sleeping only advances the
    monotonic clock, and calls `on_sleep(n)` after the n-th sleep (to change the record while a driver waits)."""

    def __init__(self, now: float = 1000.0):
        self.now, self.mono, self.sleeps, self.on_sleep = now, 0.0, [], None

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.mono

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        assert len(self.sleeps) < 50, f"the driver keeps sleeping: {self.sleeps[:10]}"
        self.mono += s
        if self.on_sleep is not None:
            self.on_sleep(len(self.sleeps))


class Recorded:
    """A store that lists the operations a RunLock makes through it; `fail` names operations that raise `error`."""

    def __init__(self, store: Store, fail: tuple[str, ...] = (), error: OSError | None = None):
        self.store, self.uri, self.ops, self.fail, self.error = store, store.uri, [], fail, error

    def _op(self, name: str) -> None:
        self.ops.append(name)
        if name in self.fail:
            raise self.error

    def get(self, p):
        self._op("get")
        return self.store.get(p)

    def put(self, p, data):
        self._op("put")
        self.store.put(p, data)

    def remove(self, p):
        self._op("remove")
        self.store.remove(p)


@pytest.fixture
def store(tmp_path):
    return Store(str(tmp_path / "out"))


@pytest.fixture
def clock(monkeypatch):
    """Default limits (STALE_S 60 s), no read-back wait, a heartbeat thread that stays idle, and the fake clock."""
    c = Clock()
    monkeypatch.setattr(L, "STALE_S", 60.0)
    monkeypatch.setattr(L, "HEARTBEAT_S", 3600.0)
    monkeypatch.setattr(L, "SETTLE_S", 0.0)
    monkeypatch.setattr(L, "time", c)
    return c


def path(store):
    return L.lock_file(store.root, "s")


def put(store, rec) -> None:
    store.put(path(store), json.dumps(rec).encode())


def record(store):
    blob = store.get(path(store))
    return None if blob is None else json.loads(blob)


def elsewhere(**over) -> dict:
    """A driver on another machine, seen 10 s ago by the fake clock."""
    return {"id": "other", "generation": 7, "host": "elsewhere", "pid": 4242, "started": STARTED,
            "heartbeat": 990.0, "beat": 3} | over


def running(store, who: str, seen: str) -> str:
    return (f"sweep 's' is already running on {store.uri} ({who}, {seen}); "
            "wait for it to finish or stop it, then run again")


# --- the machine: processes and boots --------------------------------------------------------------------------

@pytest.mark.parametrize("error, exists", [
    (None, True),  # signal 0 delivered: the process exists
    (ProcessLookupError(3, "No such process"), False),  # ESRCH
    (PermissionError(1, "Operation not permitted"), True),  # EPERM: it exists, run by another user
    (OverflowError("signed integer is greater than maximum"), False),  # not a pid at all
    (OSError(22, "Invalid argument"), False),
], ids=["delivered", "ESRCH", "EPERM", "overflow", "EINVAL"])
def test_pid_exists_reads_the_answer_of_kill_with_signal_0(monkeypatch, error, exists):
    """kill(2): signal 0 checks only; ESRCH means no such process, EPERM one that exists under another user."""
    sent = []

    def kill(pid, sig):
        sent.append((pid, sig))
        if error is not None:
            raise error

    monkeypatch.setattr(L.os, "kill", kill)
    assert L._pid_exists(1234) is exists
    assert sent == [(1234, 0)]


def test_a_pid_too_large_for_the_system_exists_nowhere():
    assert L._pid_exists(2**64) is False  # os.kill: OverflowError


def child(then: str = "pass") -> subprocess.Popen:
    """A Python process (SIGHUP at its default) that says `ready`, and on a line from its stdin runs `then` and says
    `done`; then it waits for its stdin to close."""
    script = ("import signal, sys; signal.signal(signal.SIGHUP, signal.SIG_DFL); print('ready', flush=True); "
              f"sys.stdin.readline(); {then}; print('done', flush=True); sys.stdin.read()")
    p = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline() == "ready\n"
    return p


def test_asking_whether_a_process_exists_sends_it_nothing():
    """Signal 0 only: the process asked about goes on, and dies of the signal it is sent next."""
    p = child()
    try:
        assert L._pid_exists(p.pid) is True
    finally:
        p.terminate()
        p.wait()
    assert p.returncode == -signal.SIGTERM


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="Linux /proc")
def test_process_start_of_a_process_whose_name_holds_parentheses():
    """/proc/PID/stat is `pid (comm) state ...`: a name like `a) b) c` must not shift field 22. A process's start time
    does not change when it renames itself, so the reading before the rename is the answer after it."""
    p = child("open('/proc/self/comm', 'w').write('a) b) c')")
    try:
        before = L.process_start(p.pid)
        assert isinstance(before, int) and before > 0
        p.stdin.write("rename\n")
        p.stdin.flush()
        assert p.stdout.readline() == "done\n"
        with open(f"/proc/{p.pid}/comm") as f:
            assert f.read().strip() == "a) b) c"
        assert L.process_start(p.pid) == before
    finally:
        p.kill()
        p.wait()


@pytest.mark.skipif(not os.path.exists("/proc/sys/kernel/random/boot_id"), reason="Linux /proc")
def test_boot_id_is_the_kernels_uuid():
    assert str(uuid.UUID(L.boot_id())) == L.boot_id()


# --- the clock: ages and the stale limit ---------------------------------------------------------------------------

@pytest.mark.parametrize("heartbeat, age, alive", [
    (990.0, 10.0, True),
    (1000.0, 0.0, True),
    (1003.0, 0.0, True),  # a little ahead: clock jitter, counted as just now
    (1005.0, 0.0, True),  # exactly SKEW_S ahead: still jitter
    (1005.5, None, None),  # further ahead: cannot tell without watching
    (940.5, 59.5, True),
    (940.0, 60.0, False),  # exactly STALE_S old: stale
    (0.0, 1000.0, False),
], ids=["10s-ago", "now", "jitter", "skew-limit", "future", "just-fresh", "stale-limit", "long-gone"])
def test_age_and_liveness_of_a_lease_from_another_host(clock, heartbeat, age, alive):
    lease = L.Lease("a", 1, "elsewhere", 4242, heartbeat)
    assert lease.age() == age and lease.alive() is alive


def test_holder_shows_host_pid_start_and_heartbeat(store, clock):
    put(store, elsewhere())
    assert L.holder(store, "s") == {"host": "elsewhere", "pid": 4242, "started": STARTED, "heartbeat": 990.0}


# --- the fence ---------------------------------------------------------------------------------------------------------

def test_fence_passes_only_the_same_id_and_generation(store):
    put(store, elsewhere(id="a", generation=3))
    L.Fence(store.uri, path(store), "a", 3)()  # still ours
    taken = f"this run lost its lock {path(store)} to another driver (host elsewhere, pid 4242, since {STARTED}); " \
            "it stopped without writing more"
    for fence in (L.Fence(store.uri, path(store), "a", 2), L.Fence(store.uri, path(store), "b", 3)):
        with pytest.raises(L.LeaseLost) as e:
            fence()
        assert str(e.value) == taken
    store.remove(path(store))
    with pytest.raises(L.LeaseLost) as e:
        L.Fence(store.uri, path(store), "a", 3)()
    assert str(e.value) == (f"this run lost its lock {path(store)} (the record is gone: another driver took it over "
                            "and finished, or it was removed); it stopped without writing more")


def test_fences_of_two_outputs_read_their_own(tmp_path):
    one, two = Store(str(tmp_path / "one")), Store(str(tmp_path / "two"))
    put(one, elsewhere(id="a", generation=1))
    put(two, elsewhere(id="b", generation=1))
    L.Fence(one.uri, path(one), "a", 1)()
    L.Fence(two.uri, path(two), "b", 1)()
    with pytest.raises(L.LeaseLost):
        L.Fence(two.uri, path(two), "a", 1)()


# --- taking the lease ------------------------------------------------------------------------------------------------

def test_the_record_a_driver_writes_and_renews(store, clock):
    lk = L.RunLock(store, "s")
    assert lk.record["generation"] == 0 and lk.record["beat"] == 0  # nothing written yet
    with lk:
        rec = record(store)
        assert set(rec) == {"id", "generation", "host", "boot_id", "pid", "pid_start", "started", "heartbeat", "beat"}
        assert re.fullmatch(r"[0-9a-f]{32}", rec["id"]) and rec["id"] == lk.record["id"]
        assert rec["generation"] == 1 and rec["beat"] == 1 and rec["heartbeat"] == 1000.0
        assert rec["host"] == socket.gethostname() and rec["pid"] == os.getpid()
        assert rec["boot_id"] == L.boot_id() and rec["pid_start"] == L.process_start(os.getpid())
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", rec["started"])  # UTC, to the second
        clock.now = 1010.0
        lk._write()
        lk._write()
        rec = record(store)
        assert rec["beat"] == 3 and rec["heartbeat"] == 1010.0 and rec["generation"] == 1
        beat = lk._thread
        assert beat.name == "bnsweep-lease" and beat.daemon  # an exiting driver is not held up by its heartbeat
    assert record(store) is None and not beat.is_alive()


def test_a_refused_driver_reads_the_record_once_and_writes_nothing(store, clock):
    put(store, elsewhere())
    lk = L.RunLock(store, "s")
    lk.store = rec = Recorded(lk.store)
    with pytest.raises(UserError) as e:
        with lk:
            pass
    assert str(e.value) == running(store, f"host elsewhere, pid 4242, since {STARTED}", "last seen 10 s ago")
    assert rec.ops == ["get"] and record(store)["id"] == "other"


@pytest.mark.parametrize("op, message", [("get", "output {uri}: cannot read the run lock {path}: [Errno 13] Permission denied"),
                                         ("put", "output {uri} is not writable: [Errno 13] Permission denied")])
def test_unreadable_or_unwritable_output(store, clock, op, message):
    lk = L.RunLock(store, "s")
    lk.store = Recorded(lk.store, fail=(op,), error=PermissionError(13, "Permission denied"))
    with pytest.raises(UserError) as e:
        with lk:
            pass
    assert str(e.value) == message.format(uri=store.uri, path=path(store))
    assert record(store) is None


def test_read_back_finds_the_record_gone_or_another_drivers(store, clock):
    """Two drivers raced: after writing, the read-back decides, and names whoever won."""
    lk = L.RunLock(store, "s")
    clock.on_sleep = lambda n: store.remove(path(store))
    with pytest.raises(UserError) as e:
        lk.acquire()
    assert str(e.value) == (f"sweep 's': another driver took the lock {path(store)} at the same moment; "
                            "wait for it to finish or stop it, then run again")
    lk = L.RunLock(store, "s")
    clock.on_sleep = lambda n: put(store, elsewhere(heartbeat=1000.0))
    with pytest.raises(UserError) as e:
        lk.acquire()
    assert str(e.value) == running(store, f"host elsewhere, pid 4242, since {STARTED}", "last seen 0 s ago")
    assert not any(t.name == "bnsweep-lease" for t in threading.enumerate())  # a refused driver does not beat


def test_interrupted_between_writing_and_reading_back_takes_the_record_away(store, clock):
    """Ctrl-C in the read-back wait: the record this driver just wrote is removed again."""
    def interrupt(n):
        assert record(store)["generation"] == 1
        raise KeyboardInterrupt

    clock.on_sleep = interrupt
    with pytest.raises(KeyboardInterrupt):
        with L.RunLock(store, "s"):
            pass
    assert record(store) is None


# --- a heartbeat in the future: watched on the monotonic clock ---------------------------------------------------------

@pytest.fixture
def future(store, clock, monkeypatch):
    """A lease from a host whose clock runs a day ahead; polls every HEARTBEAT_S / 2 = 0.375 s for STALE_S = 1 s."""
    monkeypatch.setattr(L, "STALE_S", 1.0)
    monkeypatch.setattr(L, "HEARTBEAT_S", 0.75)
    put(store, elsewhere(heartbeat=1000.0 + 86400))
    return store


def test_an_unchanged_future_lease_is_watched_for_stale_s_then_taken(future, clock, capsys):
    with L.RunLock(future, "s") as lk:
        assert lk.record["generation"] == 8
    assert clock.sleeps == [0.375, 0.375, 0.25, 0.0]  # three polls reach exactly 1 s; then the read-back wait
    assert capsys.readouterr().err == (
        f"lock {path(future)}: its heartbeat is in the future (host elsewhere, pid 4242, since {STARTED}: clock skew); "
        "watching it for up to 1 s to see whether its driver lives\n")


def test_a_future_lease_that_vanishes_while_watched_is_taken_with_the_next_generation(future, clock):
    """Generations never go back: the lease last seen had generation 7, so the taker writes 8."""
    clock.on_sleep = lambda n: n == 1 and future.remove(path(future))
    with L.RunLock(future, "s") as lk:
        assert lk.record["generation"] == 8 and record(future)["generation"] == 8
    assert clock.sleeps == [0.375, 0.0]


def test_a_future_lease_renewed_while_watched_is_refused(future, clock):
    clock.on_sleep = lambda n: n == 2 and put(future, elsewhere(heartbeat=1000.0 + 86400, beat=4))
    with pytest.raises(UserError) as e:
        L.RunLock(future, "s").acquire()
    assert str(e.value) == running(future, f"host elsewhere, pid 4242, since {STARTED}",
                                   "its heartbeat is in the future (clock skew)")
    assert clock.sleeps == [0.375, 0.375]


def test_a_future_lease_replaced_while_watched_is_refused_in_the_name_of_the_new_holder(future, clock):
    clock.on_sleep = lambda n: put(future, elsewhere(id="third", host="third", pid=7, heartbeat=995.0))
    with pytest.raises(UserError) as e:
        L.RunLock(future, "s").acquire()
    assert str(e.value) == running(future, f"host third, pid 7, since {STARTED}", "last seen 5 s ago")


# --- losing and releasing the lease ------------------------------------------------------------------------------------

class Ticks:
    """Stands in for a RunLock's stop event: the heartbeat thread beats once per `tick()`, and stops on `set()`."""

    def __init__(self):
        self.q = queue.Queue()

    def wait(self, timeout: float) -> bool:
        return self.q.get(timeout=WAIT_S)

    def tick(self) -> None:
        self.q.put(False)

    def set(self) -> None:
        self.q.put(True)


@pytest.fixture
def errors(monkeypatch):
    """Exceptions raised in threads (the heartbeat's), which would otherwise only be printed."""
    seen = []
    monkeypatch.setattr(threading, "excepthook", seen.append)
    return seen


def take_over(lk: L.RunLock, store) -> L.RunLock:
    """Take `lk`'s lease, let another driver take it over (generation + 1), then let its heartbeat beat once."""
    lk._stop = ticks = Ticks()
    lk.acquire()
    put(store, elsewhere(id="taker", generation=lk.record["generation"] + 1, heartbeat=1000.0))
    ticks.tick()
    lk._thread.join(WAIT_S)
    assert not lk._thread.is_alive()
    return lk


def test_the_heartbeat_renews_the_record_while_it_is_the_drivers(store, clock):
    lk = L.RunLock(store, "s")
    lk._stop = ticks = Ticks()
    with lk:
        clock.now = 1010.0
        lk.store = rec = Recorded(lk.store)
        ticks.tick()
        ticks.tick()
        ticks.set()
        lk._thread.join(WAIT_S)
        assert rec.ops == ["put", "put"] and record(store)["beat"] == 3 and record(store)["heartbeat"] == 1010.0


def test_the_heartbeat_hands_the_lost_lease_to_on_lost(store, clock, errors):
    lk, got = L.RunLock(store, "s"), []
    lk.on_lost = got.append
    take_over(lk, store)
    assert got == [lk.lost] and isinstance(got[0], L.LeaseLost) and errors == []
    assert str(got[0]) == (f"this run lost its lock {path(store)} to another driver (host elsewhere, pid 4242, "
                           f"since {STARTED}); it stopped without writing more")
    assert record(store)["id"] == "taker"


def test_a_lost_lease_without_on_lost_ends_the_heartbeat_quietly_and_release_touches_nothing(store, clock, errors):
    lk = take_over(L.RunLock(store, "s"), store)
    assert errors == []
    lk.store = rec = Recorded(lk.store)
    assert lk.release() is None and rec.ops == [] and record(store)["id"] == "taker"


def test_on_lost_may_release_from_the_heartbeat_thread(store, clock, errors):
    lk, got = L.RunLock(store, "s"), []
    lk.on_lost = lambda e: got.append(lk.release())
    take_over(lk, store)
    assert got == [None] and errors == [] and record(store)["id"] == "taker"


def test_release_of_a_lock_never_taken_touches_nothing(store, clock):
    lk = L.RunLock(store, "s")
    lk.store = rec = Recorded(lk.store)
    assert lk.release() is None and rec.ops == []


@pytest.mark.parametrize("then", ["taken", "gone"])
def test_release_removes_only_its_own_record(store, clock, then):
    lk = L.RunLock(store, "s")
    lk.acquire()
    if then == "taken":
        put(store, elsewhere(id="taker", generation=2))
    else:
        store.remove(path(store))
    assert lk.release() is None
    assert record(store) == (elsewhere(id="taker", generation=2) if then == "taken" else None)


def test_release_on_a_read_only_output_warns_once(store, clock, capsys):
    lk = L.RunLock(store, "s")
    with lk:
        lk.store = rec = Recorded(lk.store, fail=("remove",), error=PermissionError(30, "Read-only file system"))
    warning = (f"could not remove the run lock {path(store)} (Read-only file system); "
               "the next run takes it over once it is 60 s old")
    assert capsys.readouterr().err == f"warning: {warning}\n"
    assert rec.ops == ["get", "remove"] and record(store)["id"] == lk.record["id"]
    assert lk.release() is None and rec.ops == ["get", "remove"]  # said once; a second release does nothing
