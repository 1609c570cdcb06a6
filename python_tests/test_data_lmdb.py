"""NVAE's LMDB data sets (train.lmdb, validation.lmdb; keys str(index); values
encoded images or raw RGB bytes), written here as NVAE's scripts write them:
read directly, prepared, and a bad value is an error naming its key."""
import io
import os

import numpy as np
import pytest
import torch
from PIL import Image

from ncpfast.data import BatchLoader, DataError, TrainingOrder, load_dataset
from ncpfast.data.prepare import prepare

lmdb = pytest.importorskip("lmdb")


def write_lmdb(path, values):
    env = lmdb.open(str(path), map_size=1 << 26)
    with env.begin(write=True) as txn:
        for i, value in enumerate(values):
            txn.put(str(i).encode(), value)
    env.close()


def encoded(array, fmt):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def nvae_dir(root, values_train, values_test):
    root.mkdir()
    write_lmdb(root / "train.lmdb", values_train)
    write_lmdb(root / "validation.lmdb", values_test)
    return str(root)


def test_celeba64_lmdb_of_jpegs_reads_as_the_folder_does(tmp_path):
    """NVAE's create_celeba64_lmdb.py stores CelebA's JPEG files; the crop and resize
    are ncpfast's, so the LMDB and a folder of the same files give the same pixels."""
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (218, 178, 3), dtype=np.uint8) for _ in range(72)]
    jpegs = [encoded(a, "JPEG") for a in images]
    data = nvae_dir(tmp_path / "lmdb", jpegs[:70], jpegs[70:])
    folder = tmp_path / "folder"
    folder.mkdir()
    for i, jpeg in enumerate(jpegs):
        (folder / f"{i:06d}.jpg").write_bytes(jpeg)
    (folder / "list_eval_partition.txt").write_text("".join(f"{i:06d}.jpg {0 if i < 70 else 1}\n"
                                                            for i in range(72)))
    train, test = load_dataset("celeba64", data)
    folder_train, folder_test = load_dataset("celeba64", str(folder))
    assert len(train) == 70 and len(test) == 2
    everything = torch.arange(70)
    assert torch.equal(train.batch(everything), folder_train.batch(everything))
    assert torch.equal(test.batch(torch.arange(2)), folder_test.batch(torch.arange(2)))
    # In forked loader workers, after this process opened the LMDB (py-lmdb refuses a
    # second open of a path in one process, and a fork inherits that registry).
    order = TrainingOrder(70, 0, 10, 7)
    in_thread = list(BatchLoader(train, order, 0).batches(0, 7))
    assert all(torch.equal(a, b) for a, b in zip(in_thread, BatchLoader(train, order, 2).batches(0, 7)))
    # Prepared from the LMDB by a pool of 2 decoding processes: the same again.
    prepare("celeba64", data, str(tmp_path / "prepared"), jobs=2, progress=False)
    prepared_train, _ = load_dataset("celeba64", str(tmp_path / "prepared"))
    assert torch.equal(prepared_train.batch(everything), train.batch(everything))


def test_raw_rgb_and_png_values(tmp_path):
    """NVAE's CelebA-HQ-256 LMDB holds raw 256x256x3 bytes, its FFHQ one PNG files."""
    rng = np.random.default_rng(1)
    raw = [rng.integers(0, 256, (256, 256, 3), dtype=np.uint8) for _ in range(3)]
    train, test = load_dataset("celebahq256", nvae_dir(tmp_path / "hq", [a.tobytes() for a in raw[:2]],
                                                       [raw[2].tobytes()]))
    assert torch.equal(train.uint8_batch(torch.tensor([1])), torch.from_numpy(raw[1]).permute(2, 0, 1)[None])
    # NVAE's CelebA-HQ-256 LMDB given as CelebA-64: the raw bytes' size says which data set it is.
    celeba, _ = load_dataset("celeba64", str(tmp_path / "hq"))
    with pytest.raises(DataError, match=r"key '0': raw RGB bytes of a 256x256 image, but this data set's images "
                                        r"are 64x64: is --data-dir the right data set\?"):
        celeba.batch(torch.tensor([0]))
    pngs = [encoded(a, "PNG") for a in raw]
    train, _ = load_dataset("ffhq256", nvae_dir(tmp_path / "ffhq", pngs[:2], pngs[2:]))
    assert torch.equal(train.uint8_batch(torch.tensor([0])), torch.from_numpy(raw[0]).permute(2, 0, 1)[None])


def test_bad_lmdb_values_name_their_key(tmp_path):
    rng = np.random.default_rng(2)
    good = encoded(rng.integers(0, 256, (218, 178, 3), dtype=np.uint8), "JPEG")
    data = nvae_dir(tmp_path / "lmdb", [good, good[:200], b"garbage"], [good])
    train, _ = load_dataset("celeba64", data)
    for key in (1, 2):
        with pytest.raises(DataError, match=rf"train\.lmdb: key '{key}': not a readable image"):
            train.batch(torch.tensor([key]))
    with pytest.raises(DataError, match=r"train\.lmdb: key '1'"):
        prepare("celeba64", data, str(tmp_path / "prepared"), progress=False)
    assert sorted(os.listdir(tmp_path)) == ["lmdb"]
    # Keys that are not 0..n-1, and a directory with only one of the two LMDBs.
    broken = tmp_path / "keys"
    broken.mkdir()
    env = lmdb.open(str(broken / "train.lmdb"), map_size=1 << 24)
    with env.begin(write=True) as txn:
        txn.put(b"image-0", good)
    env.close()
    with pytest.raises(DataError, match="validation.lmdb not found"):
        load_dataset("celeba64", str(broken))
    write_lmdb(broken / "validation.lmdb", [good])
    with pytest.raises(DataError, match=r"train\.lmdb: 1 entries but no key '0'"):
        load_dataset("celeba64", str(broken))
