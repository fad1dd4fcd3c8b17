"""A sweep whose output is s3://: an S3-compatible server (moto) on loopback, started by the test."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from conftest import TINY_DLN, tiny_spec, write_spec
from needs import unavailable

from bnsweep.cli import main
from bnsweep.records import Store
from bnsweep.specfile import load_cells

pytestmark = pytest.mark.ray
SECRET = "bnsweep-test-secret-never-stored"


@pytest.fixture(scope="module")
def s3_uri():
    server = Path(sys.executable).parent / "moto_server"
    if not server.exists():
        unavailable("moto[server] is not installed (pip install -e '.[dev]')")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="bnsweep-test-key", AWS_SECRET_ACCESS_KEY=SECRET, AWS_DEFAULT_REGION="us-east-1")
    proc = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        import pyarrow.fs as pafs

        pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http", allow_bucket_creation=True).create_dir("bnsweep")
        yield f"s3://bnsweep/runs?endpoint_override=127.0.0.1:{port}&scheme=http"
    finally:
        proc.terminate()
        proc.wait()
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


@pytest.mark.slow
def test_a_sweep_writes_to_and_resumes_from_s3(s3_uri, tmp_path, capsys):
    grid = [{**TINY_DLN, "seed": [0]}]
    spec = write_spec(tmp_path / "s.yaml", tiny_spec(s3_uri, grids=grid, name="s3",
                                                     measure={"ics": {"every": 10, "layers": [2]}}, checkpoint_every=10))
    _, cells = load_cells(spec)
    assert main(["run", str(spec)]) == 0
    store = Store(s3_uri)
    c = pl.from_arrow(store.read("cells", "s3"))
    s = pl.from_arrow(store.read("steps", "s3"))
    assert sorted(c["cell_id"]) == sorted(x.cell_id for x in cells) and set(c["status"]) <= {"done", "diverged"}
    assert s.group_by("cell_id", "step").len()["len"].max() == 1
    assert len(pl.from_arrow(store.read("ics", "s3"))) > 0
    # polars reads the same objects straight from the bucket
    endpoint = s3_uri.split("endpoint_override=")[1].split("&")[0]
    opts = {"aws_endpoint_url": f"http://{endpoint}", "aws_allow_http": "true", "aws_region": "us-east-1",
            "aws_access_key_id": "bnsweep-test-key", "aws_secret_access_key": SECRET}
    direct = pl.scan_parquet("s3://bnsweep/runs/steps/**/*.parquet", hive_partitioning=True, storage_options=opts).collect()
    assert len(direct) == len(s)
    capsys.readouterr()
    assert main(["run", str(spec)]) == 0  # a second run: nothing to do
    assert f"{len(cells)} cells: {len(cells)} already have results, 0 to run" in capsys.readouterr().out
    # nothing written to the bucket carries the credentials; no lock or checkpoint is left behind
    from pyarrow.fs import FileSelector

    files = [f.path for f in store.fs.get_file_info(FileSelector(store.root, recursive=True)) if f.size]
    assert files and not any(SECRET.encode() in store.get(p) or b"bnsweep-test-key" in store.get(p) for p in files)
    assert not [p for p in files if "/_locks/" in p or "/_checkpoints/" in p]
    # the analysis commands read the bucket too
    capsys.readouterr()
    assert (
        main(["query", s3_uri, "SELECT count(*) AS n FROM steps JOIN cells USING (cell_id) WHERE status = 'done'", "--format", "csv"]) == 0
    )
    assert capsys.readouterr().out.split() == ["n", str(len(s.join(c.filter(pl.col("status") == "done"), on="cell_id")))]
    assert main(["ls", s3_uri]) == 0 and "s3" in capsys.readouterr().out
    assert main(["report", s3_uri, "-o", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "s3" / "report.html").stat().st_size > 10_000
