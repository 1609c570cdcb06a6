"""NVAE's normalizing-flow cells on the posterior (Vahdat & Kautz, 2020, section 3.2).

Each latent group's posterior sample z0 ~ N(mu_q, sigma_q) passes through
`num_nf` paired cells; every cell is an inverse-autoregressive shift
z <- z - m(z), where m is a masked (autoregressive over channels and raster
order) inverted-residual network, so its Jacobian is triangular with unit
diagonal: log|det| = 0 and log q(z) = log N(z0; mu_q, sigma_q). The second cell
of a pair uses the mirrored mask (the reverse raster order).

The flows stay eager (no fused kernel): they act on the latents only (20 channels
at the group's resolution), a small share of the model's compute next to the
residual cells, and their masked convolutions are ordinary convolutions of a
masked weight.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..nn.cells import WNConv2d

FLOW_EXPANSION = 6  # hidden channels per latent channel in a flow cell
SHIFT_INIT_SCALE = 0.1  # the shift's initial weight norm is scaled down: the flow starts near the identity


def channel_mask(in_channels: int, out_channels: int, groups: int, zero_diag: bool) -> torch.Tensor:
    """[out, in / groups] connectivity of the kernel's centre tap: output block i sees
    input channels < i (and i itself unless zero_diag)."""
    if groups == in_channels:  # depthwise: each channel sees only itself
        return torch.full((out_channels, 1), 0.0 if zero_diag else 1.0)
    if groups != 1:
        raise ValueError(f"a masked conv has groups 1 or in_channels, got {groups}")
    if in_channels % out_channels and out_channels % in_channels:
        raise ValueError(f"a masked conv needs channel counts that divide each other, got {in_channels}, "
                         f"{out_channels}")
    mask = torch.ones(out_channels, in_channels)
    if out_channels >= in_channels:
        ratio = out_channels // in_channels
        for i in range(in_channels):
            rows = slice(i * ratio, (i + 1) * ratio)
            mask[rows, i + 1:] = 0
            if zero_diag:
                mask[rows, i] = 0
    else:
        ratio = in_channels // out_channels
        for i in range(out_channels):
            mask[i, (i + 1) * ratio:] = 0
            if zero_diag:
                mask[i, i * ratio:(i + 1) * ratio] = 0
    return mask


def autoregressive_mask(kernel_size: int, in_channels: int, out_channels: int, groups: int, zero_diag: bool,
                        mirror: bool) -> torch.Tensor:
    """Kernel mask [out, in / groups, k, k]: taps above the centre row and left of the
    centre see everything, the centre tap follows channel_mask, the rest are zero;
    mirror reverses the raster order (a 180-degree turn of the kernel)."""
    if kernel_size % 2 != 1:
        raise ValueError(f"a masked conv needs an odd kernel size, got {kernel_size}")
    m = kernel_size // 2
    mask = torch.ones(out_channels, in_channels // groups, kernel_size, kernel_size)
    mask[:, :, m:, :] = 0
    mask[:, :, m, :m] = 1
    mask[:, :, m, m] = channel_mask(in_channels, out_channels, groups, zero_diag)
    return mask.flip(2, 3) if mirror else mask


class MaskedWNConv2d(WNConv2d):
    """A weight-normalised conv whose weight is masked before normalisation. The mask
    is a non-persistent buffer: checkpoints hold only weight, bias, log_weight_norm."""

    def __init__(self, in_channels, out_channels, kernel_size, padding=0, groups=1, bias=False, zero_diag=False,
                 mirror=False, init_scale=1.0):
        super().__init__(in_channels, out_channels, kernel_size, padding=padding, groups=groups, bias=bias)
        self.register_buffer("mask", autoregressive_mask(kernel_size, in_channels, out_channels, groups, zero_diag,
                                                         mirror), persistent=False)
        with torch.no_grad():  # the norm of the weight the conv actually uses
            norm = (self.weight * self.mask).flatten(1).norm(dim=1)
            self.log_weight_norm.copy_(torch.log(norm + 1e-2) + math.log(init_scale))

    def normalized_weight(self) -> torch.Tensor:
        weight = self.weight * self.mask
        norm = weight.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        return torch.exp(self.log_weight_norm).view(-1, 1, 1, 1) * weight / (norm + 1e-5)


class FlowCell(nn.Module):
    """z -> z - shift(z), shift autoregressive in z: masked 3x3 conv (strictly
    earlier channels) -> ELU -> masked depthwise 5x5 -> ELU -> ELU -> masked 1x1."""

    def __init__(self, latent_channels: int, mirror: bool):
        super().__init__()
        hidden = FLOW_EXPANSION * latent_channels
        self.conv_in = MaskedWNConv2d(latent_channels, hidden, 3, padding=1, zero_diag=True, mirror=mirror)
        self.depthwise = MaskedWNConv2d(hidden, hidden, 5, padding=2, groups=hidden, mirror=mirror)
        self.shift = MaskedWNConv2d(hidden, latent_channels, 1, bias=True, mirror=mirror,
                                    init_scale=SHIFT_INIT_SCALE)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = F.elu(self.depthwise(F.elu(self.conv_in(z))))
        # NVAE's shift head applies its own ELU to the already-activated features: two ELUs in a row.
        return z - self.shift(F.elu(h))


class PairedFlow(nn.Module):
    """Two flow cells, the second in the reverse raster order."""

    def __init__(self, latent_channels: int):
        super().__init__()
        self.forward_order = FlowCell(latent_channels, mirror=False)
        self.reverse_order = FlowCell(latent_channels, mirror=True)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.reverse_order(self.forward_order(z))
