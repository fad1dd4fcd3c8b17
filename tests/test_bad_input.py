"""Every kind of bad input: exit 2, one line naming the field and what is allowed, nothing written."""

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, TINY_DLN, tiny_spec, tree_digest, write_spec

from bnsweep.cli import main


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
    assert "nope.yaml: no such spec file" in capsys.readouterr().err
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
    ],
)
def test_yaml_numbers(text, value, tmp_path):
    import yaml

    from bnsweep.specfile import _Loader

    got = yaml.load(f"x: {text}\n", Loader=_Loader)["x"]
    assert got == value and type(got) is type(value)
