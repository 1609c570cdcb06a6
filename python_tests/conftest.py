import os
import tempfile

import pytest

# The FD feature network is cached per data set (ncpfast.frechet); tests and the
# CLIs they start share one temporary cache instead of the user's ~/.cache.
# (The `device` fixture and the `cuda` marker are in the repository's root conftest.py, shared with bench/.)
os.environ.setdefault("NCPFAST_CACHE_DIR", tempfile.mkdtemp(prefix="ncpfast-test-cache-"))


def _cpu_target_params():
    from ncpfast._extension import CPU_TARGETS, supported_cpu_targets
    runs = supported_cpu_targets()
    return [pytest.param(t, marks=() if t in runs else pytest.mark.skip(reason=f"this CPU does not run {t}"))
            for t in CPU_TARGETS]


@pytest.fixture(params=_cpu_target_params())
def cpu_target(request):
    """Runs the test with ncpfast's CPU loops pinned to each compiled target
    (x86-64-v4, x86-64-v3, baseline) that this CPU runs, then restores the
    target that ran before (NCPFAST_CPU_TARGET's, where the suite runs pinned)."""
    from ncpfast._extension import cpu_target as active_target
    from ncpfast._extension import set_cpu_target
    before = active_target()
    set_cpu_target(request.param)
    try:
        yield request.param
    finally:
        set_cpu_target(before)
