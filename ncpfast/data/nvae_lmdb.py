"""NVAE's LMDB data sets, read as NVAE's scripts write them: a directory holding
`train.lmdb` and `validation.lmdb`, keys str(index) from 0, values the encoded
image file (CelebA-64, FFHQ: JPEG or PNG) or raw RGB bytes of a square image
(NVAE's CelebA-HQ-256). Needs the optional `lmdb` package (pip install
'ncpfast[lmdb]'). NVAE evaluates on validation.lmdb: it is the test split here."""
import os
import sys

from .errors import DataError
from .recipes import ImageRecipe
from .splits import EncodedImageSplit

SPLIT_FILES = ("train.lmdb", "validation.lmdb")


def is_nvae_lmdb_dir(directory: str) -> bool:
    return any(os.path.exists(os.path.join(directory, name)) for name in SPLIT_FILES)


def _lmdb():
    # An optional dependency (the extra `lmdb`), imported only when an LMDB is read.
    try:
        import lmdb
    except ImportError:
        raise DataError("reading NVAE's LMDB data sets needs the lmdb package: pip install 'ncpfast[lmdb]' "
                        "(or pip install lmdb)") from None
    return lmdb


# One read-only environment per LMDB path and process: py-lmdb refuses to open a
# path twice in a process, and a forked worker inherits the parent's registry of
# open paths, so it must reuse the inherited environment. Read-only with lock=False
# (no reader lock table) that is safe across fork; NVAE's LMDBDataset relies on
# the same. A spawned process starts with none and opens its own.
_ENVIRONMENTS = {}


def _environment(path: str):
    path = os.path.abspath(path)
    env = _ENVIRONMENTS.get(path)
    if env is None:
        lmdb = _lmdb()
        try:
            env = lmdb.open(path, readonly=True, lock=False, readahead=False, meminit=False,
                            subdir=os.path.isdir(path), max_readers=256)
        except lmdb.Error as error:
            raise DataError(f"{path}: not a readable LMDB: {error}") from error
        _ENVIRONMENTS[path] = env
    return env


class LmdbSources:
    """One LMDB's values by index; pickles as its path."""

    def __init__(self, path: str):
        self.path = path
        with _environment(path).begin() as txn:
            self.count = txn.stat()["entries"]
            missing = [key for key in ("0", str(self.count - 1)) if self.count and txn.get(key.encode()) is None]
        if self.count == 0:
            raise DataError(f"{path}: an empty LMDB")
        if missing:
            raise DataError(f"{path}: {self.count} entries but no key {missing[0]!r}: expected keys "
                            f"'0'..'{self.count - 1}' as NVAE's scripts write them")

    def __len__(self):
        return self.count

    def read(self, index: int) -> tuple[bytes, str]:
        key = str(index)
        try:
            with _environment(self.path).begin() as txn:
                value = txn.get(key.encode())
        except _lmdb().Error as error:
            raise DataError(f"{self.path}: key {key!r}: unreadable: {error}") from error
        if value is None:
            raise DataError(f"{self.path}: no key {key!r} (expected keys '0'..'{self.count - 1}')")
        return value, f"{self.path}: key {key!r}"


def nvae_lmdb(directory: str, recipe: ImageRecipe, hint: str = ""):
    """(train, test) splits of an NVAE LMDB directory."""
    paths = [os.path.join(directory, name) for name in SPLIT_FILES]
    for path in paths:
        if not os.path.exists(path):
            raise DataError(f"{path} not found: an NVAE LMDB data directory holds {' and '.join(SPLIT_FILES)}")
    train, test = (EncodedImageSplit(LmdbSources(path), recipe) for path in paths)
    if hint and os.environ.get("RANK", "0") == "0":
        print(hint, file=sys.stderr)
    return train, test
