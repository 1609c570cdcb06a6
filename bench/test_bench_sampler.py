"""The whole hierarchical SIR sampler (GroupedNCP.sample, method "sir"): the
default path (context shared across an image's proposals, fused flat-latent
evaluator; impl "fused") vs the reference that repeats each image's context M
times and runs the module (kernels="torch"; impl "torch"). `tiny` model,
untrained (the weights do not change the work), 1,000 images
(NCPFAST_BENCH_SAMPLER_IMAGES to change) generated 100 per call as a user
would (the VAE decoder's activations for 1,000 images at once would dominate
the peak memory of both paths), M in {5, 50, 500}; three timed rounds (one
at M = 500) after a warm-up, peak memory of the last round in extra_info, and whether both paths drew
the same images for the same seed. M = 500 runs at the default chunk bound
and at 512 MiB (see SETTINGS).

    bash scripts/dev.sh bench -k sampler --benchmark-json=bench/results/sampler-<machine>.json
    python bench/report.py bench/results/sampler-<machine>.json
"""
import os

import pytest
import torch

from measure import peak_memory_bytes, timed
from ncpfast.config import resolve_config
from ncpfast.models import build_model
from ncpfast.ncp import GroupedNCP

IMAGES = int(os.environ.get("NCPFAST_BENCH_SAMPLER_IMAGES", "1000"))
PER_CALL = 100
_images_by_path = {}


@pytest.fixture(scope="module")
def models():
    cache = {}

    def get(device):
        if device not in cache:
            torch.manual_seed(0)
            vae = build_model(resolve_config("tiny").model).to(device).eval()
            ncp = GroupedNCP(vae).to(device).eval()
            for kernels in ("auto", "torch"):  # the process's first full-size calls, outside every timing
                ncp.kernels = kernels
                with torch.no_grad():
                    ncp.sample(min(IMAGES, PER_CALL), method="sir", num_proposals=5)
            cache[device] = ncp
        return cache[device]
    return get


# (M, chunk MiB): chunk None is the sampler's default working-set bound
# (default_proposal_bytes: 32 MiB on the CPU, 512 MiB on CUDA); M = 500 also at
# 512 MiB, where the two paths' different working sets show in the peak memory.
SETTINGS = [(5, None), (50, None), (500, None), (500, 512)]


@pytest.mark.parametrize("M,chunk_mib", SETTINGS)
@pytest.mark.parametrize("impl", ["fused", "torch"])
def test_grouped_sir_sampler(benchmark, models, device, M, chunk_mib, impl):
    ncp = models(device)
    ncp.kernels = "auto" if impl == "fused" else "torch"
    chunk_bytes = None if chunk_mib is None else chunk_mib * 2**20

    def sample(n=IMAGES):
        g = torch.Generator(device).manual_seed(0)
        with torch.no_grad():
            return torch.cat([ncp.sample(min(PER_CALL, n - i), method="sir", num_proposals=M, generator=g,
                                         max_proposal_bytes=chunk_bytes)
                              for i in range(0, n, PER_CALL)])

    sample(min(IMAGES, PER_CALL))  # warm-up at the timed calls' size, outside the timing
    holder = {}

    def measured():
        holder["images"], holder["peak"] = peak_memory_bytes(sample, device)

    chunk = "default" if chunk_mib is None else f"{chunk_mib}MiB"
    benchmark.group = f"grouped SIR sampler M={M} images={IMAGES} chunk={chunk} {device.type}"
    # Three rounds (median) where a round takes seconds, one at M = 500 (minutes).
    benchmark.pedantic(timed(measured, device), rounds=1 if M >= 500 else 3, iterations=1)
    images = holder["images"].cpu()
    other = _images_by_path.get((device, M, chunk_mib, "torch" if impl == "fused" else "fused"))
    benchmark.extra_info.update(op="grouped_sir_sampler", device=device.type, impl=impl, M=M, images=IMAGES,
                                chunk_bytes=chunk_bytes,
                                peak_bytes=holder["peak"],
                                same_images_as_other_path=None if other is None else bool(
                                    torch.allclose(images, other, atol=1e-4)))
    _images_by_path[(device, M, chunk_mib, impl)] = images
