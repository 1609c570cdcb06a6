"""Flat-latent classifier log-ratios over many proposals: ncpfast::mlp_log_ratio vs
its twin (Linear/SiLU layers one at a time, then logsumexp) vs torch.compile of
the twin; the default classifier (hidden 256, two hidden layers).

    bash scripts/dev.sh bench -k mlp --benchmark-json=bench/results/mlp-<machine>.json
"""
import pytest
import torch

from measure import pick_implementation, timed
from ncpfast import ops
from ncpfast.ncp.prior import default_classifier
from ncpfast.ops import reference

SIZES = [(B, M, D) for B in (64, 256) for M in (50, 500, 5000) for D in (50, 1280)]
HIDDEN = 256
CPU_MAX_FLOPS = 3e10  # skip CPU sizes above ~30 GFLOP per call (seconds each on 2 cores); keeps 64x500 and 256x500

@pytest.mark.parametrize("impl", ["fused", "torch", "torch.compile"])
@pytest.mark.parametrize("B,M,D", SIZES, ids=[f"B{b}-M{m}-D{d}" for b, m, d in SIZES])
def test_mlp_log_ratio(benchmark, device, impl, B, M, D):
    flops = 2 * B * M * (D * HIDDEN + HIDDEN * HIDDEN + HIDDEN)
    if device.type == "cpu" and flops > CPU_MAX_FLOPS:
        pytest.skip("too slow for a CPU benchmark")
    torch.manual_seed(0)
    weights, biases = ops.mlp_parameters(default_classifier(D, HIDDEN, 2))
    weights, biases = [w.to(device) for w in weights], [b.to(device) for b in biases]
    z = torch.randn(B, M, D, device=device)
    fn = pick_implementation(impl, ops.mlp_log_ratio, reference.mlp_log_ratio)
    call = timed(lambda: fn(z, weights, biases), device)
    with torch.no_grad():
        for _ in range(3):
            call()
        benchmark.group = f"mlp_log_ratio {device.type} B={B} M={M} D={D}"
        benchmark.extra_info.update(op="mlp_log_ratio", device=device.type, impl=impl, B=B, M=M, D=D, gflop=flops / 1e9)
        benchmark(call)
