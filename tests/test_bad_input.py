"""Every kind of bad input: exit 2, one line naming the field and what is allowed, nothing written."""

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, TINY_DLN, tiny_spec, tree_digest, write_spec
from test_s3 import s3_uri  # noqa: F401 (a fixture: an S3 server on loopback)

from bnsweep.cli import main
from bnsweep.errors import UserError


def with_grid(**changes):
    return [{**TINY_DLN, **changes}]


def with_train(**changes):
    return [{**TINY_DLN, "overrides": {**TINY_DLN["overrides"], "train": {**TINY_DLN["overrides"]["train"], **changes}}}]


CASES = {
    "unknown top key": (lambda o: tiny_spec(o, colour="red"), ["colour: unknown key", "allowed:", "grid"]),
    "unknown nested key": (lambda o: tiny_spec(o, train={"stepz": 3}), ["train.stepz: unknown key", "allowed: steps, batch_size"]),
    "unknown override key": (
        lambda o: tiny_spec(o, grids=with_train(lr_decay=0.1)),
        ["grid[0].overrides.train.lr_decay: unknown key; allowed: steps, batch_size"],
    ),
    "wrong type": (lambda o: tiny_spec(o, train={"steps": "many"}), ["train.steps", "integer", "'many'"]),
    "negative lr": (lambda o: tiny_spec(o, grids=with_grid(lr=[0.1, -0.1])), ["grid[0].lr[1]", "greater than 0", "-0.1"]),
    "zero lr": (lambda o: tiny_spec(o, grids=with_grid(lr=[0])), ["grid[0].lr[0]", "greater than 0"]),
    "empty axis": (lambda o: tiny_spec(o, grids=with_grid(norm=[])), ["grid[0].norm: must list at least 1 value (got [])"]),
    "duplicate values": (lambda o: tiny_spec(o, grids=with_grid(lr=[0.1, 0.1])), ["grid[0].lr", "duplicate", "0.1"]),
    "unknown arch": (lambda o: tiny_spec(o, grids=with_grid(arch=["resnet"])), ["unknown arch 'resnet'", "known: dln, vgg11"]),
    "unknown norm": (
        lambda o: tiny_spec(o, grids=with_grid(norm=["group"])),
        ["unknown norm 'group'", "known: batch, l1, l2, linf, noisy_batch, none"],
    ),
    "unknown dataset": (
        lambda o: tiny_spec(o, dataset={"name": "mnist"}),
        ["dataset: unknown dataset 'mnist'; known: cifar10, digits, gaussian_regression"],
    ),
    "no dataset": (
        lambda o: tiny_spec(o, grids=[{k: v for k, v in TINY_DLN.items() if k != "overrides"}]),
        ["no dataset for grid[0]", "known: cifar10"],
    ),
    "arch incompatible with dataset": (
        lambda o: tiny_spec(o, grids=with_grid(arch=["vgg16"])),
        ["arch 'vgg16' needs image classification data", "gaussian_regression"],
    ),
    "vgg too deep for 8x8": (
        lambda o: tiny_spec(o, grids=[{"arch": ["vgg11"], "norm": ["none"], "lr": [0.1], "overrides": {"dataset": {"name": "digits"}}}]),
        ["vgg11", "5 max-pools", "8x8", "vgg_mini"],
    ),
    "augment unsupported": (lambda o: tiny_spec(o, grids=with_train(augment=True)), ["train.augment", "gaussian_regression", "cifar10"]),
    "cuda without gpu": (lambda o: tiny_spec(o, device="cuda"), ["device: cuda needs resources.gpu > 0"]),
    "cifar10 missing, download false": (
        lambda o: tiny_spec(
            o,
            grids=[
                {
                    "arch": ["vgg16"],
                    "norm": ["none"],
                    "lr": [0.1],
                    "overrides": {"dataset": {"name": "cifar10", "root": str(Path(o).parent / "nodata")}},
                }
            ],
        ),
        ["no CIFAR-10 under", "download: true", "cifar-10-python.tar.gz"],
    ),
    "fractional gpu above one": (
        lambda o: tiny_spec(o, resources={"gpu": 1.5}),
        ["resources.gpu: above 1 must be a whole number of GPUs (got 1.5)"],
    ),
}


def _existing_output(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    (out / "steps" / "sweep=tiny").mkdir(parents=True)
    (out / "steps" / "sweep=tiny" / "earlier.parquet").write_bytes(b"results of an earlier run")
    return out


@pytest.mark.parametrize("command", ["run", "validate", "plan"])
@pytest.mark.parametrize("case", list(CASES))
def test_bad_spec(case, command, tmp_path, capsys):
    make, expected = CASES[case]
    out = _existing_output(tmp_path)
    before = tree_digest(out)
    spec = write_spec(tmp_path / "spec.yaml", make(out))
    assert main([command, str(spec)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert err.startswith("error: ")
    for text in expected:
        assert text in err, f"{text!r} not in {err!r}"
    assert tree_digest(out) == before


def test_resources_no_node_has(tmp_path, capsys):
    """`run` checks resources against the machines it runs on; validate and plan look at no cluster (a spec
    for a cluster of large nodes validates on a laptop), so this one is run's alone."""
    out = _existing_output(tmp_path)
    before = tree_digest(out)
    spec = write_spec(tmp_path / "spec.yaml", tiny_spec(out, resources={"cpu": 512}))
    assert main(["run", str(spec)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "resources" in err and "cpu=512" in err and "largest" in err
    assert tree_digest(out) == before
    assert main(["validate", str(spec)]) == 0


def test_missing_and_unreadable_files(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml: no such file" in capsys.readouterr().err
    assert main(["validate", str(tmp_path)]) == 2
    assert "not a file" in capsys.readouterr().err
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00garbage")
    assert main(["validate", str(tmp_path / "bin.yaml")]) == 2
    assert "cannot read: not UTF-8 text" in capsys.readouterr().err
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    assert main(["validate", str(tmp_path / "list.yaml")]) == 2
    assert "a sweep spec is a YAML mapping" in capsys.readouterr().err


def test_yaml_syntax_error_names_the_line(tmp_path, capsys):
    p = tmp_path / "s.yaml"
    p.write_text("name: x\noutput: out\ngrid:\n  arch: [dln\n  norm: [none]\n")
    assert main(["run", str(p)]) == 2
    err = capsys.readouterr().err
    assert "YAML syntax error at line 5" in err and err.count("\n") == 1


def test_duplicate_yaml_key(tmp_path, capsys):
    p = tmp_path / "s.yaml"
    p.write_text("name: x\noutput: out\nname: y\n")
    assert main(["validate", str(p)]) == 2
    assert "line 3: key 'name' appears twice" in capsys.readouterr().err


def test_real_process_prints_no_traceback(tmp_path):
    """The same through a real `python -m bnsweep` process: exit 2, one line on stderr, nothing on stdout."""
    spec = write_spec(tmp_path / "s.yaml", tiny_spec(tmp_path / "out", grids=with_grid(lr=[-1.0])))
    p = subprocess.run([sys.executable, "-m", "bnsweep", "run", str(spec)], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 2
    assert "Traceback" not in p.stderr and p.stderr.count("\n") == 1 and "grid[0].lr[0]" in p.stderr
    assert not (tmp_path / "out").exists()


def test_model_level_errors_do_not_echo_the_spec(tmp_path, capsys):
    spec = write_spec(tmp_path / "s.yaml", tiny_spec(tmp_path / "out", grids=[{k: v for k, v in TINY_DLN.items() if k != "overrides"}]))
    assert main(["validate", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "(got" not in err and "(top level)" not in err and len(err) < 250


def test_override_to_another_dataset_replaces_the_section(tmp_path):
    from bnsweep.specfile import load_cells

    top = {"name": "cifar10", "root": str(tmp_path), "download": True}
    spec = write_spec(tmp_path / "s.yaml", tiny_spec(tmp_path / "out", grids=[TINY_DLN], dataset=top))
    _, cells = load_cells(spec)
    assert {c.dataset.name for c in cells} == {"gaussian_regression"} and cells[0].dataset.samples == 64


@pytest.mark.parametrize(
    "text,value",
    [
        ("1e-6", 1e-6),
        ("1.0e-6", 1e-6),
        (".5", 0.5),
        ("2.", 2.0),
        ("-3E2", -300.0),
        ("10", 10),
        (".", "."),
        ("1e", "1e"),
        ("v1.2", "v1.2"),
        (".inf", float("inf")),
        ("010", 10),  # YAML 1.2: decimal (YAML 1.1 read 8)
        ("1:30", "1:30"),  # YAML 1.2: a string (YAML 1.1 read 90)
        ("0o10", 8),
        ("0x1F", 31),
        ("1_000", 1000),
        ("yes", "yes"),  # YAML 1.2: a string (YAML 1.1 read True)
        ("off", "off"),
        ("2024-01-01", "2024-01-01"),  # YAML 1.2: a string (YAML 1.1 read a date)
        ("True", True),
        ("~", None),
        ("0b11", "0b11"),
    ],
)
def test_yaml_numbers(text, value, tmp_path):
    import yaml

    from bnsweep.specfile import _Loader

    got = yaml.load(f"x: {text}\n", Loader=_Loader)["x"]
    assert got == value and type(got) is type(value)


def test_yaml_merge_keys_work(tmp_path, capsys):
    """`<<: *anchor` merges a mapping; keys given beside it win."""
    from bnsweep.specfile import load_cells

    text = yaml_text(tmp_path / "out") + (
        "grid:\n"
        "  - &block {arch: [dln], norm: [none], lr: [0.001], seed: [0],\n"
        "            overrides: {dataset: {name: gaussian_regression, samples: 64, test_samples: 32}}}\n"
        "  - {<<: *block, seed: [5, 6]}\n"
    )
    spec = tmp_path / "s.yaml"
    spec.write_text(text)
    assert main(["validate", str(spec)]) == 0, capsys.readouterr().err
    _, cells = load_cells(spec)
    assert [c.seed for c in cells] == [0, 5, 6] and {c.dataset.samples for c in cells} == {64}


def yaml_text(out) -> str:
    return f"name: merged\noutput: {out}\ndevice: cpu\ntrain: {{steps: 40, batch_size: 64, eval_every: 20}}\nmodel: {{dln: {{depth: 4}}}}\n"


@pytest.mark.parametrize(
    "value,ok",
    [(1, True), (0.5, True), (0.0001, True), (0.0003, True), (2.5, True), (0.00015, False), (0.00001, False), (1e-6, False)],
)
def test_ray_resource_units(value, ok):
    """Ray counts resources in steps of 1/10,000 and truncates the rest: refused, never silently changed."""
    from pydantic import ValidationError

    from bnsweep.spec import Resources

    for field in ("cpu", "gpu"):
        if field == "gpu" and value > 1 and value != int(value):
            continue
        if ok:
            assert getattr(Resources(**{field: value}), field) == value
        else:
            with pytest.raises(ValidationError):
                Resources(**{field: value})


@pytest.fixture
def tables(tmp_path):
    import synthetic

    synthetic.write_runs(str(tmp_path / "out"))
    return tmp_path / "out"


def test_unexpected_error_is_one_line_and_its_traceback_is_kept(tables, tmp_path, monkeypatch, capsys):
    from bnsweep import cli

    def broken(args):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(cli, "cmd_ls", broken)
    assert main(["ls", str(tables)]) == 70
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: unexpected error") and "RuntimeError: boom second line" in err
    logs = list((tmp_path / "cache" / "bnsweep").glob("error-*.log"))
    assert len(logs) == 1 and str(logs[0]) in err
    assert "Traceback" in logs[0].read_text() and "boom" in logs[0].read_text() and "Traceback" not in err
    assert main(["ls", str(tables), "--debug"]) == 70  # --debug: the traceback itself, on stderr
    assert "Traceback (most recent call last)" in capsys.readouterr().err


def test_os_errors_are_one_line_with_their_own_status(tables, tmp_path, monkeypatch, capsys):
    import errno

    from bnsweep import cli

    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "report.html"))

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(cli, "cmd_ls", full)
    assert main(["ls", str(tables)]) == 74
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"No space left on device: {tmp_path / 'report.html'}" in err


def test_closed_stdout_ends_quietly(tables):
    """`bnsweep ls OUT | head -1`: the reader is gone before anything is printed; exit 141, nothing on stderr."""
    p = subprocess.Popen([sys.executable, "-m", "bnsweep", "ls", str(tables)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # the only read end: every write of the child fails with EPIPE
    err = p.stderr.read().decode()
    assert p.wait() == 141 and err == "", err


def test_home_is_expanded_in_every_path_argument(tmp_path, monkeypatch):
    """`report '~/x'` reads and writes the same place: ~ is expanded once, when the arguments are parsed."""
    from bnsweep.cli import parser

    monkeypatch.setenv("HOME", str(tmp_path))
    args = parser().parse_args(["report", "~/out", "-o", "~/rep", "--spec", "~/s.yaml"])
    assert (args.output, args.dest, args.spec) == (str(tmp_path / "out"), str(tmp_path / "rep"), str(tmp_path / "s.yaml"))
    args = parser().parse_args(["query", "~/out", "SELECT 1", "-o", "~/r.csv"])
    assert (args.output, args.file) == (str(tmp_path / "out"), str(tmp_path / "r.csv"))


def test_a_broken_logger_install_is_one_line(tmp_path, monkeypatch):
    """A logger package whose import fails with anything but ImportError (a half-upgraded mlflow)."""
    from bnsweep import live

    pkg = tmp_path / "site" / "mlflow"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise AttributeError(\"module 'pkg_resources' has no attribute 'x'\")\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    for name in [m for m in sys.modules if m == "mlflow" or m.startswith("mlflow.")]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(UserError, match=r"--log mlflow: the mlflow package is installed but cannot be imported \(AttributeError"):
        live.check(["mlflow"], str(tmp_path / "logs"))


@pytest.mark.parametrize(
    "name,blob",
    [
        ("_runs/syn.json", b'{"sweep": "syn", "tot'),  # torn
        ("_runs/syn.json", b'{"sweep": "syn", "total": "3", "cells": []}'),  # a number as text
        ("_runs/syn.json", b'{"sweep": "syn", "total": 1, "cells": [{"cell_id": 5}]}'),
        ("_checkpoints/sweep=syn/abc.json",
         b'{"cell_id": "abc", "sweep": "syn", "arch": "dln", "norm": "none", "lr": "x", "seed": 0, "step": 1, "steps": 9}'),
    ],
)
def test_damaged_progress_records_are_named_and_skipped(tables, name, blob, capsys):
    (tables / name).parent.mkdir(parents=True, exist_ok=True)
    (tables / name).write_bytes(blob)
    assert main(["ls", str(tables)]) == 0
    got = capsys.readouterr()
    assert "Traceback" not in got.err and "not a " in got.err and name.rsplit("/", 1)[1] in got.err
    assert "sweep syn:" in got.out


def test_config_json_that_is_not_json_falls_back_to_the_columns(capsys):
    from analysis.groups import _settings

    row = {"cell_id": "c1", "config_json": "{not json", "arch": "dln", "norm": "none", "lr": 0.1}
    assert _settings(row) == _settings({k: v for k, v in row.items() if k != "config_json"})
    assert "cell c1: its config_json is not a JSON object" in capsys.readouterr().err


CLUSTER_FILES = {
    "empty": ("", "a cluster file is a YAML mapping"),
    "no provider": ("cluster_name: x\nmax_workers: 1\n", "provider: missing or not a mapping"),
    "no provider type": ("cluster_name: x\nprovider: {region: us-west-2}\n", "provider.type: missing"),
    "local with node types": (
        "cluster_name: x\nprovider: {type: local, head_ip: 10.0.0.1, worker_ips: [10.0.0.2]}\nauth: {ssh_user: me}\n"
        "available_node_types:\n  a: {resources: {CPU: 2}, node_config: {}, min_workers: 0}\nhead_node_type: a\n",
        "available_node_types is not supported for on-premise clusters",
    ),
}


@pytest.mark.parametrize("case", list(CLUSTER_FILES))
def test_cluster_validate_answers_in_one_line(case, tmp_path, capfd):
    text, expected = CLUSTER_FILES[case]
    f = tmp_path / "cluster.yaml"
    f.write_text(text)
    assert main(["cluster", "validate", str(f)]) == 2
    err = capfd.readouterr().err  # capfd: Ray's loggers write to the process's stderr
    assert err.count("\n") == 1 and err.startswith("error: ") and expected in err, err
    assert "PANIC" not in err and "Traceback" not in err


def _tiny(tmp_path) -> Path:
    return write_spec(tmp_path / "s.yaml", tiny_spec(tmp_path / "out", grids=with_grid(seed=[0])))


def test_a_temp_folder_too_long_for_rays_sockets_is_refused_before_ray(tmp_path, monkeypatch, capsys):
    tmp = tmp_path / ("t" * 80)
    tmp.mkdir()
    monkeypatch.delenv("RAY_TMPDIR", raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp))
    spec = _tiny(tmp_path)
    assert main(["run", str(spec)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "socket paths" in err and "TMPDIR" in err
    assert not (tmp_path / "out").exists() and list(tmp.iterdir()) == []


def test_too_little_virtual_memory_for_ray_is_refused(tmp_path, monkeypatch, capsys):
    import resource

    from bnsweep import host

    monkeypatch.setattr(host.resource, "getrlimit", lambda which: (2**30, resource.RLIM_INFINITY))
    assert main(["run", str(_tiny(tmp_path))]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ulimit -v 1048576" in err and not (tmp_path / "out").exists()


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 1 MiB tmpfs, mounted where root may mount; else the test is skipped."""
    import os

    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                                           capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs needs root (and a container that allows mount)")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_temp_folder_is_refused_before_ray(small_tmpfs, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("RAY_TMPDIR", raising=False)
    monkeypatch.setenv("TMPDIR", str(small_tmpfs))
    assert main(["run", str(_tiny(tmp_path))]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "MiB free; Ray needs at least 64 MiB" in err


@pytest.mark.slow
def test_report_onto_a_full_disk_is_one_line(small_tmpfs, tables, tmp_path, monkeypatch, capsys):
    (small_tmpfs / "filler").write_bytes(b"\0" * (1024 * 1024 - 64 * 1024))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    status = main(["report", str(tables), "-o", str(small_tmpfs / "rep")])
    err = capsys.readouterr().err
    assert status == 74 and err.count("\n") == 1 and "No space left on device" in err, err


@pytest.mark.slow
def test_remote_outputs_are_checked_before_anything_runs(s3_uri, tmp_path, capsys):  # noqa: F811
    """An s3:// output on moto: a bucket that exists validates and plans; a missing bucket and an endpoint
    nobody listens on are refused in one line, with nothing written."""
    good = write_spec(tmp_path / "good.yaml", tiny_spec(s3_uri.replace("/runs", "/checked"), grids=with_grid(seed=[0])))
    assert main(["validate", str(good)]) == 0 and main(["plan", str(good)]) == 0
    capsys.readouterr()
    with socket.socket() as s:  # a port that was free a moment ago: nobody listens there
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    for uri, expected in ((s3_uri.replace("s3://bnsweep/", "s3://no-such-bucket/"), "its bucket does not exist"),
                          (s3_uri.split("?")[0] + f"?endpoint_override=127.0.0.1:{closed}&scheme=http", "")):
        spec = write_spec(tmp_path / "bad.yaml", tiny_spec(uri, grids=with_grid(seed=[0])))
        for command in ("validate", "plan", "run"):
            assert main([command, str(spec)]) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and expected in err and ("cannot use it" in err or "no answer within" in err), err


def test_an_endpoint_that_never_answers_is_given_up_on(tmp_path):
    """A listener that accepts connections and never answers (a black-holed proxy): refused after the timeout."""
    from bnsweep import destinations

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)  # the kernel completes the handshakes; nobody reads or answers
        uri = f"s3://bucket/runs?endpoint_override=127.0.0.1:{s.getsockname()[1]}&scheme=http"
        with pytest.raises(UserError, match=r"no answer within 2 s"):
            destinations.output(uri, timeout_s=2)


@pytest.mark.slow
def test_report_where_report_html_is_a_folder_is_one_line(tables, tmp_path, monkeypatch, capsys):
    """The tables are written first; then report.html cannot be: one line naming it, exit 74, no traceback."""
    (tmp_path / "rep" / "syn" / "report.html").mkdir(parents=True)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert main(["report", str(tables), "-o", str(tmp_path / "rep")]) == 74
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"Is a directory: {tmp_path / 'rep' / 'syn' / 'report.html'}" in err, err
    assert "Traceback" in next((tmp_path / "cache" / "bnsweep").glob("error-*.log")).read_text()
