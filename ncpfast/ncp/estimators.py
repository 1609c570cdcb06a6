"""Monte Carlo estimates over an NCP prior: the normaliser Z = E_p[prod_k r_k]
and the importance-weighted log-likelihood with the NCP prior in place of the
VAE's, each with its standard error where it is a mean of samples.

Z = E_p[r(z)] is estimated from log-weights log w_i = log p(z_i) + log r(z_i) -
log g(z_i), z_i ~ g, as log Z = logmeanexp(log w). Two proposals g:

- the prior p itself (log w = log r): simple, but r is large where the
  posterior mass sits, so when the aggregate posterior occupies a small part
  of the prior's volume a few draws carry all the weight (heavy tails, an
  effective sample size of a few per cent, log Z biased low);
- a defensive mixture of the prior and the aggregate posterior,
  g = a p + (1 - a) (1/N) sum_i q(z | x_i) over N training images: it puts
  draws where r is large, and the prior share a bounds w <= r / a. It needs
  the posteriors in closed form, so it serves single-group (flat) latents.

Every estimate carries its standard error (delta method) and its effective
sample size ESS = (sum w)^2 / sum w^2, the number of equally weighted draws the
weights are worth: an ESS of a few per cent of the draws says the standard
error itself is not to be trusted.
"""
import hashlib
import math
from dataclasses import asdict, dataclass, fields
from typing import Callable, Optional

import torch

# log_ratio(k, z_k, context) -> log r_k per sample, [B]: group k's classifier.
GroupLogRatio = Callable[[int, torch.Tensor, Optional[torch.Tensor]], torch.Tensor]

PROPOSALS = ("prior", "aggregate-posterior")
# Below this effective sample size the delta-method standard error, itself
# estimated from the few draws that carry the weight, cannot be trusted, and
# log Z of heavy-tailed weights tends to come out low. From docs/results.md's
# log Z convergence study: at ESS 996-1,998 (1e5 prior draws) the three repeats
# were 1.1-3.1 of their reported errors below the 1e6 estimates; from ESS 2,888
# up (1e6 draws, both proposals) the repeats agreed within their errors.
MIN_RELIABLE_ESS = 2500


@dataclass
class LogPartitionEstimate:
    """log Z, its standard error, and how far the importance weights can be trusted.
    posterior_fingerprint: which components the aggregate-posterior proposal had
    (posterior_fingerprint()), None for the prior proposal or where unknown."""
    log_z: float
    stderr: float
    ess: float
    num_samples: int
    proposal: str
    posterior_fingerprint: Optional[str] = None

    @property
    def ess_fraction(self) -> float:
        return self.ess / self.num_samples

    def warning(self) -> Optional[str]:
        """Why the estimate's standard error cannot be trusted, or None (also when the
        ESS is unknown: a checkpoint written before it was kept)."""
        if not self.ess < MIN_RELIABLE_ESS:  # NaN: unknown
            return None
        return (f"log Z rests on an effective sample size of {self.ess:.0f} (of {self.num_samples} draws): its "
                f"standard error is unreliable; raise --log-z-samples (of stage 2, or of python -m ncpfast.evaluate "
                "for a new estimate)")

    def as_dict(self) -> dict:
        return {**asdict(self), "ess_fraction": self.ess_fraction, "warning": self.warning()}

    @classmethod
    def from_dict(cls, saved: dict) -> "LogPartitionEstimate":
        """The estimate as_dict wrote (a checkpoint's; its derived entries are dropped)."""
        return cls(**{f.name: saved[f.name] for f in fields(cls) if f.name in saved})


def posterior_fingerprint(posterior) -> Optional[str]:
    """A content hash of posterior=(mu, sigma), the aggregate-posterior proposal's
    components (their values in float32 and shapes), or None without them."""
    if posterior is None:
        return None
    digest = hashlib.sha256()
    for tensor in posterior:
        values = tensor.detach().to("cpu", torch.float32).contiguous()
        digest.update(repr(tuple(values.shape)).encode())
        digest.update(values.numpy().tobytes())
    return digest.hexdigest()[:16]


def cached_estimate(cached: Optional[LogPartitionEstimate], num_samples: Optional[int], proposal: Optional[str],
                    posterior=None) -> Optional[LogPartitionEstimate]:
    """The cached log Z when it answers the request: its key is what determines an
    estimate, the sample count, the proposal and (aggregate-posterior proposal) the
    posterior components; a request matches on each of them it names (None: any).
    So log_partition() takes whatever is cached, while a request for another
    proposal, another count or other components (or components where the cached
    ones are unknown) is estimated anew."""
    if cached is None:
        return None
    if num_samples is not None and num_samples != cached.num_samples:
        return None
    if proposal is not None and proposal != cached.proposal:
        return None
    if (proposal == "aggregate-posterior" and posterior is not None
            and posterior_fingerprint(posterior) != cached.posterior_fingerprint):
        return None
    return cached


def check_proposal_arguments(posterior, proposal: str):
    """A known proposal, and posterior=(mu, sigma) of training images where it is the aggregate posterior."""
    if proposal not in PROPOSALS:
        raise ValueError(f"proposal must be one of {PROPOSALS}, got {proposal!r}")
    if proposal == "aggregate-posterior" and posterior is None:
        raise ValueError("the aggregate-posterior proposal needs posterior=(mu, sigma) of training images "
                         "(ncpfast.ncp.estimators.flat_posterior_parameters)")


def log_mean_exp_with_stderr(log_values: torch.Tensor):
    """log mean exp(x) and its standard error (delta method: std(w) / (sqrt(N) mean(w)))."""
    n = log_values.numel()
    lse = torch.logsumexp(log_values.double().flatten(), 0)
    normalized = torch.exp(log_values.double().flatten() - lse) * n  # w_i / mean(w)
    stderr = float(normalized.std() / math.sqrt(n)) if n > 1 else float("inf")
    return float(lse - math.log(n)), stderr


def effective_sample_size(log_weights: torch.Tensor) -> float:
    """(sum w)^2 / sum w^2, computed in log space."""
    log_w = log_weights.double().flatten()
    return float(torch.exp(2 * torch.logsumexp(log_w, 0) - torch.logsumexp(2 * log_w, 0)))


def summarize_log_weights(log_weights: torch.Tensor, proposal: str, posterior=None) -> LogPartitionEstimate:
    """The estimate from log-weights drawn from `proposal` (with components posterior=(mu, sigma)
    for the aggregate posterior)."""
    log_z, stderr = log_mean_exp_with_stderr(log_weights)
    return LogPartitionEstimate(log_z, stderr, effective_sample_size(log_weights), log_weights.numel(), proposal,
                                posterior_fingerprint(posterior))


def _diagonal_normal_log_prob(z: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, diag sigma^2) summed over the last dimension; broadcasts."""
    normalized = (z - mu) / sigma
    return (-0.5 * normalized * normalized - torch.log(sigma)).sum(-1) - 0.5 * z.shape[-1] * math.log(2 * math.pi)


def log_mixture_density(z: torch.Tensor, means: torch.Tensor, stds: torch.Tensor) -> torch.Tensor:
    """log (1/N) sum_i N(z; means_i, diag stds_i^2) for z [S, D], means and stds
    [N, D]: [S]. The squared distances are one matrix product (float64, since
    they are differences of large sums): S x N x D work, S x N memory."""
    z, means, stds = z.double(), means.double(), stds.double()
    precision = stds.pow(-2)                                                    # [N, D]
    quadratic = (z * z) @ precision.T - 2 * z @ (means * precision).T + (means * means * precision).sum(1)
    log_norm = -torch.log(stds).sum(1) - 0.5 * z.shape[1] * math.log(2 * math.pi)  # [N]
    return torch.logsumexp(log_norm - 0.5 * quadratic, dim=1) - math.log(means.shape[0])


class DiagonalNormal:
    """N(mu, diag sigma^2) over [D] vectors as a base for the aggregate-posterior
    proposal: sample(n, generator) and log_prob(z) (in float64)."""

    def __init__(self, mu: torch.Tensor, sigma: torch.Tensor, dim: int):
        self.mu, self.sigma = mu.expand(dim), sigma.expand(dim)

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        eps = torch.randn(n, self.mu.shape[0], device=self.mu.device, generator=generator)
        return self.mu + self.sigma * eps

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return _diagonal_normal_log_prob(z.double(), self.mu.double(), self.sigma.double())


@torch.no_grad()
def aggregate_posterior_log_weights(log_ratio: Callable[[torch.Tensor], torch.Tensor], base,
                                    posterior_mu: torch.Tensor, posterior_sigma: torch.Tensor,
                                    num_samples: int, prior_share: float = 0.5,
                                    generator: Optional[torch.Generator] = None,
                                    batch_size: int = 1000) -> torch.Tensor:
    """Log-weights log p + log r - log g of num_samples draws from the defensive
    mixture g = prior_share p + (1 - prior_share) (1/N) sum_i q(z | x_i).

    base p: sample(n, generator) and log_prob(z) (a DiagonalNormal for the VAE's
    own prior, a GaussianMixture for NCP-GMM); the posteriors are
    N(posterior_mu[i], posterior_sigma[i]^2), [N, D]; log_ratio maps [S, D] to [S]."""
    if not 0 < prior_share <= 1:
        raise ValueError(f"prior_share must be in (0, 1], got {prior_share}")
    if posterior_mu.dim() != 2 or posterior_mu.shape != posterior_sigma.shape:
        raise ValueError(f"posterior_mu and posterior_sigma must both be [N, D], got "
                         f"{list(posterior_mu.shape)} and {list(posterior_sigma.shape)}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    device = posterior_mu.device
    count, dim = posterior_mu.shape
    values = []
    for start in range(0, num_samples, batch_size):
        n = min(batch_size, num_samples - start)
        from_prior = torch.rand(n, device=device, generator=generator) < prior_share
        component = torch.randint(count, (n,), device=device, generator=generator)
        eps = torch.randn(n, dim, device=device, generator=generator)
        from_base = base.sample(n, generator=generator).to(device)
        z = torch.where(from_prior[:, None], from_base, posterior_mu[component] + posterior_sigma[component] * eps)
        log_p = base.log_prob(z).double()
        log_q = log_mixture_density(z, posterior_mu, posterior_sigma)
        log_g = (torch.logaddexp(math.log(prior_share) + log_p, math.log1p(-prior_share) + log_q)
                 if prior_share < 1 else log_p)
        values.append((log_p + log_ratio(z).double() - log_g).cpu())
    return torch.cat(values)


@torch.no_grad()
def grouped_log_partition(vae, log_ratio: GroupLogRatio, num_samples: int, batch_size: int = 500,
                          generator: Optional[torch.Generator] = None) -> LogPartitionEstimate:
    """Z = E_p[prod_k r_k(z_k | z_<k)], z drawn from the VAE's prior group by group,
    batch_size samples per pass."""
    device = next(vae.parameters()).device
    values = []
    for start in range(0, num_samples, batch_size):
        n = min(batch_size, num_samples - start)
        total = torch.zeros(n, device=device)

        def accumulate(k, z, context, prior, total=total):
            total.add_(log_ratio(k, z, context).float())
            return z

        vae.sample_decoder_output(n, intercept=accumulate, generator=generator, decode=False)
        values.append(total.cpu())
    return summarize_log_weights(torch.cat(values), "prior")


@torch.no_grad()
def grouped_importance_weighted_log_likelihood(vae, log_ratio: GroupLogRatio, x: torch.Tensor, num_samples: int,
                                               chunk: int, log_z: float) -> torch.Tensor:
    """The IW bound on log p(x) per image with p_NCP in place of p: each sample's
    log p(z) gains sum_k log r_k(z_k | z_<k) - log Z."""
    def ncp_terms(groups):
        return sum(log_ratio(k, g.z, g.context).float() for k, g in enumerate(groups)) - log_z

    return vae.importance_weighted_log_likelihood(x, num_samples, chunk, extra_log_prior=ncp_terms)


@torch.no_grad()
def flat_posterior_parameters(vae, read, num_images: int, batch_size: int = 250):
    """(mu, sigma), each [N, D]: the posteriors q(z | x_i) of num_images images
    (read(indices) -> a batch) for a single-group model with flat latents, the
    components of the aggregate-posterior proposal."""
    mus, sigmas = [], []
    for start in range(0, num_images, batch_size):
        _, groups = vae(read(torch.arange(start, min(num_images, start + batch_size))), decode=False)
        if len(groups) != 1 or groups[0].z.dim() != 2:
            raise ValueError("the aggregate-posterior proposal serves single-group models with flat latents "
                             f"(mlp, conv); this model has {len(groups)} groups of shape "
                             f"{list(groups[0].z.shape[1:])}: use the prior proposal")
        mus.append(groups[0].posterior.mu.float())
        sigmas.append(groups[0].posterior.sigma.float())
    return torch.cat(mus), torch.cat(sigmas)


@torch.no_grad()
def grouped_aggregate_posterior_log_partition(vae, log_ratio: GroupLogRatio, posterior_mu: torch.Tensor,
                                              posterior_sigma: torch.Tensor, num_samples: int,
                                              generator: Optional[torch.Generator] = None,
                                              batch_size: int = 1000) -> LogPartitionEstimate:
    """log Z of a single flat group (prior N(mu_p, sigma_p) as the model defines it)
    from the defensive aggregate-posterior mixture."""
    prior = _flat_prior(vae)
    base = DiagonalNormal(prior.mu[0].to(posterior_mu), prior.sigma[0].to(posterior_mu), posterior_mu.shape[1])
    log_w = aggregate_posterior_log_weights(lambda z: log_ratio(0, z, None), base, posterior_mu, posterior_sigma,
                                            num_samples, generator=generator, batch_size=batch_size)
    return summarize_log_weights(log_w, "aggregate-posterior", (posterior_mu, posterior_sigma))


def _flat_prior(vae):
    priors = []

    def record(k, z, context, prior):
        priors.append(prior)
        return z

    vae.sample_decoder_output(1, intercept=record, generator=torch.Generator(next(vae.parameters()).device),
                              decode=False)
    if len(priors) != 1 or priors[0].mu.dim() != 2:
        raise ValueError("the aggregate-posterior proposal serves single-group models with flat latents")
    return priors[0]
