"""`python -m ncpfast.data prepare`: decode a data set once into a prepared
directory (ncpfast/data/prepared.py describes it).

Atomic: everything is written into `OUT.partial-PID` beside OUT, the manifest
last, and the directory is renamed to OUT only when complete; a killed prepare
leaves a `.partial-PID` directory without a manifest, which nothing reads as a
data set and the next prepare of OUT deletes. Images are decoded in parallel by
a pool of processes, in order, into a memory-mapped .npy."""
import datetime
import json
import multiprocessing
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Optional

import numpy as np
from tqdm import tqdm

from .._version import __version__
from .errors import DataError
from .prepared import FORMAT, FORMAT_VERSION, MANIFEST, SPLITS, file_sha256, is_prepared_dir
from .recipes import IMAGE_RECIPES, image_shape

CHUNK = 64  # images per task of the decode pool


def default_jobs() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def prepare(dataset: str, data_dir: Optional[str], out: str, jobs: Optional[int] = None, force: bool = False,
            progress: bool = True) -> dict:
    """Writes the prepared directory `out` from the raw data in `data_dir`;
    returns its manifest."""
    from . import read_source  # the raw readers (folders, LMDBs, IDX, batches), never a prepared dir

    out = os.path.abspath(out)
    if data_dir and os.path.abspath(data_dir) == out:
        raise DataError(f"--out {out} is the --data-dir itself: prepare writes a new directory")
    if os.path.exists(out) and not force:
        what = "a prepared data set" if is_prepared_dir(out) else "a file or directory"
        raise DataError(f"--out {out}: {what} is already there; pass --force to replace it")
    if data_dir and is_prepared_dir(data_dir):
        raise DataError(f"--data-dir {data_dir} is already a prepared data set")
    jobs = max(1, jobs or default_jobs())
    train, test = read_source(dataset, data_dir, hint=False)
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    _remove_stale_partials(out)
    partial = f"{out}.partial-{os.getpid()}"
    os.makedirs(partial)
    try:
        splits = {}
        for name, split in zip(SPLITS, (train, test)):
            splits[name] = _write_split(partial, name, split, image_shape(dataset), jobs, progress)
        recipe = IMAGE_RECIPES[dataset].describe() if dataset in IMAGE_RECIPES else {"reader": dataset}
        manifest = dict(format=FORMAT, format_version=FORMAT_VERSION, dataset=dataset, recipe=recipe,
                        ncpfast_version=__version__, source=os.path.abspath(data_dir) if data_dir else None,
                        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                        splits=splits)
        _write_json_synced(manifest, os.path.join(partial, MANIFEST))
        _fsync_dir(partial)
        if os.path.exists(out):  # --force: move the old one aside, then swap
            old = f"{out}.old-{os.getpid()}"
            os.rename(out, old)
            os.rename(partial, out)
            shutil.rmtree(old) if os.path.isdir(old) else os.unlink(old)
        else:
            os.rename(partial, out)
        _fsync_dir(parent)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return manifest


def _write_split(directory: str, name: str, split, shape, jobs: int, progress: bool) -> dict:
    n = len(split)
    images_file = f"{name}_images.npy"
    array = np.lib.format.open_memmap(os.path.join(directory, images_file), mode="w+", dtype=np.uint8,
                                      shape=(n, *shape))
    bar = tqdm(total=n, desc=f"{name}: {n} images", unit="img", disable=not progress, smoothing=0.05)
    if split.in_memory or jobs == 1 or n <= CHUNK:
        for start in range(0, n, CHUNK * 16):
            stop = min(n, start + CHUNK * 16)
            array[start:stop] = _chunk(split, start, stop)
            bar.update(stop - start)
    else:
        # fork: the workers inherit the split (file lists, LMDB paths) instead of a pickle per
        # task. A process pool executor rather than multiprocessing.Pool: a worker that dies
        # (killed, out of memory) breaks it with an error, where Pool's imap waits forever.
        context = multiprocessing.get_context("fork")
        tasks = [(start, min(n, start + CHUNK)) for start in range(0, n, CHUNK)]
        try:
            with ProcessPoolExecutor(jobs, mp_context=context, initializer=_init_worker, initargs=(split,)) as pool:
                for (start, stop), images in zip(tasks, pool.map(_decode_chunk, tasks)):
                    array[start:stop] = images
                    bar.update(stop - start)
        except BrokenProcessPool as error:
            raise DataError(f"a decoding process of prepare died while decoding the {name} split (killed, or "
                            f"out of memory? try fewer --jobs): {error}") from error
    bar.close()
    array.flush()
    del array
    entry = {"count": n, "images": _describe(directory, images_file)}
    if split.labels is not None:
        labels_file = f"{name}_labels.npy"
        labels = np.asarray(split.labels, dtype=np.int64)
        with open(os.path.join(directory, labels_file), "wb") as f:
            np.save(f, labels, allow_pickle=False)
        entry["labels"] = _describe(directory, labels_file)
    return entry


def _chunk(split, start: int, stop: int) -> np.ndarray:
    import torch

    return split.uint8_batch(torch.arange(start, stop)).numpy()


_WORKER_SPLIT = None


def _init_worker(split) -> None:
    global _WORKER_SPLIT
    _WORKER_SPLIT = split


def _decode_chunk(task) -> np.ndarray:
    return _chunk(_WORKER_SPLIT, *task)


def _describe(directory: str, file: str) -> dict:
    path = os.path.join(directory, file)
    with open(path, "rb+") as f:
        os.fsync(f.fileno())
    array = np.load(path, mmap_mode="r", allow_pickle=False)
    return {"file": file, "shape": list(array.shape), "dtype": str(array.dtype), "sha256": file_sha256(path)}


def _write_json_synced(obj, path: str) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_stale_partials(out: str) -> None:
    """Deletes `OUT.partial-PID` directories whose process no longer runs."""
    parent, base = os.path.split(out)
    for entry in os.listdir(parent):
        if not entry.startswith(base + ".partial-"):
            continue
        pid = entry.rsplit("-", 1)[1]
        if pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
