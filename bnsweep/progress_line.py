"""The progress line `bnsweep run` prints: a Ray Tune callback (Ray is imported only in `callback`).

    [3/24 cells] running 2, diverged 0, failed 0 | elapsed 0:41, ETA 4:47 | vgg_mini-batch-lr0.05-s0 500/1500 loss 0.0312, ...

On a terminal one line is redrawn, cut to its width; in a log a line is printed whenever a cell starts
or ends, and otherwise (a running cell's newer evaluation) at most every `every_s` seconds.
"""

from __future__ import annotations

import time


def clock(s: float) -> str:
    s = int(max(0, s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class Line:
    """Counts of finished cells, running cells, and each running cell's step of its total and latest training loss."""

    def __init__(self, total: int):
        self.total, self.t0, self.running = total, time.time(), 0
        self.counts = {"done": 0, "diverged": 0, "failed": 0}
        self.cells: dict[str, tuple[str, dict]] = {}  # cell_id -> (run name, its latest evaluation report)

    def text(self) -> str:
        finished = sum(self.counts.values())
        elapsed = time.time() - self.t0
        eta = clock(elapsed / finished * (self.total - finished)) if finished else "?"
        text = (f"[{finished}/{self.total} cells] running {self.running}, diverged {self.counts['diverged']}, "
                f"failed {self.counts['failed']} | elapsed {clock(elapsed)}, ETA {eta}")
        live = [f"{name} {m['step']}/{m['steps']}" + (f" loss {m['train_loss']:.4g}" if "train_loss" in m else "")
                for name, m in self.cells.values()]
        return text + (" | " + ", ".join(live) if live else "")

    def evaluated(self, runs: list[dict], result: dict) -> None:
        """A trial's evaluation report (`runs`: its cells' runs, `bnsweep.live.runs`)."""
        names = {r["cell_id"]: r["name"] for r in runs}
        for cell_id, evaluations in (result.get("cells") or {}).items():
            self.cells[cell_id] = (names[cell_id], evaluations[-1])

    def ended(self, runs: list[dict], counts: dict[str, int]) -> None:
        for r in runs:
            self.cells.pop(r["cell_id"], None)
        for status, n in counts.items():
            self.counts[status] += n


def callback(total: int, tty: bool, width: int = 0, every_s: float = 30.0):
    """The Tune callback that keeps a `Line` and prints it."""
    from ray import tune

    class Progress(tune.Callback):
        def __init__(self):
            self.line, self.last, self.printed = Line(total), "", 0.0

        def show(self, force: bool = True) -> None:
            text = self.line.text()
            if tty:
                text = text[: width - 1] if width > 1 else text
                print("\r" + text.ljust(len(self.last)), end="", flush=True)
            elif text != self.last and (force or time.time() - self.printed >= every_s):
                print(text, flush=True)
                self.printed = time.time()
            self.last = text

        def count_running(self, trials, ended=None) -> None:
            self.line.running = sum(len(t.config["cell"]["runs"]) for t in trials if t.status == "RUNNING" and t is not ended)

        def on_trial_start(self, iteration, trials, trial, **info):
            self.count_running(trials)
            if tty:
                self.show()

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if "n_done" not in result:  # an evaluation report, not the trial's final one
                self.count_running(trials)  # the trials started since the last line printed count too
                self.line.evaluated(trial.config["cell"]["runs"], result)
                self.show(force=False)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.count_running(trials, ended=trial)
            last = trial.last_result or {}
            got = {s: last.get(f"n_{s}", 0) for s in self.line.counts}
            got["failed"] += len(trial.config["cell"]["runs"]) - sum(got.values())  # a trial that reported nothing
            self.line.ended(trial.config["cell"]["runs"], got)
            self.show()

        def on_trial_error(self, iteration, trials, trial, **info):
            self.count_running(trials, ended=trial)
            self.line.ended(trial.config["cell"]["runs"], {"failed": len(trial.config["cell"]["runs"])})
            self.show()

        def on_step_end(self, iteration, trials, **info):
            if tty and iteration % 20 == 0:
                self.show()

    return Progress()
