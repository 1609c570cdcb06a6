"""NCPPrior on a toy problem whose true ratio is known: q = N(1, 0.5^2 I), p = N(0, I)."""
import math

import pytest
import torch

from ncpfast.ncp import GaussianMixture, NCPPrior, StandardNormal, log_mean_exp_with_stderr

DIM = 3


def true_log_ratio(z):
    log_q = -0.5 * (((z - 1.0) / 0.5) ** 2).sum(-1) - DIM * math.log(0.5)
    log_p = -0.5 * (z * z).sum(-1)
    return log_q - log_p


@pytest.fixture(scope="module")
def fitted():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    posterior = 1.0 + 0.5 * torch.randn(20000, DIM, generator=g)
    prior = NCPPrior(StandardNormal(DIM), hidden=64)
    history = prior.fit(posterior, epochs=40, batch_size=512, lr=3e-3, generator=g, progress=False)
    return prior, history


def test_learned_log_ratio_tracks_the_true_one(fitted):
    prior, history = fitted
    assert history["val_accuracy"][-1] > 0.85
    z = 1.0 + 0.7 * torch.randn(2000, DIM, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        learned, truth = prior.log_ratio(z), true_log_ratio(z)
    correlation = torch.corrcoef(torch.stack([learned, truth]))[0, 1]
    assert correlation > 0.95
    assert float((learned - truth).abs().median()) < 0.5


def test_log_partition_is_near_zero_with_a_standard_error(fitted):
    prior, _ = fitted
    log_z, stderr = prior.log_partition(num_samples=200_000, generator=torch.Generator().manual_seed(2))
    assert abs(log_z) < 0.15 and 0 < stderr < 0.1
    assert prior.log_partition(num_samples=200_000) == (log_z, stderr)  # cached


@pytest.mark.parametrize("method,kwargs", [("sir", {"num_proposals": 500}),
                                           ("langevin", {"steps": 300, "step_size": 0.02})])
def test_samples_match_q_moments(fitted, method, kwargs):
    prior, _ = fitted
    samples = prior.sample(4000, method=method, generator=torch.Generator().manual_seed(3), **kwargs)
    assert samples.shape == (4000, DIM)
    assert (samples.mean(0) - 1.0).abs().max() < 0.1
    cov = torch.cov(samples.T)
    assert (cov.diagonal() - 0.25).abs().max() < 0.08
    assert (cov - torch.diag(cov.diagonal())).abs().max() < 0.06


def test_sampling_is_reproducible_and_base_is_unchanged(fitted):
    prior, _ = fitted
    a = prior.sample(10, generator=torch.Generator().manual_seed(5), num_proposals=20)
    b = prior.sample(10, generator=torch.Generator().manual_seed(5), num_proposals=20)
    assert torch.equal(a, b)
    base = prior.sample(5000, method="base", generator=torch.Generator().manual_seed(5))
    assert base.mean(0).abs().max() < 0.1


def test_log_prob_is_normalised_in_closed_form():
    # log r(z) = a.z + b over N(0, I): Z = exp(|a|^2 / 2 + b) and p_NCP = N(a, I) exactly, so
    # log_prob must be log N(z; a, I) up to the estimated log Z's error, a constant in z.
    a, b = torch.tensor([0.6, -0.3, 0.2]), -0.7
    prior = NCPPrior(StandardNormal(DIM), classifier=torch.nn.Sequential(torch.nn.Linear(DIM, 1)))
    with torch.no_grad():
        prior.classifier[0].weight.copy_(a[None])
        prior.classifier[0].bias.fill_(b)
    exact = float(a @ a) / 2 + b
    log_z, stderr = prior.log_partition(num_samples=100_000, generator=torch.Generator().manual_seed(2))
    assert abs(log_z - exact) < 4 * stderr and 0 < stderr < 0.01
    z = torch.randn(1000, DIM, generator=torch.Generator().manual_seed(6)) * 2  # independent of Z's draws
    with torch.no_grad():
        gap = prior.log_prob(z) - StandardNormal(DIM).log_prob(z - a)
    torch.testing.assert_close(gap, torch.full_like(gap, exact - log_z), rtol=0, atol=1e-4)


def test_log_prob_is_normalised(fitted):
    prior, _ = fitted
    # Z from one set of draws, the integral of p_NCP from another: E_p[p_NCP / p] = 1 within
    # the two estimates' errors.
    log_z, log_z_stderr = prior.log_partition(num_samples=100_000, generator=torch.Generator().manual_seed(2),
                                              refresh=True)
    z = torch.randn(100_000, DIM, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        ratio = (prior.log_prob(z) - StandardNormal(DIM).log_prob(z)).exp()
    error = math.hypot(float(ratio.std()) / math.sqrt(len(ratio)), log_z_stderr)
    assert abs(float(ratio.mean()) - 1.0) < 4 * error and error < 0.05


def test_save_and_load_round_trip(fitted, tmp_path):
    prior, _ = fitted
    prior.save(str(tmp_path / "ncp.pt"))
    loaded = NCPPrior.load(str(tmp_path / "ncp.pt"))
    z = torch.randn(5, DIM)
    with torch.no_grad():
        torch.testing.assert_close(loaded.log_ratio(z), prior.log_ratio(z))


def test_gmm_base_fits_a_mixture():
    g = torch.Generator().manual_seed(0)
    data = torch.cat([torch.randn(3000, 2, generator=g) * 0.3 - 2, torch.randn(1000, 2, generator=g) * 0.3 + 2])
    gmm = GaussianMixture.fit(data, components=2, generator=g)
    order = gmm.means[:, 0].argsort()
    torch.testing.assert_close(gmm.means[order], torch.tensor([[-2.0, -2.0], [2.0, 2.0]]), atol=0.05, rtol=0)
    torch.testing.assert_close(gmm.log_weights.exp()[order], torch.tensor([0.75, 0.25]), atol=0.02, rtol=0)
    samples = gmm.sample(4000, generator=g)
    assert abs(float((samples[:, 0] > 0).float().mean()) - 0.25) < 0.03
    prior = NCPPrior(gmm)
    assert prior.dim == 2 and prior.sample(3, method="sir", num_proposals=4).shape == (3, 2)


def test_bad_arguments():
    prior = NCPPrior(StandardNormal(2))
    with pytest.raises(ValueError, match="num_proposals must be >= 1"):
        prior.sample(3, num_proposals=-5)
    with pytest.raises(ValueError, match="max_proposal_bytes must be >= 1"):
        prior.sample(3, max_proposal_bytes=0)
    with pytest.raises(ValueError, match="sampling method"):
        prior.sample(3, method="mcmc")
    with pytest.raises(ValueError, match="at least 10"):
        prior.fit(torch.zeros(3, 2))


def test_log_mean_exp_stderr():
    values = torch.log(torch.tensor([1.0, 3.0]))
    log_z, stderr = log_mean_exp_with_stderr(values)
    assert log_z == pytest.approx(math.log(2.0))
    assert stderr == pytest.approx(torch.tensor([0.5, 1.5]).std().item() / math.sqrt(2))
