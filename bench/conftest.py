import os
import re

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


def peak_memory_bytes(fn, device):
    """(fn's result, the peak memory fn adds): on CUDA the caching allocator's
    peak above what was allocated before; on Linux CPUs the peak resident set
    above the resident set before (the kernel's high-water mark VmHWM, reset
    through /proc/self/clear_refs), which counts what torch's CPU allocator
    takes from the system. None where neither is available."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = fn()
        torch.cuda.synchronize()
        return out, torch.cuda.max_memory_allocated() - base
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current resident set
        base = _proc_status_kib("VmRSS")
    except OSError:
        return fn(), None
    out = fn()
    return out, (_proc_status_kib("VmHWM") - base) * 1024


def _proc_status_kib(field):
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M).group(1))


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
