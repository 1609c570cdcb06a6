"""The classifiers whose logits are the NCP log-ratios log r(z): an MLP for flat
latents (NCPPrior, the flat groups of GroupedNCP) and GroupClassifier, one per
latent group of a hierarchical VAE."""
import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..nn.cells import RESIDUAL_SCALE, SqueezeExcitation, WNConv2d
from ..ops import mlp_log_ratio, mlp_parameters

# [N, hidden, H, W] tensors that ResidualBlock.forward_into keeps alive at once:
# the sampler sizes its chunks of proposals by them.
LIVE_ACTIVATIONS = 3


def default_classifier(dim: int, hidden: int = 256, layers: int = 2) -> nn.Module:
    """An MLP with SiLU activations ending in one logit."""
    modules, width = [], dim
    for _ in range(layers):
        modules += [nn.Linear(width, hidden), nn.SiLU()]
        width = hidden
    modules.append(nn.Linear(width, 1))
    return nn.Sequential(*modules)


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
            parameters = mlp_parameters(self.mlp)
            if parameters is None or proposals.dtype != torch.float32:
                return self.mlp(proposals).squeeze(-1)
            return mlp_log_ratio(proposals, *parameters)[0]
        weight = self.stem.normalized_weight()
        latent_channels = proposals.shape[2]
        # Channels-last: oneDNN's 3x3 convolutions over these many small maps run
        # faster in NHWC on the CPU (see docs/design-notes.md); the layout
        # carries through every op below (convs, Swish, the SE tail).
        z = proposals.flatten(0, 1).contiguous(memory_format=torch.channels_last)
        h = F.conv2d(z, weight[:, :latent_channels], None, padding=1)
        h = h.view(b, M, *h.shape[1:])
        if context is None:
            h += self.stem.bias.view(1, 1, -1, 1, 1)
        else:
            h += F.conv2d(context, weight[:, latent_channels:], self.stem.bias, padding=1)[:, None]
        h = h.flatten(0, 1)
        return (self._from_stem(h) if torch.is_grad_enabled() else self._from_stem_into(h)).view(b, M)


@torch.no_grad()
def probe_groups(vae) -> tuple:
    """([latent shape of group k], [context channels of group k, 0 without a context])
    of a VAE, from a two-image walk over its prior (a fixed seed: no global RNG drawn)."""
    device = next(vae.parameters()).device
    shapes, contexts = [], []

    def record(k, z, context, prior):
        shapes.append(tuple(z.shape[1:]))
        contexts.append(0 if context is None else context.shape[1])
        return z

    vae.sample_decoder_output(2, intercept=record, generator=torch.Generator(device).manual_seed(0), decode=False)
    return shapes, contexts
