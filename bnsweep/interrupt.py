"""Ctrl-C during `run`: the first stops the sweep within seconds, the second exits at once.

The first SIGINT raises KeyboardInterrupt in the driver wherever it is (Ray starting, Tune's loop,
data preparation), so the normal unwinding runs: Ray is shut down (running cells stop; their
checkpoints stay for the next run), the run lock is released, and finished cells' rows, each
written whole under its final name, stay as they are. Tune's own SIGINT handler is switched off
(TUNE_DISABLE_SIGINT_HANDLER in runner.RAY_ENV): it would only set a flag and wait for a last
experiment snapshot, which bnsweep does not use. A second SIGINT while that unwinding is under
way ends the process with status 130 on the spot; a lock it leaves names a dead pid, which the
next run takes over.

Some Ray and Tune code catches every exception in places, KeyboardInterrupt included, so the
request is also kept (`requested()`): the runner checks it after Ray starts, and Tune's loop
asks it through a Stopper, so an interrupt that was swallowed still ends the sweep.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

_REQUESTED = threading.Event()


def requested() -> bool:
    """Whether Ctrl-C was pressed during the current run."""
    return _REQUESTED.is_set()


class StopOnInterrupt:
    """Context manager: SIGINT handling for the duration of a run (the previous handler restored after)."""

    def __init__(self) -> None:
        self.count = 0
        self._previous = None

    def _handle(self, signum, frame) -> None:
        self.count += 1
        _REQUESTED.set()
        if self.count == 1:
            print(
                "\ninterrupted: stopping the running cells (Ctrl-C again to exit at once)", file=sys.stderr, flush=True
            )
            # Known limit: when the signal lands while Python runs a finalizer (seen once in logging's
            # _releaseLock during Ray start-up), Python prints "Exception ignored in ..." with a traceback
            # on stderr and the run still stops at the next check (exit 130, lock released).
            raise KeyboardInterrupt
        print("\ninterrupted twice: exiting now", file=sys.stderr, flush=True)
        os._exit(130)

    def __enter__(self) -> StopOnInterrupt:
        _REQUESTED.clear()
        if threading.current_thread() is threading.main_thread():  # only the main thread may set handlers
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        _REQUESTED.clear()
