import os
import tempfile

# The FD feature network is cached per data set (ncpfast.frechet); tests and the
# CLIs they start share one temporary cache instead of the user's ~/.cache.
# (The `device` fixture and the `cuda` marker are in the repository's root conftest.py, shared with bench/.)
os.environ.setdefault("NCPFAST_CACHE_DIR", tempfile.mkdtemp(prefix="ncpfast-test-cache-"))
