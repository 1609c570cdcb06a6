"""The VAEs: shapes, the group API, KL and likelihoods against hand computations."""
import math

import pytest
import torch

from ncpfast.models import ConvVAE, HierarchicalVAE, MLPVAE, NVAEConfig
from ncpfast.nn.distributions import DiscretizedLogisticMixture, Normal, bernoulli_log_prob

TINY = NVAEConfig(channels=8, num_preprocess_blocks=2, num_preprocess_cells=1, num_postprocess_blocks=2,
                  num_postprocess_cells=1, num_latent_scales=2, num_groups_per_scale=2, latent_channels=4,
                  num_cells_per_group_enc=1, num_cells_per_group_dec=1)


def test_hierarchical_shapes_and_group_api():
    torch.manual_seed(0)
    model = HierarchicalVAE(TINY)
    assert model.groups == [2, 1] and model.group_scales == [1, 0, 0]
    x = torch.rand(3, 1, 32, 32).bernoulli()
    output, groups = model(x)
    assert output.shape == (3, 1, 32, 32)
    assert [tuple(g.z.shape) for g in groups] == [(3, 4, 4, 4), (3, 4, 8, 8), (3, 4, 8, 8)]
    # Groups 1 and 2 sit at the finest latent scale, after the pre-process blocks halved the
    # 32x32 input and doubled the width each; their context is the decoder state there.
    finest_width, finest_side = TINY.channels * 2 ** TINY.num_preprocess_blocks, 32 // 2 ** TINY.num_preprocess_blocks
    assert [None if g.context is None else tuple(g.context.shape) for g in groups] == \
        [None] + [(3, finest_width, finest_side, finest_side)] * 2
    for g in groups:
        assert g.prior.mu.shape == g.z.shape and g.kl().shape == (3,)
    assert model.reconstruction_log_prob(output, x).shape == (3,)
    assert model.num_data_dims() == 784


def test_sampling_intercept_sees_every_group_and_can_replace_z():
    torch.manual_seed(0)
    model = HierarchicalVAE(TINY).eval()
    seen = []

    def intercept(k, z, context, prior):
        seen.append((k, tuple(z.shape), None if context is None else context.shape[0]))
        return torch.zeros_like(z)

    images = model.sample(5, intercept=intercept)
    assert images.shape == (5, 1, 32, 32) and 0 <= images.min() and images.max() <= 1
    assert [s[0] for s in seen] == [0, 1, 2] and seen[0][2] is None and seen[1][2] == 5
    again = model.sample(5, intercept=lambda k, z, c, p: torch.zeros_like(z))
    torch.testing.assert_close(images, again)  # z replaced by zeros everywhere: deterministic


def test_sampling_is_reproducible_with_a_generator():
    model = HierarchicalVAE(TINY).eval()
    a = model.sample(4, generator=torch.Generator().manual_seed(3))
    b = model.sample(4, generator=torch.Generator().manual_seed(3))
    c = model.sample(4, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_temperature_scales_prior_sigma():
    torch.manual_seed(0)
    mu, log_sigma = torch.randn(10), torch.randn(10)
    torch.testing.assert_close(Normal(mu, log_sigma, 0.7).sigma, 0.7 * Normal(mu, log_sigma).sigma)


def test_normal_matches_hand_computation_and_torch():
    mu, log_sigma = torch.tensor([0.3, -1.0]), torch.tensor([0.2, -0.5])
    d = Normal(mu, log_sigma)
    clamp = lambda t: 5 * torch.tanh(t / 5)  # noqa: E731
    torch.testing.assert_close(d.mu, clamp(mu))
    torch.testing.assert_close(d.sigma, torch.exp(clamp(log_sigma)) + 1e-2)
    z = torch.tensor([0.1, 0.4])
    ref = torch.distributions.Normal(d.mu, d.sigma)
    torch.testing.assert_close(d.log_prob(z), ref.log_prob(z))
    other = Normal(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.3]))
    expected = torch.distributions.kl_divergence(ref, torch.distributions.Normal(other.mu, other.sigma))
    torch.testing.assert_close(d.kl(other), expected)
    # A hand value: KL(N(0,1) || N(1, 2^2)) = log 2 + (1 + 1) / 8 - 1/2.
    p = Normal.from_mean_std(torch.tensor([0.0]), torch.tensor([1.0]))
    q = Normal.from_mean_std(torch.tensor([1.0]), torch.tensor([2.0]))
    torch.testing.assert_close(p.kl(q), torch.tensor([math.log(2) + 2 / 8 - 0.5]))


def test_bernoulli_log_prob_by_hand():
    logits = torch.tensor([[[[0.0, 2.0]]]])
    x = torch.tensor([[[[1.0, 0.0]]]])
    expected = math.log(0.5) + math.log(1 - 1 / (1 + math.exp(-2.0)))
    torch.testing.assert_close(bernoulli_log_prob(logits, x), torch.tensor([expected]))


def test_logistic_mixture_by_hand():
    # One component, no channel coupling: each channel is a discretised logistic.
    # Layout: [logit | R: mean, log_scale, coeff | G: ... | B: ...] with num_mix = 1.
    mean, log_scale = 0.1, math.log(0.05)
    params = torch.zeros(1, 10, 1, 1)
    for c in range(3):
        params[0, 1 + 3 * c] = mean
        params[0, 2 + 3 * c] = log_scale
    s = math.exp(log_scale)
    sig = lambda t: 1 / (1 + math.exp(-t))  # noqa: E731

    def hand(value):  # log P(pixel = value) for one channel, value in 0..255
        x = 2 * value / 255 - 1
        if value == 0:
            return math.log(sig((x + 1 / 255 - mean) / s))
        if value == 255:
            return math.log(1 - sig((x - 1 / 255 - mean) / s))
        return math.log(sig((x + 1 / 255 - mean) / s) - sig((x - 1 / 255 - mean) / s))

    pixel = torch.tensor([140.0, 0.0, 255.0]).view(1, 3, 1, 1) / 255
    expected = hand(140) + hand(0) + hand(255)
    torch.testing.assert_close(DiscretizedLogisticMixture(params, 1).log_prob(pixel),
                               torch.tensor([expected]), rtol=1e-5, atol=1e-4)
    # Summed over all 256 red values, the probabilities leave P(G) P(B).
    values = torch.arange(256.0) / 255
    images = torch.stack([values, torch.full_like(values, 128 / 255), torch.full_like(values, 128 / 255)], 1)
    log_p = DiscretizedLogisticMixture(params.expand(256, -1, -1, -1), 1).log_prob(images.view(256, 3, 1, 1))
    assert abs(float(torch.logsumexp(log_p, 0)) - 2 * hand(128)) < 1e-3


def test_single_group_models():
    mlp = MLPVAE(latent_dim=50, hidden=300)
    x = torch.rand(4, 1, 32, 32).bernoulli()
    output, groups = mlp(x)
    assert output.shape == (4, 1, 28, 28) and len(groups) == 1 and groups[0].z.shape == (4, 50)
    assert float(groups[0].prior.sigma.max()) == 1.0  # exact N(0, I) prior
    conv = ConvVAE(image_size=64, latent_dim=16, width=8)
    y = torch.rand(2, 3, 64, 64)
    output, groups = conv(y)
    assert output.shape == (2, 100, 64, 64) and groups[0].z.shape == (2, 16)
    assert conv.reconstruction_log_prob(output, y).shape == (2,)
    assert conv.sample(3).shape == (3, 3, 64, 64)


def test_conv_vae_on_binary_mnist_scores_the_central_28x28():
    conv = ConvVAE(image_size=32, latent_dim=8, width=4, in_channels=1, output="bernoulli")
    assert conv.likelihood == "binary" and conv.num_data_dims() == 784
    x = torch.zeros(3, 1, 32, 32)
    x[:, :, 2:30, 2:30] = torch.rand(3, 1, 28, 28).bernoulli()
    output, groups = conv(x)
    assert output.shape == (3, 1, 32, 32) and groups[0].z.shape == (3, 8)
    # the padding is not scored: logits there change nothing
    moved = output.clone()
    moved[:, :, :2] += 50.0
    assert torch.equal(conv.reconstruction_log_prob(output, x), conv.reconstruction_log_prob(moved, x))
    expected = -torch.nn.functional.binary_cross_entropy_with_logits(
        output[:, :, 2:30, 2:30], x[:, :, 2:30, 2:30], reduction="none").flatten(1).sum(1)
    assert torch.allclose(conv.reconstruction_log_prob(output, x), expected)
    assert conv.sample(2).shape == (2, 1, 28, 28)


@pytest.mark.parametrize("kwargs, message", [
    (dict(in_channels=1, output="logistic_mixture"), "3-channel"),
    (dict(output="gaussian"), "bernoulli"),
    (dict(image_size=28), "divisible by 16"),
])
def test_conv_vae_rejects_what_it_cannot_model(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ConvVAE(**{"image_size": 32, "latent_dim": 4, "width": 4, **kwargs})


def test_mnist_conv_preset_builds_the_binary_conv_model():
    from ncpfast.config import resolve_config
    from ncpfast.models import build_model
    model = build_model(resolve_config("mnist-conv").model)
    assert isinstance(model, ConvVAE) and model.likelihood == "binary" and model.encoder[0].out_channels == 16
    rae = build_model(resolve_config("celeba64-rae").model)
    assert rae.likelihood == "8bit" and rae.encoder[0].out_channels == 128


def test_importance_weighted_bound_is_tighter_than_the_elbo():
    torch.manual_seed(0)
    model = MLPVAE(latent_dim=5, hidden=20).eval()
    x = torch.rand(6, 1, 32, 32).bernoulli()
    torch.manual_seed(1)
    elbo = torch.stack([model.importance_weighted_log_likelihood(x, 1) for _ in range(200)]).mean(0)
    torch.manual_seed(1)
    iw = model.importance_weighted_log_likelihood(x, 500, chunk=100)
    assert (iw > elbo).all()


def test_bad_configurations_are_rejected():
    with pytest.raises(ValueError, match="divisible"):
        HierarchicalVAE(NVAEConfig(image_size=30))
    with pytest.raises(ValueError, match="num_postprocess_blocks"):
        HierarchicalVAE(NVAEConfig(num_postprocess_blocks=1))
