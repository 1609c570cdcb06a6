"""ncpfast::mlp_log_ratio against its twin, its registration and errors, and the
samplers that use it (NCPPrior, and GroupedNCP's context-shared scoring)."""
import pytest
import torch

from ncpfast import NCPPrior, ops
from ncpfast.models import HierarchicalVAE, MLPVAE
from ncpfast.ncp import GroupedNCP
from ncpfast.ncp.base_priors import StandardNormal
from ncpfast.ncp.prior import default_classifier
from ncpfast.ops import reference as ref
from test_ncp_grouped import TINY

cuda = pytest.mark.cuda  # skipped without a device (conftest.py)


def mlp(dim, hidden, layers, seed=0):
    torch.manual_seed(seed)
    return default_classifier(dim, hidden, layers)


@pytest.mark.parametrize("B, M, D, hidden, layers", [(3, 50, 5, 32, 2), (1, 1, 1, 8, 1), (2, 130, 20, 64, 3),
                                                     (4, 7, 1280, 16, 2), (2, 65, 50, 256, 2)])
def test_matches_twin(B, M, D, hidden, layers, cpu_target):
    weights, biases = ops.mlp_parameters(mlp(D, hidden, layers))
    z = torch.randn(B, M, D)
    got, got_lse = ops.mlp_log_ratio(z, weights, biases)
    want, want_lse = ref.mlp_log_ratio(z, weights, biases)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got_lse, want_lse, rtol=1e-4, atol=1e-4)


def test_opcheck_and_compile():
    weights, biases = ops.mlp_parameters(mlp(6, 16, 2))
    z = torch.randn(2, 9, 6)
    torch.library.opcheck(torch.ops.ncpfast.mlp_log_ratio.default, (z, weights, biases))
    compiled = torch.compile(ops.mlp_log_ratio, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(z, weights, biases)[0], ops.mlp_log_ratio(z, weights, biases)[0])


def test_errors_name_the_argument():
    weights, biases = ops.mlp_parameters(mlp(6, 16, 2))
    z = torch.randn(2, 9, 6)
    with pytest.raises(ValueError, match="z must be 3-D"):
        ops.mlp_log_ratio(z[0], weights, biases)
    with pytest.raises(TypeError, match="z must be float32"):
        ops.mlp_log_ratio(z.double(), weights, biases)
    with pytest.raises(ValueError, match=r"weights\[0\] must be \[out, 5\]"):
        ops.mlp_log_ratio(torch.randn(2, 9, 5), weights, biases)
    with pytest.raises(ValueError, match="one logit"):
        ops.mlp_log_ratio(z, weights[:-1], biases[:-1])
    with pytest.raises(ValueError, match=r"biases\[1\] must be"):
        ops.mlp_log_ratio(z, weights, [biases[0], biases[2], biases[2]])
    with pytest.raises(TypeError, match="parameters must be float32"):
        ops.mlp_log_ratio(z, [w.double() for w in weights], biases)


def test_only_the_default_mlp_shape_is_fused():
    assert ops.mlp_parameters(mlp(4, 8, 2)) is not None
    relu_mlp = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    assert ops.mlp_parameters(relu_mlp) is None
    assert ops.mlp_parameters(torch.nn.Linear(4, 1)) is None


def test_ncp_prior_paths_agree_and_sample_identically():
    prior = NCPPrior(StandardNormal(5), hidden=32)
    with torch.no_grad():  # a ratio far from constant, so resampling matters
        prior.classifier[-1].weight.mul_(20)
    z = torch.randn(40, 5)
    with torch.no_grad():
        fused = prior.log_ratio(z)
        prior.kernels = "torch"
        eager = prior.log_ratio(z)
        torch_samples = prior.sample(64, num_proposals=50, generator=torch.Generator().manual_seed(3))
        prior.kernels = "auto"
        fused_samples = prior.sample(64, num_proposals=50, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(fused, eager, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused_samples, torch_samples)  # the same indices: identical samples
    # With a gradient needed the module runs (Langevin, fit).
    z.requires_grad_(True)
    grad, = torch.autograd.grad(prior.log_ratio(z).sum(), z)
    assert grad.abs().sum() > 0


@pytest.mark.parametrize("make_vae", [lambda: HierarchicalVAE(TINY), lambda: MLPVAE(latent_dim=6, hidden=16)])
def test_grouped_context_shared_scoring_equals_the_module(make_vae):
    torch.manual_seed(0)
    ncp = GroupedNCP(make_vae().eval(), hidden=8, cells=1).eval()
    seen = []

    def record(k, z, context, prior):
        seen.append((k, context))
        return z

    ncp.vae.sample_decoder_output(3, intercept=record, decode=False)
    with torch.no_grad():
        for k, context in seen:
            classifier = ncp.classifiers[k]
            shape = (3, 11, *ncp._probe_groups()[0][k])
            proposals = torch.randn(shape)
            shared = classifier.proposal_log_ratios(proposals, context, fused=True)
            repeated = classifier.proposal_log_ratios(proposals, context, fused=False)
            torch.testing.assert_close(shared, repeated, rtol=1e-4, atol=1e-5)
            with torch.enable_grad():  # the autograd path (no in-place cells) computes the same
                torch.testing.assert_close(classifier.proposal_log_ratios(proposals, context, fused=True), repeated,
                                           rtol=1e-4, atol=1e-5)
        one_image_per_chunk = ncp.sample(4, method="sir", num_proposals=7, max_proposal_bytes=1)
        assert one_image_per_chunk.shape[0] == 4 and torch.isfinite(one_image_per_chunk).all()
        outputs = {}
        for kernels in ("auto", "torch"):
            ncp.kernels = kernels
            outputs[kernels] = ncp.sample(6, method="sir", num_proposals=20, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(outputs["auto"], outputs["torch"], rtol=1e-4, atol=1e-5)


@cuda
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (torch.float16, 2e-2), (torch.bfloat16, 5e-2)])
def test_cuda_matches_twin(dtype, tol):
    # widths 65-128 too: between the thread-group variant's 64 and the wide ones
    for B, M, D, hidden, layers in [(3, 50, 5, 32, 2), (2, 130, 1280, 64, 3), (2, 70, 20, 65, 2), (2, 33, 10, 96, 3),
                                    (1, 40, 8, 128, 2), (64, 500, 50, 256, 2)]:
        weights, biases = ops.mlp_parameters(mlp(D, hidden, layers))
        z = torch.randn(B, M, D)
        want, want_lse = ref.mlp_log_ratio(z.to(dtype).float(), weights, biases)
        got, got_lse = ops.mlp_log_ratio(z.cuda().to(dtype), [w.cuda() for w in weights], [b.cuda() for b in biases])
        torch.testing.assert_close(got.cpu(), want, rtol=tol, atol=tol)
        torch.testing.assert_close(got_lse.cpu(), want_lse, rtol=tol, atol=tol)


@cuda
def test_cuda_wide_classifier_opts_in_to_shared_memory():
    # Width 512 needs 68 KiB of shared memory per block, past the 48 KiB a block
    # gets by default: the launcher opts in (up to the device's limit).
    weights, biases = ops.mlp_parameters(mlp(20, 512, 2))
    z = torch.randn(3, 70, 20)
    want, want_lse = ref.mlp_log_ratio(z, weights, biases)
    got, got_lse = ops.mlp_log_ratio(z.cuda(), [w.cuda() for w in weights], [b.cuda() for b in biases])
    torch.testing.assert_close(got.cpu(), want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got_lse.cpu(), want_lse, rtol=1e-4, atol=1e-4)
    # Past any GPU's shared memory (4096 units: 516 KiB): a clear error, no launch.
    weights, biases = ops.mlp_parameters(mlp(4, 4096, 1))
    with pytest.raises(ValueError, match="hidden width 4096 exceeds what this GPU's shared memory holds"):
        ops.mlp_log_ratio(torch.randn(1, 2, 4, device="cuda"), [w.cuda() for w in weights],
                          [b.cuda() for b in biases])
