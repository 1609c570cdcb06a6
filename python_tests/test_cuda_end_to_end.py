"""Above the op level on CUDA: the hierarchical and flat SIR samplers (both
scoring paths, generator reproducibility), a bf16 autocast training step of
the tiny preset (fused against eager cells), and a stage-1 run resumed with
its CUDA RNG state. Every test needs a CUDA device (skipped without one)."""
import numpy as np
import pytest
import torch

from ncpfast.config import resolve_config
from ncpfast.models import HierarchicalVAE, MLPVAE, build_model
from ncpfast.ncp import GroupedNCP
from test_data import write_idx
from test_ncp_grouped import TINY

pytestmark = pytest.mark.cuda

@pytest.fixture(autouse=True)
def no_tf32():
    """float32 convolutions and matrix products in full float32 (cuDNN's default
    TF32 rounds to 10 bits), so that two paths of the same function agree to float32 rounding."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


VAES = {"hierarchical": lambda: HierarchicalVAE(TINY), "flat": lambda: MLPVAE(latent_dim=6, hidden=16)}


def _ncp(kind):
    torch.manual_seed(0)
    ncp = GroupedNCP(VAES[kind]().cuda().eval(), hidden=8, cells=1).cuda().eval()
    with torch.no_grad():  # ratios far from constant, so that resampling matters
        for classifier in ncp.classifiers:
            last = classifier.head if classifier.spatial else classifier.mlp[-1]
            last.weight.mul_(20)
    return ncp


def _sample(ncp, kernels, seed, n=16, M=40):
    ncp.kernels = kernels
    with torch.no_grad():
        return ncp.sample(n, method="sir", num_proposals=M, generator=torch.Generator("cuda").manual_seed(seed))


@pytest.mark.parametrize("kind", list(VAES))
def test_cuda_sir_scoring_paths_agree(kind):
    ncp = _ncp(kind)
    seen = []

    def record(k, z, context, prior):
        seen.append((k, z.shape[1:], context))
        return z

    ncp.vae.sample_decoder_output(3, intercept=record, decode=False, generator=torch.Generator("cuda").manual_seed(0))
    with torch.no_grad():
        for k, shape, context in seen:
            proposals = torch.randn(3, 33, *shape, device="cuda")
            shared = ncp.classifiers[k].proposal_log_ratios(proposals, context, fused=True)
            repeated = ncp.classifiers[k].proposal_log_ratios(proposals, context, fused=False)
            assert shared.device.type == "cuda" and shared.shape == (3, 33)
            torch.testing.assert_close(shared, repeated, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", list(VAES))
def test_cuda_sir_sampling_is_reproducible_and_both_paths_draw_alike(kind):
    ncp = _ncp(kind)
    fused = _sample(ncp, "auto", seed=5)
    assert fused.device.type == "cuda" and fused.shape[0] == 16
    assert torch.isfinite(fused).all() and fused.min() >= 0 and fused.max() <= 1
    assert torch.equal(fused, _sample(ncp, "auto", seed=5)), "same generator seed, same images"
    assert not torch.equal(fused, _sample(ncp, "auto", seed=6))
    reference = _sample(ncp, "torch", seed=5)
    # The same proposals from the same seed; float summation order may break a near-tie now and then.
    same = [torch.allclose(a, b, atol=1e-4) for a, b in zip(fused, reference)]
    assert sum(same) >= 0.85 * len(same), f"{sum(same)} of {len(same)} images alike"


def test_cuda_sir_sampling_follows_the_ratio_in_distribution():
    """SIR on CUDA tilts the prior as the ratio says, as on the CPU: mean of
    the first latent coordinate under log r(z) = z_0 is about 1 (see
    test_ncp_grouped.test_sir_prefers_high_ratio_proposals)."""
    torch.manual_seed(0)
    ncp = GroupedNCP(MLPVAE(latent_dim=4, hidden=16).cuda().eval(), hidden=8).cuda().eval()
    chosen = []

    class FirstCoordinate(torch.nn.Module):
        spatial = False

        def forward(self, z, context):
            return z[:, 0]

    ncp.classifiers[0] = FirstCoordinate()
    original = ncp._sir_group

    def spy(*args, **kwargs):
        chosen.append(original(*args, **kwargs))
        return chosen[-1]

    ncp._sir_group = spy
    ncp.sample(4000, num_proposals=200, generator=torch.Generator("cuda").manual_seed(0))
    z = chosen[0].float()
    assert abs(float(z[:, 0].mean()) - 1.0) < 0.08 and abs(float(z[:, 1].mean())) < 0.08
    assert abs(float(z[:, 0].std()) - 1.0) < 0.08


def _tiny_step(kernels, x):
    torch.manual_seed(0)
    model = build_model(resolve_config("tiny", {"model.kernels": kernels}).model).cuda().train()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        output, groups = model(x)
        loss = (sum(g.kl() for g in groups) - model.reconstruction_log_prob(output, x)).float().mean()
    loss.backward()
    return float(loss), [(name, p.grad) for name, p in model.named_parameters()]


def test_cuda_bf16_training_step_fused_equals_eager():
    x = (torch.rand(16, 1, 32, 32, generator=torch.Generator().manual_seed(1)) > 0.5).float().cuda()
    loss_f, grads_f = _tiny_step("fused", x)
    loss_t, grads_t = _tiny_step("torch", x)
    assert np.isfinite(loss_f) and abs(loss_f - loss_t) <= 2e-2 * abs(loss_t), (loss_f, loss_t)
    missing_f = [name for name, g in grads_f if g is None]
    missing_t = [name for name, g in grads_t if g is None]
    assert missing_f == missing_t, f"parameters without a gradient: fused {missing_f}, eager {missing_t}"
    flat_f = torch.cat([g.flatten().float() for _, g in grads_f if g is not None])
    flat_t = torch.cat([g.flatten().float() for _, g in grads_t if g is not None])
    assert torch.isfinite(flat_f).all()
    cosine = float(torch.nn.functional.cosine_similarity(flat_f, flat_t, dim=0))
    assert cosine > 0.99, cosine


def _mnist_dir(directory, train=48, test=16):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", train), ("t10k", test)):
        write_idx(str(directory / f"{prefix}-images-idx3-ubyte"), rng.integers(0, 256, (n, 28, 28)))
        write_idx(str(directory / f"{prefix}-labels-idx1-ubyte"), rng.integers(0, 10, (n,)))
    return str(directory)


def _trainer(run_dir, data_dir, max_steps, resume=False):
    from ncpfast.training.trainer import Trainer

    config = resolve_config("tiny", {"data.dataset": "mnist", "data.data_dir": data_dir, "run.device": "cuda",
                                     "stage1.amp": "bf16", "stage1.batch_size": 8, "stage1.epochs": 2,
                                     "stage1.max_steps": max_steps, "logging.checkpoint_every": 1000,
                                     "logging.progress": False})
    return Trainer(config, str(run_dir), resume=resume, final_nll=False)


def test_cuda_training_resumes_with_its_cuda_rng_state(tmp_path):
    data_dir = _mnist_dir(tmp_path)
    run_dir = tmp_path / "run"
    metrics = _trainer(run_dir, data_dir, max_steps=3).train()
    assert metrics["status"] == "partial" and metrics["step"] == 3
    assert metrics["non_finite_steps_skipped"] == 0  # three finite bf16 autocast steps
    saved_state = torch.cuda.get_rng_state()
    checkpoint = torch.load(run_dir / "checkpoints" / "latest.pt", map_location="cpu", weights_only=False)
    assert torch.equal(checkpoint["rng"][0]["cuda"], saved_state)

    _trainer(tmp_path / "fresh", data_dir, max_steps=3)  # a fresh start reseeds the CUDA stream
    assert not torch.equal(torch.cuda.get_rng_state(), saved_state)
    resumed = _trainer(run_dir, data_dir, max_steps=6, resume=True)
    assert resumed.step == 3 and torch.equal(torch.cuda.get_rng_state(), saved_state)
    metrics = resumed.train()
    assert metrics["step"] == 6 and metrics["non_finite_steps_skipped"] == 0
