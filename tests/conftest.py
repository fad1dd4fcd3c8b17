import hashlib
import os
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from bnsweep.measure import MEASURES

# before Ray starts anything (see bnsweep.runner.RAY_ENV)
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# Hypothesis keeps its example database outside the checkout (by default it writes .hypothesis/ in the
# working directory); it is read lazily, so setting this before the first test is enough
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", os.path.join(tempfile.gettempdir(), "bnsweep-hypothesis"))

ROOT = Path(__file__).resolve().parents[1]


def pytest_collection_finish(session):
    """Where the collected tests import torch, load torch._dynamo now: torch imports it on building its first
    optimizer (seconds), and mutmut's workers fork after collecting, so each would otherwise pay for it again."""
    if "torch" in sys.modules:
        import torch._dynamo  # noqa: F401

# Tiny cells: real code paths, well under a second each.
TINY_DLN = {
    "arch": ["dln"], "norm": ["none", "batch"], "lr": [1.0e-4, 3.0e-3], "seed": [0, 1],
    "overrides": {"dataset": {"name": "gaussian_regression", "samples": 64, "test_samples": 32},
                  "model": {"dln": {"depth": 4}}, "train": {"steps": 40, "batch_size": 64, "eval_every": 20}},
}
TINY_VGG = {
    "arch": ["vgg_mini"], "norm": ["none", "batch"], "lr": [0.1], "seed": [0, 1],
    "overrides": {"dataset": {"name": "digits"}, "model": {"vgg": {"width": 0.0625}},
                  "train": {"steps": 30, "batch_size": 32, "eval_every": 10}},
}


def tiny_spec(output, grids=None, name="tiny", **top) -> dict:
    return {"name": name, "output": str(output), "device": "cpu", "grid": grids or [TINY_DLN, TINY_VGG], **top}


def write_spec(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def tree_digest(folder: Path) -> str:
    """A digest of every file's path and bytes below `folder` ('' if it does not exist)."""
    if not folder.exists():
        return ""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        h.update(str(p.relative_to(folder)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture
def spec_file(tmp_path):
    """Write a spec dict to a YAML file under tmp_path; returns its path."""
    def make(spec: dict, name: str = "spec.yaml") -> Path:
        return write_spec(tmp_path / name, spec)
    return make


# Every measurement, cheaply, with the example options its class carries: a measurement added to the
# registry is picked up by every test that uses these.
MEASURE_ALL = {name: cls.example for name, cls in MEASURES.items()}
# columns of the cells table that time or place a run, and so differ between two identical runs
TIMING = ["started_at", "finished_at", "wall_s", "train_s", "eval_s", "resumed_from", "node_id", "hostname",
          *(f"{name}_s" for name in MEASURES)]


@pytest.fixture(scope="session")
def measured_output(tmp_path_factory) -> Path:
    """A tiny real sweep (every norm on the DLN, four on the VGG, every measurement), run once through `bnsweep run`."""
    from bnsweep.cli import main
    from bnsweep.norms import NORMS

    tmp = tmp_path_factory.mktemp("measured")
    grids = [{**TINY_DLN, "norm": list(NORMS)}, {**TINY_VGG, "norm": ["none", "batch", "noisy_batch", "l1"]}]
    spec = write_spec(tmp / "spec.yaml", tiny_spec(tmp / "out", grids=grids, name="measured", measure=MEASURE_ALL))
    assert main(["run", str(spec)]) == 0
    return tmp / "out"


@pytest.fixture(scope="session")
def measured_report(measured_output, tmp_path_factory):
    """The report of measured_output: (folder of its one sweep, [Written])."""
    from analysis import report

    dest = tmp_path_factory.mktemp("report")
    written = report.write(str(measured_output), dest)
    return dest / "measured", written


SLOW_S = 10.0  # a test that takes longer is marked `slow` (pyproject.toml); a report, never a limit
_unmarked_slow: list[tuple[str, float]] = []
_spent: dict[str, float] = {}


def pytest_runtest_logreport(report):
    """Note each test that took over SLOW_S (set-up, call and tear-down) without the `slow` mark."""
    _spent[report.nodeid] = _spent.get(report.nodeid, 0.0) + report.duration
    if report.when == "teardown" and (s := _spent.pop(report.nodeid)) > SLOW_S and "slow" not in report.keywords:
        _unmarked_slow.append((report.nodeid, s))


def pytest_terminal_summary(terminalreporter):
    if _unmarked_slow:
        terminalreporter.section(f"over {SLOW_S:.0f} s without the slow mark (mark them, or make them faster)")
        for nodeid, s in sorted(_unmarked_slow, key=lambda t: -t[1]):
            terminalreporter.write_line(f"{s:7.1f} s  {nodeid}")
