"""frechet_distance against the closed form for Gaussians,
||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2), computed here with scipy."""
import numpy as np
import pytest
import scipy.linalg
import torch

from ncpfast.evaluation import frechet_distance


def closed_form(mu1, cov1, mu2, cov2) -> float:
    cov1, cov2 = np.atleast_2d(cov1), np.atleast_2d(cov2)  # np.cov of one variable is 0-d
    root1 = np.atleast_2d(scipy.linalg.sqrtm(cov1).real)  # sqrtm of a 1 x 1 matrix may come back 0-d
    middle = np.atleast_2d(scipy.linalg.sqrtm(root1 @ cov2 @ root1).real)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2 * np.trace(middle))


def random_gaussian(dim, seed):
    rng = np.random.default_rng(seed)
    factor = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    return rng.normal(size=dim), factor @ factor.T + 0.1 * np.eye(dim)


def samples_with_moments(mu, cov, n, seed) -> torch.Tensor:
    """n points whose sample mean is mu and sample covariance (n - 1 divisor) is cov, exactly
    up to rounding: standard normals whitened to mean 0 and covariance I, then coloured."""
    x = np.random.default_rng(seed).normal(size=(n, len(mu)))
    x -= x.mean(0)
    x = x @ np.linalg.inv(np.linalg.cholesky(np.atleast_2d(np.cov(x, rowvar=False)))).T
    return torch.from_numpy(x @ np.linalg.cholesky(cov).T + mu)



@pytest.mark.parametrize("dim", [1, 2, 3, 16])
def test_inputs_with_known_sample_moments_give_the_closed_form(dim):
    (mu1, cov1), (mu2, cov2) = random_gaussian(dim, 0), random_gaussian(dim, 1)
    a, b = samples_with_moments(mu1, cov1, 50 + dim, 2), samples_with_moments(mu2, cov2, 80, 3)
    np.testing.assert_allclose(np.atleast_2d(np.cov(a.numpy(), rowvar=False)), cov1, rtol=1e-9, atol=1e-12)
    expected = closed_form(mu1, cov1, mu2, cov2)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-8, abs=1e-10)
    assert frechet_distance(b, a) == pytest.approx(expected, rel=1e-8, abs=1e-10)  # symmetric
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-9)
    # float32 features (what the evaluation passes) are computed in float64
    assert frechet_distance(a.float(), b.float()) == pytest.approx(
        closed_form(a.float().double().mean(0).numpy(), np.cov(a.float().double().numpy(), rowvar=False),
                    b.float().double().mean(0).numpy(), np.cov(b.float().double().numpy(), rowvar=False)), rel=1e-8)


def test_any_samples_match_scipy_on_their_sample_moments():
    rng = np.random.default_rng(4)
    a = torch.from_numpy(rng.standard_t(5, size=(300, 6)) @ rng.normal(size=(6, 6)))
    b = torch.from_numpy(rng.exponential(size=(200, 6)) + 0.5)
    expected = closed_form(a.numpy().mean(0), np.cov(a.numpy(), rowvar=False),
                           b.numpy().mean(0), np.cov(b.numpy(), rowvar=False))
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-8)


def test_commuting_covariances_by_hand():
    # Diagonal covariances: FD = |mu1 - mu2|^2 + sum (sigma1 - sigma2)^2.
    sigma1, sigma2 = np.array([1.0, 2.0, 0.5]), np.array([3.0, 1.0, 0.5])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    a = samples_with_moments(mu1, np.diag(sigma1 ** 2), 40, 5)
    b = samples_with_moments(mu2, np.diag(sigma2 ** 2), 40, 6)
    assert frechet_distance(a, b) == pytest.approx(1 + 4 + 4 + 1, rel=1e-8)


def test_large_samples_approach_the_population_value():
    """Plain Gaussian samples: the mean of R replicate FDs is within four of its standard
    errors of the population value plus the leading bias tr(S1 + S2) / n, which is the
    bias of |mean1 - mean2|^2 (the covariance terms' bias is O(dim / n) too, far smaller here)."""
    dim, n, replicates = 4, 20_000, 12
    (mu1, cov1), (mu2, cov2) = random_gaussian(dim, 7), random_gaussian(dim, 8)
    truth = closed_form(mu1, cov1, mu2, cov2)
    rng = np.random.default_rng(9)
    values = np.array([frechet_distance(torch.from_numpy(rng.multivariate_normal(mu1, cov1, n)),
                                        torch.from_numpy(rng.multivariate_normal(mu2, cov2, n)))
                       for _ in range(replicates)])
    bias = (np.trace(cov1) + np.trace(cov2)) / n
    stderr = values.std(ddof=1) / np.sqrt(replicates)
    assert abs(values.mean() - truth - bias) < 4 * stderr + 0.2 * bias, (values.mean(), truth, stderr)
    assert stderr < 0.01 * truth  # the check above is a tight one
    # a different population is told apart at this sample size
    assert abs(closed_form(mu1, cov1, mu2, 1.2 * cov2) - truth) > 20 * stderr
