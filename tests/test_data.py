"""Data sets: the CIFAR-10 reader on a small CIFAR-10 in torchvision's on-disk format; digits; the DLN task."""

import os
import pickle
import shutil
import subprocess

import numpy as np
import pytest
import torch

from bnsweep import data
from bnsweep.data import DATASETS, Cifar10, Cifar10Spec, DigitsSpec, GaussianRegressionSpec, load_data
from bnsweep.errors import UserError


def write_fake_cifar10(root, per_batch=12, seed=0):
    """Python-pickled batches exactly as in cifar-10-python.tar.gz: {'data': (N, 3072) uint8 CHW rows, 'labels': [N]}."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d = {"batch_label": f"fake {name}", "labels": rng.integers(0, 10, per_batch).tolist(),
             "data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
             "filenames": [f"img_{i}.png" for i in range(per_batch)]}
        with open(folder / name, "wb") as f:
            pickle.dump(d, f, protocol=2)
        batches[name] = d
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
                     "num_cases_per_batch": per_batch, "num_vis": 3072}, f, protocol=2)
    return batches


def publish(mp, root) -> dict[str, str]:
    """Make the fake batches under `root` the published ones: the MD5 table holds their sums (the real one
    is torchvision's, which no fake file matches)."""
    folder = root / "cifar-10-batches-py"
    sums = {p.name: data.md5(p) for p in folder.iterdir()}
    mp.setattr(data, "published_md5", lambda: sums)
    return sums


def test_published_md5s_are_torchvisions():
    import torchvision

    sums = data.published_md5()
    assert sorted(sums) == sorted(Cifar10.train_files + Cifar10.test_files)
    assert sums["data_batch_1"] == dict(torchvision.datasets.CIFAR10.train_list)["data_batch_1"]
    assert all(len(v) == 32 and int(v, 16) >= 0 for v in sums.values())


def test_cifar10_reader_on_torchvision_layout(tmp_path, monkeypatch):
    batches = write_fake_cifar10(tmp_path)
    publish(monkeypatch, tmp_path)
    spec = Cifar10Spec(root=str(tmp_path))
    assert Cifar10.missing(spec) is None
    xtr, ytr, xte, yte = Cifar10.load(spec)
    assert xtr.shape == (60, 3, 32, 32) and xte.shape == (12, 3, 32, 32)
    raw = np.concatenate([batches[f"data_batch_{i}"]["data"] for i in range(1, 6)]).reshape(-1, 3, 32, 32) / 255.0
    mean, std = raw.mean(axis=(0, 2, 3), keepdims=True), raw.std(axis=(0, 2, 3), ddof=1, keepdims=True)
    np.testing.assert_allclose(xtr.numpy(), (raw - mean) / std, rtol=1e-4, atol=1e-5)
    assert ytr.tolist() == sum((batches[f"data_batch_{i}"]["labels"] for i in range(1, 6)), [])
    assert yte.tolist() == batches["test_batch"]["labels"]
    # torchvision's own reader sees the same images in these files (its md5 check is for the real archive)
    import torchvision

    monkeypatch.setattr(torchvision.datasets.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: True)
    tv = torchvision.datasets.CIFAR10(str(tmp_path), train=True, download=False)
    np.testing.assert_array_equal(tv.data.transpose(0, 3, 1, 2) / 255.0, raw)
    assert tv.targets == ytr.tolist()


class _Payload:
    """What a crafted batch carries: unpickling it would run `touch MARKER`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _crafted(tmp_path, payload) -> tuple:
    """Fake CIFAR-10 whose data_batch_1 holds `payload` under 'data' (a real batch's other keys kept)."""
    write_fake_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    with open(path, "wb") as f:
        pickle.dump({"batch_label": "crafted", "labels": [0], "data": payload, "filenames": ["x.png"]}, f, protocol=2)
    return Cifar10Spec(root=str(tmp_path)), path


def test_a_file_that_is_not_the_published_one_is_refused_before_it_is_read(tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    write_fake_cifar10(tmp_path / "genuine")
    published = publish(monkeypatch, tmp_path / "genuine")  # the table: sums of the genuine files only
    spec, path = _crafted(tmp_path, _Payload(marker))
    monkeypatch.setattr(data, "published_md5", lambda: published)
    with pytest.raises(UserError) as e:
        Cifar10.load(spec)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and f"is not the published CIFAR-10 {published['data_batch_1']}" in msg
    assert data.md5(path) in msg
    assert not marker.exists()


@pytest.mark.parametrize("payload, asks", [
    ("system", "posix.system"),
    ("eval", "__builtin__.eval"),  # protocol 2 spells builtins as Python 2 did
    ("subprocess", "commands.call"),  # subprocess.call, likewise
])
def test_a_pickle_with_code_is_refused_even_with_a_matching_md5(tmp_path, monkeypatch, payload, asks):
    """The second fence: were a crafted file's MD5 in the table, the unpickler still builds no callable."""
    marker = tmp_path / "ran"

    class Call:
        def __reduce__(self):
            if payload == "system":
                return (os.system, (f"touch {marker}",))
            if payload == "eval":
                return (eval, (f"open({str(marker)!r}, 'w')",))
            return (subprocess.call, (["touch", str(marker)],))

    spec, path = _crafted(tmp_path, Call())
    publish(monkeypatch, tmp_path)  # the crafted file's own sum: the MD5 check passes
    with pytest.raises(UserError) as e:
        Cifar10.load(spec)
    msg = str(e.value)
    assert msg.startswith(f"{path}: refused, not a CIFAR-10 batch: it asks for {asks}") and "\n" not in msg
    assert not marker.exists()


@pytest.mark.parametrize("content, says", [
    ({"data": np.zeros((2, 3072), np.float64), "labels": [0, 1]}, "not a CIFAR-10 batch (expected"),
    ({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 10]}, "not a CIFAR-10 batch (expected"),
    ({"data": np.zeros((2, 3072), np.uint8)}, "not a CIFAR-10 batch (expected"),
    ([1, 2, 3], "not a CIFAR-10 batch (expected"),
    (b"truncated", "not a CIFAR-10 batch"),
])
def test_a_batch_of_the_wrong_shape_is_refused_in_one_line(tmp_path, monkeypatch, content, says):
    write_fake_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    if content == b"truncated":
        path.write_bytes(path.read_bytes()[:100])
    else:
        with open(path, "wb") as f:
            pickle.dump(content, f, protocol=2)
    publish(monkeypatch, tmp_path)
    with pytest.raises(UserError) as e:
        Cifar10.load(Cifar10Spec(root=str(tmp_path)))
    assert str(e.value).startswith(f"{path}: refused") and says in str(e.value) and "\n" not in str(e.value)


def test_validate_refuses_a_crafted_batch_before_anything_runs(tmp_path, monkeypatch, capsys):
    from conftest import tiny_spec, write_spec

    from bnsweep.cli import main

    marker = tmp_path / "ran"
    write_fake_cifar10(tmp_path / "genuine")
    publish(monkeypatch, tmp_path / "genuine")
    _, path = _crafted(tmp_path / "data", _Payload(marker))
    grid = {"arch": ["vgg16"], "norm": ["none"], "lr": [0.1], "overrides": {"dataset": {"name": "cifar10", "root": str(tmp_path / "data")}}}
    spec = write_spec(tmp_path / "s.yaml", tiny_spec(tmp_path / "out", grids=[grid]))
    for command in ("validate", "run"):
        capsys.readouterr()
        assert main([command, str(spec)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {path}: MD5 ") and err.count("\n") == 1, err
    assert not marker.exists() and not (tmp_path / "out").exists()
    shutil.copy(tmp_path / "genuine" / "cifar-10-batches-py" / "data_batch_1", path)  # the genuine file back: accepted
    assert main(["validate", str(spec)]) == 0


def test_cifar10_missing_says_how_to_get_it(tmp_path):
    spec = Cifar10Spec(root=str(tmp_path))
    assert "download: true" in Cifar10.missing(spec)
    with pytest.raises(UserError, match="cifar-10-python.tar.gz"):
        Cifar10.prepare(spec)


def spec_for(name, tmp_path, mp):
    if name == "cifar10":
        write_fake_cifar10(tmp_path)
        publish(mp, tmp_path)
        return Cifar10Spec(root=str(tmp_path))
    return DATASETS[name].Spec()


@pytest.mark.parametrize("name", DATASETS)
def test_every_dataset_loads_as_its_info_says(name, tmp_path, monkeypatch):
    spec = spec_for(name, tmp_path, monkeypatch)
    ds = DATASETS[name]
    data = load_data(spec, "cpu")
    info = ds.info(spec)
    assert data.info == info
    assert data.x_train.shape[1:] == info.input_shape == data.x_test.shape[1:]
    assert data.x_train.dtype == torch.float32
    if info.task == "classification":
        assert data.y_train.dtype == torch.int64 and int(data.y_train.max()) < info.out_dim
    else:
        assert data.y_train.shape[1:] == (info.out_dim,)
    again = DATASETS[name].load(spec)  # deterministic: the same tensors from a fresh read
    assert torch.equal(again[0], data.x_train) and torch.equal(again[3], data.y_test)


def test_digits_split_is_fixed_and_standardised():
    xtr, ytr, xte, yte = DATASETS["digits"].load(DigitsSpec())
    assert len(xtr) + len(xte) == 1797 and len(xte) == round(1797 * 0.2)
    assert abs(xtr.mean().item()) < 1e-5 and abs(xtr.std().item() - 1) < 1e-4
    other = DATASETS["digits"].load(DigitsSpec(split_seed=1))
    assert not torch.equal(other[1], ytr)


def test_gaussian_regression_targets_are_a_times_x():
    spec = GaussianRegressionSpec()
    xtr, ytr, xte, yte = DATASETS["gaussian_regression"].load(spec)
    assert xtr.shape == (1000, 10) and xte.shape == (1000, 10)
    a = torch.linalg.lstsq(xtr, ytr).solution.T  # recovers A exactly: the targets are noiseless
    torch.testing.assert_close(xte @ a.T, yte, rtol=1e-4, atol=1e-4)
    g = torch.Generator().manual_seed(spec.seed)
    want = torch.randn(10, 10, generator=g) * spec.a_std  # A ~ N(0, a_std^2), drawn first
    torch.testing.assert_close(a, want, rtol=1e-4, atol=1e-4)
    assert spec.a_std == pytest.approx(0.1**0.5)  # the default: docs/dln-protocol.md
    assert not torch.equal(DATASETS["gaussian_regression"].load(GaussianRegressionSpec(seed=1))[1], ytr)


def test_cifar10_augmentation_is_a_crop_of_the_padded_maybe_flipped_image():
    x = torch.randn(6, 3, 32, 32)
    out = Cifar10.augment(x, torch.Generator().manual_seed(0))
    again = Cifar10.augment(x, torch.Generator().manual_seed(0))
    assert torch.equal(out, again) and out.shape == x.shape
    for i in range(len(x)):  # brute force: some (flip, dy, dx) of the reflect-padded image gives sample i
        found = False
        for img in (x[i], x[i].flip(2)):
            p = torch.nn.functional.pad(img[None], (4, 4, 4, 4), mode="reflect")[0]
            found |= any(torch.equal(p[:, dy:dy + 32, dx:dx + 32], out[i]) for dy in range(9) for dx in range(9))
        assert found


def test_download_from_a_host_that_does_not_answer_is_refused_before_anything_runs(tmp_path, monkeypatch, capsys):
    """CIFAR-10 missing with `download: true`: validate (and run) ask the archive's host first; a host that refuses the
    connection (a closed port on loopback, as with no network) is one line, exit 2, nothing written."""
    import socket

    from conftest import TINY_VGG, tiny_spec, write_spec

    from bnsweep import data
    from bnsweep.cli import main

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(data, "CIFAR10_URL", f"https://127.0.0.1:{port}/cifar-10-python.tar.gz")
    grid = {**TINY_VGG, "overrides": {**TINY_VGG["overrides"], "dataset": {"name": "cifar10", "root": str(tmp_path / "d"),
                                                                             "download": True}}}
    spec = write_spec(tmp_path / "s.yaml", tiny_spec(tmp_path / "out", grids=[grid]))
    capsys.readouterr()
    for command in ("validate", "plan", "run"):
        assert main([command, str(spec)]) == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: dataset.download: CIFAR-10 is missing under {tmp_path / 'd'} and "
                                                   f"127.0.0.1:{port}, where it is downloaded from, cannot be reached"), err
    assert not (tmp_path / "out").exists() and not (tmp_path / "d").exists()


def test_download_from_a_host_that_answers_passes_the_check(tmp_path, monkeypatch):
    import socket

    from bnsweep import data

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setattr(data, "CIFAR10_URL", f"http://127.0.0.1:{server.getsockname()[1]}/cifar-10-python.tar.gz")
        data.ensure_data([data.Cifar10Spec(root=str(tmp_path / "d"), download=True)])  # nothing raised, nothing fetched
    assert not (tmp_path / "d").exists()
