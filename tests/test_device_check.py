"""bench/device_check.sh end to end on the CPU (`--device cpu --tiny`) with Ray, Polars and Altair unimportable,
as on the GPU host it is written for; and its wheel folder complete for that host (CPython 3.12, no network)."""

import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import parse_wheel_filename

ROOT = Path(__file__).resolve().parents[1]
ABSENT = ("ray", "polars", "altair")  # not installed on the GPU host
HOST = ["--python-version", "3.12", "--implementation", "cp", "--abi", "cp312",
        "--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_17_x86_64"]  # as `make device-wheels`

SITECUSTOMIZE = f'''
import sys
from importlib.abc import MetaPathFinder


class Absent(MetaPathFinder):
    """Importing one of these fails as it does where the package is not installed."""

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {set(ABSENT)!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None


sys.meta_path.insert(0, Absent())
'''


def host_env(tmp_path: Path) -> dict[str, str]:
    """This interpreter, with Ray, Polars and Altair hidden in it and every process it starts (PYTHONPATH is inherited)."""
    hide = tmp_path / "absent"
    hide.mkdir(exist_ok=True)
    (hide / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return {**os.environ, "PYTHONPATH": str(hide), "PYTHON": sys.executable, "OUT": str(tmp_path / "results")}


def test_the_hidden_packages_cannot_be_imported(tmp_path):
    """What the check below proves rests on this: each import fails, in the interpreter and in its children."""
    env = host_env(tmp_path)
    for name in ABSENT:
        r = subprocess.run([sys.executable, "-c", f"import {name}"], env=env, capture_output=True, text=True)
        assert r.returncode == 1 and f"ModuleNotFoundError: No module named '{name}'" in r.stderr, name
    r = subprocess.run([sys.executable, "-c", "import json, torch, pydantic, pyarrow, yaml"], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.slow  # about 14 processes, each importing torch, then the GPU tests on the CPU
def test_device_check_runs_end_to_end_on_the_cpu_without_ray_polars_or_altair(tmp_path):
    env = host_env(tmp_path)
    r = subprocess.run(["bash", str(ROOT / "bench" / "device_check.sh"), "--device", "cpu", "--tiny"], env=env,
                       cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    out = tmp_path / "results"
    assert sorted(p.name for p in out.iterdir()) == ["device_check.md", "gpu_cpu.json", "gpu_cpu.md", "pytest_gpu.txt",
                                                     "pytest_gpu.xml"]

    result = json.loads((out / "gpu_cpu.json").read_text())
    assert (result["device"], result["tiny"], result["steps"]) == ("cpu", True, 8)
    md = (out / "gpu_cpu.md").read_text()
    for name in ("dln", "vgg_mini"):
        w = result["workloads"][name]
        timed = {**{f"concurrent {k}": v for k, v in w["concurrent"].items()}, **{f"packs {k}": v for k, v in w["packs"].items()}}
        if name == "vgg_mini":
            timed |= {f"choices {k}": v for k, v in w["choices"].items()}
        # packs ran (an import failing inside bnsweep.pack would have reported "packing not available")
        assert set(timed) >= {"concurrent K=1", "concurrent K=2", "packs K=2"}, (name, timed)
        for variant, v in timed.items():
            assert v["status"] == ["done"] * v["cells"] and v["images_per_s"] > 0, (name, variant, v)
            batch = 1000 if name == "dln" else 128
            assert v["cells"] * result["steps"] * batch / v["wall_s"] == pytest.approx(v["images_per_s"], rel=1e-2)
            part, k = variant.split()
            assert re.search(rf"\| {re.escape(k)} \| {v['cells']} \| {v['processes']} \| {v['images_per_s']:,.0f} \|", md), variant
        assert w["measurement"]["on_s"] > 0 and w["measurement"]["seconds_per_probe"], name
        assert f"## {name}: the paper's measurement schedule" in md

    suite = ET.parse(out / "pytest_gpu.xml").getroot().find("testsuite")
    counts = {k: int(suite.get(k)) for k in ("tests", "failures", "errors", "skipped")}
    assert counts == {"tests": 5, "failures": 0, "errors": 0, "skipped": 1}, counts
    skipped = [c for c in suite.iter("testcase") if c.find("skipped") is not None]
    assert [c.get("name") for c in skipped] == ["test_two_cells_share_one_gpu_through_bnsweep_run"]
    assert "4 passed, 1 skipped" in (out / "pytest_gpu.txt").read_text().splitlines()[-1]
    check = (out / "device_check.md").read_text()
    assert "| pytest | 0 |" in check and "| bench | 0 |" in check and "4 passed, 1 skipped" in check


def test_bad_arguments_are_one_line_and_exit_2(tmp_path):
    for argv, says in ((["--device", "tpu"], "--device 'tpu' (allowed: cuda, cpu)"), (["--fast"], "unknown argument '--fast'")):
        r = subprocess.run(["bash", str(ROOT / "bench" / "device_check.sh"), *argv], env=host_env(tmp_path),
                           capture_output=True, text=True)
        assert r.returncode == 2 and says in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "results" / "gpu_cpu.json").exists()


def test_the_wheel_folder_installs_pydantic_offline_on_the_gpu_host(tmp_path):
    """pip resolves Pydantic and every dependency from bench/device-wheels alone, for CPython 3.12 on manylinux."""
    folder = ROOT / "bench" / "device-wheels"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", "-", "--no-index",
                        "--find-links", str(folder), "--only-binary=:all:", *HOST, "--target", str(tmp_path / "t"),
                        "-r", str(ROOT / "bench" / "device-requirements.txt")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    chosen = {i["metadata"]["name"].lower().replace("_", "-"): i["metadata"]["version"] for i in json.loads(r.stdout)["install"]}
    held = {str(parse_wheel_filename(p.name)[0]): str(parse_wheel_filename(p.name)[1]) for p in folder.glob("*.whl")}
    assert chosen == held  # every wheel is used, none is missing
    assert {"pydantic", "pydantic-core", "typing-extensions", "annotated-types", "typing-inspection"} <= set(held)
    # the pinned Pydantic is one the project accepts
    want = Requirement(re.search(r'"(pydantic[<>=!~].*?)"', (ROOT / "pyproject.toml").read_text()).group(1))
    assert want.specifier.contains(held["pydantic"])
