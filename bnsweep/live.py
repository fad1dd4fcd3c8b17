"""Live logging of running cells through Ray Tune's own logger callbacks (`bnsweep run --log NAME`).

Each trial reports the evaluations of its cells to Tune (`bnsweep.reporter`), as
`{"cells": {cell_id: [{step, train_loss, ...}, ...]}}`: a pack's members in one result. The callbacks here are
Tune's, each made to log every cell as a run of its own (`per_cell`), named `<arch>-<norm>-lr<lr>-s<seed>`,
with the cell's keys as its hyperparameters and its training step as the step (`training_iteration` and
`timesteps_total`, which Tune's loggers plot against). The Parquet tables stay the record.

    <log dir>/tensorboard/<run name>/events.out.tfevents.*   TBXLoggerCallback
    <log dir>/wandb/                                         WandbLoggerCallback (wandb.init(dir=...)); project = sweep
    sqlite:///<log dir>/mlflow.db                            MLflowLoggerCallback; experiment = sweep

The log dir defaults to `<output>/_logs/<sweep>` for a local output (`--log-dir` for an object store).
The tools' own settings win over these defaults: WANDB_PROJECT, WANDB_DIR, WANDB_MODE, MLFLOW_TRACKING_URI.
Ray is imported only inside the factories, which the driver calls.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

from bnsweep.errors import UserError, unknown


def run_name(cell) -> str:
    """The run name every tool shows: arch, norm, lr and seed of `cell` (a CellConfig)."""
    return f"{cell.arch}-{cell.norm}-lr{cell.lr:g}-s{cell.seed}"


def runs(cells: list) -> list[dict]:
    """Each cell's run: its keys (the hyperparameters a logger shows) and its name, made unique with the cell id
    where two cells of `cells` would share one (cells equal in keys but for another setting)."""
    names = [run_name(c) for c in cells]
    return [{"cell_id": c.cell_id, "sweep": c.sweep, "arch": c.arch, "norm": c.norm, "lr": c.lr, "seed": c.seed,
             "name": name if names.count(name) == 1 else f"{name}-{c.cell_id}"} for c, name in zip(cells, names)]


def log_dir(output: str, sweep: str, given: str | None) -> str:
    """Where live logs go: `given`, else `<output>/_logs/<sweep>` for a local output."""
    from bnsweep import layout
    from bnsweep.records import Store

    if given:
        return os.path.abspath(os.path.expanduser(given))
    if "://" in output and not output.startswith("file://"):  # no Store here: it would ask the object store
        raise UserError(f"--log: output {output} is not a local folder; give a local folder for the logs with --log-dir DIR")
    return layout.logs_dir(Store(output).root, sweep)


class CellRun:
    """One cell of a trial as Tune's logger callbacks see a trial: its own name, id and hyperparameters;
    anything else (the trial's folders, its experiment) is the trial's."""

    def __init__(self, trial, run: dict, index: int):
        self._trial = trial
        self.config = self.evaluated_params = {k: v for k, v in run.items() if k != "name"}
        self.trial_id = trial.trial_id if index == 0 else f"{trial.trial_id}-{index}"
        self.trial_name = run["name"]

    def __str__(self) -> str:
        return self.trial_name

    def __getattr__(self, name: str):
        if name.startswith("__") or name == "_trial":  # copy and pickle look these up before __init__ ran
            raise AttributeError(name)
        return getattr(self._trial, name)


def per_cell(base: type) -> type:
    """Tune's logger callback class `base`, logging each cell of a trial as a run of its own."""

    class PerCell(base):
        def _runs(self, trial) -> dict:
            cache = self.__dict__.setdefault("_cell_runs", {})
            if trial not in cache:
                cache[trial] = {r["cell_id"]: CellRun(trial, r, i) for i, r in enumerate(trial.config["cell"]["runs"])}
            return cache[trial]

        def start_run(self, run: CellRun) -> None:
            super().log_trial_start(run)

        def log_trial_start(self, trial):  # from Tune with a trial; from `base`'s own methods with a run
            for run in [trial] if isinstance(trial, CellRun) else self._runs(trial).values():
                self.start_run(run)

        def log_trial_result(self, iteration, trial, result):
            runs = self._runs(trial)
            for cell_id, evaluations in (result.get("cells") or {}).items():
                for m in evaluations:
                    step = m["step"]
                    super().log_trial_result(step, runs[cell_id], {**m, "training_iteration": step, "timesteps_total": step})

        def log_trial_end(self, trial, failed: bool = False):
            for run in self._runs(trial).values():
                super().log_trial_end(run, failed)
            self.__dict__.get("_cell_runs", {}).pop(trial, None)

    PerCell.__name__ = PerCell.__qualname__ = f"PerCell{base.__name__}"
    return PerCell


def _tensorboard(folder: str, sweep: str):
    from ray.tune.logger import TBXLoggerCallback

    class TensorBoard(per_cell(TBXLoggerCallback)):
        """One folder per run under `<log dir>/tensorboard/` (Tune's own choice, the trial's staging folder, is
        temporary here: bnsweep's Tune state lives in a temp dir); flushed after each result, as Tune's is."""

        def start_run(self, run: CellRun) -> None:
            if run in self._trial_writer:
                self._trial_writer[run].close()
            self._trial_writer[run] = self._summary_writer_cls(f"{folder}/tensorboard/{run}", flush_secs=30)
            self._trial_result[run] = {}

    return TensorBoard()


def _wandb(folder: str, sweep: str):
    import wandb
    from ray.air.integrations.wandb import WandbLoggerCallback

    class Wandb(per_cell(WandbLoggerCallback)):
        """Tune's W&B logger, each run logged by a thread of the driver (`_log_wandb_run`) where Tune's starts
        a Ray actor process and a queue actor per trial, and W&B's service in each: on a busy machine those
        start-ups took a cell's CPU (x1.2 to x1.7 on a small cell). One W&B service serves every run here
        (W&B runs side by side in one process with reinit="create_new"), started, with W&B's lazy imports,
        before any cell runs."""

        def setup(self, *args, **kwargs):
            super().setup(*args, **kwargs)
            wandb.setup()
            for module in ("wandb.sdk.launch", "wandb.apis.public"):  # what the first wandb.init imports (0.5 s of
                with contextlib.suppress(ImportError):               # CPU): here, not while a cell trains
                    importlib.import_module(module)

        def _start_logging_actor(self, trial, exclude_results, **init):
            if trial in self._trial_logging_futures:
                return
            self._trial_queues[trial] = queue.Queue()
            worker = threading.Thread(target=_log_wandb_run, name=f"wandb-{trial}", daemon=True,
                                      args=(self._trial_queues[trial], exclude_results, self.AUTO_CONFIG_KEYS, init))
            self._trial_logging_futures[trial] = self._trial_logging_actors[trial] = worker
            worker.start()

        def _cleanup_logging_actors(self, timeout: int = 0, kill_on_timeout: bool = False):
            deadline = time.monotonic() + timeout
            for trial, worker in list(self._trial_logging_futures.items()):
                worker.join(max(0.0, deadline - time.monotonic()))
                if not worker.is_alive() or kill_on_timeout:
                    for held in (self._trial_queues, self._trial_logging_futures, self._trial_logging_actors):
                        held.pop(trial, None)

        def __del__(self):  # Tune's stops Ray actors here; threads end with the driver
            pass

    kwargs = {} if os.environ.get("WANDB_DIR") else {"dir": f"{folder}/wandb"}
    if kwargs:
        os.makedirs(kwargs["dir"], exist_ok=True)
    return Wandb(project=os.environ.get("WANDB_PROJECT") or sweep, group=sweep, reinit="create_new",
                 settings=wandb.Settings(console="off"), **kwargs)  # console="off": the driver's terminal stays ours


def _log_wandb_run(items: queue.Queue, exclude: list[str], to_config: list[str], init: dict) -> None:
    """What Tune's `_WandbLoggingActor.run` does, for one run, in a thread: init, each result (with its rule for
    which keys are logged and which go to the config), finish. A failing W&B loses this run's log, not the sweep."""
    import types

    import wandb
    from ray.air.integrations.wandb import _QueueItem, _WandbLoggingActor

    rule = types.SimpleNamespace(_exclude=set(exclude), _to_config=set(to_config))
    run, failed = None, None
    try:
        run = wandb.init(**init)
    except Exception as e:
        failed = e
    while (item := items.get())[0] != _QueueItem.END:  # taken even when W&B failed: the queue never grows
        if failed is None and item[0] == _QueueItem.RESULT:
            try:
                log, config = _WandbLoggingActor._handle_result(rule, item[1])
                run.config.update(config, allow_val_change=True)
                run.log(log, step=log.get("training_iteration"))
            except Exception as e:
                failed = e
    if failed is not None:
        print(f"warning: --log wandb: run {init.get('name')} not logged ({type(failed).__name__}: {str(failed)[:200]})",
              flush=True)
    if run is not None:
        run.finish()


def _mlflow_uri(folder: str) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{folder}/mlflow.db"


def _mlflow(folder: str, sweep: str):
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    class MLflow(per_cell(MLflowLoggerCallback)):
        """A run's parameters, and each result, in one `log_batch` (one database transaction), where Tune's makes a
        call per parameter and per metric and checks that the run exists before each: on SQLite, 70 to 120 ms of
        driver CPU per cell of 7 evaluations instead of 360 to 390 ms (`bench/live_overhead.py --driver`)."""

        def client(self):
            from mlflow.tracking import MlflowClient

            if "_client" not in self.__dict__:
                self._client = MlflowClient(tracking_uri=self.tracking_uri)
            return self._client

        def start_run(self, run: CellRun) -> None:
            from mlflow.entities import Param

            if run not in self._trial_runs:
                created = self.client().create_run(self.mlflow_util.experiment_id, run_name=str(run),
                                                   tags={**self.tags, "trial_name": str(run)})
                self._trial_runs[run] = created.info.run_id
                self.client().log_batch(created.info.run_id, params=[Param(k, str(v)) for k, v in run.config.items()])

        def log_trial_result(self, iteration, trial, result):
            import time

            from mlflow.entities import Metric

            runs, now = self._runs(trial), int(time.time() * 1000)
            for cell_id, evaluations in (result.get("cells") or {}).items():
                metrics = [Metric(k, float(v), now, m["step"]) for m in evaluations for k, v in m.items() if isinstance(v, (int, float))]
                self.client().log_batch(self._trial_runs[runs[cell_id]], metrics=metrics)

    return MLflow(tracking_uri=_mlflow_uri(folder), experiment_name=sweep)


def _prepare_tensorboard(folder: str) -> None:
    os.makedirs(f"{folder}/tensorboard", exist_ok=True)


def _check_wandb() -> None:
    """W&B online needs credentials: say so in one line before anything runs, not in a traceback mid-sweep."""
    import wandb

    if os.environ.get("WANDB_MODE") in ("offline", "disabled", "dryrun") or os.environ.get("WANDB_API_KEY"):
        return
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        found = wandb.login(prompt=False, verify=False)  # a stored key (`wandb login`, ~/.netrc); no network
    if not found:
        raise UserError("--log wandb: no W&B credentials; run `wandb login`, set WANDB_API_KEY, or set WANDB_MODE=offline")


def _prepare_mlflow(folder: str) -> None:
    """The tracking store answers (a local SQLite file is created here), or one line saying why not."""
    import logging

    from mlflow.tracking import MlflowClient

    for name in ("mlflow", "alembic"):  # no INFO lines about creating the database's tables
        logging.getLogger(name).setLevel(logging.WARNING)

    uri = _mlflow_uri(folder)
    if uri.startswith("sqlite:///"):
        os.makedirs(os.path.dirname(uri.removeprefix("sqlite:///")) or ".", exist_ok=True)
    retries = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
    saved = {k: os.environ.get(k) for k in retries}
    os.environ.update(retries)  # a server that does not answer: fail in seconds, not after minutes of retries
    try:
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except Exception as e:
        raise UserError(f"--log mlflow: tracking store {uri} does not answer ({type(e).__name__}: "
                        f"{str(e).strip().splitlines()[0][:200] if str(e).strip() else 'no message'})") from None
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


class Logger(NamedTuple):
    package: str  # the module that provides it
    make: Callable  # (log dir, sweep) -> the Tune callback
    ready: Callable[[], None] | None  # pre-flight check that writes nothing
    prepare: Callable[[str], None]  # (log dir) -> its folder or store, made before any cell runs


LOGGERS: dict[str, Logger] = {
    "tensorboard": Logger("tensorboardX", _tensorboard, None, _prepare_tensorboard),
    "wandb": Logger("wandb", _wandb, _check_wandb, lambda folder: None),
    "mlflow": Logger("mlflow", _mlflow, None, _prepare_mlflow),
}


def check(names: list[str], folder: str) -> None:
    """Every requested logger is known, installed and ready to write under `folder`; a UserError in one line otherwise.
    Nothing is written until every logger has passed the checks that write nothing."""
    names = list(dict.fromkeys(names))
    for name in names:
        if name not in LOGGERS:
            raise unknown("--log value", name, LOGGERS)
        try:
            importlib.import_module(LOGGERS[name].package)
        except ImportError:
            raise UserError(f"--log {name}: the {LOGGERS[name].package} package is not installed "
                            "(pip install 'bnsweep[live]')") from None
        except Exception as e:  # a broken install fails its import with anything (AttributeError, a version clash)
            why = " ".join(f"{type(e).__name__}: {e}".split())[:200]
            raise UserError(f"--log {name}: the {LOGGERS[name].package} package is installed but cannot be imported "
                            f"({why}); reinstall it (pip install 'bnsweep[live]')") from None
        if LOGGERS[name].ready is not None:
            LOGGERS[name].ready()
    for name in names:
        try:
            LOGGERS[name].prepare(folder)
        except OSError as e:
            raise UserError(f"--log {name}: cannot write under {folder} ({e.strerror or e})") from None


def callbacks(names: list[str], folder: str, sweep: str) -> list:
    """Ray Tune logger callbacks for `names` (each once), writing under `folder`."""
    return [LOGGERS[name].make(folder, sweep) for name in dict.fromkeys(names)]
