"""Ray Tune backend: one trial per pack of pending cells (a pack of one by default), resources from the spec,
progress on the terminal.

Each trial reports every evaluation of its cells to Tune (`bnsweep.reporter`: from a thread of its own,
never holding training up), then once more at its end with the cells' statuses; `run --log` attaches
Tune's logger callbacks to those reports (`bnsweep.live`). Only this module, and the callback
factories of `bnsweep.live` and `bnsweep.progress_line`, import Ray. Which cells are pending is
decided from the `cells` table, not from Tune's experiment state, so a re-run (after a finish, a
crash or a SIGKILL) runs exactly the cells without a result, and a spec that gained a learning rate
runs only the new cells.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import sys
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass

from bnsweep import clearway, interrupt, layout, live, progress_line, reap
from bnsweep.cell import required_tables, run_pack
from bnsweep.data import ensure_data
from bnsweep.errors import UserError
from bnsweep.layout import FAILED, STATUSES, key_columns
from bnsweep.lock import Fence, LeaseLost, RunLock
from bnsweep.records import Store
from bnsweep.reporter import Reporter
from bnsweep.running import write_run
from bnsweep.spec import CellConfig, packs

RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0",
    "RAY_CHDIR_TO_TRIAL_DIR": "0",
    "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",
    "RAY_DEDUP_LOGS": "0",
    "RAY_AIR_NEW_OUTPUT": "0",  # no experiment banner: bnsweep prints its own progress
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",  # no per-trial CSV/JSON/TensorBoard: Parquet is the record
    "TUNE_DISABLE_SIGINT_HANDLER": "1",  # Ctrl-C is bnsweep.interrupt's: stop now, not after a last Tune snapshot
    # Ray's C++ failure-signal handler: ray.shutdown() "uninstalls" it by setting SIGTERM (and SIGSEGV, SIGABRT, ...)
    # to SIG_DFL under Python's feet, so a second signal while the run unwinds killed the driver (-15) instead of
    # reaching bnsweep.interrupt (measured: the C-level SIGTERM action is SIG_DFL after ray.shutdown without this)
    "RAY_DISABLE_FAILURE_SIGNAL_HANDLER": "1",
}


@dataclass
class Outcome:
    total: int
    skipped: int
    done: int = 0
    diverged: int = 0
    failed: int = 0
    interrupted: bool = False


def _trial(config: dict) -> None:
    """The Tune trainable: run one pack of cells, reporting each evaluation as it comes, then their statuses
    and their evaluations not sent yet (dense data goes to Parquet)."""
    import ray
    import torch
    from ray import tune

    cells = [CellConfig.model_validate_json(j) for j in config["cell"]["json"]]
    torch.set_num_threads(max(1, int(cells[0].resources.cpu)))  # reused actors keep the old count otherwise
    reporter = Reporter(tune.report)
    store = Store(config["output"], guard=Fence(**config["fence"]))  # no write once the driver lost its lease
    try:
        outs = run_pack(cells, store, node_id=ray.get_runtime_context().get_node_id(), hooks=reporter.hook)
    except (OSError, LeaseLost) as e:  # not even the failed row could be written (a read-only output, a lost lease):
        print(f"cells {', '.join(c.cell_id for c in cells)} failed: {e}", file=sys.stderr)  # the trial ends, no retry
        outs = [{"cell_id": c.cell_id, "status": FAILED, "wall_s": 0.0} for c in cells]
    finally:
        left = reporter.close()
    counts = {f"n_{s}": sum(o["status"] == s for o in outs) for s in STATUSES}  # Tune reserves `done`
    tune.report({"status": outs[0]["status"] if len(outs) == 1 else "pack", **counts,
                 "wall_s": max(o["wall_s"] for o in outs), "cells": left})


def _stopper():
    """Ends Tune's loop once Ctrl-C was pressed, should the KeyboardInterrupt itself have been swallowed."""
    from ray import tune

    class StopOnRequest(tune.Stopper):
        def __call__(self, trial_id, result) -> bool:
            return False

        def stop_all(self) -> bool:
            return interrupt.requested()

    return StopOnRequest()


def check_resources(cells: list[CellConfig], nodes: list[dict], where: str) -> None:
    """Refuse requests that no node can satisfy: Ray would leave such trials pending forever."""
    best_cpu = max((n.get("CPU", 0) for n in nodes), default=0)
    best_gpu = max((n.get("GPU", 0) for n in nodes), default=0)
    for r in {c.resources for c in cells}:
        if not any(n.get("CPU", 0) >= r.cpu and n.get("GPU", 0) >= r.gpu for n in nodes):
            raise UserError(f"resources: cells ask for cpu={r.cpu:g}, gpu={r.gpu:g} but no node of {where} has that "
                            f"(largest: {best_cpu:g} CPUs, {best_gpu:g} GPUs); lower resources.cpu / resources.gpu")


def local_node() -> dict:
    import torch

    return {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}


def autoscaler_node_types(path: str = "~/ray_bootstrap_config.yaml") -> list[dict]:
    """Resources of the node types an autoscaling cluster can start (the config `ray up` leaves on the head)."""
    import yaml

    p = os.path.expanduser(os.environ.get("BNSWEEP_AUTOSCALER_CONFIG", path))
    if not os.path.isfile(p):
        return []
    with open(p) as f:
        types = (yaml.safe_load(f) or {}).get("available_node_types") or {}
    return [t.get("resources") or {} for t in types.values()]


def cluster_nodes(ray) -> list[dict]:
    return [n["Resources"] for n in ray.nodes() if n["Alive"]]


def check_shared(ray, store: Store, path: str) -> None:
    """Every node must see the file the driver just wrote: a node-local output would lose results."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if not store.local:
        return
    probe = ray.remote(num_cpus=0)(_sees)
    nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    seen = ray.get([probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)).remote(store.uri, path)
                    for n in nodes], timeout=120)
    if blind := [n[:8] for n, ok in zip(nodes, seen) if not ok]:
        raise UserError(f"output {store.uri} is not shared: nodes {', '.join(blind)} cannot see what the driver wrote there; "
                        "use a shared mount or s3:// / gs://")


def _sees(uri: str, path: str) -> bool:
    return Store(uri).get(path) is not None


def pending_cells(cells: list[CellConfig], store: Store) -> list[CellConfig]:
    """The cells without a trusted result; damaged files are moved aside and their cells run again."""
    required = {c.cell_id: required_tables(c) for c in cells}  # decided as the worker does (bnsweep.verify.judge)
    expect = {c.cell_id: key_columns(c) for c in cells}
    finished = store.finished(cells[0].sweep, required, expect) if cells else {}
    return [c for c in cells if c.cell_id not in finished]


def _connect(address: str | None):
    for k, v in RAY_ENV.items():
        os.environ.setdefault(k, v)
    import logging

    import ray

    if address is None:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # embedded Ray is private to this process; clusters set token auth
        with _own_sigterm(ray), interrupt.deferred():
            ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
                     object_store_memory=256 * 1024**2, logging_level=logging.ERROR)
        return ray
    _reachable(address)
    try:
        with _own_sigterm(ray), interrupt.deferred():
            ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise UserError(f"--address {address}: cannot connect to a Ray cluster there ({str(e).splitlines()[0][:200]})") from None
    return ray


@contextmanager
def _own_sigterm(ray):
    """Keep Ray's SIGTERM handlers out of the driver: they exit from inside `ray.init` (status 15) or kill Ray's
    processes under Tune's loop (status 1); bnsweep.interrupt stops the run instead."""
    import ray._private.utils as ray_utils

    original = ray_utils.set_sigterm_handler
    ray_utils.set_sigterm_handler = lambda _handler: None
    ours = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        ray_utils.set_sigterm_handler = original
        if ours is not None and threading.current_thread() is threading.main_thread():
            # Ray's core worker puts its C++ failure-signal handler in front of ours: on SIGTERM it printed a stack
            # dump and the driver ended by SIGABRT (-6). Installing ours again takes it out of the chain.
            signal.signal(signal.SIGTERM, ours)


def _reachable(address: str, timeout_s: float = 10.0) -> None:
    """Fail fast on a host:port nobody listens on (ray.init would retry for minutes)."""
    import socket

    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return  # "auto", ray://: Ray resolves these itself
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise UserError(f"--address {address}: cannot connect to a Ray cluster there ({e.strerror or e})") from None


def run(cells: list[CellConfig], output: str, address: str | None = None, max_concurrent: int | None = None,
        max_failures: int = 3, log: list[str] = (), log_dir: str | None = None) -> Outcome:
    """Run every cell of `cells` that has no result under `output` yet.

    A trial lost with its node is retried up to `max_failures` times, on any node, from its cell's
    last checkpoint in the output store. `log`: names in `bnsweep.live.LOGGERS` to stream each cell's
    evaluations to, under `log_dir` (default `<output>/_logs/<sweep>`); checked before anything runs.
    """
    store = Store(output)
    if log:
        log_dir = live.log_dir(output, cells[0].sweep, log_dir)
        live.check(list(log), log_dir)
    ray, ours = None, False  # ours: ray.init was called here (it may have been interrupted half-way)
    sweep = cells[0].sweep
    try:
        if address is None:
            check_resources(cells, [local_node()], "this machine")
        else:
            ours = True
            ray = _connect(address)
            nodes = cluster_nodes(ray)
            check_resources(cells, nodes + autoscaler_node_types(), f"the cluster at {address}")
        clearway.folders(store, {layout.damaged_dir(store.root), layout.lock_file(store.root, sweep).rsplit("/", 1)[0]})
        with RunLock(store, sweep) as lock:
            lock.on_lost = interrupt.lost
            store.guard = lock.fence  # the driver's own writes: none once the lease is lost (picklable, like the cells')
            try:
                return _locked(cells, store, lock, ray, max_concurrent, max_failures, list(log), log_dir)
            finally:
                _shutdown()  # Ray stops first, then the lock is released
                ours = False
                if lock.lost is not None:
                    raise lock.lost
    finally:
        if ours:
            _shutdown()


def _locked(cells: list[CellConfig], store: Store, lock: RunLock, ray, max_concurrent: int | None, max_failures: int,
            log: list[str], log_dir: str | None) -> Outcome:
    """`run`, once the lease is held."""
    sweep = cells[0].sweep
    clearway.folders(store, clearway.of_run(store, sweep, cells))
    if ray is not None:
        check_shared(ray, store, lock.path)
    write_run(store, sweep, cells)  # the total that `ls` and `report` on the running sweep compare with
    todo = pending_cells(cells, store)
    outcome = Outcome(total=len(todo), skipped=len(cells) - len(todo))
    print(f"{len(cells)} cells: {outcome.skipped} already have results, {len(todo)} to run", flush=True)
    if not todo:
        return outcome
    try:
        ensure_data((c.dataset for c in todo), fetch=True)
        if ray is None:
            reap.own()  # this driver starts the local instance: what it leaves behind is ended at shutdown
            ray = _connect(None)
        if interrupt.requested():  # a stop request that Ray's start-up swallowed
            raise KeyboardInterrupt
        _fit(ray, todo, store, outcome, max_concurrent, max_failures, log, log_dir, lock.fence)
    except KeyboardInterrupt:  # a signal or a lost lease (bnsweep.interrupt)
        outcome.interrupted = True
    return outcome


def _shutdown() -> None:
    """Stop what ray.init started, also when it was interrupted half-way (no handle returned yet), and end what
    Ray leaves behind (its agents outlived the driver by about a minute)."""
    if "ray" in sys.modules:
        with interrupt.deferred(raise_after=False):
            sys.modules["ray"].shutdown()
    reap.leftovers()
    reap.own(False)


def _fit(ray, todo: list[CellConfig], store: Store, outcome: Outcome, max_concurrent: int | None, max_failures: int,
         log: list[str], log_dir: str | None, fence: Fence) -> None:
    from ray import tune

    tune_dir = tempfile.mkdtemp(prefix="bnsweep-tune-")
    try:
        trainable = tune.with_resources(_trial, lambda config: {"cpu": config["cell"]["cpu"], "gpu": config["cell"]["gpu"]})
        progress = progress_line.callback(len(todo), sys.stdout.isatty(), shutil.get_terminal_size().columns)
        loggers = live.callbacks(log, log_dir, todo[0].sweep) if log else []
        runs = {r["cell_id"]: r for r in live.runs(todo)}
        tuner = tune.Tuner(
            trainable,
            param_space={"output": store.uri, "fence": dataclasses.asdict(fence),
                         "cell": tune.grid_search([  # one trial per pack, one cell's resources
                {"id": p[0].cell_id + (f"+{len(p) - 1}" if len(p) > 1 else ""),
                 "json": [c.model_dump_json() for c in p], "runs": [runs[c.cell_id] for c in p],
                 "cpu": p[0].resources.cpu, "gpu": p[0].resources.gpu} for p in packs(todo)])},
            tune_config=tune.TuneConfig(reuse_actors=True, max_concurrent_trials=max_concurrent,
                                        trial_dirname_creator=lambda t: t.config["cell"]["id"]),
            run_config=tune.RunConfig(name="sweep", storage_path=tune_dir, verbose=0, callbacks=[progress, *loggers],
                                      stop=_stopper(),
                                      failure_config=tune.FailureConfig(max_failures=max_failures)),
        )
        grid = tuner.fit()
        if sys.stdout.isatty():
            print()
        for r in grid:
            n = len(r.config["cell"]["json"]) if r.config else 0
            got = {s: (r.metrics or {}).get(f"n_{s}", 0) if r.error is None else 0 for s in STATUSES}
            if r.error is not None:
                got["failed"] = n
            for status, k in got.items():
                setattr(outcome, status, getattr(outcome, status) + k)
        outcome.interrupted = outcome.done + outcome.diverged + outcome.failed < len(todo) or interrupt.requested()
    finally:
        shutil.rmtree(tune_dir, ignore_errors=True)
