"""`bnsweep run --log tensorboard --log mlflow --log wandb`: a real sweep through Ray Tune, offline, with each
tool's logs read back by that tool's own reader and compared with the evals table (the record); and the same
sweep without `--log`, whose tables must be bit for bit the same."""

import glob
import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from conftest import tiny_spec, write_spec

from bnsweep.cli import main
from bnsweep.layout import SCHEMAS

pytestmark = [pytest.mark.ray, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]

DLN = {"dataset": {"name": "gaussian_regression", "samples": 64, "test_samples": 32}, "model": {"dln": {"depth": 4}},
       "train": {"steps": 40, "batch_size": 64, "eval_every": 20}, "measure": {"landscape": {"every": 10, "eta": {"points": 2}}}}
GRIDS = [{"arch": ["dln"], "norm": ["none"], "lr": [1.0e-4], "seed": [0, 1], "overrides": {**DLN, "execution": {"pack": 2}}},
         {"arch": ["dln"], "norm": ["batch"], "lr": [1.0e-4], "seed": [0], "overrides": DLN}]
NAMES = ["dln-none-lr0.0001-s0", "dln-none-lr0.0001-s1", "dln-batch-lr0.0001-s0"]  # two of them one trial (a pack)
TIMING = ["started_at", "finished_at", "wall_s", "train_s", "eval_s", "node_id", "hostname", "landscape_s"]


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """The sweep run with all three loggers (a fresh process: W&B keeps per-process state), and again without."""
    tmp = tmp_path_factory.mktemp("live")
    spec = write_spec(tmp / "spec.yaml", tiny_spec(tmp / "out", grids=GRIDS, name="live"))
    plain = write_spec(tmp / "plain.yaml", tiny_spec(tmp / "plain", grids=GRIDS, name="live"))
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_DIR", "WANDB_PROJECT", "MLFLOW_TRACKING_URI")}
    env |= {"WANDB_MODE": "offline", "PYTHONPATH": str(ROOT)}  # no network, no account: W&B writes its run files locally
    p = subprocess.run([sys.executable, "-m", "bnsweep", "run", str(spec), "--log", "tensorboard", "--log", "mlflow", "--log", "wandb"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr
    assert main(["run", str(plain)]) == 0
    out = tmp / "out"
    evals = pl.read_parquet(f"{out}/evals/**/*.parquet", hive_partitioning=False)
    return out, out / "_logs" / "live", evals, tmp / "plain", p.stdout


def expected(evals: pl.DataFrame, name: str, split: str) -> list[tuple[int, float]]:
    _, norm, _, seed = name.split("-")
    rows = evals.filter((pl.col("norm") == norm) & (pl.col("seed") == int(seed[1:])) & (pl.col("split") == split)).sort("step")
    return list(zip(rows["step"].to_list(), rows["loss"].to_list()))


def same(got: list[tuple[int, float]], want: list[tuple[int, float]], rel: float = 1e-12) -> bool:
    """Same steps, same values (to `rel`)."""
    return [s for s, _ in got] == [s for s, _ in want] and [v for _, v in got] == pytest.approx([v for _, v in want], rel=rel)


def test_live_logging_never_changes_the_tables(logged):
    out, _, _, plain, _ = logged
    for name in SCHEMAS:
        if (out / name).exists() or (plain / name).exists():
            a = pl.read_parquet(f"{out}/{name}/**/*.parquet", hive_partitioning=False).drop(TIMING, strict=False).sort(pl.all())
            b = pl.read_parquet(f"{plain}/{name}/**/*.parquet", hive_partitioning=False).drop(TIMING, strict=False).sort(pl.all())
            assert a.equals(b), name
    assert not (plain / "_logs").exists()


def test_tensorboard_event_files_hold_every_evaluation(logged):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, logs, evals, _, _ = logged
    assert sorted(p.name for p in (logs / "tensorboard").iterdir()) == sorted(NAMES)
    land = pl.read_parquet(f"{out}/landscape/**/*.parquet", hive_partitioning=False)
    for name in NAMES:
        acc = EventAccumulator(str(logs / "tensorboard" / name))
        acc.Reload()
        for split in ("train", "test"):
            got = [(e.step, e.value) for e in acc.Scalars(f"ray/tune/{split}_loss")]
            want = expected(evals, name, split)
            assert [s for s, _ in got] == [s for s, _ in want] == [0, 20, 40]
            assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6)  # float32 in the event file
        # the measurement's summary at its latest probed step, as of each evaluation after the first probe
        _, norm, _, seed = name.split("-")
        mine = land.filter((pl.col("norm") == norm) & (pl.col("seed") == int(seed[1:])))
        probes = sorted(set(mine["step"]))
        probed = [(e.step, int(e.value)) for e in acc.Scalars("ray/tune/landscape/step")]
        assert probed == [(s, max(p for p in probes if p < s)) for s in (20, 40)]  # the evaluation after s updates
        beta = [e.value for e in acc.Scalars("ray/tune/landscape/beta_eff")]
        assert beta == pytest.approx([mine.filter(pl.col("step") == p)["beta_eff"][0] for _, p in probed], rel=1e-6)


def test_mlflow_runs_hold_every_evaluation(logged):
    from mlflow.tracking import MlflowClient

    _, logs, evals, _, _ = logged
    client = MlflowClient(tracking_uri=f"sqlite:///{logs}/mlflow.db")
    exp = client.get_experiment_by_name("live")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert sorted(runs) == sorted(NAMES)
    for name, run in runs.items():
        assert run.info.status == "FINISHED"
        assert run.data.params["arch"] == "dln" and run.data.params["seed"] == name[-1] and run.data.params["lr"] == "0.0001"
        for split in ("train", "test"):
            hist = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, f"{split}_loss"))
            assert same(hist, expected(evals, name, split)) and len(hist) == 3


def wandb_records(path: str) -> list:
    """The records of a W&B transaction log (`run-<id>.wandb`): a 7-byte header, then LevelDB-log blocks of
    32 KiB whose chunks (crc32, length, type: 1 full, 2 first, 3 middle, 4 last) carry protobuf `Record`s."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = open(path, "rb").read()
    assert data[:4] == b":W&B"
    pos, out, buf, block = 7, [], b"", 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, n, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if n == 0 and kind == 0:
            pos += block - pos % block
            continue
        buf, pos = buf + data[pos + 7 : pos + 7 + n], pos + 7 + n
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            out.append(rec)
            buf = b""
    return out


def test_wandb_offline_runs_hold_every_evaluation(logged):
    _, logs, evals, _, _ = logged
    runs = {}
    for f in glob.glob(f"{logs}/wandb/wandb/offline-run-*/run-*.wandb"):
        recs = wandb_records(f)
        [run] = [r.run for r in recs if r.WhichOneof("record_type") == "run"]
        history = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
                   for r in recs if r.WhichOneof("record_type") == "history"]
        runs[run.display_name] = (run, history)
    assert sorted(runs) == sorted(NAMES)
    for name, (run, history) in runs.items():
        assert run.project == "live" and run.run_group == "live"
        for split in ("train", "test"):
            got = [(h["_step"], h[f"{split}_loss"]) for h in history if f"{split}_loss" in h]
            assert same(got, expected(evals, name, split)) and len(got) == 3


def test_the_tables_stay_the_record(logged):
    out, _, evals, _, _ = logged
    cells = pl.read_parquet(f"{out}/cells/**/*.parquet", hive_partitioning=False)
    assert sorted(cells["status"]) == ["done"] * 3 and len(evals) == 3 * 3 * 2
    assert sorted(cells["pack_size"]) == [1, 2, 2]
    assert not list(out.glob("_checkpoints/**/*.json"))  # no progress sidecar outlives its cell


def test_progress_line_shows_running_cells(logged):
    printed = logged[-1]
    assert re.search(r"\| .*dln-\w+-lr0\.0001-s\d (0|20)/40 loss \S+", printed), printed
