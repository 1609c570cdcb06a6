"""Measuring helpers shared by the benchmarks (pytest-benchmark tests and the
stand-alone scripts): device-synchronised calls, peak memory, interleaved
timing rounds and their summary, the machine's name.

Imported by bare name (`from measure import timed`): pytest puts bench/ on
sys.path for the tests, and a script run as `python bench/x.py` has its own
folder there.
"""
import platform
import re
import statistics
import time

import torch


def synchronize(device):
    """Waits for the device's queued work (a no-op off CUDA)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


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


def interleaved_seconds(variants, device, rounds, calls=1, warmup=1):
    """Seconds of each call of each variant ({name: fn}), in `rounds` rounds
    that each run every variant in turn (`warmup` untimed calls, then `calls`
    timed ones, each ended by a device synchronisation), so that drift of the
    machine's speed over time hits every variant alike.
    {name: [seconds, rounds x calls of them]}."""
    times = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            for _ in range(warmup):
                fn()
            synchronize(device)
            for _ in range(calls):
                start = time.perf_counter()
                fn()
                synchronize(device)
                times[name].append(time.perf_counter() - start)
    return times


def summarize(seconds):
    """Median, minimum and maximum in milliseconds of a list of seconds, and how many."""
    return {"median_ms": statistics.median(seconds) * 1e3, "min_ms": min(seconds) * 1e3,
            "max_ms": max(seconds) * 1e3, "rounds": len(seconds)}


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def device_name(device):
    """The GPU's name on CUDA, the processor's elsewhere."""
    device = torch.device(device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


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
