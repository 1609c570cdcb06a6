"""Monte Carlo estimates over an NCP prior: the partition function Z = E_p[r]
and the importance-weighted log-likelihood with the NCP prior in place of the
VAE's, each with its standard error where it is a mean of samples."""
import math
from typing import Callable, Optional

import torch

# log_ratio(k, z_k, context) -> log r_k per sample, [B]: group k's classifier.
GroupLogRatio = Callable[[int, torch.Tensor, Optional[torch.Tensor]], torch.Tensor]


def log_mean_exp_with_stderr(log_values: torch.Tensor):
    """log mean exp(x) and its standard error (delta method: std(r) / (sqrt(N) mean(r)))."""
    n = log_values.numel()
    lse = torch.logsumexp(log_values.double().flatten(), 0)
    normalized = torch.exp(log_values.double().flatten() - lse) * n  # r_i / mean(r)
    stderr = float(normalized.std() / math.sqrt(n)) if n > 1 else float("inf")
    return float(lse - math.log(n)), stderr


@torch.no_grad()
def grouped_log_partition(vae, log_ratio: GroupLogRatio, num_samples: int, batch_size: int = 500,
                          generator: Optional[torch.Generator] = None):
    """(log Z, standard error): Z = E_p[prod_k r_k(z_k | z_<k)], z drawn from the
    VAE's prior group by group, batch_size samples per pass."""
    device = next(vae.parameters()).device
    values = []
    for start in range(0, num_samples, batch_size):
        n = min(batch_size, num_samples - start)
        total = torch.zeros(n, device=device)

        def accumulate(k, z, context, prior):
            total.add_(log_ratio(k, z, context).float())
            return z

        vae.sample_decoder_output(n, intercept=accumulate, generator=generator, decode=False)
        values.append(total.cpu())
    return log_mean_exp_with_stderr(torch.cat(values))


@torch.no_grad()
def grouped_importance_weighted_log_likelihood(vae, log_ratio: GroupLogRatio, x: torch.Tensor, num_samples: int,
                                               chunk: int, log_z: float) -> torch.Tensor:
    """The IW bound on log p(x) per image with p_NCP in place of p: each sample's
    log p(z) gains sum_k log r_k(z_k | z_<k) - log Z."""
    def ncp_terms(groups):
        return sum(log_ratio(k, g.z, g.context).float() for k, g in enumerate(groups)) - log_z

    return vae.importance_weighted_log_likelihood(x, num_samples, chunk, extra_log_prior=ncp_terms)
