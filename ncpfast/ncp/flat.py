"""FlatNCP: a single-group VAE (mlp, conv) with an NCPPrior over its one flat
latent group, on any base: the paper's NCP-GMM (Table 7) when the base is a
GaussianMixture fitted to posterior samples (the aggregate posterior).

    p_NCP(z) = r(z) p_base(z) / Z,   Z = E_{p_base}[r(z)]

The classifier tells posterior samples z ~ q(z | x) from base samples; the VAE
stays frozen. It offers what the evaluation and the CLIs use on GroupedNCP (the
IW likelihood, log Z, sample, checkpoints), plus the base prior alone
(base_log_likelihood, base_sample: the "GMM" row of the evaluation).
"""
from typing import Optional

import torch
import torch.nn as nn

from ..models.base import LatentVAE
from .base_priors import GaussianMixture, StandardNormal
from .classifiers import probe_groups
from .estimators import (
    LogPartitionEstimate,
    aggregate_posterior_log_weights,
    cached_estimate,
    check_proposal_arguments,
    summarize_log_weights,
)
from .joint_sampling import check_sampling_mode
from .prior import NCPPrior
from .sampling import check_sampling_arguments

CHECKPOINT_KIND = "flat"
MIN_HIDDEN = 64  # as GroupClassifier's flat groups: narrower MLPs underfit the posterior/base boundary


def posterior_samples(posterior_mu: torch.Tensor, posterior_sigma: torch.Tensor, draws: int,
                      generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """draws samples z = mu + sigma * eps per image ([N, D] -> [draws * N, D]), eps from generator."""
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    mu, sigma = posterior_mu.repeat(draws, 1), posterior_sigma.repeat(draws, 1)
    return mu + sigma * torch.randn(mu.shape, device=mu.device, dtype=mu.dtype, generator=generator)


class FlatNCP(nn.Module):
    """The VAE (frozen, eval mode) and an NCPPrior over its flat latents with base `base`
    (StandardNormal, GaussianMixture, ...). hidden: the classifier's width (at least 64)."""

    def __init__(self, vae: LatentVAE, base, hidden: int = 64):
        super().__init__()
        self.vae = vae.eval().requires_grad_(False)
        shapes, _ = probe_groups(self.vae)
        if len(shapes) != 1 or len(shapes[0]) != 1:
            raise ValueError(f"FlatNCP needs a single-group VAE with flat latents (model mlp or conv); this one has "
                             f"{len(shapes)} groups of shapes {shapes}")
        self.dim = shapes[0][0]
        self.hidden = hidden
        self.prior = NCPPrior(base, dim=self.dim, hidden=max(hidden, MIN_HIDDEN), layers=2)
        self._log_partition = None

    num_groups = 1

    @property
    def base(self):
        return self.prior.base

    @property
    def base_kind(self) -> str:
        """"gmm" for a GaussianMixture base, "gaussian" for N(0, I), else the base's type name."""
        if isinstance(self.base, GaussianMixture):
            return "gmm"
        return "gaussian" if isinstance(self.base, StandardNormal) else type(self.base).__name__

    def log_ratio(self, z: torch.Tensor) -> torch.Tensor:
        return self.prior.log_ratio(z)

    # --- training -------------------------------------------------------------------------

    def fit(self, posterior_samples: torch.Tensor, epochs: int = 10, batch_size: int = 256, lr: float = 1e-3,
            generator: Optional[torch.Generator] = None, progress: bool = True, draws: int = 1) -> dict:
        """Trains the classifier on posterior samples [draws * N, dim] of N images
        (posterior_samples(mu, sigma, draws)) against fresh base samples: NCPPrior.fit,
        early stopping on a held-out tenth of the images, all draws of each. A fit changes Z."""
        history = self.prior.fit(posterior_samples, epochs=epochs, batch_size=batch_size, lr=lr, generator=generator,
                                 progress=progress, draws=draws)
        self._log_partition = None
        return history

    # --- the partition function and the likelihood -------------------------------------------

    def log_partition(self, num_samples: Optional[int] = None, batch_size: int = 1000,
                      generator: Optional[torch.Generator] = None, refresh: bool = False,
                      proposal: Optional[str] = None,
                      posterior: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> tuple[float, float]:
        """(log Z, standard error); see log_partition_estimate."""
        estimate = self.log_partition_estimate(num_samples, batch_size, generator, refresh, proposal, posterior)
        return estimate.log_z, estimate.stderr

    @property
    def stored_log_partition(self) -> Optional[LogPartitionEstimate]:
        """The last log Z estimate (a checkpoint's, after from_checkpoint), or None."""
        return self._log_partition

    @torch.no_grad()
    def log_partition_estimate(self, num_samples: Optional[int] = None, batch_size: int = 1000,
                               generator: Optional[torch.Generator] = None, refresh: bool = False,
                               proposal: Optional[str] = None,
                               posterior: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> LogPartitionEstimate:
        """Z = E_base[r(z)] with its standard error and effective sample size.
        proposal "prior": draws from the base itself (the GMM for NCP-GMM; log w = log r);
        "aggregate-posterior": the defensive mixture of the base and posterior=(mu, sigma)
        [N, D] of N training images (estimators.aggregate_posterior_log_weights),
        which puts draws where r is large. Cached until the next fit (or refresh=True);
        the cache answers a request whose sample count, proposal and posterior are
        each the estimate's or not given (estimators.cached_estimate). proposal None:
        the cached estimate whatever its proposal, else the prior."""
        cached = None if refresh else cached_estimate(self._log_partition, num_samples, proposal, posterior)
        if cached is not None:
            return cached
        proposal = proposal or "prior"
        check_proposal_arguments(posterior, proposal)
        num_samples = num_samples or 10_000
        if proposal == "prior":
            log_w = torch.cat([self.log_ratio(self.base.sample(min(batch_size, num_samples - start),
                                                               generator=generator)).cpu()
                               for start in range(0, num_samples, batch_size)])
        else:
            log_w = aggregate_posterior_log_weights(self.log_ratio, self.base, *posterior, num_samples,
                                                    generator=generator, batch_size=batch_size)
        self._log_partition = summarize_log_weights(log_w, proposal, posterior if proposal != "prior" else None)
        return self._log_partition

    @torch.no_grad()
    def importance_weighted_log_likelihood(self, x: torch.Tensor, num_samples: int, chunk: int = 0,
                                           log_z: Optional[float] = None) -> torch.Tensor:
        """The IW bound with p_NCP in place of the VAE's prior: each sample's log p(z)
        becomes log r(z) + log p_base(z) - log Z."""
        log_z = self.log_partition()[0] if log_z is None else log_z

        def ncp_terms(groups):
            z = groups[0].z
            return self.log_ratio(z).float() + self._base_minus_vae_prior(groups) - log_z

        return self.vae.importance_weighted_log_likelihood(x, num_samples, chunk, extra_log_prior=ncp_terms)

    @torch.no_grad()
    def base_log_likelihood(self, x: torch.Tensor, num_samples: int, chunk: int = 0) -> torch.Tensor:
        """The IW bound with the base alone (e.g. the GMM) as the prior."""
        return self.vae.importance_weighted_log_likelihood(x, num_samples, chunk,
                                                           extra_log_prior=self._base_minus_vae_prior)

    def _base_minus_vae_prior(self, groups) -> torch.Tensor:
        """log p_base(z) - log p_VAE(z) per sample: swaps the VAE's prior for the base."""
        group = groups[0]
        return self.base.log_prob(group.z).float() - group.prior.log_prob(group.z).flatten(1).sum(1)

    # --- sampling -------------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, n: int, method: str = "sir", num_proposals: int = 50, steps: int = 50, step_size: float = 1e-2,
               temperature: float = 1.0, generator: Optional[torch.Generator] = None,
               max_proposal_bytes: Optional[int] = None, mode: str = "group") -> torch.Tensor:
        """n images in [0, 1]: method "sir" or "langevin" from p_NCP (NCPPrior.sample;
        with one latent group the "group" and "joint" modes are the same sampler),
        "base" from the VAE's own N(0, I) prior (as GroupedNCP). temperature T scales
        the base's standard deviations (a GMM's per component) before the
        classifier reweights it: at T < 1 the classifier scores latents it was not
        trained on."""
        check_sampling_arguments(method, n, num_proposals, steps, step_size, max_proposal_bytes)
        check_sampling_mode(mode)
        if method == "base":
            return self.vae.sample(n, temperature, generator=generator)
        prior = self._tempered_prior(temperature)
        kwargs = {} if max_proposal_bytes is None else {"max_proposal_bytes": max_proposal_bytes}
        z = prior.sample(n, method=method, num_proposals=num_proposals, steps=steps, step_size=step_size,
                         generator=generator, **kwargs)
        return self._decode(z, generator)

    @torch.no_grad()
    def base_sample(self, n: int, temperature: float = 1.0,
                    generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """n images in [0, 1] from the base alone (e.g. the GMM), tempered as in sample."""
        if n < 1:
            raise ValueError(f"number of samples must be >= 1, got {n}")
        return self._decode(self._tempered_prior(temperature).base.sample(n, generator=generator), generator)

    def _decode(self, z: torch.Tensor, generator) -> torch.Tensor:
        return self.vae.sample(z.shape[0], intercept=lambda k, drawn, context, prior: z.to(drawn), generator=generator)

    def _tempered_prior(self, temperature: float) -> NCPPrior:
        """self.prior, or at T != 1 an NCPPrior sharing its classifier over the base with
        standard deviations scaled by T."""
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if temperature == 1:
            return self.prior
        base = self.base
        if isinstance(base, StandardNormal):
            anchor = base._device_anchor
            base = GaussianMixture(torch.ones(1, device=anchor.device), torch.zeros(1, self.dim, device=anchor.device),
                                   torch.zeros(1, self.dim, device=anchor.device))
        if not isinstance(base, GaussianMixture):
            raise ValueError(f"temperature {temperature} is defined for a StandardNormal or GaussianMixture base, "
                             f"not {type(base).__name__}; sample at temperature 1")
        tempered = GaussianMixture(base.log_weights.exp(), base.means, base.log_stds + torch.log(
            torch.tensor(float(temperature), device=base.means.device)))
        prior = NCPPrior(tempered, classifier=self.prior.classifier, dim=self.dim)
        prior.kernels = self.prior.kernels
        return prior

    # --- persistence ----------------------------------------------------------------------

    def to_checkpoint(self) -> dict:
        """Plain data (loads with weights_only=True); "kind" tells stage2.load_ncp to build a FlatNCP."""
        return {"kind": CHECKPOINT_KIND, "format": 1, "hidden": self.hidden, "prior": self.prior.to_checkpoint(),
                "log_partition": None if self._log_partition is None else self._log_partition.as_dict()}

    @classmethod
    def from_checkpoint(cls, vae: LatentVAE, state: dict) -> "FlatNCP":
        if state.get("kind") != CHECKPOINT_KIND:
            raise ValueError(f"not a FlatNCP checkpoint (kind {state.get('kind')!r}, expected {CHECKPOINT_KIND!r})")
        device = next(vae.parameters()).device
        prior = NCPPrior.from_checkpoint(state["prior"]).to(device)
        ncp = cls(vae, prior.base, hidden=state["hidden"])
        ncp.prior = prior
        saved = state.get("log_partition")
        ncp._log_partition = None if saved is None else LogPartitionEstimate.from_dict(saved)
        return ncp.eval()
