"""The run lock as a lease (bnsweep.lock), in process: takeover rules, fencing of writes, garbage records.

The two-driver, signal and read-only cases through real `bnsweep run` processes are in test_faults.py.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from bnsweep import lock as L
from bnsweep.errors import UserError
from bnsweep.records import Store


@pytest.fixture
def store(tmp_path):
    return Store(str(tmp_path / "out"))


@pytest.fixture(autouse=True)
def hang_up_fails():
    """Asking whether a pid lives sends it nothing (signal 0): a SIGHUP to this process fails the test, not the run."""
    def hung_up(signum, frame):
        raise AssertionError("this process was sent SIGHUP")

    old = signal.signal(signal.SIGHUP, hung_up)
    yield
    signal.signal(signal.SIGHUP, old)


@pytest.fixture
def fast(monkeypatch):
    """A short stale limit, so that takeovers happen within a test (the rules are the same)."""
    monkeypatch.setattr(L, "STALE_S", 1.0)
    monkeypatch.setattr(L, "HEARTBEAT_S", 0.1)
    monkeypatch.setattr(L, "SETTLE_S", 0.0)


def path(store):
    return L.lock_file(store.root, "s")


def put(store, rec) -> None:
    store.put(path(store), rec if isinstance(rec, bytes) else json.dumps(rec).encode())


def here(**over) -> dict:
    """A well-formed record of a driver on this machine (this process unless `over` says otherwise)."""
    rec = {"id": "other", "generation": 7, "host": socket.gethostname(), "boot_id": L.boot_id(), "pid": os.getpid(),
           "pid_start": L.process_start(os.getpid()), "started": "2026-01-01T00:00:00+00:00",
           "heartbeat": time.time(), "beat": 1}
    return rec | over


def test_second_driver_refused_while_the_first_holds_and_taken_after_release(store, fast):
    a = L.RunLock(store, "s")
    with a:
        rec = json.loads(store.get(path(store)))
        assert rec["id"] == a.record["id"] and rec["generation"] == 1 and rec["pid_start"] == L.process_start(os.getpid())
        with pytest.raises(UserError, match=rf"already running .*pid {os.getpid()}"):
            L.RunLock(store, "s").acquire()
        assert L.holder(store, "s")["pid"] == os.getpid()
    assert store.get(path(store)) is None and L.holder(store, "s") is None
    with L.RunLock(store, "s") as b:
        assert b.record["generation"] == 1  # no record left: a fresh lease


@pytest.mark.parametrize("blob", [b"{\"host\": \"x\"", b"not json", b"\xff\xfe", b"[1, 2]", b"{}", b"null",
                                  json.dumps(here(pid="abc")).encode(), json.dumps(here() | {"pid": None}).encode(),
                                  json.dumps(here(pid=-5)).encode(), json.dumps(here(pid=10**30)).encode(),
                                  json.dumps(here(heartbeat="soon")).encode(), json.dumps(here(pid=True)).encode(),
                                  json.dumps(here(generation=1.5)).encode()],
                         ids=["torn", "text", "binary", "list", "empty", "null", "pid-abc", "no-pid", "pid-negative",
                              "pid-huge", "heartbeat-text", "pid-bool", "generation-float"])
def test_torn_or_foreign_record_is_garbage(store, fast, blob, capsys):
    put(store, blob)
    assert L.holder(store, "s") is None  # `ls`, `report`: no driver, no traceback
    with L.RunLock(store, "s") as lk:
        assert lk.record["generation"] == 1
    assert "not a lock record of bnsweep" in capsys.readouterr().err


def test_pid_reused_by_another_process_is_taken_over(store, fast):
    """The pid lives, but it is not the process that wrote the lock (its start time differs)."""
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        put(store, here(pid=other.pid, pid_start=L.process_start(other.pid) - 1))
        assert L.holder(store, "s") is None
        with L.RunLock(store, "s") as lk:
            assert lk.record["generation"] == 8
        put(store, here(pid=other.pid, pid_start=L.process_start(other.pid)))  # the writer itself: alive
        with pytest.raises(UserError, match="already running"):
            L.RunLock(store, "s").acquire()
    finally:
        other.kill()
        other.wait()


def test_restarted_container_with_the_same_pid_and_host_takes_over(store, fast):
    """The lock names this very pid and host, written by the driver before a restart (another start time)."""
    put(store, here(pid_start=L.process_start(os.getpid()) - 100))
    with L.RunLock(store, "s") as lk:
        assert json.loads(store.get(path(store)))["id"] == lk.record["id"]


def test_dead_pid_on_this_machine_is_taken_over_at_once(store, fast):
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    put(store, here(pid=p.pid, pid_start=None))
    with L.RunLock(store, "s"):
        pass


def test_other_host_decided_by_heartbeat_age(store, fast):
    put(store, here(host="elsewhere", boot_id=None, pid=1))
    with pytest.raises(UserError, match="host elsewhere.*last seen 0 s ago"):
        L.RunLock(store, "s").acquire()
    put(store, here(host="elsewhere", pid=1, heartbeat=time.time() - 2 * L.STALE_S))
    assert L.holder(store, "s") is None
    with L.RunLock(store, "s"):
        pass


def test_same_host_name_on_another_boot_is_not_judged_by_pid(store, fast):
    """Another machine (or this one rebooted) under the same host name: a live heartbeat is honoured."""
    put(store, here(boot_id="another-boot", pid=2**22 + 12345))
    with pytest.raises(UserError, match="already running"):
        L.RunLock(store, "s").acquire()


def test_paused_holder_on_this_machine_loses_the_lease_by_heartbeat_age(store, fast):
    put(store, here(heartbeat=time.time() - 2 * L.STALE_S))  # this (living) process, but no heartbeat for long
    with L.RunLock(store, "s") as lk:
        assert lk.record["generation"] == 8


def test_heartbeat_in_the_future_is_watched_then_taken_over(store, fast, capsys):
    put(store, here(host="elsewhere", heartbeat=time.time() + 86400))
    assert L.holder(store, "s") is not None  # a reader cannot tell without waiting: shown as running
    with L.RunLock(store, "s") as lk:
        assert lk.record["generation"] == 8
    assert "heartbeat is in the future" in capsys.readouterr().err


def test_heartbeat_in_the_future_that_is_renewed_is_refused(store, fast):
    put(store, here(host="elsewhere", heartbeat=time.time() + 86400))
    stop = threading.Event()

    def renew():
        beat = 1
        while not stop.wait(0.05):
            beat += 1
            put(store, here(host="elsewhere", heartbeat=time.time() + 86400, beat=beat))

    t = threading.Thread(target=renew)
    t.start()
    try:
        with pytest.raises(UserError, match="heartbeat is in the future"):
            L.RunLock(store, "s").acquire()
    finally:
        stop.set()
        t.join()


def test_lost_lease_refuses_every_write_and_is_noticed_by_the_heartbeat(store, fast):
    lk = L.RunLock(store, "s")
    noticed = threading.Event()
    lk.on_lost = lambda e: noticed.set()
    lk.acquire()
    guarded = Store(store.uri, guard=lk.fence)
    worker = pickle.loads(pickle.dumps(guarded))  # what a cell's process gets
    guarded.put(f"{store.root}/x.json", b"1")
    put(store, here(host="elsewhere", id="taker", generation=lk.record["generation"] + 1))  # a second driver took over
    for s in (guarded, worker):
        with pytest.raises(L.LeaseLost, match="lost its lock .*another driver .host elsewhere"):
            s.put(f"{store.root}/y.json", b"2")
        with pytest.raises(L.LeaseLost):
            s.remove(f"{store.root}/x.json")
    assert store.get(f"{store.root}/y.json") is None and store.get(f"{store.root}/x.json") == b"1"
    assert noticed.wait(30), "the heartbeat did not notice the lost lease"
    assert json.loads(store.get(path(store)))["id"] == "taker", "the heartbeat overwrote the new holder's record"
    lk.release()
    assert json.loads(store.get(path(store)))["id"] == "taker", "release removed another driver's lock"


def test_release_on_a_read_only_output_warns_instead_of_raising(store, fast, monkeypatch):
    lk = L.RunLock(store, "s")
    lk.acquire()

    def refuse(p):
        raise PermissionError(30, "Read-only file system")

    monkeypatch.setattr(lk.store, "remove", refuse)
    assert "could not remove the run lock" in lk.release()


def test_process_start_reads_this_process():
    assert L.process_start(os.getpid()) == L.process_start(os.getpid()) is not None
    assert L.process_start(2**22 + 12345) is None


@pytest.mark.parametrize("blob", [b"{\"pid\": \"abc\"}", b"{\"host\": \"h\"}", b"\x00torn"], ids=["pid-abc", "no-pid", "torn"])
def test_ls_reads_a_garbage_lock_as_no_driver(store, blob, capsys):
    from bnsweep import cli

    store.put(f"{store.root}/_runs/s.json", json.dumps({"sweep": "s", "total": 0, "cells": []}).encode())
    put(store, blob)
    assert cli.main(["ls", store.uri]) == 0
    assert "running" not in capsys.readouterr().out


BASE = {"id": "a", "host": "h", "pid": 10, "heartbeat": 5.0}


@pytest.mark.parametrize("change", [
    {"id": 1}, {"id": None}, {"host": 7}, {"host": None}, {"pid": None}, {"pid": True}, {"pid": 10.0}, {"pid": "10"},
    {"pid": 0}, {"pid": -3}, {"pid": 2**31}, {"heartbeat": None}, {"heartbeat": "5"}, {"heartbeat": True},
    {"heartbeat": float("nan")}, {"heartbeat": 1e12}, {"heartbeat": -1e12}, {"generation": "1"}, {"generation": True},
    {"generation": 1.0}, {"pid_start": "7"}, {"pid_start": 7.0}, {"pid_start": False}, {"boot_id": 5}, {"beat": 1.5},
    {"beat": True}, {"started": 5},
], ids=lambda c: "-".join(f"{k}={v!r}" for k, v in c.items()))
def test_a_record_with_one_field_of_the_wrong_type_or_range_is_no_lease(change):
    assert L.Lease.parse({**BASE, **change}) is None


@pytest.mark.parametrize("change, want", [
    ({}, L.Lease("a", 0, "h", 10, 5.0, "an unknown time", None, None, 0)),
    ({"pid": 1, "heartbeat": 5}, L.Lease("a", 0, "h", 1, 5.0)),  # an int heartbeat is read as a float
    ({"pid": 2**31 - 1, "heartbeat": 1e12 - 1}, L.Lease("a", 0, "h", 2**31 - 1, 1e12 - 1)),
    ({"heartbeat": -1e12 + 1, "started": ""}, L.Lease("a", 0, "h", 10, -1e12 + 1, "an unknown time")),
    ({"generation": 3, "started": "today", "boot_id": "b", "pid_start": 7, "beat": 2, "extra": [1]},
     L.Lease("a", 3, "h", 10, 5.0, "today", "b", 7, 2)),
    ({"boot_id": None, "pid_start": None}, L.Lease("a", 0, "h", 10, 5.0)),
], ids=["least", "int-heartbeat", "upper-bounds", "lower-bound", "every-field", "nulls"])
def test_a_well_formed_record_parses_field_by_field(change, want):
    got = L.Lease.parse({**BASE, **change})
    assert got == want and type(got.heartbeat) is float


@pytest.mark.parametrize("rec", [None, [], "x", 3])
def test_no_record_or_one_that_is_not_an_object_is_no_lease(rec):
    assert L.Lease.parse(rec) is None
