"""Correct on every CPU kind: the x86-64 targets of ncpfast's own loops, and
oneDNN's AVX2 kernels, which an AVX-512 machine runs under
ONEDNN_MAX_CPU_ISA=AVX2 (the variable must be set before oneDNN starts, so
those checks run in subprocesses)."""
import os
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F

import ncpfast
from ncpfast._extension import CPU_TARGETS, supported_cpu_targets
from ncpfast.nn.cells import FactorizedReduce

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AVX2 = {"ONEDNN_MAX_CPU_ISA": "AVX2", "PYTHONUNBUFFERED": "1"}

# oneDNN issue 6035: a stride-2 1x1 convolution's weight gradient on a
# channels-last input with fewer input channels than an AVX2 block, on one
# thread, writes past its workspace (heap corruption; on other thread counts
# wrong gradients). Pure PyTorch, independent of ncpfast.
ONEDNN_6035_REPRODUCTION = """
import torch, torch.nn.functional as F
torch.manual_seed(0)
error = 0.0
for channels in (2, 4, 6):
    x = torch.randn(16, channels, 8, 8).contiguous(memory_format=torch.channels_last)
    w = torch.randn(4, channels, 1, 1, requires_grad=True)
    for _ in range(3):
        g, = torch.autograd.grad(F.conv2d(x, w, stride=2).square().sum(), w)
    w64 = w.detach().double().requires_grad_(True)
    g64, = torch.autograd.grad(F.conv2d(x.double(), w64, stride=2).square().sum(), w64)
    error = max(error, ((g.double() - g64).abs().max() / g64.abs().max()).item())
print("largest relative error of the weight gradient", error)
raise SystemExit(0 if error < 1e-4 else 3)
"""


def _run(args, threads, timeout=300, **env):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, **AVX2, "OMP_NUM_THREADS": str(threads), **env})


def test_canary_onednn_6035_still_in_the_installed_torch():
    """Says whether the workaround in FactorizedReduce is still needed: xfails
    while the installed torch has the bug, warns once it is fixed. Never fails."""
    results = [_run(["-c", ONEDNN_6035_REPRODUCTION], threads) for threads in (1, 2)]
    broken = [(threads, r.returncode, (r.stdout + r.stderr).strip()[-200:])
              for threads, r in zip((1, 2), results) if r.returncode != 0]
    if broken:
        pytest.xfail(f"torch {torch.__version__} still has oneDNN issue 6035 (threads, exit code, output): "
                     f"{broken}; keep FactorizedReduce's stride by slicing")
    warnings.warn(f"torch {torch.__version__} computes oneDNN issue 6035's reproduction correctly under "
                  "ONEDNN_MAX_CPU_ISA=AVX2 (fixed, or this CPU lacks AVX2): FactorizedReduce could go back "
                  "to stride-2 convolutions", stacklevel=1)


@pytest.mark.parametrize("size", [(6, 6), (2, 8)])
def test_factorized_reduce_is_its_four_stride_2_convolutions(size):
    torch.manual_seed(0)
    reduce = FactorizedReduce(5, 10).double()
    x = torch.randn(3, 5, *size, dtype=torch.float64)
    a = F.silu(x)
    shifted = (a, a[:, :, 1:, 1:], a[:, :, :, 1:], a[:, :, 1:, :])
    want = torch.cat([F.conv2d(s, c.normalized_weight(), c.bias, stride=2) for c, s in zip(reduce.convs, shifted)],
                     dim=1)
    torch.testing.assert_close(reduce(x), want, rtol=1e-12, atol=1e-12)


def test_factorized_reduce_odd_size_is_a_clear_error():
    with pytest.raises(ValueError, match="even height and width.*got 7 x 6"):
        FactorizedReduce(3, 8)(torch.randn(2, 3, 7, 6))


@pytest.mark.slow
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("channels", [3, 4, 6])
def test_tiny_model_trains_on_avx2_kernels(tmp_path, channels, threads):
    """The fused encoder path that met oneDNN issue 6035: a few steps of the
    tiny model on oneDNN's AVX2 kernels, finishing with finite losses."""
    result = _run(["-m", "ncpfast.train", "--preset", "tiny", "--channels", str(channels), "--latent-channels", "2",
                   "--batch-size", "16", "--epochs", "1", "--max-steps", "4", "--stage", "1", "--kernels", "fused",
                   "--no-progress", "--iw-samples", "2", "--max-images", "16",
                   "--run-dir", str(tmp_path / "run")], threads)
    assert result.returncode == 0, f"exit {result.returncode}:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    assert "nan" not in result.stdout.lower()


@pytest.mark.slow
@pytest.mark.parametrize("threads", [1, 2])
def test_fused_cells_equal_torch_on_avx2_kernels(threads):
    result = _run(["-m", "pytest", "-q", "-p", "no:cacheprovider", "python_tests/test_cell_fusion.py",
                   "-k", "cells_fused_equal_torch or cells_take_channels_last"], threads)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_cpu_target_pinning():
    supported = supported_cpu_targets()
    assert supported[-1] == "baseline" and set(supported) <= set(CPU_TARGETS)
    before = ncpfast.cpu_target()  # the widest, or NCPFAST_CPU_TARGET's where the suite runs pinned
    assert before == (os.environ.get("NCPFAST_CPU_TARGET") or supported[0]) == ncpfast.build_info()["cpu_target"]
    try:
        for target in supported:
            ncpfast.set_cpu_target(target)
            assert ncpfast.cpu_target() == target == ncpfast.build_info()["cpu_target"]
        ncpfast.set_cpu_target(None)
        assert ncpfast.cpu_target() == supported[0]
    finally:
        ncpfast.set_cpu_target(before)
    with pytest.raises(ValueError, match="must be one of x86-64-v4, x86-64-v3, baseline"):
        ncpfast.set_cpu_target("avx2")
    if supported[0] != "x86-64-v4":
        with pytest.raises(ValueError, match="this CPU runs the cpu targets"):
            ncpfast.set_cpu_target("x86-64-v4")


def test_cpu_target_from_the_environment():
    ok = _run(["-c", "import ncpfast; print(ncpfast.cpu_target())"], 1, NCPFAST_CPU_TARGET="baseline")
    assert ok.returncode == 0 and ok.stdout.strip() == "baseline", ok.stderr
    bad = _run(["-c", "import ncpfast; ncpfast.cpu_target()"], 1, NCPFAST_CPU_TARGET="sse9")
    assert bad.returncode != 0 and "NCPFAST_CPU_TARGET='sse9'" in bad.stderr
