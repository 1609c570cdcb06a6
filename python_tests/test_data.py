"""Data loaders on small files written in the real on-disk formats."""
import gzip
import os
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from ncpfast.data import DataError, binarize, image_shape, load_dataset


def write_idx(path, array, compress=False):
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape)
    opener = gzip.open if compress else open
    with opener(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def make_mnist_dir(directory, compress, n_train=7):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", 3)):
        write_idx(os.path.join(directory, f"{prefix}-images-idx3-ubyte" + (".gz" if compress else "")),
                  rng.integers(0, 256, (n, 28, 28)), compress)
        write_idx(os.path.join(directory, f"{prefix}-labels-idx1-ubyte" + (".gz" if compress else "")),
                  rng.integers(0, 10, (n,)), compress)


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_idx(tmp_path, compress):
    make_mnist_dir(tmp_path, compress)
    train, test = load_dataset("mnist", str(tmp_path))
    assert len(train) == 7 and len(test) == 3
    x = train.batch(torch.arange(7))
    assert x.shape == (7, 1, 32, 32) and x.dtype == torch.float32
    assert float(x[:, :, :2].abs().sum()) == 0  # zero padding around the 28x28 digit
    raw = np.frombuffer(gzip.open(tmp_path / "train-images-idx3-ubyte.gz").read() if compress
                        else open(tmp_path / "train-images-idx3-ubyte", "rb").read(), dtype=np.uint8)[16:]
    torch.testing.assert_close(x[0, 0, 2:30, 2:30] * 255, torch.from_numpy(raw[:784].reshape(28, 28).copy()).float())
    assert train.labels.shape == (7,)


def test_mnist_idx_errors(tmp_path):
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        load_dataset("mnist", str(tmp_path))
    make_mnist_dir(tmp_path, False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])  # truncated
    with pytest.raises(DataError, match="declares shape"):
        load_dataset("mnist", str(tmp_path))
    path.write_bytes(b"\x00\x00\x0d\x03" + b"\x00" * 20)  # float data: not what MNIST uses
    with pytest.raises(DataError, match="not an IDX file of unsigned bytes"):
        load_dataset("mnist", str(tmp_path))


def write_cifar(directory, n=4):
    rng = np.random.default_rng(1)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(os.path.join(directory, name), "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (n, 3072)).astype(np.uint8),
                         b"labels": list(rng.integers(0, 10, n))}, f)


def test_cifar10_batches(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    write_cifar(folder)
    train, test = load_dataset("cifar10", str(tmp_path))
    assert len(train) == 20 and len(test) == 4
    x = test.batch(torch.arange(4))
    assert x.shape == (4, 3, 32, 32)
    with open(folder / "test_batch", "rb") as f:
        raw = pickle.load(f)[b"data"]
    torch.testing.assert_close(x[1, :, 0, 0] * 255, torch.tensor(raw[1, [0, 1024, 2048]]).float())


def test_cifar10_errors(tmp_path):
    with pytest.raises(DataError, match="data_batch_1 not found"):
        load_dataset("cifar10", str(tmp_path))
    write_cifar(tmp_path)
    (tmp_path / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="data_batch_3: not a CIFAR-10 python batch"):
        load_dataset("cifar10", str(tmp_path))


def test_celeba_folder_crop_and_resize(tmp_path, capsys, monkeypatch):
    rng = np.random.default_rng(2)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)).save(tmp_path / f"{i:06d}.jpg")
    train, test = load_dataset("celeba64", str(tmp_path))
    hint = capsys.readouterr().err  # a raw folder: one line saying that a prepared set reads faster
    assert hint.count("\n") == 1 and f"python -m ncpfast.data prepare celeba64 --data-dir {tmp_path}" in hint
    monkeypatch.setenv("RANK", "3")  # said by rank 0 only
    load_dataset("celeba64", str(tmp_path))
    assert capsys.readouterr().err == ""
    assert len(train) == 11 and len(test) == 1
    x = train.batch(torch.tensor([0, 3]))
    assert x.shape == (2, 3, 64, 64) and 0 <= float(x.min()) and float(x.max()) <= 1
    with open(tmp_path / "list_eval_partition.txt", "w") as f:
        f.writelines(f"{i:06d}.jpg {0 if i < 8 else 2}\n" for i in range(12))
    train, test = load_dataset("celeba64", str(tmp_path))
    assert len(train) == 8 and len(test) == 4


@pytest.mark.parametrize("dataset", ["celebahq256", "ffhq256"])
def test_square_image_folders(tmp_path, dataset):
    rng = np.random.default_rng(3)
    for i in range(10):
        Image.fromarray(rng.integers(0, 256, (300, 300, 3), dtype=np.uint8)).save(tmp_path / f"{i:05d}.png")
    train, test = load_dataset(dataset, str(tmp_path))
    assert len(train) == 9 and len(test) == 1 and test.batch(torch.tensor([0])).shape == (1, 3, 256, 256)
    assert image_shape(dataset) == (3, 256, 256)


def test_wrong_data_set_in_an_image_folder(tmp_path):
    """CelebA's 178x218 images are not CelebA-HQ's square ones, nor the reverse: an
    error naming the file, not a silently stretched or mis-cropped face."""
    Image.new("RGB", (178, 218)).save(tmp_path / "a.jpg")
    Image.new("RGB", (256, 256)).save(tmp_path / "b.jpg")
    train, test = load_dataset("celebahq256", str(tmp_path))
    with pytest.raises(DataError, match=r"a\.jpg: a 178x218 image, but this data set's images are square"):
        train.batch(torch.tensor([0]))
    train, test = load_dataset("celeba64", str(tmp_path))
    with pytest.raises(DataError, match=r"b\.jpg: a 256x256 image, but this data set's crop is defined for 178x218"):
        test.batch(torch.tensor([0]))


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match="no .jpg or .png images"):
        load_dataset("celeba64", str(tmp_path))
    (tmp_path / "broken.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="one image cannot"):
        load_dataset("celeba64", str(tmp_path))
    (tmp_path / "broken2.png").write_bytes(b"garbage")
    train, _ = load_dataset("celeba64", str(tmp_path))
    with pytest.raises(DataError, match="broken.png: not a readable image"):
        train.batch(torch.tensor([0]))
    with pytest.raises(DataError, match="needs --data-dir"):
        load_dataset("cifar10", None)
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("cifar10", str(tmp_path / "missing"))


def test_embedded_mnist_split_and_binarisation():
    train, test = load_dataset("mnist-embedded")
    assert len(train) == 4000 and len(test) == 1000
    assert image_shape("mnist-embedded") == (1, 32, 32)
    x = test.batch(torch.arange(10))
    assert x.shape == (10, 1, 32, 32) and float(x.max()) <= 1 and float(x.max()) > 0.9
    # The file is sorted by digit: both splits must hold every digit (400 / 100 of each),
    # and so must any prefix (stage 2 holds out the training split's tail, the
    # aggregate-posterior proposal reads its head).
    assert train.labels.bincount().tolist() == [400] * 10 and test.labels.bincount().tolist() == [100] * 10
    assert train.labels[:100].bincount().tolist() == [10] * 10
    assert train.labels[-400:].bincount().tolist() == [40] * 10
    b1 = binarize(x, torch.Generator().manual_seed(0))
    b2 = binarize(x, torch.Generator().manual_seed(1))
    assert set(b1.unique().tolist()) <= {0.0, 1.0} and not torch.equal(b1, b2)
