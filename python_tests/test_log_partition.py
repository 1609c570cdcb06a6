"""log Z by importance sampling: closed-form answers, both proposals."""
import math

import torch

from ncpfast.ncp.estimators import (
    aggregate_posterior_log_weights,
    effective_sample_size,
    log_mixture_density,
    summarize_log_weights,
)


def test_log_mixture_density_matches_direct_sum():
    g = torch.Generator().manual_seed(0)
    means, stds = torch.randn(7, 3, generator=g), torch.rand(7, 3, generator=g) + 0.2
    z = torch.randn(11, 3, generator=g)
    components = torch.distributions.Independent(torch.distributions.Normal(means, stds), 1)
    direct = torch.logsumexp(components.log_prob(z[:, None, :]), dim=1) - math.log(7)
    assert torch.allclose(log_mixture_density(z, means, stds).float(), direct, atol=1e-5)


def test_effective_sample_size_limits():
    assert abs(effective_sample_size(torch.zeros(100)) - 100) < 1e-9
    assert abs(effective_sample_size(torch.tensor([0.0, -1e4, -1e4])) - 1) < 1e-9


def test_aggregate_posterior_proposal_gives_the_closed_form_log_z():
    # log r(z) = a.z + b under p = N(0, I): log Z = b + |a|^2 / 2, whatever the proposal.
    g = torch.Generator().manual_seed(1)
    dim = 4
    a, b = torch.full((dim,), 0.5), -0.3
    exact = b + float(a @ a) / 2
    posterior_mu = a + 0.3 * torch.randn(200, dim, generator=g)   # posteriors where r is large
    posterior_sigma = torch.full((200, dim), 0.5)
    log_w = aggregate_posterior_log_weights(lambda z: z @ a + b, torch.zeros(1), torch.ones(1),
                                            posterior_mu, posterior_sigma, 20_000, generator=g)
    estimate = summarize_log_weights(log_w, "aggregate-posterior")
    assert abs(estimate.log_z - exact) < 4 * estimate.stderr + 1e-3
    # From the prior the same budget: a valid but noisier estimate.
    z = torch.randn(20_000, dim, generator=g)
    prior_estimate = summarize_log_weights(z @ a + b, "prior")
    assert abs(prior_estimate.log_z - exact) < 4 * prior_estimate.stderr + 1e-3


def test_aggregate_posterior_proposal_wins_where_the_posterior_is_concentrated():
    # The Bayes-optimal classifier's ratio r = e^b q_agg / p has Z = e^b exactly.
    # With a concentrated aggregate posterior, prior draws rarely land on it
    # (ESS a few per cent); the defensive mixture's weights are bounded by 2 e^b.
    g = torch.Generator().manual_seed(3)
    dim, b = 6, 0.7
    posterior_mu = 0.5 * torch.randn(300, dim, generator=g)
    posterior_sigma = torch.full((300, dim), 0.15)

    def log_ratio(z):
        log_p = -0.5 * (z.double() ** 2).sum(1) - 0.5 * dim * math.log(2 * math.pi)
        return log_mixture_density(z, posterior_mu, posterior_sigma) - log_p + b

    mixture = summarize_log_weights(aggregate_posterior_log_weights(
        log_ratio, torch.zeros(1), torch.ones(1), posterior_mu, posterior_sigma, 20_000, generator=g),
        "aggregate-posterior")
    prior = summarize_log_weights(log_ratio(torch.randn(20_000, dim, generator=g)), "prior")
    assert abs(mixture.log_z - b) < 4 * mixture.stderr + 1e-3
    assert mixture.ess_fraction > 0.4 and prior.ess_fraction < 0.1
    assert mixture.stderr < prior.stderr / 3


def test_prior_share_one_is_plain_prior_sampling():
    g = torch.Generator().manual_seed(2)
    log_w = aggregate_posterior_log_weights(lambda z: torch.zeros(z.shape[0], dtype=z.dtype), torch.zeros(1),
                                            torch.ones(1), torch.zeros(3, 2), torch.ones(3, 2), 50,
                                            prior_share=1.0, generator=g)
    assert torch.allclose(log_w, torch.zeros(50, dtype=log_w.dtype), atol=1e-9)
