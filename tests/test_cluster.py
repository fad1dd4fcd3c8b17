"""Multi-node runs on one machine (ray.cluster_utils.Cluster with fake GPUs) and their faults."""

import json
import os
import socket
import subprocess
import sys
import threading
import time

import polars as pl
import pytest
import yaml
from conftest import ROOT, TIMING, TINY_VGG, tiny_spec, write_spec
from test_sweep import assert_complete, scan

from bnsweep.cell import run_cell
from bnsweep.cli import main
from bnsweep.cluster import validate_cluster
from bnsweep.errors import UserError
from bnsweep.layout import SCHEMAS
from bnsweep.lock import RunLock
from bnsweep.records import Store
from bnsweep.specfile import load_cells

pytestmark = [pytest.mark.ray, pytest.mark.slow]  # each test starts a multi-node cluster: 30 s to minutes
VOLATILE = set(TIMING)


@pytest.mark.parametrize("path", ["cluster.yaml", "cluster-onprem.yaml"])
def test_cluster_files_validate_against_rays_schema(path, tmp_path):
    text = (ROOT / path).read_text()
    if path == "cluster-onprem.yaml":  # ships without machines (see test_cluster_files.py): name some
        cfg = yaml.safe_load(text)
        cfg["provider"].update(head_ip="127.0.0.1", worker_ips=["localhost"])
        cfg["auth"]["ssh_user"] = "me"
        (tmp_path / path).write_text(yaml.safe_dump(cfg))
    cfg = validate_cluster(str(tmp_path / path if path == "cluster-onprem.yaml" else ROOT / path))
    assert cfg["available_node_types"]
    assert "RAY_AUTH_MODE=token" in text and "--dashboard-host=127.0.0.1" in text


@pytest.mark.parametrize("change,message", [
    (lambda c: c["available_node_types"]["gpu_worker"].update(typo_field=1), "typo_field"),
    (lambda c: c.update(max_workers=2) or c["available_node_types"]["gpu_worker"].update(min_workers=4), "max_workers"),
])
def test_broken_cluster_files_are_refused(change, message, tmp_path):
    cfg = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    change(cfg)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(UserError, match=message):
        validate_cluster(str(tmp_path / "c.yaml"))


@pytest.fixture(scope="module")
def cluster():
    """A head that runs no cells and two workers with 2 CPUs and one fake GPU each."""
    import ray
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": 150 * 1024**2})
    workers = [c.add_node(num_cpus=2, num_gpus=1, object_store_memory=150 * 1024**2) for _ in range(2)]
    c.wait_for_nodes()
    yield c, workers
    ray.shutdown()
    c.shutdown()


def gpu_grid(steps=200, seeds=(0, 1, 2, 3)):
    return [{**TINY_VGG, "seed": list(seeds),
             "overrides": {**TINY_VGG["overrides"], "train": {"steps": steps, "batch_size": 32, "eval_every": 50}}}]


def reference_tables(cells, tmp_path):
    """The same cells run directly, one after another, undisturbed."""
    import torch

    ref, threads = Store(str(tmp_path / "reference")), torch.get_num_threads()
    try:
        for c in cells:
            torch.set_num_threads(int(c.resources.cpu))  # as in a trial: float sums depend on the thread count
            run_cell(c, ref)
    finally:
        torch.set_num_threads(threads)
    return ref


def assert_equal_to(out, ref: Store, sweep: str):
    for name in ("cells", "steps", "evals"):
        keep = [f.name for f in SCHEMAS[name] if f.name not in VOLATILE]
        a = scan(out, name).select(keep).sort(keep[:2] + (["step"] if "step" in keep else []))
        b = pl.from_arrow(ref.read(name, sweep)).select(keep).sort(keep[:2] + (["step"] if "step" in keep else []))
        assert a.equals(b), name


def test_cells_spread_over_both_workers_with_fractional_gpus(cluster, tmp_path):
    c, workers = cluster
    spec = write_spec(tmp_path / "s.yaml", tiny_spec(tmp_path / "out", grids=gpu_grid(), name="multi", device="auto",
                                                     resources={"cpu": 1, "gpu": 0.5}))
    assert main(["run", str(spec), "--address", c.address]) == 0
    _, cells = load_cells(spec)
    done, _, _ = assert_complete(tmp_path / "out", cells)
    assert set(done["node_id"]) == {w.node_id for w in workers}  # both workers ran cells, the head none


@pytest.mark.flaky(reruns=2)  # a node is killed while a cell runs: on a loaded 2-core machine the kill can land before any checkpoint
def test_a_lost_node_is_survived_exactly_once(cluster, tmp_path):
    c, workers = cluster
    victim = c.add_node(num_cpus=2, num_gpus=1, object_store_memory=150 * 1024**2)  # a third worker, to lose
    c.wait_for_nodes()
    out = tmp_path / "out"
    spec = write_spec(tmp_path / "s.yaml", tiny_spec(out, grids=gpu_grid(steps=1200, seeds=range(6)), name="lost",
                                                     resources={"cpu": 1, "gpu": 0.5}, checkpoint_every=100))
    _, cells = load_cells(spec)

    def kill_when_running():  # once cells have checkpoints, that is, are half way
        deadline = time.time() + 300
        while time.time() < deadline:
            folder = out / "_checkpoints" / "sweep=lost"
            if folder.exists() and len(list(folder.glob("*.pt"))) >= 4:
                c.remove_node(victim, allow_graceful=False)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_when_running)
    killer.start()
    assert main(["run", str(spec), "--address", c.address]) == 0
    killer.join()
    done, _, _ = assert_complete(out, cells)
    resumed = done.filter(pl.col("resumed_from").is_not_null())
    assert len(resumed) >= 1 and resumed["resumed_from"].min() > 0  # retried elsewhere from a checkpoint
    assert victim.node_id not in set(done["node_id"])
    assert_equal_to(out, reference_tables(cells, tmp_path), "lost")
    assert not list((out / "_checkpoints").rglob("*.pt"))


def test_a_request_no_node_can_meet_is_refused(cluster, tmp_path):
    c, _ = cluster
    spec = write_spec(tmp_path / "s.yaml", tiny_spec(tmp_path / "out", grids=gpu_grid(), resources={"cpu": 1, "gpu": 2}))
    p = subprocess.run([sys.executable, "-m", "bnsweep", "run", str(spec), "--address", c.address],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)  # a guard against a hang, not a speed test
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and "cpu=1, gpu=2" in p.stderr and "largest: 2 CPUs, 1 GPUs" in p.stderr
    assert not (tmp_path / "out").exists()


def test_an_unreachable_cluster_is_a_clear_error(tmp_path):
    spec = write_spec(tmp_path / "s.yaml", tiny_spec(tmp_path / "out"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here
    p = subprocess.run([sys.executable, "-m", "bnsweep", "run", str(spec), "--address", f"127.0.0.1:{port}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "cannot connect to a Ray cluster" in p.stderr and "Traceback" not in p.stderr


# ---- the lock: two drivers on one sweep ----

def test_a_second_driver_is_refused_while_the_first_runs(tmp_path):
    spec = write_spec(tmp_path / "s.yaml", tiny_spec(tmp_path / "out", grids=gpu_grid(steps=1500, seeds=[0, 1]), name="twice"))
    cmd = [sys.executable, "-m", "bnsweep", "run", str(spec)]
    first = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock = tmp_path / "out" / "_locks" / "twice.json"
    while not lock.exists() and first.poll() is None:
        time.sleep(0.05)
    second = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert second.returncode == 2
    assert "sweep 'twice' is already running" in second.stderr and f"pid {first.pid}" in second.stderr
    assert first.wait(timeout=600) == 0
    _, cells = load_cells(spec)
    assert_complete(tmp_path / "out", cells)
    assert not lock.exists()  # released


def test_a_dead_drivers_lock_is_taken_over(tmp_path):
    store = Store(str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    path = f"{store.root}/_locks/s.json"
    store.put(path, json.dumps({"id": "x", "host": socket.gethostname(), "pid": int(dead), "heartbeat": time.time()}).encode())
    with RunLock(store, "s"):  # same host, process gone: taken over at once
        pass
    store.put(path, json.dumps({"id": "y", "host": "elsewhere", "pid": 1, "heartbeat": time.time() - 3600}).encode())
    with RunLock(store, "s"):  # another host, silent for an hour: taken over
        pass
    store.put(path, json.dumps({"id": "z", "host": "elsewhere", "pid": 1, "heartbeat": time.time()}).encode())
    with pytest.raises(UserError, match=r"already running .*\(host elsewhere, pid 1"):
        RunLock(store, "s").acquire()


def test_an_unwritable_output_is_refused(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    spec = write_spec(tmp_path / "s.yaml", tiny_spec(blocker / "out"))
    assert main(["run", str(spec)]) == 2


# ---- the driver killed at several points ----

@pytest.mark.parametrize("point", ["mid-cell", "after-first-cell", "near-the-end"])
def test_driver_sigkill_then_rerun_completes_exactly_once(point, tmp_path):
    import signal

    out = tmp_path / "out"
    spec = write_spec(tmp_path / "s.yaml", tiny_spec(out, grids=gpu_grid(steps=800, seeds=[0, 1, 2]), name="k", checkpoint_every=100))
    _, cells = load_cells(spec)
    cmd = [sys.executable, "-m", "bnsweep", "run", str(spec)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    done = lambda: len(list((out / "cells").rglob("*.parquet"))) if (out / "cells").exists() else 0
    ckpts = lambda: len(list((out / "_checkpoints").rglob("*.pt"))) if (out / "_checkpoints").exists() else 0
    ready = {"mid-cell": lambda: ckpts() >= 1, "after-first-cell": lambda: done() >= 1,
             "near-the-end": lambda: done() >= len(cells) - 2}[point]
    deadline = time.time() + 600
    while time.time() < deadline and not ready() and proc.poll() is None:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr
    finished, _, _ = assert_complete(out, cells)
    assert_equal_to(out, reference_tables(cells, tmp_path), "k")
    if point == "mid-cell":
        assert finished["resumed_from"].drop_nulls().len() >= 1  # a cell went on from its checkpoint


def test_an_autoscaling_cluster_counts_the_nodes_it_can_start(monkeypatch, tmp_path):
    """On `ray up`'s cluster, no GPU worker exists before the first cell asks; its node types do."""
    from bnsweep.runner import autoscaler_node_types, check_resources

    spec = write_spec(tmp_path / "s.yaml", tiny_spec(tmp_path / "out", grids=gpu_grid(), resources={"cpu": 4, "gpu": 1}))
    _, cells = load_cells(spec)
    head_only = [{"CPU": 0.0}]
    with pytest.raises(UserError, match="no node of the cluster"):
        check_resources(cells, head_only, "the cluster")
    monkeypatch.setenv("BNSWEEP_AUTOSCALER_CONFIG", str(ROOT / "cluster.yaml"))
    check_resources(cells, head_only + autoscaler_node_types(), "the cluster")  # a g5.xlarge type fits
    big = [c.model_copy(update={"resources": c.resources.model_copy(update={"gpu": 4})}) for c in cells]
    with pytest.raises(UserError, match="gpu=4"):
        check_resources(big, head_only + autoscaler_node_types(), "the cluster")


def test_cluster_validate_command(capsys, tmp_path):
    assert main(["cluster", "validate", str(ROOT / "cluster.yaml")]) == 0
    assert "node types head, gpu_worker" in capsys.readouterr().out
    (tmp_path / "c.yaml").write_text("cluster_name: x\nprovider: {type: aws, region: us-east-1}\nbogus_key: 1\n")
    assert main(["cluster", "validate", str(tmp_path / "c.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bogus_key" in err
