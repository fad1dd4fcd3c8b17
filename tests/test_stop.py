"""Stop requests in process (bnsweep.interrupt) and ending a Ray instance's leftovers (bnsweep.reap), without Ray.

The same through real `bnsweep run` processes and a real Ray: test_interrupt.py and test_faults.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from bnsweep import interrupt, reap
from bnsweep.lock import LeaseLost


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_first_signal_raises_keyboard_interrupt_with_its_status(signum, status, capsys):
    before = signal.getsignal(signum)
    with interrupt.StopOnInterrupt():
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signum)
            for _ in range(1000):  # the handler runs at the next bytecode boundary
                time.sleep(0.001)
        assert interrupt.requested()
    assert interrupt.status() == status and interrupt.signalled()
    assert "stopping the running cells" in capsys.readouterr().err
    assert signal.getsignal(signum) is before  # the previous handler is back


def test_signal_during_a_deferred_section_is_raised_when_it_ends():
    with interrupt.StopOnInterrupt():
        reached_end = False
        with pytest.raises(KeyboardInterrupt):
            with interrupt.deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)
                reached_end = True  # not interrupted inside (Ray's start)
        assert reached_end
        with interrupt.deferred(raise_after=False):  # Ray's shutdown: recorded, never raised
            pass
    assert interrupt.status() == 143


def test_lost_lease_stops_the_main_thread_with_its_status():
    import threading

    with interrupt.StopOnInterrupt():
        with pytest.raises(KeyboardInterrupt):
            threading.Thread(target=interrupt.lost, args=(LeaseLost("gone"),)).start()
            for _ in range(5000):
                time.sleep(0.001)
    assert interrupt.status() == interrupt.LOST_STATUS and not interrupt.signalled()


def test_second_signal_exits_at_once_with_the_first_signals_status(tmp_path):
    code = ("import os, signal, time\n"
            "from bnsweep import interrupt\n"
            "with interrupt.StopOnInterrupt():\n"
            "    try:\n"
            "        os.kill(os.getpid(), signal.SIGHUP); time.sleep(5)\n"
            "    except KeyboardInterrupt:\n"
            "        print('unwinding', flush=True); os.kill(os.getpid(), signal.SIGTERM); time.sleep(30)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert p.returncode == 129, p.stderr
    assert "unwinding" in p.stdout and "exiting now" in p.stderr


def test_reap_ends_only_the_processes_of_this_drivers_session():
    mine = f"/tmp/ray/session_2026-12-07_01-02-03_123456_{os.getpid()}"
    other = f"/tmp/ray/session_2026-12-07_01-02-03_123456_{os.getpid()}1"  # another driver's pid, with a suffix
    sleep = [sys.executable, "-c", "import time; time.sleep(120)"]
    ours = subprocess.Popen([*sleep, f"--session-dir={mine}"])
    theirs = subprocess.Popen([*sleep, f"--session-dir={other}"])
    try:
        end = time.monotonic() + 60
        while ours.pid not in reap.processes() and time.monotonic() < end:  # until its command line is readable
            time.sleep(0.05)
        assert reap.processes() == [ours.pid]
        reap.own(False)  # a session this driver did not start (a cluster it joined, made by the same process): untouched
        assert reap.leftovers(grace_s=5) == [] and ours.poll() is None
        reap.own()
        assert reap.leftovers(grace_s=5) == [ours.pid]
        assert ours.wait(60) is not None
        assert theirs.poll() is None, "a process of another session was ended"
    finally:
        reap.own(False)
        for p in (ours, theirs):
            p.kill()
            p.wait()
