"""What a group of seeds is: cells that differ only in their seed are pooled, never cells whose settings differ.

    cells = groups.label(load.table(out, "cells", sweep))   # + `setting`; `norm` names varied norm options
    GROUP                                                     # ["arch", "norm", "lr", "setting"]

A sweep run twice under one name with different settings (`steps: 50`, then `steps: 20`) leaves
both versions in the tables. Every setting of a cell's `config_json` (data set, model, norm
options, training, measurements; not where it ran) that takes more than one value among the cells
of one (arch, norm, lr) becomes part of the key: `setting` lists the varied training, data, model
and measurement settings ("train.steps=20"), and varied norm options are added to the norm's name
("batch[eps=0.001]"), so that claims still pair norms that share a `setting`. `setting` is "" when
nothing varies. Cells without `config_json` use the cells table's own columns (dataset, steps,
batch_size, momentum, weight_decay, augment).
"""

from __future__ import annotations

import json

import polars as pl

from bnsweep.records import warn

GROUP = ["arch", "norm", "lr", "setting"]
IGNORED = {
    "sweep",
    "arch",
    "norm",
    "lr",
    "seed",
    "device",
    "resources",
    "checkpoint_every",
    "dataset.root",
    "dataset.download",
}
COLUMNS = {
    "dataset": "dataset.name",
    "steps": "train.steps",
    "batch_size": "train.batch_size",
    "momentum": "train.momentum",
    "weight_decay": "train.weight_decay",
    "augment": "train.augment",
}  # cells columns -> config paths
NORM_OPTIONS = "norm_options."


def flat(d: dict, prefix: str = "") -> dict[str, str]:
    """{'train.steps': '50', ...}: nested settings as dotted paths with JSON values (lists stay whole)."""
    out: dict[str, str] = {}
    for k, v in d.items():
        path = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flat(v, f"{path}."))
        elif path not in IGNORED:
            out[path] = json.dumps(v, sort_keys=True)
    return out


def _settings(row: dict) -> dict[str, str]:
    if row.get("config_json"):
        try:
            config = json.loads(row["config_json"])
        except ValueError:
            config = None
        if isinstance(config, dict):
            return flat(config)
        warn(f"cell {row.get('cell_id')}: its config_json is not a JSON object; its settings are read from the cells columns")
    return {path: json.dumps(row.get(col)) for col, path in COLUMNS.items()}


def _text(keys: list[str], s: dict[str, str], strip: str = "") -> str:
    return ", ".join(f"{k.removeprefix(strip)}={s.get(k, '-')}" for k in keys)


def label(cells: pl.LazyFrame) -> pl.LazyFrame:
    """`cells` with a `setting` column and `norm` extended by varied norm options (idempotent)."""
    if "setting" in cells.collect_schema().names():
        return cells
    cols = [
        c for c in ("cell_id", "arch", "norm", "lr", "config_json", *COLUMNS) if c in cells.collect_schema().names()
    ]
    rows = cells.select(cols).unique("cell_id").collect().to_dicts()
    if not rows:
        return cells.with_columns(setting=pl.lit("", dtype=pl.String))
    per = {r["cell_id"]: _settings(r) for r in rows}
    groups: dict[tuple, list[str]] = {}
    for r in rows:
        groups.setdefault((r["arch"], r["norm"], r["lr"]), []).append(r["cell_id"])
    varied = sorted(
        {
            k
            for ids in groups.values()
            for k in set().union(*(per[i] for i in ids))
            if len({per[i].get(k) for i in ids}) > 1
        }
    )
    shared = [k for k in varied if not k.startswith(NORM_OPTIONS)]
    by_norm: dict[str, set[str]] = {}  # norm -> its options that vary within one of its groups
    for (_, norm, _), ids in groups.items():
        by_norm.setdefault(norm, set()).update(
            k
            for k in set().union(*(per[i] for i in ids))
            if k.startswith(NORM_OPTIONS) and len({per[i].get(k) for i in ids}) > 1
        )
    names = {}
    for r in rows:
        opts = sorted(by_norm.get(r["norm"], ()))
        names[r["cell_id"]] = r["norm"] + (f"[{_text(opts, per[r['cell_id']], NORM_OPTIONS)}]" if opts else "")
    keys = pl.DataFrame(
        {"cell_id": list(per), "setting": [_text(shared, per[i]) for i in per], "norm_label": [names[i] for i in per]}
    )
    return (
        cells.join(keys.lazy(), on="cell_id", how="left")
        .with_columns(norm=pl.coalesce("norm_label", "norm"), setting=pl.col("setting").fill_null(""))
        .drop("norm_label")
    )


def attach(t: pl.LazyFrame, cells: pl.LazyFrame) -> pl.LazyFrame:
    """Rows of table `t` with their cell's group key from labelled `cells` (their own arch/norm/lr replaced)."""
    keys = label(cells).select("cell_id", *GROUP)
    return t.drop([c for c in GROUP if c in t.collect_schema().names()]).join(keys, on="cell_id")
