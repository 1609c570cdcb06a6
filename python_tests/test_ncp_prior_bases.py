"""NCPPrior over each kind of base: the package's StandardNormal and GaussianMixture,
torch.distributions families sampled exactly from a generator, and another family
sampled through a seeded fork of the RNG."""
import math

import pytest
import torch
import torch.distributions as D

from ncpfast.checkpoint import load, save_atomic
from ncpfast.ncp import GaussianMixture, NCPPrior, StandardNormal
from ncpfast.ncp.base_adapter import DistributionBase

DIM, K = 3, 2


def gen(seed):
    return torch.Generator().manual_seed(seed)


def make_base(kind):
    g = gen(100)
    loc = torch.randn(DIM, generator=g)
    factor = torch.randn(DIM, 2, generator=g)
    tril = torch.tril(torch.randn(DIM, DIM, generator=g), -1) + torch.diag(torch.rand(DIM, generator=g) + 0.5)
    mixture = D.Categorical(probs=torch.tensor([0.3, 0.7]))
    locs = torch.stack([loc - 2, loc + 2])
    if kind == "standard_normal":
        return StandardNormal(DIM)
    if kind == "gaussian_mixture":
        return GaussianMixture(torch.tensor([0.3, 0.7]), locs, torch.full((K, DIM), -0.5))
    if kind == "independent_normal":
        return D.Independent(D.Normal(loc, torch.rand(DIM, generator=g) + 0.5), 1)
    if kind == "multivariate_normal":
        return D.MultivariateNormal(loc, scale_tril=tril)
    if kind == "low_rank":
        return D.LowRankMultivariateNormal(loc, factor, torch.rand(DIM, generator=g) + 0.5)
    if kind == "mixture_of_independent_normal":
        return D.MixtureSameFamily(mixture, D.Independent(D.Normal(locs, torch.full((K, DIM), 0.7)), 1))
    if kind == "mixture_of_multivariate_normal":
        return D.MixtureSameFamily(mixture, D.MultivariateNormal(locs, scale_tril=torch.stack([tril, 0.5 * tril])))
    if kind == "mixture_of_low_rank":
        return D.MixtureSameFamily(mixture, D.LowRankMultivariateNormal(locs, factor.expand(K, -1, -1) * 0.5,
                                                                        torch.full((K, DIM), 0.6)))
    if kind == "laplace":  # no exact path: the forked-RNG fallback, and not saveable
        return D.Independent(D.Laplace(loc, torch.ones(DIM)), 1)
    raise AssertionError(kind)


SAVEABLE = ["standard_normal", "gaussian_mixture", "independent_normal", "multivariate_normal", "low_rank",
            "mixture_of_independent_normal", "mixture_of_multivariate_normal", "mixture_of_low_rank"]
KINDS = SAVEABLE + ["laplace"]
TORCH_EXACT = SAVEABLE[2:]


@pytest.fixture(scope="module", params=KINDS)
def fitted(request):
    torch.manual_seed(0)
    prior = NCPPrior(make_base(request.param), hidden=16)
    posterior = 0.5 + torch.randn(300, DIM, generator=gen(1))
    history = prior.fit(posterior, epochs=3, batch_size=64, generator=gen(2), progress=False)
    return request.param, prior, history


def test_fit_log_z_and_log_prob(fitted):
    kind, prior, history = fitted
    assert prior.dim == DIM and history["epochs_run"] >= 1 and math.isfinite(history["best_val_loss"])
    log_z, stderr = prior.log_partition(2000, generator=gen(3))
    # the standard error by its definition, std(w) / (sqrt(N) mean(w)) over the same draws ...
    with torch.no_grad():
        w = prior.log_ratio(prior.base.sample(2000, generator=gen(3))).double().exp()
    assert log_z == pytest.approx(math.log(float(w.mean())), abs=1e-6)
    assert stderr == pytest.approx(float(w.std() / (math.sqrt(2000) * w.mean())), rel=1e-4)
    # ... and as the spread of independent estimates (16 repeats: within a factor of 2)
    repeats = torch.tensor([prior.log_partition(2000, generator=gen(1000 + seed), refresh=True)[0]
                            for seed in range(16)])
    assert 0.5 < float(repeats.std()) / stderr < 2, (float(repeats.std()), stderr)
    log_z, stderr = prior.log_partition(2000, generator=gen(3), refresh=True)
    z = prior.sample(7, method="base", generator=gen(4))
    assert z.shape == (7, DIM)
    with torch.no_grad():
        log_prob = prior.log_prob(z)
        expected = prior.log_ratio(z) + prior.base.log_prob(z) - log_z
    torch.testing.assert_close(log_prob, expected)
    if isinstance(prior.base, DistributionBase):
        # the base's density is the user's distribution's own log_prob
        torch.testing.assert_close(prior.base.log_prob(z), make_base(kind).log_prob(z))


@pytest.mark.parametrize("method,kwargs", [("sir", {"num_proposals": 16}),
                                           ("langevin", {"steps": 5, "step_size": 0.01}),
                                           ("base", {})])
def test_sampling_is_reproducible_from_the_generator(fitted, method, kwargs):
    _, prior, _ = fitted
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    a = prior.sample(50, method=method, generator=gen(5), **kwargs)
    b = prior.sample(50, method=method, generator=gen(5), **kwargs)
    c = prior.sample(50, method=method, generator=gen(6), **kwargs)
    assert a.shape == (50, DIM) and torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is neither used nor changed


def test_save_and_load_round_trip_or_refusal(fitted, tmp_path):
    kind, prior, _ = fitted
    path = tmp_path / "ncp.pt"
    if kind not in SAVEABLE:
        with pytest.raises(TypeError, match=r"cannot save its base, torch.distributions Independent\(Laplace\).*"
                                            r"classifier.state_dict"):
            prior.save(str(path))
        assert not path.exists() and not list(tmp_path.iterdir())
        return
    prior.log_partition(2000, generator=gen(3))  # saved with the prior
    prior.save(str(path))
    loaded = NCPPrior.load(str(path))  # weights_only=True underneath
    assert type(loaded.base) is type(prior.base)
    z = prior.sample(20, method="base", generator=gen(7))
    with torch.no_grad():
        assert torch.equal(loaded.log_prob(z), prior.log_prob(z))
        assert torch.equal(loaded.base.log_prob(z), prior.base.log_prob(z))
    assert loaded.log_partition() == prior.log_partition()
    for method in ("base", "sir"):  # the rebuilt base draws the same samples from the same generator
        assert torch.equal(loaded.sample(9, method=method, generator=gen(8), num_proposals=4),
                           prior.sample(9, method=method, generator=gen(8), num_proposals=4))


def test_format_1_checkpoints_still_load():
    gmm = make_base("gaussian_mixture")
    for base, name in ((StandardNormal(DIM), "normal"), (gmm, "gmm")):
        prior = NCPPrior(base, hidden=8)
        old = {"format": 1, "dim": DIM, "hidden": 8, "layers": 2, "base": name, "state_dict": prior.state_dict(),
               "log_partition": (0.1, 0.01, 100)}
        loaded = NCPPrior.from_checkpoint(old)
        z = torch.randn(4, DIM, generator=gen(9))
        with torch.no_grad():
            torch.testing.assert_close(loaded.log_prob(z), prior.log_ratio(z) + base.log_prob(z) - 0.1)


@pytest.mark.parametrize("kind", ["independent_normal", "multivariate_normal"])
def test_exact_paths_transform_the_generators_normals(kind):
    base = make_base(kind)
    z = DistributionBase(base).sample((4, 5), generator=gen(10))
    eps = torch.randn(20, DIM, generator=gen(10))
    if kind == "independent_normal":
        expected = base.base_dist.loc + base.base_dist.scale * eps
    else:
        expected = base.loc + eps @ base.scale_tril.T
    assert z.shape == (4, 5, DIM)
    torch.testing.assert_close(z.reshape(20, DIM), expected)


@pytest.mark.parametrize("kind", TORCH_EXACT)
def test_exact_paths_have_the_distributions_moments(kind):
    dist = make_base(kind)
    n = 40_000
    z = DistributionBase(dist).sample(n, generator=gen(11)).double()
    mean, var = dist.mean.double(), dist.variance.double()
    # the sample mean within 5 standard errors, the variance within 5% (n = 4e4: its relative
    # standard error is about sqrt(2 / n) = 0.7% for a Gaussian, more for a bimodal mixture)
    assert ((z.mean(0) - mean).abs() < 5 * (var / n).sqrt()).all(), (z.mean(0), mean)
    torch.testing.assert_close(z.var(0), var, rtol=0.05, atol=0)
    if hasattr(dist, "covariance_matrix"):  # the off-diagonal terms: catches a transposed factor
        torch.testing.assert_close(torch.cov(z.T), dist.covariance_matrix.double(), rtol=0.05, atol=0.03)


def test_mixture_components_are_drawn_with_their_probabilities():
    locs = torch.tensor([[-20.0] * DIM, [20.0] * DIM])
    dist = D.MixtureSameFamily(D.Categorical(probs=torch.tensor([0.2, 0.8])),
                               D.MultivariateNormal(locs, scale_tril=torch.eye(DIM).expand(K, -1, -1)))
    z = DistributionBase(dist).sample(20_000, generator=gen(12))
    share = float((z[:, 0] > 0).float().mean())
    assert abs(share - 0.8) < 5 * math.sqrt(0.8 * 0.2 / 20_000)


def test_forked_fallback_is_seeded_by_the_generator_and_leaves_the_global_rng():
    base = DistributionBase(make_base("laplace"))
    assert not base.exact and DistributionBase(make_base("low_rank")).exact
    state = torch.get_rng_state()
    a, b = base.sample(1000, generator=gen(13)), base.sample(1000, generator=gen(13))
    assert torch.equal(a, b) and not torch.equal(a, base.sample(1000, generator=gen(14)))
    assert torch.equal(torch.get_rng_state(), state)
    assert abs(float(a.mean()) - float(make_base("laplace").mean.mean())) < 0.15


def test_to_moves_and_converts_the_base():
    for kind in ("gaussian_mixture", "multivariate_normal", "mixture_of_low_rank"):
        prior = NCPPrior(make_base(kind), hidden=8).double()
        z = prior.sample(6, method="sir", num_proposals=3, generator=gen(15))
        assert z.dtype == torch.float64
        with torch.no_grad():
            assert prior.log_prob(z).dtype == torch.float64


@pytest.mark.cuda
def test_bases_on_cuda():
    for kind in KINDS:
        prior = NCPPrior(make_base(kind), hidden=8).to("cuda")
        g = torch.Generator("cuda").manual_seed(0)
        history = prior.fit(torch.randn(200, DIM, device="cuda"), epochs=1, generator=g, progress=False)
        assert history["epochs_run"] == 1
        for method in ("sir", "langevin"):
            a = prior.sample(8, method=method, steps=2, generator=torch.Generator("cuda").manual_seed(1))
            b = prior.sample(8, method=method, steps=2, generator=torch.Generator("cuda").manual_seed(1))
            assert a.device.type == "cuda" and torch.equal(a, b)
        with torch.no_grad():
            assert prior.log_prob(a).device.type == "cuda"


def test_bases_that_are_not_over_vectors_are_refused():
    with pytest.raises(ValueError, match=r"base_prior must be a distribution over vectors.*batch_shape \(4,\).*"
                                         r"Independent\(\.\.\., 1\)"):
        NCPPrior(D.Normal(torch.zeros(4), torch.ones(4)))
    with pytest.raises(ValueError, match=r"batch_shape \(2,\) and event_shape \(3,\)"):
        NCPPrior(D.MultivariateNormal(torch.zeros(2, 3), torch.eye(3)))
    with pytest.raises(ValueError, match=r"event_shape \(2, 3\)"):
        NCPPrior(D.Independent(D.Normal(torch.zeros(2, 3), torch.ones(2, 3)), 2))
    with pytest.raises(ValueError, match=r"dim=5 disagrees with base_prior, whose samples have 4 dimensions"):
        NCPPrior(D.Independent(D.Normal(torch.zeros(4), torch.ones(4)), 1), dim=5)
    with pytest.raises(ValueError, match="dim=2 disagrees"):
        NCPPrior(StandardNormal(3), dim=2)
    with pytest.raises(TypeError, match="base_prior must be a torch.distributions.Distribution over vectors"):
        NCPPrior(object())


# --- GaussianMixture ----------------------------------------------------------------------------


def test_gmm_log_prob_matches_torch_distributions():
    gmm = make_base("gaussian_mixture")
    direct = D.MixtureSameFamily(D.Categorical(probs=gmm.log_weights.exp()),
                                 D.Independent(D.Normal(gmm.means, gmm.log_stds.exp()), 1))
    z = 3 * torch.randn(100, DIM, generator=gen(16))
    torch.testing.assert_close(gmm.log_prob(z), direct.log_prob(z))


def test_gmm_fit_on_the_datas_device_recovers_the_means(device):
    g = torch.Generator(device).manual_seed(0)
    centres = torch.tensor([[-3.0, 1.0], [4.0, -2.0]], device=device)
    data = torch.cat([centres[0] + 0.5 * torch.randn(600, 2, device=device, generator=g),
                      centres[1] + 0.5 * torch.randn(400, 2, device=device, generator=g)])
    gmm = GaussianMixture.fit(data, components=2, iterations=50, generator=g)
    assert all(t.device.type == device.type for t in (gmm.log_weights, gmm.means, gmm.log_stds))
    order = gmm.means[:, 0].argsort()
    torch.testing.assert_close(gmm.means[order], centres, atol=0.1, rtol=0)
    torch.testing.assert_close(gmm.log_weights.exp()[order], torch.tensor([0.6, 0.4], device=device),
                               atol=0.01, rtol=0)
    torch.testing.assert_close(gmm.log_stds.exp(), torch.full((2, 2), 0.5, device=device), atol=0.06, rtol=0)
    assert gmm.sample(5, generator=g).device.type == device.type


def test_gmm_state_round_trip(tmp_path):
    gmm = GaussianMixture.fit(torch.randn(200, DIM, generator=gen(17)), components=3, generator=gen(18))
    save_atomic(gmm.state_dict(), str(tmp_path / "gmm.pt"))
    again = GaussianMixture(torch.ones(3) / 3, torch.zeros(3, DIM), torch.zeros(3, DIM))
    again.load_state_dict(load(str(tmp_path / "gmm.pt")))
    z = torch.randn(10, DIM, generator=gen(19))
    assert torch.equal(again.log_prob(z), gmm.log_prob(z))
    assert torch.equal(again.sample(4, generator=gen(20)), gmm.sample(4, generator=gen(20)))


@pytest.mark.parametrize("spread,min_std", [(1e-2, 1e-3), (1e-3, 1e-5)])
def test_gmm_fit_keeps_the_variance_of_a_component_narrow_next_to_its_mean(spread, min_std):
    # x = 1000 + spread * eps: in float32, E[x^2] - mu^2 loses a variance of 1e-4 (x^2 ~ 1e6 is
    # stored to ~0.06), so the variance must come from the squared deviations.
    g = gen(21)
    one = 1000 + spread * torch.randn(2000, DIM, generator=g)
    gmm = GaussianMixture.fit(one, components=1, min_std=min_std, generator=g)
    torch.testing.assert_close(gmm.log_stds.exp()[0].double(), one.double().std(0), rtol=0.03, atol=0)
    two = torch.cat([1000 + spread * torch.randn(1500, DIM, generator=g),
                     1000.5 + spread * torch.randn(500, DIM, generator=g)])
    gmm = GaussianMixture.fit(two, components=2, min_std=min_std, generator=g)
    order = gmm.means[:, 0].argsort()
    torch.testing.assert_close(gmm.log_weights.exp()[order], torch.tensor([0.75, 0.25]), atol=1e-3, rtol=0)
    torch.testing.assert_close(gmm.log_stds.exp()[order], torch.full((2, DIM), spread), rtol=0.1, atol=0)


def test_gmm_bad_arguments():
    with pytest.raises(ValueError, match=r"data must be \[N, dim\]"):
        GaussianMixture.fit(torch.zeros(10))
    with pytest.raises(ValueError, match="components must be >= 1"):
        GaussianMixture.fit(torch.zeros(10, 2), components=0)
    with pytest.raises(ValueError, match="weights \\[K\\], means \\[K, dim\\]"):
        GaussianMixture(torch.ones(2), torch.zeros(3, 2), torch.zeros(3, 2))


class _ShiftedNormal(StandardNormal):
    """A user's base: its log_prob is not StandardNormal's, so it must not be saved as one."""

    def log_prob(self, z):
        return super().log_prob(z - 1.0)


def test_a_custom_base_is_refused_not_saved_as_a_standard_normal(tmp_path):
    prior = NCPPrior(_ShiftedNormal(DIM), hidden=8)
    with pytest.raises(TypeError, match="cannot save its base, of type _ShiftedNormal.*rebuild|NCPPrior\\(your_base"):
        prior.save(str(tmp_path / "ncp.pt"))
    assert not list(tmp_path.iterdir())


def test_a_custom_classifier_is_refused_not_saved_as_the_default_mlp(tmp_path):
    relu = torch.nn.Sequential(torch.nn.Linear(DIM, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8), torch.nn.ReLU(),
                               torch.nn.Linear(8, 1))  # the default's parameter names, another activation
    prior = NCPPrior(StandardNormal(DIM), classifier=relu, hidden=8)
    with pytest.raises(TypeError, match=r"cannot save a custom classifier \(Sequential\).*prior.state_dict\(\)"):
        prior.save(str(tmp_path / "ncp.pt"))
    assert not list(tmp_path.iterdir())
