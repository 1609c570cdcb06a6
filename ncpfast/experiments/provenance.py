"""Where and with what code an experiment ran: the machine, and the git commit of
the ncpfast that ran (recorded per run by the runner, per section by the report)."""
import hashlib
import os
import platform
import subprocess
from typing import Optional

import ncpfast


def machine() -> dict:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    import torch

    return {"cpu": model or platform.processor() or "unknown", "cores": os.cpu_count(),
            "system": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
            "torch": torch.__version__,
            # the runs' threads (they inherit the environment): what their seconds mean
            "threads": os.environ.get("OMP_NUM_THREADS") or f"torch default ({torch.get_num_threads()})"}


# What decides the numbers: the package, its kernels and its build.
CODE_PATHS = ("ncpfast", "csrc", "setup.py", "CMakeLists.txt", "pyproject.toml")


def _git(*words) -> Optional[str]:
    """git's output in the checkout ncpfast runs from (None outside one, or when git fails)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(ncpfast.__file__)))
    try:
        result = subprocess.run(["git", "-C", root, *words], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout if result.returncode == 0 else None


def git_commit() -> dict:
    """The commit of the ncpfast that ran, and whether the code that runs had
    uncommitted changes (the experiments' own outputs in docs/ do not count)."""
    commit = (_git("rev-parse", "HEAD") or "").strip()
    status = (_git("status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS) or "").strip()
    return {"commit": commit or "unknown", "dirty": bool(status)}


def code_fingerprint() -> str:
    """A hash of the code that runs (CODE_PATHS, uncommitted changes included):
    equal for two checkouts exactly when they would compute the same numbers,
    whatever else (docs, experiments' outputs) differs. Outside a git checkout:
    a hash of the installed package's files."""
    tree = _git("ls-tree", "-r", "HEAD", "--", *CODE_PATHS)
    changes = _git("diff", "HEAD", "--", *CODE_PATHS)
    digest = hashlib.sha1()
    if tree is not None and changes is not None:
        digest.update(tree.encode() + b"\0" + changes.encode())
    else:
        package = os.path.dirname(os.path.abspath(ncpfast.__file__))
        for folder, _, files in sorted(os.walk(package)):
            for name in sorted(f for f in files if f.endswith((".py", ".so"))):
                with open(os.path.join(folder, name), "rb") as f:
                    digest.update(name.encode() + b"\0" + f.read())
    return digest.hexdigest()[:12]


def code_version() -> str:
    """The short commit, with '+changes' where the code that runs had uncommitted changes."""
    git = git_commit()
    return git["commit"][:12] + ("+changes" if git["dirty"] else "")
