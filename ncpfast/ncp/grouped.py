"""NCP for a trained VAE: one classifier per latent group (a hierarchical VAE has
many; a single-group VAE has one), the VAE frozen.

Classifier k sees z_k and the decoder context for z_<k. Its positives are
z_k ~ q(z_k | z_<k, x), its negatives z_k ~ p(z_k | z_<k) with the same
posterior z_<k: one encoder/decoder pass yields the data of every group, so all
classifiers train together.

    p_NCP(z) = (1/Z) prod_k r_k(z_k | z_<k) p(z_k | z_<k),   Z = E_p[prod_k r_k]
"""
import copy
import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from ..models.base import LatentVAE
from ..nn.cells import RESIDUAL_SCALE, SqueezeExcitation, WNConv2d
from ..ops import sir_resample
from ..training.distributed import DistributedContext, all_reduce_sum, average_gradients, broadcast_module
from .prior import check_sampling_arguments, default_classifier, langevin, log_mean_exp_with_stderr

CHANCE_ACCURACY = 0.55  # a group whose held-out accuracy stays below this is reported as at chance


class ResidualBlock(nn.Module):
    """x + 0.1 * SE(conv3x3(Swish(conv3x3(Swish(x))))): NVAE's encoder cell without
    BatchNorm. A classifier trained on half-positive, half-negative batches and
    evaluated on running statistics behaved differently in the two modes (held-out
    accuracy below chance), so the classifiers use no BatchNorm."""

    def __init__(self, channels: int):
        super().__init__()
        self.ops = nn.Sequential(nn.SiLU(), WNConv2d(channels, channels, 3, padding=1), nn.SiLU(),
                                 WNConv2d(channels, channels, 3, padding=1))
        self.se = SqueezeExcitation(channels)

    def forward(self, x):
        return x + RESIDUAL_SCALE * self.se(self.ops(x))

    @torch.no_grad()
    def forward_into(self, x):
        """forward(x) written over x, for scoring proposals without autograd:
        Swish in place and the SE tail as one multiply-add into x, so at most
        three [N, C, H, W] tensors live at once instead of five."""
        h = self.ops[1](F.silu(x))
        F.silu(h, inplace=True)
        h = self.ops[3](h)
        return x.addcmul_(h, self.se.gate(h)[:, :, None, None], value=RESIDUAL_SCALE)


# [N, hidden, H, W] tensors that ResidualBlock.forward_into keeps alive at once:
# the sampler sizes its chunks of proposals by them.
LIVE_ACTIVATIONS = 3


def default_proposal_bytes(device: torch.device) -> int:
    """The SIR scoring working set per chunk when the caller sets none. CPU: 32 MiB,
    because larger chunks were slower there, not faster (a `tiny` M = 500 call:
    5.3 s at 512 MiB vs 3.3 s at 32 MiB, 11.1 vs 5.2 s on the repeated-context
    path): each chunk's tensors above glibc's mmap threshold are fresh pages,
    faulted in on every chunk, and fall out of the caches. CUDA: 512 MiB, to
    give the GPU enough proposals per launch."""
    return 512 * 2**20 if device.type == "cuda" else 32 * 2**20


class GroupClassifier(nn.Module):
    """D_k(z_k, context) -> logit. Spatial groups: a 3x3 conv of concat(z, context),
    residual blocks, global mean, linear. Flat groups: an MLP."""

    def __init__(self, latent_shape, context_channels: int = 0, hidden: int = 32, cells: int = 2):
        super().__init__()
        self.latent_shape = tuple(latent_shape)
        self.spatial = len(latent_shape) == 3
        if self.spatial:
            self.stem = WNConv2d(latent_shape[0] + context_channels, hidden, 3, padding=1)
            self.cells = nn.Sequential(*[ResidualBlock(hidden) for _ in range(cells)])
            self.head = nn.Linear(hidden, 1)
        else:
            self.mlp = default_classifier(latent_shape[0], max(hidden, 64), 2)

    def forward(self, z: torch.Tensor, context: Optional[torch.Tensor]) -> torch.Tensor:
        if not self.spatial:
            return self.mlp(z).squeeze(-1)
        x = z if context is None else torch.cat([z, context], dim=1)
        return self._from_stem(self.stem(x))

    def _from_stem(self, h: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.cells(h))
        return self.head(h.mean(dim=(2, 3))).squeeze(-1)

    @torch.no_grad()
    def _from_stem_into(self, h: torch.Tensor) -> torch.Tensor:
        """_from_stem, overwriting h (which the caller owns) instead of allocating per op."""
        for cell in self.cells:
            cell.forward_into(h)
        return self.head(F.silu(h, inplace=True).mean(dim=(2, 3))).squeeze(-1)

    def scoring_bytes_per_proposal(self) -> int:
        """Memory proposal_log_ratios needs per proposal (float32): the proposal
        and, for spatial groups, the live hidden activations (the flat-latent
        evaluator keeps its activations in tiles)."""
        latent = math.prod(self.latent_shape)
        if not self.spatial:
            return 4 * latent
        height, width = self.latent_shape[1:]
        return 4 * (latent + LIVE_ACTIVATIONS * self.stem.out_channels * height * width)

    def proposal_log_ratios(self, proposals: torch.Tensor, context: Optional[torch.Tensor],
                            fused: bool = True) -> torch.Tensor:
        """Logits [b, M] of M proposals per image: proposals [b, M, *latent],
        context [b, ...] (one per image, not repeated M times).

        fused=True: the stem conv is linear in concat(z, context), so it splits
        into conv_z(z) for every proposal plus conv_context(context) once per
        image, broadcast over the M proposals: no M-fold copy of the context and
        M-fold fewer context FLOPs, the same function. Flat groups run the fused
        MLP op. fused=False: the module on repeated contexts (the reference)."""
        b, M = proposals.shape[:2]
        if not fused:
            ctx = None if context is None else context.repeat_interleave(M, dim=0)
            return self(proposals.flatten(0, 1), ctx).view(b, M)
        if not self.spatial:
            from ..ops import mlp_log_ratio, mlp_parameters
            parameters = mlp_parameters(self.mlp)
            if parameters is None or proposals.dtype != torch.float32:
                return self.mlp(proposals).squeeze(-1)
            return mlp_log_ratio(proposals, *parameters)[0]
        weight = self.stem.normalized_weight()
        latent_channels = proposals.shape[2]
        # Channels-last: oneDNN's 3x3 convolutions over these many small maps run
        # 1.6-1.8x faster in NHWC on the CPU (measured: [10000, 32, 8, 8]); the
        # layout carries through every op below (convs, Swish, the SE tail).
        z = proposals.flatten(0, 1).contiguous(memory_format=torch.channels_last)
        h = F.conv2d(z, weight[:, :latent_channels], None, padding=1)
        h = h.view(b, M, *h.shape[1:])
        if context is None:
            h += self.stem.bias.view(1, 1, -1, 1, 1)
        else:
            h += F.conv2d(context, weight[:, latent_channels:], self.stem.bias, padding=1)[:, None]
        h = h.flatten(0, 1)
        return (self._from_stem(h) if torch.is_grad_enabled() else self._from_stem_into(h)).view(b, M)


class GroupedNCP(nn.Module):
    """kernels: "auto" scores SIR proposals with the context shared across an
    image's proposals (GroupClassifier.proposal_log_ratios); "torch" repeats the
    context per proposal and runs the module (the reference path)."""
    kernels = "auto"

    def __init__(self, vae: LatentVAE, hidden: int = 32, cells: int = 2):
        super().__init__()
        self.vae = vae.eval().requires_grad_(False)
        shapes, contexts = self._probe_groups()
        self.classifiers = nn.ModuleList(GroupClassifier(s, c, hidden, cells) for s, c in zip(shapes, contexts))
        self.hidden, self.cells = hidden, cells
        self._log_partition = None

    @torch.no_grad()
    def _probe_groups(self):
        device = next(self.vae.parameters()).device
        shapes, contexts = [], []

        def record(k, z, context, prior):
            shapes.append(tuple(z.shape[1:]))
            contexts.append(0 if context is None else context.shape[1])
            return z

        self.vae.sample_decoder_output(2, intercept=record, generator=torch.Generator(device).manual_seed(0),
                                       decode=False)
        return shapes, contexts

    @property
    def num_groups(self) -> int:
        return len(self.classifiers)

    def log_ratio(self, k: int, z: torch.Tensor, context: Optional[torch.Tensor]) -> torch.Tensor:
        return self.classifiers[k](z, context)

    # --- training -------------------------------------------------------------------------

    def _group_losses(self, x: torch.Tensor):
        """BCE and accuracy of every group's classifier on one batch (the VAE frozen)."""
        with torch.no_grad():
            _, groups = self.vae(x, decode=False)
        losses, accuracies = [], []
        for k, group in enumerate(groups):
            with torch.no_grad():
                negative = group.prior.sample()
            logits = torch.cat([self.log_ratio(k, group.z, group.context), self.log_ratio(k, negative, group.context)])
            labels = torch.cat([torch.ones(x.shape[0]), torch.zeros(x.shape[0])]).to(logits)
            losses.append(F.binary_cross_entropy_with_logits(logits, labels))
            accuracies.append(((logits > 0).float() == labels).float().mean())
        return torch.stack(losses), torch.stack(accuracies)

    def fit(self, read_train, num_train: int, read_val, num_val: int, epochs: int = 10, batch_size: int = 64,
            lr: float = 1e-3, weight_decay: float = 0.0, generator: Optional[torch.Generator] = None,
            progress: bool = True, writer=None,
            distributed: DistributedContext = DistributedContext()) -> dict:
        """Trains every classifier in parallel. read_train(indices) / read_val(indices)
        return image batches. Each group keeps the weights of its own best held-out
        loss (groups overfit at different epochs); returns per-group curves and the
        groups that stayed at chance.

        Data parallel under torchrun (`distributed`): batch_size is per process,
        every rank takes its slice of one shared order (the same `generator`
        seed everywhere), gradients and held-out scores are averaged over ranks,
        so every rank keeps the same weights and picks the same best epochs."""
        world, rank = distributed.world_size, distributed.rank
        broadcast_module(self.classifiers, distributed)
        optimizer = torch.optim.Adam(self.classifiers.parameters(), lr=lr, weight_decay=weight_decay)
        history = {"train_loss": [], "val_loss": [], "val_accuracy": []}
        best = [math.inf] * self.num_groups
        best_state = [copy.deepcopy(c.state_dict()) for c in self.classifiers]
        best_epoch = [0] * self.num_groups
        step = 0
        for epoch in range(epochs):
            self.classifiers.train()
            order = torch.randperm(num_train, generator=generator)
            step_images = batch_size * world
            bar = tqdm(range(0, num_train - step_images + 1, step_images), desc=f"NCP epoch {epoch + 1}/{epochs}",
                       disable=not (progress and distributed.is_main), leave=False)
            totals = torch.zeros(self.num_groups)
            for start in bar:
                mine = start + rank * batch_size
                losses, _ = self._group_losses(read_train(order[mine:mine + batch_size]))
                optimizer.zero_grad(set_to_none=True)
                losses.sum().backward()
                average_gradients(self.classifiers, distributed)
                optimizer.step()
                totals += losses.detach().cpu()
                step += 1
                bar.set_postfix(loss=f"{float(losses.detach().mean()):.3f}")
                if writer is not None and step % 20 == 0:
                    for k, value in enumerate(losses.detach().tolist()):
                        writer.add_scalar(f"ncp_train_loss/group_{k:02d}", value, step)
            val_loss, val_acc = self.evaluate(read_val, num_val, batch_size, distributed)
            totals = all_reduce_sum(totals, distributed) / world
            history["train_loss"].append((totals / max(1, len(bar))).tolist())
            history["val_loss"].append(val_loss)
            history["val_accuracy"].append(val_acc)
            if writer is not None:
                for k in range(self.num_groups):
                    writer.add_scalar(f"ncp_val_accuracy/group_{k:02d}", val_acc[k], step)
                    writer.add_scalar(f"ncp_val_loss/group_{k:02d}", val_loss[k], step)
            for k in range(self.num_groups):
                if val_loss[k] < best[k]:
                    best[k], best_epoch[k] = val_loss[k], epoch
                    best_state[k] = copy.deepcopy(self.classifiers[k].state_dict())
        for classifier, state in zip(self.classifiers, best_state):
            classifier.load_state_dict(state)
        self.classifiers.eval()
        self._log_partition = None
        final_acc = [history["val_accuracy"][e][k] for k, e in enumerate(best_epoch)]
        history["best_epoch"] = best_epoch
        history["best_val_loss"] = best
        history["best_val_accuracy"] = final_acc
        history["groups_at_chance"] = [k for k, a in enumerate(final_acc) if a < CHANCE_ACCURACY]
        return history

    @torch.no_grad()
    def evaluate(self, read, num_images: int, batch_size: int = 64,
                 distributed: DistributedContext = DistributedContext()):
        """Per-group held-out BCE and accuracy, image-weighted means (batches
        shared out among the ranks under torchrun)."""
        self.classifiers.eval()
        sums = torch.zeros(3, self.num_groups, dtype=torch.float64)  # loss, accuracy, images
        starts = range(0, num_images, batch_size)
        for start in starts[distributed.rank::distributed.world_size]:
            indices = torch.arange(start, min(num_images, start + batch_size))
            losses, accuracies = self._group_losses(read(indices))
            sums[0] += losses.cpu().double() * len(indices)
            sums[1] += accuracies.cpu().double() * len(indices)
            sums[2] += len(indices)
        sums = all_reduce_sum(sums, distributed)
        return (sums[0] / sums[2]).tolist(), (sums[1] / sums[2]).tolist()

    # --- the partition function and the likelihood ------------------------------------------

    @torch.no_grad()
    def log_partition(self, num_samples: Optional[int] = None, batch_size: int = 500,
                      generator: Optional[torch.Generator] = None, refresh: bool = False):
        """(log Z, standard error): Z = E_p[prod_k r_k(z_k | z_<k)], z drawn from the
        VAE's prior group by group. Cached until the next fit (or refresh=True);
        without num_samples the cached estimate is returned whatever its sample count."""
        cached = self._log_partition
        if cached is not None and not refresh and num_samples in (None, cached[2]):
            return cached[:2]
        num_samples = num_samples or 10_000
        values = []
        for start in range(0, num_samples, batch_size):
            n = min(batch_size, num_samples - start)
            total = torch.zeros(n, device=self._device())

            def accumulate(k, z, context, prior):
                total.add_(self.log_ratio(k, z, context).float())
                return z

            self.vae.sample_decoder_output(n, intercept=accumulate, generator=generator, decode=False)
            values.append(total.cpu())
        log_z, stderr = log_mean_exp_with_stderr(torch.cat(values))
        self._log_partition = (log_z, stderr, num_samples)
        return log_z, stderr

    def _device(self):
        return next(self.vae.parameters()).device

    @torch.no_grad()
    def importance_weighted_log_likelihood(self, x: torch.Tensor, num_samples: int, chunk: int = 0,
                                           log_z: Optional[float] = None) -> torch.Tensor:
        """The IW bound with p_NCP in place of p: log p(z) + sum_k log r_k - log Z."""
        log_z = self.log_partition()[0] if log_z is None else log_z

        def ncp_terms(groups):
            return sum(self.log_ratio(k, g.z, g.context).float() for k, g in enumerate(groups)) - log_z

        return self.vae.importance_weighted_log_likelihood(x, num_samples, chunk, extra_log_prior=ncp_terms)

    # --- sampling ---------------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, n: int, method: str = "sir", num_proposals: int = 50, steps: int = 50, step_size: float = 1e-2,
               temperature: float = 1.0, generator: Optional[torch.Generator] = None,
               max_proposal_bytes: Optional[int] = None) -> torch.Tensor:
        """n images in [0, 1]: group by group, SIR (num_proposals per group given the
        chosen z_<k), Langevin (steps on E_k = -log r_k - log p_k), or the base prior.
        SIR scores the n x num_proposals proposals of a group in chunks of images
        whose scoring working set (proposals and classifier activations) stays
        within max_proposal_bytes (default: default_proposal_bytes(device))."""
        check_sampling_arguments(method, n, num_proposals, steps, step_size, max_proposal_bytes)
        if max_proposal_bytes is None:
            max_proposal_bytes = default_proposal_bytes(self._device())
        if method == "base":
            return self.vae.sample(n, temperature, generator=generator)
        if method == "sir":
            def intercept(k, z, context, prior):
                return self._sir_group(k, context, prior, num_proposals, generator, max_proposal_bytes)
        else:
            def intercept(k, z, context, prior):
                return self._langevin_group(k, z, context, prior, steps, step_size, generator)
        return self.vae.sample(n, temperature, intercept=intercept, generator=generator)

    def _sir_group(self, k, context, prior, M, generator, max_proposal_bytes):
        n = prior.mu.shape[0]
        classifier = self.classifiers[k]
        # Bounded memory: chunk the B x M proposals so that their scoring's
        # working set fits max_proposal_bytes (the same chunks on both paths).
        per_proposal = (classifier.scoring_bytes_per_proposal() if hasattr(classifier, "scoring_bytes_per_proposal")
                        else 4 * (prior.mu[0].numel() + (context[0].numel() if context is not None else 0)))
        rows = max(1, max_proposal_bytes // (M * per_proposal))
        chosen = []
        for start in range(0, n, rows):
            mu, sigma = prior.mu[start:start + rows], prior.sigma[start:start + rows]
            b = mu.shape[0]
            eps = torch.randn((b, M, *mu.shape[1:]), device=mu.device, generator=generator)
            proposals = mu[:, None] + sigma[:, None] * eps
            ctx = None if context is None else context[start:start + b]
            if hasattr(classifier, "proposal_log_ratios"):
                log_w = classifier.proposal_log_ratios(proposals, ctx, self.kernels != "torch").float()
            else:  # a user-supplied classifier module: score on repeated contexts
                ctx = None if ctx is None else ctx.repeat_interleave(M, dim=0)
                log_w = self.log_ratio(k, proposals.flatten(0, 1), ctx).view(b, M).float()
            picked, _ = sir_resample(log_w, proposals, 1, generator=generator)
            chosen.append(picked[:, 0])
        return torch.cat(chosen)

    def _langevin_group(self, k, z, context, prior, steps, step_size, generator):
        def energy(z):  # E_k = -log r_k(z, context) - log p(z | z_<k), per sample
            return -(self.log_ratio(k, z, context) + prior.log_prob(z).flatten(1).sum(1))
        return langevin(z, energy, steps, step_size, generator)

    # --- persistence ------------------------------------------------------------------------

    def to_checkpoint(self) -> dict:
        return {"format": 1, "hidden": self.hidden, "cells": self.cells,
                "classifiers": self.classifiers.state_dict(), "log_partition": self._log_partition}

    @classmethod
    def from_checkpoint(cls, vae: LatentVAE, state: dict) -> "GroupedNCP":
        ncp = cls(vae, hidden=state["hidden"], cells=state["cells"]).to(next(vae.parameters()).device)
        ncp.classifiers.load_state_dict(state["classifiers"])
        ncp._log_partition = state.get("log_partition")
        return ncp.eval()
