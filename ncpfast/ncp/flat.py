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

from ..models.base import LatentVAE
from .classifiers import probe_groups
from .contract import NoiseContrastivePrior, SamplerConfig, check_samples, check_temperature
from .estimators import LogPartitionEstimate
from .prior import NCPPrior

CHECKPOINT_KIND = "flat"
MIN_HIDDEN = 64  # as GroupClassifier's flat groups: narrower MLPs underfit the posterior/base boundary


def posterior_samples(posterior_mu: torch.Tensor, posterior_sigma: torch.Tensor, draws: int,
                      generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """draws samples z = mu + sigma * eps per image ([N, D] -> [draws * N, D]), eps from generator."""
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    mu, sigma = posterior_mu.repeat(draws, 1), posterior_sigma.repeat(draws, 1)
    return mu + sigma * torch.randn(mu.shape, device=mu.device, dtype=mu.dtype, generator=generator)


class FlatNCP(NoiseContrastivePrior):
    """The VAE (frozen, eval mode) and an NCPPrior over its flat latents with base `base`
    (StandardNormal, GaussianMixture, ...). hidden: the classifier's width (at least 64).
    The prior's log Z is this NCP's (one cache, the NCPPrior's)."""
    num_groups = 1

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

    @property
    def _log_partition(self) -> Optional[LogPartitionEstimate]:
        return self.prior._log_partition

    @_log_partition.setter
    def _log_partition(self, estimate: Optional[LogPartitionEstimate]) -> None:
        self.prior._log_partition = estimate

    @property
    def base(self):
        return self.prior.base

    @property
    def base_kind(self) -> str:
        return self.prior.base_kind

    def log_ratio(self, z: torch.Tensor) -> torch.Tensor:
        return self.prior.log_ratio(z)

    def group_log_ratio(self, k: int, z: torch.Tensor, context: Optional[torch.Tensor]) -> torch.Tensor:
        return self.prior.group_log_ratio(k, z, context)

    # --- training -------------------------------------------------------------------------

    def fit(self, posterior_samples: torch.Tensor, epochs: int = 10, batch_size: int = 256, lr: float = 1e-3,
            generator: Optional[torch.Generator] = None, progress: bool = True, draws: int = 1) -> dict:
        """Trains the classifier on posterior samples [draws * N, dim] of N images
        (posterior_samples(mu, sigma, draws)) against fresh base samples: NCPPrior.fit,
        early stopping on a held-out tenth of the images, all draws of each. A fit changes Z."""
        return self.prior.fit(posterior_samples, epochs=epochs, batch_size=batch_size, lr=lr, generator=generator,
                              progress=progress, draws=draws)

    # --- the partition function and the likelihood -------------------------------------------

    def _new_log_partition_estimate(self, num_samples: int, proposal: str, posterior, batch_size: int,
                                    generator: Optional[torch.Generator]) -> LogPartitionEstimate:
        """Z = E_base[r(z)]: the prior's estimate (the base itself is "prior", the GMM for NCP-GMM)."""
        return self.prior._new_log_partition_estimate(num_samples, proposal, posterior, batch_size, generator)

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
    def _sample(self, n: int, sampler: SamplerConfig, temperature: float,
                generator: Optional[torch.Generator]) -> torch.Tensor:
        """n images in [0, 1]: "sir" or "langevin" from p_NCP (NCPPrior's samplers; with
        one latent group the "group" and "joint" modes are the same sampler), "base"
        from the VAE's own N(0, I) prior (as GroupedNCP; base_sample draws from a GMM
        base)."""
        if sampler.method == "base":
            return self.vae.sample(n, temperature, generator=generator)
        z = self.prior.sample(n, sampler, temperature=temperature, generator=generator)
        return self._decode(z, generator)

    @torch.no_grad()
    def base_sample(self, n: int, temperature: float = 1.0,
                    generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """n images in [0, 1] from the base alone (e.g. the GMM), tempered as in sample."""
        check_samples(n)
        check_temperature(temperature)
        return self._decode(self.prior.tempered(temperature).base.sample(n, generator=generator), generator)

    def _decode(self, z: torch.Tensor, generator) -> torch.Tensor:
        return self.vae.sample(z.shape[0], intercept=lambda k, drawn, context, prior: z.to(drawn), generator=generator)

    # --- persistence ----------------------------------------------------------------------

    def to_checkpoint(self) -> dict:
        """Plain data (loads with weights_only=True); "kind" tells pipeline.load_ncp to build a FlatNCP."""
        return {"kind": CHECKPOINT_KIND, "format": 2, "hidden": self.hidden, "prior": self.prior.to_checkpoint()}

    @classmethod
    def from_checkpoint(cls, vae: LatentVAE, state: dict) -> "FlatNCP":
        if state.get("kind") != CHECKPOINT_KIND:
            raise ValueError(f"not a FlatNCP checkpoint (kind {state.get('kind')!r}, expected {CHECKPOINT_KIND!r})")
        device = next(vae.parameters()).device
        prior = NCPPrior.from_checkpoint(state["prior"]).to(device)
        ncp = cls(vae, prior.base, hidden=state["hidden"])
        ncp.prior = prior
        if state.get("format", 1) < 2:  # format 1 kept log Z beside the prior's checkpoint
            ncp._load_log_partition_state(state.get("log_partition"))
        return ncp.eval()
