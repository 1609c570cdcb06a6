"""NVAE's LMDB data sets, read as NVAE's scripts write them: a directory holding
`train.lmdb` and `validation.lmdb`, keys str(index) from 0, values the encoded
image file (CelebA-64, FFHQ: JPEG or PNG) or raw RGB bytes of a square image
(NVAE's CelebA-HQ-256). Needs the optional `lmdb` package (pip install
'ncpfast[lmdb]'). NVAE evaluates on validation.lmdb: it is the test split here."""
import importlib
import os

from .errors import DataError
from .recipes import ImageRecipe
from .splits import EncodedImageSplit

SPLIT_FILES = ("train.lmdb", "validation.lmdb")


def is_nvae_lmdb_dir(directory: str) -> bool:
    return any(os.path.exists(os.path.join(directory, name)) for name in SPLIT_FILES)


def _lmdb():
    # An optional dependency (the extra `lmdb`), imported only when an LMDB is read.
    try:
        return importlib.import_module("lmdb")
    except ImportError:
        raise DataError("reading NVAE's LMDB data sets needs the lmdb package: pip install 'ncpfast[lmdb]' "
                        "(or pip install lmdb)") from None


class LmdbSources:
    """One LMDB's values by index. The environment is opened per process on first
    use (an open LMDB environment must not cross a fork into the loader's workers)."""

    def __init__(self, path: str):
        self.path = path
        self._env, self._pid = None, None
        env = self._open()
        try:
            with env.begin() as txn:
                self.count = txn.stat()["entries"]
                missing = [key for key in ("0", str(self.count - 1)) if self.count and txn.get(key.encode()) is None]
        finally:
            env.close()
            self._env = None
        if self.count == 0:
            raise DataError(f"{path}: an empty LMDB")
        if missing:
            raise DataError(f"{path}: {self.count} entries but no key {missing[0]!r}: expected keys "
                            f"'0'..'{self.count - 1}' as NVAE's scripts write them")

    def _open(self):
        lmdb = _lmdb()
        try:
            self._env = lmdb.open(self.path, readonly=True, lock=False, readahead=False, meminit=False,
                                  subdir=os.path.isdir(self.path), max_readers=256)
        except lmdb.Error as error:
            raise DataError(f"{self.path}: not a readable LMDB: {error}") from error
        self._pid = os.getpid()
        return self._env

    def __getstate__(self):
        return {"path": self.path, "count": self.count}

    def __setstate__(self, state):
        self.path, self.count = state["path"], state["count"]
        self._env, self._pid = None, None

    def __len__(self):
        return self.count

    def read(self, index: int) -> tuple[bytes, str]:
        env = self._env if self._pid == os.getpid() and self._env is not None else self._open()
        key = str(index)
        try:
            with env.begin() as txn:
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
        import sys
        print(hint, file=sys.stderr)
    return train, test
