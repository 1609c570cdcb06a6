"""NCP for a trained VAE: one classifier per latent group (a hierarchical VAE has
many; a single-group VAE has one), the VAE frozen.

Classifier k sees z_k and the decoder context for z_<k. Its positives are
z_k ~ q(z_k | z_<k, x), its negatives z_k ~ p(z_k | z_<k) with the same
posterior z_<k: one encoder/decoder pass yields the data of every group, so all
classifiers train together.

    p_NCP(z) = (1/Z) prod_k r_k(z_k | z_<k) p(z_k | z_<k),   Z = E_p[prod_k r_k]

GroupedNCP ties the pieces together: the classifiers (classifiers.py), their
training (fitting.py), log Z and the likelihood (estimators.py) and the
group-wise samplers (sampling.py).
"""
from typing import Optional

import torch
import torch.nn as nn

from ..models.base import LatentVAE
from ..runtime import SINGLE_PROCESS, DistributedContext
from .classifiers import GroupClassifier, probe_groups
from .contract import NoiseContrastivePrior, SamplerConfig
from .estimators import (
    LogPartitionEstimate,
    grouped_aggregate_posterior_log_partition,
    grouped_importance_weighted_log_likelihood,
    grouped_log_partition,
)
from .fitting import evaluate_classifiers, fit_classifiers, group_losses
from .joint_sampling import decode_latents, joint_langevin_latents, joint_sir_latents
from .sampling import default_proposal_bytes, langevin_group, sir_group


class GroupedNCP(NoiseContrastivePrior):
    """kernels: "auto" scores SIR proposals with the context shared across an
    image's proposals (GroupClassifier.proposal_log_ratios); "torch" repeats the
    context per proposal and runs the module (the reference path)."""
    default_log_z_batch = 500

    def __init__(self, vae: LatentVAE, hidden: int = 32, cells: int = 2):
        super().__init__()
        self.vae = vae.eval().requires_grad_(False)
        shapes, contexts = self._probe_groups()
        self.classifiers = nn.ModuleList(GroupClassifier(s, c, hidden, cells) for s, c in zip(shapes, contexts))
        self.hidden, self.cells = hidden, cells

    def _probe_groups(self):
        """([latent shape], [context channels]) of the VAE's groups."""
        return probe_groups(self.vae)

    @property
    def num_groups(self) -> int:
        return len(self.classifiers)

    def group_log_ratio(self, k: int, z: torch.Tensor, context: Optional[torch.Tensor]) -> torch.Tensor:
        return self.classifiers[k](z, context)

    def _device(self):
        return next(self.vae.parameters()).device

    # --- training (fitting.py) ----------------------------------------------------------------

    def _group_losses(self, x: torch.Tensor):
        """BCE and accuracy of every group's classifier on one batch (the VAE frozen)."""
        return group_losses(self.vae, self.group_log_ratio, x)

    def fit(self, read_train, num_train: int, read_val, num_val: int, epochs: int = 10, batch_size: int = 64,
            lr: float = 1e-3, weight_decay: float = 0.0, generator: Optional[torch.Generator] = None,
            progress: bool = True, writer=None,
            distributed: DistributedContext = SINGLE_PROCESS, patience: Optional[int] = None) -> dict:
        """Trains every classifier in parallel; see fitting.fit_classifiers. A fit changes Z."""
        history = fit_classifiers(self.classifiers, self._group_losses, read_train, num_train, read_val, num_val,
                                  epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                                  generator=generator, progress=progress, writer=writer, distributed=distributed,
                                  patience=patience)
        self.forget_log_partition()
        return history

    def evaluate(self, read, num_images: int, batch_size: int = 64,
                 distributed: DistributedContext = SINGLE_PROCESS):
        """Per-group held-out BCE and accuracy; see fitting.evaluate_classifiers."""
        return evaluate_classifiers(self.classifiers, self._group_losses, read, num_images, batch_size, distributed)

    # --- the partition function and the likelihood (estimators.py) ------------------------------

    def _new_log_partition_estimate(self, num_samples: int, proposal: str, posterior, batch_size: int,
                                    generator: Optional[torch.Generator]) -> LogPartitionEstimate:
        """proposal "prior": z drawn from the VAE's prior group by group;
        "aggregate-posterior" (single-group flat models): the defensive mixture of the
        prior and posterior=(mu, sigma) [N, D] of N training images
        (estimators.flat_posterior_parameters)."""
        if proposal == "prior":
            return grouped_log_partition(self.vae, self.group_log_ratio, num_samples, batch_size, generator)
        return grouped_aggregate_posterior_log_partition(self.vae, self.group_log_ratio, *posterior, num_samples,
                                                         generator)

    def importance_weighted_log_likelihood(self, x: torch.Tensor, num_samples: int, chunk: int = 0,
                                           log_z: Optional[float] = None) -> torch.Tensor:
        """The IW bound with p_NCP in place of p: log p(z) + sum_k log r_k - log Z."""
        log_z = self.log_partition()[0] if log_z is None else log_z
        return grouped_importance_weighted_log_likelihood(self.vae, self.group_log_ratio, x, num_samples, chunk, log_z)

    # --- sampling (sampling.py) -----------------------------------------------------------------

    @torch.no_grad()
    def _sample(self, n: int, sampler: SamplerConfig, temperature: float,
                generator: Optional[torch.Generator]) -> torch.Tensor:
        """n images in [0, 1] from the NCP prior, or the VAE's prior (method "base").

        mode "group" (the paper's samplers): group by group, SIR (num_proposals per
        group given the chosen z_<k) or Langevin (steps on E_k = -log r_k - log p_k);
        each group is normalised on its own, so this draws from prod_k r_k p_k /
        Z_k(z_<k), not exactly from the density the NLL scores. mode "joint": SIR
        over whole ancestral samples or Langevin on all groups in the noise
        (joint_sampling.py), which target that density, p_NCP itself.
        Group-wise SIR scores the n x num_proposals proposals of a group in chunks of images
        whose scoring working set (proposals and classifier activations) stays
        within max_proposal_bytes (default: default_proposal_bytes(device)).
        The VAE's BatchNorm statistics can be re-estimated at a temperature first
        (ncpfast.models.temperature)."""
        method, steps, step_size = sampler.method, sampler.steps, sampler.step_size
        if method == "base":
            return self.vae.sample(n, temperature, generator=generator)
        if sampler.mode == "joint":
            return self._sample_joint(n, method, sampler.num_proposals, steps, step_size, temperature, generator)
        budget = sampler.max_proposal_bytes or default_proposal_bytes(self._device())
        if method == "sir":
            def intercept(k, z, context, prior):
                return self._sir_group(k, context, prior, sampler.num_proposals, generator, budget)
        else:
            def intercept(k, z, context, prior):
                return self._langevin_group(k, z, context, prior, steps, step_size, generator)
        return self.vae.sample(n, temperature, intercept=intercept, generator=generator)

    def _sample_joint(self, n, method, num_proposals, steps, step_size, temperature, generator):
        if method == "sir":
            latents = joint_sir_latents(self.vae, self.group_log_ratio, n, num_proposals, temperature, generator)
        else:
            latents = joint_langevin_latents(self.vae, self.group_log_ratio, n, steps, step_size, temperature,
                                             generator)
        return decode_latents(self.vae, latents, temperature)

    def _sir_group(self, k, context, prior, M, generator, max_proposal_bytes):
        return sir_group(self.classifiers[k], context, prior, M, generator, max_proposal_bytes,
                         shared_context=self.kernels != "torch")

    def _langevin_group(self, k, z, context, prior, steps, step_size, generator):
        return langevin_group(self.classifiers[k], z, context, prior, steps, step_size, generator)

    # --- persistence ----------------------------------------------------------------------------

    def to_checkpoint(self) -> dict:
        return {"format": 1, "hidden": self.hidden, "cells": self.cells,
                "classifiers": self.classifiers.state_dict(), "log_partition": self._log_partition_state()}

    @classmethod
    def from_checkpoint(cls, vae: LatentVAE, state: dict) -> "GroupedNCP":
        ncp = cls(vae, hidden=state["hidden"], cells=state["cells"]).to(next(vae.parameters()).device)
        ncp.classifiers.load_state_dict(state["classifiers"])
        ncp._load_log_partition_state(state.get("log_partition"))
        return ncp.eval()

