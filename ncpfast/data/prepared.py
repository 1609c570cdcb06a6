"""Prepared data sets: a directory of uint8 .npy arrays read by memory map, and a
manifest.json that describes them.

    manifest.json          format, dataset, recipe, ncpfast version, source, and per
                           split and array: file, shape, dtype, sha256 of the file
    train_images.npy       uint8 [N, C, H, W]
    train_labels.npy       int64 [N] (labelled data sets only)
    test_images.npy, test_labels.npy

Opening one checks the manifest against the files (presence, the .npy header's
shape and dtype, the file size, the sha256 of every byte: ~1.6 GB/s, about a
second for CelebA-64's 2 GB), so a truncated, corrupted or swapped file is a
DataError naming it, never a wrong batch. `python -m ncpfast.data prepare` writes
them (ncpfast/data/prepare.py)."""
import hashlib
import json
import os
from typing import Optional

import numpy as np
import torch

from .errors import DataError
from .recipes import image_shape
from .splits import Split

MANIFEST = "manifest.json"
FORMAT = "ncpfast-prepared-data"
FORMAT_VERSION = 1
SPLITS = ("train", "test")


def is_prepared_dir(directory: str) -> bool:
    return os.path.isfile(os.path.join(directory, MANIFEST))


def file_sha256(path: str, chunk: int = 16 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class PreparedSplit(Split):
    """A Split whose tensors are memory maps of a prepared directory's files. It
    pickles as its paths (a worker process maps the files again instead of
    receiving a copy of the arrays)."""

    def __init__(self, images_path: str, labels_path: Optional[str]):
        self.images_path, self.labels_path = images_path, labels_path
        super().__init__(_map(images_path), _map(labels_path) if labels_path else None)

    def __reduce__(self):
        return PreparedSplit, (self.images_path, self.labels_path)


def _map(path: str) -> torch.Tensor:
    # Copy-on-write ("c"): a writable array for torch.from_numpy, whose pages stay
    # shared with the page cache and are never written back to the file.
    return torch.from_numpy(np.load(path, mmap_mode="c", allow_pickle=False))


def read_manifest(directory: str) -> dict:
    path = os.path.join(directory, MANIFEST)
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: not a readable prepared-data manifest: {error}") from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{path}: not a manifest of ncpfast's prepared data (format {FORMAT!r})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{path}: prepared-data format version {manifest.get('format_version')!r}; this ncpfast "
                        f"reads version {FORMAT_VERSION}: prepare the data set again")
    return manifest


def check_array(directory: str, entry: dict, verify_hash: bool = True) -> str:
    """The path of one array of the manifest, after checking the file against it."""
    path = os.path.join(directory, entry["file"])
    if not os.path.isfile(path):
        raise DataError(f"{path} not found, but {os.path.join(directory, MANIFEST)} lists it")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        # A truncated .npy fails here ("mmap length is greater than file size").
        raise DataError(f"{path}: not a readable .npy array (truncated or corrupt?): {error}") from error
    shape, dtype = list(array.shape), str(array.dtype)
    del array
    if shape != entry["shape"] or dtype != entry["dtype"]:
        raise DataError(f"{path}: holds {dtype} {shape} but {MANIFEST} says {entry['dtype']} {entry['shape']}")
    if verify_hash:
        actual = file_sha256(path)
        if actual != entry["sha256"]:
            raise DataError(f"{path}: sha256 {actual[:16]}... does not match {MANIFEST}'s {entry['sha256'][:16]}... "
                            "(the file changed or is corrupt): prepare the data set again")
    return path


def load_prepared(directory: str, dataset: str, verify_hash: bool = True):
    """(train, test) PreparedSplits of a prepared directory of `dataset`."""
    manifest = read_manifest(directory)
    if manifest.get("dataset") != dataset:
        raise DataError(f"{directory}: holds the prepared data set {manifest.get('dataset')!r}, not {dataset!r}: "
                        "is --data-dir (or --dataset) right?")
    expected = list(image_shape(dataset))
    splits = []
    for name in SPLITS:
        entry = manifest.get("splits", {}).get(name)
        if not entry or "images" not in entry:
            raise DataError(f"{os.path.join(directory, MANIFEST)}: no {name} split")
        images = check_array(directory, entry["images"], verify_hash)
        if entry["images"]["shape"][1:] != expected or entry["images"]["dtype"] != "uint8":
            raise DataError(f"{images}: uint8 images of shape {entry['images']['shape'][1:]}, but {dataset}'s "
                            f"are {expected}")
        labels = None
        if entry.get("labels"):
            labels = check_array(directory, entry["labels"], verify_hash)
            if entry["labels"]["shape"] != entry["images"]["shape"][:1]:
                raise DataError(f"{labels}: {entry['labels']['shape'][0]} labels for "
                                f"{entry['images']['shape'][0]} images")
        splits.append(PreparedSplit(images, labels))
    return tuple(splits)
