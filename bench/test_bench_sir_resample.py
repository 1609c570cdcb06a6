"""SIR resample: the fused op vs its pure-PyTorch twin (softmax -> multinomial -> gather),
and vs torch.compile of the twin.

    bash scripts/dev.sh bench -k sir --benchmark-json=bench/results/sir-<machine>.json
    python bench/report.py bench/results/sir-<machine>.json
"""
import pytest
import torch

from measure import pick_implementation, timed
from ncpfast.ops import reference, sir_resample

SIZES = [(B, M, D) for B in (64, 256) for M in (16, 512, 5000) for D in ((64,), (20, 8, 8))]
MAX_PROPOSAL_BYTES = 2 * 2**30
NUM_SAMPLES = 1

@pytest.mark.parametrize("impl", ["fused", "torch", "torch.compile"])
@pytest.mark.parametrize("B,M,D", SIZES, ids=[f"B{b}-M{m}-D{'x'.join(map(str, d))}" for b, m, d in SIZES])
def test_sir_resample(benchmark, device, impl, B, M, D):
    numel = B * M * torch.Size(D).numel()
    if numel * 4 > MAX_PROPOSAL_BYTES:
        pytest.skip("proposals exceed 2 GB")
    g = torch.Generator().manual_seed(0)
    log_weights = torch.randn(B, M, generator=g).to(device)
    proposals = torch.randn(B, M, *D, generator=g).to(device)
    fn = pick_implementation(impl, sir_resample, reference.sir_resample)
    call = timed(lambda: fn(log_weights, proposals, NUM_SAMPLES), device)
    for _ in range(3):  # warm-up (and compilation) outside the timings
        call()
    benchmark.group = f"sir_resample {device.type} B={B} M={M} D={'x'.join(map(str, D))}"
    benchmark.extra_info.update(op="sir_resample", device=device.type, impl=impl, B=B, M=M,
                                D=list(D), num_samples=NUM_SAMPLES)
    benchmark(call)
