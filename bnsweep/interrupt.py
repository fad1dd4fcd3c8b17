"""Stopping `run`: Ctrl-C (SIGINT), SIGTERM (SLURM's scancel and time limit, Kubernetes) and SIGHUP (a closed
terminal) all stop the sweep within seconds; a second signal exits at once.

The first signal raises KeyboardInterrupt in the driver wherever it is (Tune's loop, data preparation),
so the normal unwinding runs: Ray is shut down (running cells stop; their checkpoints stay for the next
run), what is left of Ray's processes is ended (`bnsweep.reap`), the run lock is released, and finished
cells' rows, each written whole under its final name, stay as they are. The exit status is 128 + the
signal's number: 130 (SIGINT), 143 (SIGTERM), 129 (SIGHUP). Tune's own SIGINT handler is switched off
(TUNE_DISABLE_SIGINT_HANDLER in runner.RAY_ENV), and Ray's SIGTERM handlers are kept from being
installed (runner._connect): they would exit from inside Ray's start or kill Ray's processes under
the running loop; Ray's C++ failure-signal handler is switched off (RAY_DISABLE_FAILURE_SIGNAL_HANDLER in
runner.RAY_ENV): `ray.shutdown()` removed it by setting SIGTERM's action to the default, so a second
signal during the unwinding ended the driver by SIGTERM instead of reaching the handler here. While Ray
starts (`deferred()`), the first signal is only recorded and raised once `ray.init` returns: a
KeyboardInterrupt inside its C++ start-up ended the process by SIGSEGV.
A second signal while the unwinding is under way ends Ray's processes and the driver on the spot
(same status); a lock it leaves names a dead process, which the next run takes over.

The run also stops this way when its lease on the run lock is lost (`lost`): the status is then
LOST_STATUS and the one line says who holds the lock now.

Some Ray and Tune code catches every exception in places, KeyboardInterrupt included, so the
request is also kept (`requested()`): the runner checks it after Ray starts, and Tune's loop
asks it through a Stopper, so an interrupt that was swallowed still ends the sweep.
"""

from __future__ import annotations

import _thread
import os
import signal
import sys
import threading
from contextlib import contextmanager

from bnsweep import reap

SIGNALS = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated (SIGTERM)", signal.SIGHUP: "hangup (SIGHUP)"}
LOST_STATUS = 3  # the run lock was taken over by another driver

_REQUESTED = threading.Event()
_state: dict = {"signal": None, "lost": None, "defer": False}


def requested() -> bool:
    """Whether the current run was asked to stop (a signal, or its lease on the run lock was lost)."""
    return _REQUESTED.is_set()


def status() -> int:
    """The exit status of a stopped run: 128 + the first signal's number, or LOST_STATUS."""
    if _state["lost"] is not None:
        return LOST_STATUS
    return 128 + int(_state["signal"] or signal.SIGINT)


def lost(error: Exception) -> None:
    """Stop the run because its lease was lost (called from the lease's heartbeat thread)."""
    _state["lost"] = error
    _REQUESTED.set()
    if not _state["defer"]:
        _thread.interrupt_main(signal.SIGINT)  # runs the handler below in the main thread


def _say(text: str) -> None:
    try:
        print(text, file=sys.stderr, flush=True)
    except (OSError, ValueError):  # a hung-up terminal: stopping matters more than saying so
        pass


def signalled() -> bool:
    """Whether a signal asked the current (or last) run to stop."""
    return _state["signal"] is not None


@contextmanager
def deferred(raise_after: bool = True):
    """A section (Ray's start and shutdown) in which a first stop request is only recorded; it is raised when the
    section ends (`raise_after`), so no KeyboardInterrupt lands inside Ray's C++ start-up or teardown."""
    outer = _state["defer"]
    _state["defer"] = True
    try:
        yield
    finally:
        _state["defer"] = outer
    if raise_after and not outer and requested():
        raise KeyboardInterrupt


class StopOnInterrupt:
    """Context manager: SIGINT, SIGTERM and SIGHUP handling for the duration of a run (previous handlers restored)."""

    def __init__(self) -> None:
        self.count = 0
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT and _state["lost"] is not None and self.count == 0 and not _state["signal"]:
            self.count = 1  # the lease's heartbeat thread asked (interrupt_main), no signal was sent; `run` says why
            raise KeyboardInterrupt
        self.count += 1
        _REQUESTED.set()
        if self.count == 1:
            _state["signal"] = signum
            again = "Ctrl-C" if signum == signal.SIGINT else "signal"
            _say(f"\n{SIGNALS.get(signum, 'stopped')}: stopping the running cells ({again} again to exit at once)")
            if _state["defer"]:
                return  # raised when Ray's start returns (`deferred`)
            # Known limit: when the signal lands while Python runs a finalizer (seen once in logging's
            # _releaseLock during Ray start-up), Python prints "Exception ignored in ..." with a traceback
            # on stderr and the run still stops at the next check (lock released).
            raise KeyboardInterrupt
        _say("\nstopped twice: exiting now")
        reap.now()
        os._exit(status())

    def __enter__(self) -> StopOnInterrupt:
        _REQUESTED.clear()
        _state.update(signal=None, lost=None, defer=False)
        if threading.current_thread() is threading.main_thread():  # only the main thread may set handlers
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *_exc) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        _REQUESTED.clear()
