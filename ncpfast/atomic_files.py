"""Files written atomically: a temporary file in the target's directory, flushed
to disk, then renamed over the target, so that a reader (or a resumed run) never
sees half a file. A process killed part-way leaves at most a stale temporary
(`.NAME.XXXX.tmp`), which remove_stale_temporaries deletes. Checkpoints, run
metrics, experiment records and generated docs are all written through here."""
import contextlib
import json
import os
import re
import tempfile

_TEMPORARY_SUFFIX = ".tmp"


def _temporary_prefix(path: str) -> str:
    return "." + os.path.basename(path) + "."


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w"):
    """A file object open in `mode` ("w" or "wb") whose content replaces `path`
    when the block ends normally; on an exception the temporary is deleted and
    `path` is left as it was."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write mode must be 'w' or 'wb', got {mode!r}")
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=_temporary_prefix(path), suffix=_TEMPORARY_SUFFIX)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text_atomic(text: str, path: str) -> None:
    with atomic_write(path) as f:
        f.write(text)


def write_json_atomic(obj, path: str) -> None:
    with atomic_write(path) as f:
        json.dump(obj, f, indent=2)


def remove_stale_temporaries(path: str) -> list:
    """Deletes the temporaries that atomic_write(path) leaves when its process is
    killed part-way (e.g. `.latest.pt.k3j_x9a2.tmp`); returns their paths. Call it
    only where no other process is writing `path` at the same time."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        return []
    pattern = re.compile(re.escape(_temporary_prefix(path)) + r"[^.]+" + re.escape(_TEMPORARY_SUFFIX) + "$")
    removed = []
    for name in os.listdir(directory):
        if pattern.match(name):
            stale = os.path.join(directory, name)
            try:
                os.unlink(stale)
                removed.append(stale)
            except FileNotFoundError:
                pass
    return removed
