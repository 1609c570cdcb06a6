"""Sampling from an NCP prior: SIR (sampling-importance-resampling over
proposals from the base prior) and Langevin dynamics on the energy
E = -log r - log p, for flat latents (NCPPrior) and group by group (GroupedNCP)."""
import math
from typing import Optional

import torch

from ..ops import sir_resample
from .classifiers import GroupClassifier

SAMPLING_METHODS = ("sir", "langevin", "base")


def check_sampling_arguments(method: str, num_proposals: int, steps: int, step_size: float,
                             max_proposal_bytes: Optional[int] = None):
    """A sampler's knobs (the sample count is contract.check_samples')."""
    if method not in SAMPLING_METHODS:
        raise ValueError(f"sampling method must be one of {SAMPLING_METHODS}, got {method!r}")
    if method == "sir" and num_proposals < 1:
        raise ValueError(f"num_proposals must be >= 1, got {num_proposals}")
    if method == "langevin" and (steps < 0 or not step_size > 0):
        raise ValueError(f"Langevin needs steps >= 0 and step_size > 0, got {steps} and {step_size}")
    if max_proposal_bytes is not None and max_proposal_bytes < 1:
        raise ValueError(f"max_proposal_bytes must be >= 1, got {max_proposal_bytes}")


def langevin(z: torch.Tensor, energy, steps: int, step_size: float,
             generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Unadjusted Langevin dynamics: z <- z - (eta/2) grad E(z) + sqrt(eta) noise.
    energy(z) returns per-sample energies; their sum is differentiated."""
    for _ in range(steps):
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            grad, = torch.autograd.grad(energy(z).sum(), z)
        noise = torch.randn(z.shape, device=z.device, dtype=z.dtype, generator=generator)
        z = z - 0.5 * step_size * grad + math.sqrt(step_size) * noise
    return z.detach()


def default_proposal_bytes(device: torch.device) -> int:
    """The SIR scoring working set per chunk when the caller sets none: 32 MiB
    on the CPU, where larger chunks measured slower (their fresh pages are
    faulted in on every chunk and fall out of the caches; see
    docs/design-notes.md), and 512 MiB on CUDA, to give the GPU enough
    proposals per launch."""
    return 512 * 2**20 if device.type == "cuda" else 32 * 2**20


def sir_group(classifier, context: Optional[torch.Tensor], prior, num_proposals: int,
              generator: Optional[torch.Generator], max_proposal_bytes: int, shared_context: bool = True):
    """One latent group by SIR: num_proposals draws from prior (p(z_k | z_<k), one
    row per image) per image, one of them kept with probability proportional to
    r_k = exp(classifier(z, context)).

    The B x M proposals are scored in chunks of images whose working set
    (proposals and classifier activations) stays within max_proposal_bytes (the
    same chunks on both paths). shared_context: score through the
    classifier's proposal_log_ratios (the context once per image) where it has
    one; False repeats the context per proposal and runs the module."""
    M = num_proposals
    n = prior.mu.shape[0]
    ours = isinstance(classifier, GroupClassifier)  # else a user's module: scored on repeated contexts
    per_proposal = (classifier.scoring_bytes_per_proposal() if ours
                    else 4 * (prior.mu[0].numel() + (context[0].numel() if context is not None else 0)))
    rows = max(1, max_proposal_bytes // (M * per_proposal))
    chosen = []
    for start in range(0, n, rows):
        mu, sigma = prior.mu[start:start + rows], prior.sigma[start:start + rows]
        b = mu.shape[0]
        eps = torch.randn((b, M, *mu.shape[1:]), device=mu.device, generator=generator)
        proposals = mu[:, None] + sigma[:, None] * eps
        ctx = None if context is None else context[start:start + b]
        if ours:
            log_w = classifier.proposal_log_ratios(proposals, ctx, shared_context).float()
        else:
            ctx = None if ctx is None else ctx.repeat_interleave(M, dim=0)
            log_w = classifier(proposals.flatten(0, 1), ctx).view(b, M).float()
        picked, _ = sir_resample(log_w, proposals, 1, generator=generator)
        chosen.append(picked[:, 0])
    return torch.cat(chosen)


def langevin_group(classifier, z: torch.Tensor, context: Optional[torch.Tensor], prior, steps: int,
                   step_size: float, generator: Optional[torch.Generator]) -> torch.Tensor:
    """One latent group by Langevin dynamics from z on E_k = -log r_k(z, context) - log p(z | z_<k)."""
    def energy(z):  # per sample
        return -(classifier(z, context) + prior.log_prob(z).flatten(1).sum(1))
    return langevin(z, energy, steps, step_size, generator)
