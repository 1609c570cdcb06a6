"""Samplers of the density that the NCP likelihood scores.

A hierarchical VAE's NCP prior is

    p_NCP(z) = (1/Z) prod_k r_k(z_k | z_<k) p(z_k | z_<k),   Z = E_p[prod_k r_k].

The group-wise samplers (GroupedNCP.sample with mode="group", the paper's
choice) resample or run Langevin one group at a time, given the groups already
chosen, so they draw from prod_k r_k p_k / Z_k(z_<k), each group normalised on
its own with Z_k(z_<k) = E_{p_k}[r_k]. That is a different density whenever
Z_k depends on z_<k: the group-wise sampler gives no preference to contexts
z_<k under which later groups' classifiers score high. The samplers here
target p_NCP itself, the density whose NLL is reported:

- joint SIR: M whole ancestral samples from the base prior per image, weighted
  by sum_k log r_k, one resampled;
- joint Langevin: Langevin dynamics on all groups at once in the
  reparameterised noise z_k = mu_k(z_<k) + sigma_k eps_k, where p(z) becomes
  N(0, I) in eps and the energy is 1/2 |eps|^2 - sum_k log r_k, its gradient
  flowing through the decoder that computes mu_k, sigma_k and the contexts.

Both take a log_ratio(k, z_k, context) -> [B] callable, so they serve any
classifier set over any LatentVAE.
"""
import math
from typing import Callable, Optional

import torch

from ..models.base import LatentVAE
from ..ops import sir_resample

LogRatio = Callable[[int, torch.Tensor, Optional[torch.Tensor]], torch.Tensor]

SAMPLING_MODES = ("group", "joint")


def check_sampling_mode(mode: str) -> None:
    if mode not in SAMPLING_MODES:
        raise ValueError(f"sampling mode must be one of {SAMPLING_MODES}, got {mode!r}")


def _scratch_generator(device: torch.device) -> torch.Generator:
    """A generator for the base draws that an intercept replaces anyway: keeps
    them off the caller's generator and the global RNG (no side effects)."""
    return torch.Generator(device).manual_seed(0)


def _device(vae: LatentVAE) -> torch.device:
    return next(vae.parameters()).device


@torch.no_grad()
def joint_sir_latents(vae: LatentVAE, log_ratio: LogRatio, num_samples: int, num_proposals: int,
                      temperature: float = 1.0, generator: Optional[torch.Generator] = None,
                      max_proposals_per_pass: int = 4096) -> list[torch.Tensor]:
    """Joint SIR: per image, num_proposals ancestral samples of all groups from the
    base prior, weighted by sum_k log r_k(z_k | z_<k); one drawn per image in
    proportion to the weights. Returns the chosen latents, one tensor per group.

    max_proposals_per_pass bounds memory: images are processed in chunks of
    max(1, max_proposals_per_pass // num_proposals) (each proposal carries a full
    decoder state)."""
    if num_samples < 1 or num_proposals < 1 or max_proposals_per_pass < 1:
        raise ValueError(f"joint SIR needs num_samples, num_proposals and max_proposals_per_pass >= 1, got "
                         f"{num_samples}, {num_proposals} and {max_proposals_per_pass}")
    M = num_proposals
    rows = max(1, max_proposals_per_pass // M)
    chosen: list[list[torch.Tensor]] = []
    for start in range(0, num_samples, rows):
        b = min(rows, num_samples - start)
        latents: list[torch.Tensor] = []
        total = torch.zeros(b * M, device=_device(vae))

        def record(k, z, context, prior, total=total, latents=latents):
            total.add_(log_ratio(k, z, context).float())
            latents.append(z)
            return z

        vae.sample_decoder_output(b * M, temperature, intercept=record, generator=generator, decode=False)
        slots = torch.arange(M, device=total.device, dtype=torch.float32).expand(b, M)[..., None].contiguous()
        _, index = sir_resample(total.view(b, M), slots, 1, generator=generator)
        rows_index = torch.arange(b, device=total.device)
        chosen.append([z.view(b, M, *z.shape[1:])[rows_index, index[:, 0]] for z in latents])
    return [torch.cat(parts) for parts in zip(*chosen)]


def joint_langevin_latents(vae: LatentVAE, log_ratio: LogRatio, num_samples: int, steps: int, step_size: float,
                           temperature: float = 1.0, generator: Optional[torch.Generator] = None
                           ) -> list[torch.Tensor]:
    """Joint Langevin in the reparameterised noise: eps starts as a base-prior draw
    and takes `steps` unadjusted Langevin steps on E(eps) = 1/2 |eps|^2 -
    sum_k log r_k(z_k(eps), context_k(eps)). Returns the latents z(eps), one
    tensor per group. (At temperature T the groups are z_k = mu_k + T sigma_k
    eps_k, and the Gaussian term stays 1/2 |eps|^2: the tempered base.)"""
    if num_samples < 1 or steps < 0 or not step_size > 0:
        raise ValueError(f"joint Langevin needs num_samples >= 1, steps >= 0 and step_size > 0, got "
                         f"{num_samples}, {steps} and {step_size}")
    device = _device(vae)
    eps: list[torch.Tensor] = []

    def record_noise(k, z, context, prior):
        eps.append(((z - prior.mu) / prior.sigma).detach())
        return z

    with torch.no_grad():
        vae.sample_decoder_output(num_samples, temperature, intercept=record_noise, generator=generator,
                                  decode=False)

    def latents_and_log_ratio(noise):
        latents: list[torch.Tensor] = []
        log_ratios: list[torch.Tensor] = []

        def reparameterise(k, z, context, prior):
            z = prior.mu + prior.sigma * noise[k]
            log_ratios.append(log_ratio(k, z, context).float())
            latents.append(z)
            return z

        vae.sample_decoder_output(num_samples, temperature, intercept=reparameterise,
                                  generator=_scratch_generator(device), decode=False)
        return latents, torch.stack(log_ratios).sum(0)

    for _ in range(steps):
        with torch.enable_grad():
            noise = [e.detach().requires_grad_(True) for e in eps]
            _, log_r = latents_and_log_ratio(noise)
            energy = 0.5 * sum(e.pow(2).sum() for e in noise) - log_r.sum()
            grads = torch.autograd.grad(energy, noise)
        eps = [e.detach() - 0.5 * step_size * g
               + math.sqrt(step_size) * torch.randn(e.shape, device=e.device, dtype=e.dtype, generator=generator)
               for e, g in zip(eps, grads)]
    with torch.no_grad():
        latents, _ = latents_and_log_ratio(eps)
    return [z.detach() for z in latents]


@torch.no_grad()
def decode_latents(vae: LatentVAE, latents: list[torch.Tensor], temperature: float = 1.0) -> torch.Tensor:
    """Images in [0, 1] for given latents of every group (the decoder's mean).
    Feeding the groups in order reproduces each group's context, since the
    decoder is deterministic given z_<k."""
    n = latents[0].shape[0]
    return vae.sample(n, temperature, intercept=lambda k, z, context, prior: latents[k],
                      generator=_scratch_generator(_device(vae)))
