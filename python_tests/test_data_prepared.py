"""Prepared data sets: `python -m ncpfast.data prepare` writes them atomically,
load_dataset reads them with the same pixels as the raw formats, and every way a
prepared directory can be wrong is a one-line DataError naming the file."""
import json
import os
import subprocess
import sys
import time

import pytest
import torch

from data_helpers import write_celeba_folder
from ncpfast.data import DataError, load_dataset
from ncpfast.data.cli import main as data_main
from ncpfast.data.prepare import prepare
from ncpfast.data.prepared import MANIFEST, PreparedSplit
from test_data import make_mnist_dir, write_cifar

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def assert_same_splits(raw, prepared):
    for a, b in zip(raw, prepared):
        assert isinstance(b, PreparedSplit) and len(a) == len(b)
        everything = torch.arange(len(a))
        assert torch.equal(a.batch(everything), b.batch(everything))
        assert (a.labels is None) == (b.labels is None)
        if a.labels is not None:
            assert torch.equal(a.labels, b.labels)


@pytest.mark.parametrize("dataset", ["mnist", "cifar10", "celeba64"])
def test_prepared_equals_raw(tmp_path, dataset):
    raw = tmp_path / "raw"
    raw.mkdir()
    {"mnist": lambda: make_mnist_dir(raw, True), "cifar10": lambda: write_cifar(raw),
     "celeba64": lambda: write_celeba_folder(raw, n=70)}[dataset]()
    # jobs=2 and 70 images: the decode pool's path (more than one chunk).
    manifest = prepare(dataset, str(raw), str(tmp_path / "prepared"), jobs=2, progress=False)
    assert manifest["dataset"] == dataset and manifest["ncpfast_version"]
    assert sorted(os.listdir(tmp_path)) == ["prepared", "raw"]  # no partial directory left
    assert_same_splits(load_dataset(dataset, str(raw)), load_dataset(dataset, str(tmp_path / "prepared")))


def test_prepare_cli_and_its_errors(tmp_path, capsys):
    write_celeba_folder(tmp_path / "raw")
    out = tmp_path / "prepared"
    assert data_main(["prepare", "celeba64", "--data-dir", str(tmp_path / "raw"), "--out", str(out),
                      "--no-progress"]) == 0
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["recipe"]["crop"] == [15, 40, 163, 188] and manifest["splits"]["train"]["count"] == 11
    assert manifest["splits"]["train"]["images"]["shape"] == [11, 3, 64, 64]
    # Refuses to overwrite without --force; --force replaces it.
    assert data_main(["prepare", "celeba64", "--data-dir", str(tmp_path / "raw"), "--out", str(out),
                      "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "already there; pass --force" in err
    assert data_main(["prepare", "celeba64", "--data-dir", str(tmp_path / "raw"), "--out", str(out),
                      "--no-progress", "--force"]) == 0
    assert data_main(["verify", str(out)]) == 0
    assert sorted(os.listdir(tmp_path)) == ["prepared", "raw"]


def test_module_entry_point_exits_2_with_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "ncpfast.data", "prepare", "cifar10", "--data-dir",
                             str(tmp_path), "--out", str(tmp_path / "out")], capture_output=True, text=True,
                            env=ENV, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "data_batch_1 not found" in result.stderr and not (tmp_path / "out").exists()


def test_a_failed_prepare_leaves_nothing_that_looks_complete(tmp_path):
    raw = write_celeba_folder(tmp_path / "raw", n=70)
    (tmp_path / "raw" / "000050.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    with pytest.raises(DataError, match=r"000050\.jpg: not a readable image"):
        prepare("celeba64", str(raw), str(tmp_path / "prepared"), jobs=2, progress=False)
    assert sorted(os.listdir(tmp_path)) == ["raw"]
    # A prepare killed outright leaves OUT.partial-PID without a manifest: not a data set,
    # and removed by the next prepare of OUT.
    stale = tmp_path / "prepared.partial-999999999"
    stale.mkdir()
    (stale / "train_images.npy").write_bytes(b"half")
    os.unlink(tmp_path / "raw" / "000050.jpg")
    prepare("celeba64", str(raw), str(tmp_path / "prepared"), progress=False)
    assert sorted(os.listdir(tmp_path)) == ["prepared", "raw"]


@pytest.fixture()
def prepared_mnist(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    make_mnist_dir(raw, False)
    out = tmp_path / "prepared"
    prepare("mnist", str(raw), str(out), progress=False)
    return out


def test_truncated_prepared_file(prepared_mnist):
    path = prepared_mnist / "train_images.npy"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"train_images\.npy: not a readable \.npy array \(truncated"):
        load_dataset("mnist", str(prepared_mnist))


def test_corrupted_prepared_file(prepared_mnist):
    path = prepared_mnist / "test_images.npy"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # one pixel: shape and size still right
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"test_images\.npy: sha256 .* does not match manifest\.json"):
        load_dataset("mnist", str(prepared_mnist))
    assert data_main(["verify", str(prepared_mnist)]) == 2


def test_manifest_that_does_not_match_its_arrays(prepared_mnist):
    manifest_path = prepared_mnist / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest["splits"]["train"]["images"]["shape"] = [8, 1, 32, 32]
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=r"train_images\.npy: holds uint8 \[7, 1, 32, 32\] but manifest\.json says"):
        load_dataset("mnist", str(prepared_mnist))
    # Arrays swapped between splits: right format, wrong content.
    os.replace(prepared_mnist / "test_labels.npy", prepared_mnist / "train_labels.npy")
    manifest["splits"]["train"]["images"]["shape"] = [7, 1, 32, 32]
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=r"train_labels\.npy: holds int64 \[3\] but"):
        load_dataset("mnist", str(prepared_mnist))
    manifest_path.write_text("{not json")
    with pytest.raises(DataError, match="manifest.json: not a readable prepared-data manifest"):
        load_dataset("mnist", str(prepared_mnist))


def test_prepared_directory_of_another_data_set(prepared_mnist):
    with pytest.raises(DataError, match="holds the prepared data set 'mnist', not 'cifar10'"):
        load_dataset("cifar10", str(prepared_mnist))
    os.unlink(prepared_mnist / "test_labels.npy")
    with pytest.raises(DataError, match=r"test_labels\.npy not found, but .*manifest\.json lists it"):
        load_dataset("mnist", str(prepared_mnist))


def test_prepared_split_pickles_as_its_paths(prepared_mnist):
    import pickle

    train, _ = load_dataset("mnist", str(prepared_mnist))
    blob = pickle.dumps(train)
    assert len(blob) < 1000  # the paths, not the arrays
    assert torch.equal(pickle.loads(blob).images, train.images)


def test_a_decoding_process_that_dies_is_an_error_not_a_hang(tmp_path, monkeypatch):
    import ncpfast.data.splits as splits

    decode = splits.decode_image

    def dies_on_one(source, recipe, name):
        if str(name).endswith("000066.jpg"):
            os._exit(9)  # as the out-of-memory killer would end it: no exception, no clean-up
        return decode(source, recipe, name)

    monkeypatch.setattr(splits, "decode_image", dies_on_one)  # the forked workers inherit it
    raw = write_celeba_folder(tmp_path / "raw", n=140)
    with pytest.raises(DataError, match="a decoding process of prepare died"):
        prepare("celeba64", str(raw), str(tmp_path / "prepared"), jobs=2, progress=False)
    assert sorted(os.listdir(tmp_path)) == ["raw"]


@pytest.mark.slow
def test_a_killed_prepare_leaves_no_data_set(tmp_path):
    raw = write_celeba_folder(tmp_path / "raw", n=600)
    out = tmp_path / "prepared"
    process = subprocess.Popen([sys.executable, "-m", "ncpfast.data", "prepare", "celeba64", "--data-dir", str(raw),
                                "--out", str(out), "--jobs", "1", "--no-progress"], env=ENV)
    partial = tmp_path / f"prepared.partial-{process.pid}"
    deadline = time.time() + 60
    while not (partial / "train_images.npy").exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.01)
    process.kill()
    process.wait()
    assert not out.exists() and not (partial / MANIFEST).exists()
    with pytest.raises(DataError, match="no .jpg or .png images|not .* prepared|does not exist"):
        load_dataset("celeba64", str(partial))
    prepare("celeba64", str(raw), str(out), progress=False)  # removes the dead process's partial directory
    assert sorted(os.listdir(tmp_path)) == ["prepared", "raw"]
