"""Plain-text tables for the terminal."""

from __future__ import annotations

import errno
import math
import os
import sys
from contextlib import contextmanager


def fmt(x: float | None, digits: int = 3) -> str:
    """`digits` significant digits: 0.931, 1.32e+04, 0.000712."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if x == 0:
        return "0"
    return f"{x:#.{digits}g}".rstrip(".") if 1e-4 <= abs(x) < 1e5 else f"{x:.{digits - 1}e}"


def mean_sd(mean: float | None, sd: float | None, n: int) -> str:
    """'0.931 ± 0.004 (n=3)'; a single seed has no spread: '0.931 (n=1)'."""
    if not n:
        return "-"
    spread = f" ± {fmt(sd)}" if n > 1 and sd is not None else ""
    return f"{fmt(mean)}{spread} (n={n})"


def text_table(rows: list[dict], columns: list[str] | None = None) -> str:
    if not rows:
        return "(no rows)"
    columns = columns or list(rows[0])
    cells = [[str(r[c]) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()
    return "\n".join([line(columns), line(["-" * w for w in widths]), *map(line, cells)])


def frame_table(df, max_rows: int | None = 50, more: bool = False) -> str:
    """A Polars DataFrame as a text table (floats to 3 significant digits); at most `max_rows` rows (0 or None: all).

    `more`: `df` holds the first rows of a longer result whose length was never computed.
    """
    shown = df.head(max_rows) if max_rows else df
    if more:
        text = frame_table(shown, None).rsplit("\n", 1)[0]
        n = len(shown)
        return text + f"\n(more than {n} rows; the first {n} shown: use --max-rows 0, LIMIT, or --format csv)"
    rows = [{k: fmt(v) if isinstance(v, float) else ("-" if v is None else v) for k, v in r.items()} for r in shown.iter_rows(named=True)]
    text = text_table(rows, df.columns) if rows else text_table([dict.fromkeys(df.columns, "")], df.columns).rsplit("\n", 1)[0]
    if len(shown) < len(df):
        return text + f"\n({len(df)} rows; the first {len(shown)} shown: use --max-rows 0, LIMIT, or --format csv)"
    return text + f"\n({len(df)} row{'s' if len(df) != 1 else ''})"


class _QuietWhenClosed:
    """A text stream that forwards to `stream` until its reader is gone, then drops what is written."""

    def __init__(self, stream):
        self._stream, self.gone = stream, False

    def _lost(self) -> None:
        self.gone = True
        try:  # Python's final flush of the real stdout at exit would fail the same way: point it at /dev/null
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        except (OSError, ValueError):
            pass

    def _forward(self, call, *args):
        if self.gone:
            return None
        try:
            return call(*args)
        except (BrokenPipeError, ConnectionResetError, ValueError):
            self._lost()
        except OSError as e:
            if e.errno not in (errno.EPIPE, errno.EIO):
                raise
            self._lost()
        return None

    def write(self, text: str) -> int:
        written = self._forward(self._stream.write, text)
        return len(text) if written is None else written

    def flush(self) -> None:
        self._forward(self._stream.flush)

    def __getattr__(self, name):
        return getattr(self._stream, name)


@contextmanager
def quiet_when_closed():
    """Within: what goes to stdout is dropped once its reader has gone (`bnsweep run ... | head -1`, a closed
    terminal) instead of raising BrokenPipeError wherever it is printed (in Tune's callbacks it stopped the sweep)."""
    real = sys.stdout
    sys.stdout = _QuietWhenClosed(real)
    try:
        yield
    finally:
        sys.stdout = real
