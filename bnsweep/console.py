"""Plain-text tables for the terminal."""

from __future__ import annotations

import math


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
