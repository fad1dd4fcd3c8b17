"""Figure specs kept by content: a report on unchanged tables reads each figure's Vega-Lite spec back instead of
building it again with Altair (about a second of pure Python for a report's figures).

    spec = spec_cache.cached("fig1_accuracy", df, draw.cache_dir())   # figures.spec(name, df), or its earlier copy

A spec is a function of the figure's frame and of the code that encodes it. The key hashes the frame as its spec
sees it: floats at figures.SIG_FIGS significant digits (figures.values inlines them so; parallel group-bys move
the last bits from one run to the next), other columns and `lr` (an axis lists the lrs tried) exactly, with the
figure's name, the source of analysis/figures.py and the Altair and Polars versions. The files live beside the
drawn figures (analysis/draw.py's cache, pruned with them).
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import cache
from pathlib import Path

import altair as alt
import polars as pl
import polars.selectors as cs

from analysis import draw, figures


@cache
def _code() -> bytes:
    """What a spec depends on besides its frame: the encoding code and the libraries that write and key it."""
    return Path(figures.__file__).read_bytes() + f"\0altair {alt.__version__}\0polars {pl.__version__}\0".encode()


def key(name: str, df: pl.DataFrame) -> str:
    """The content hash of figure `name`'s spec drawn from `df`."""
    finite = pl.when(cs.float().is_finite()).then(cs.float().round_sig_figs(figures.SIG_FIGS)).otherwise(cs.float())
    exact = [pl.col("lr").alias("lr exact")] if "lr" in df.columns else []
    plain = df.with_columns(finite.name.keep(), *exact).rechunk()  # one record batch,
    frame = plain.write_ipc(None, compat_level=pl.CompatLevel.oldest()).getvalue()  # and strings in one buffer: same rows, same bytes
    return hashlib.sha256(_code() + name.encode() + b"\0" + frame).hexdigest()


def cached(name: str, df: pl.DataFrame, cache: Path | None) -> dict:
    """figures.spec(name, df), read from `cache` when it holds this spec, else built and kept there (no cache: None)."""
    if cache is None:
        return figures.spec(name, df)
    path = cache / f"{key(name, df)}.vl.json"
    try:
        found = json.loads(path.read_text())
        os.utime(path)  # recently used: kept by draw.prune
        return found
    except (OSError, ValueError):  # not there yet, pruned meanwhile, or cut short
        pass
    spec = figures.spec(name, df)
    draw.keep(cache, path.name, json.dumps(spec).encode())
    return spec
