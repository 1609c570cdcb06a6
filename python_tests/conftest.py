import os
import tempfile

import pytest
import torch

# The FD feature network is cached per data set (ncpfast.frechet); tests and the
# CLIs they start share one temporary cache instead of the user's ~/.cache.
os.environ.setdefault("NCPFAST_CACHE_DIR", tempfile.mkdtemp(prefix="ncpfast-test-cache-"))

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)
