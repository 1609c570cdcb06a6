import os

import pytest
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def timed(fn, device):
    """Wraps fn so that each call ends when the device's work has ended."""
    if torch.device(device).type != "cuda":
        return fn

    def synchronised():
        out = fn()
        torch.cuda.synchronize()
        return out

    return synchronised


def include_compiled():
    """torch.compile variants cost a compile per shape; NCPFAST_BENCH_COMPILE=0 skips them."""
    return os.environ.get("NCPFAST_BENCH_COMPILE", "1") != "0"


_compiled_twins = {}


def pick_implementation(impl, fused, twin):
    """fused, twin, or torch.compile(twin) (compiled once per twin) for impl
    "fused", "torch" or "torch.compile"."""
    if impl == "fused":
        return fused
    if impl == "torch":
        return twin
    if twin not in _compiled_twins:
        _compiled_twins[twin] = torch.compile(twin, dynamic=False)
    return _compiled_twins[twin]


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param
