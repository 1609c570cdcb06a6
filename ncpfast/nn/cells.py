"""NVAE-style residual cells (NVAE, Vahdat & Kautz, 2020).

Every cell computes out = skip(x) + 0.1 * SE(ops(x)) in one forward(); the
fused forwards (ncpfast.nn.fused_cells) replace those forwards without changing
parameters, so a state dict trained with one path loads into the other.
"""
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .batch_norm import BatchNorm2d
from .kernel_choice import (  # noqa: F401  (re-exported beside the cells)
    KERNEL_CHOICES,
    FusableModule,
    fused_kernels_apply,
    set_cell_kernels,
)

BN_MOMENTUM = 0.05
RESIDUAL_SCALE = 0.1


class WNConv2d(nn.Conv2d):
    """Weight-normalised conv: w = exp(log_weight_norm) * v / (||v|| + 1e-5), per output channel.

    weight_norm=False keeps the plain weight (no log_weight_norm parameter): NVAE's
    inverted-residual cells use unnormalised convs, and parameter parity with its
    checkpoints needs the same parameters. Such a conv is still a WNConv2d so the
    spectral regulariser (which NVAE applies to every conv) and the fused cells,
    which both read normalized_weight(), treat every conv alike."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, groups=1, bias=True,
                 weight_norm=True):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=bias)
        if weight_norm:
            with torch.no_grad():
                init = torch.log(self.weight.flatten(1).norm(dim=1) + 1e-2)
            self.log_weight_norm = nn.Parameter(init)
        else:
            self.log_weight_norm = None

    def normalized_weight(self) -> torch.Tensor:
        if self.log_weight_norm is None:
            return self.weight
        norm = self.weight.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        return torch.exp(self.log_weight_norm).view(-1, 1, 1, 1) * self.weight / (norm + 1e-5)

    def forward(self, x):
        return F.conv2d(x, self.normalized_weight(), self.bias, self.stride, self.padding, self.dilation, self.groups)


def batch_norm(channels: int) -> BatchNorm2d:
    return BatchNorm2d(channels, eps=1e-5, momentum=BN_MOMENTUM)


class SqueezeExcitation(nn.Module):
    """Channel gating: global mean -> Linear(C, max(C/16, 4)) -> ReLU -> Linear -> sigmoid."""

    def __init__(self, channels: int):
        super().__init__()
        hidden = max(channels // 16, 4)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def gate(self, x):
        """[N, C] per-channel factors in (0, 1)."""
        return torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3))))))

    def forward(self, x):
        return x * self.gate(x)[:, :, None, None]


class FactorizedReduce(nn.Module):
    """Stride-2 skip: Swish, then four stride-2 1x1 convs on shifted inputs, concatenated.

    Each conv reads every other row and column of its input, taken by slicing,
    and then runs at stride 1 (the same function). A strided 1x1 convolution
    must not reach oneDNN on the CPU: its AVX2 weight-gradient kernel for
    channels-last inputs with fewer input channels than a vector block writes
    past its workspace (heap corruption, or wrong gradients without a crash;
    uxlfoundation/oneDNN issue 6035). python_tests/test_every_cpu.py's canary
    says whether the installed torch still has that bug."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        quarter = out_channels // 4
        sizes = [quarter, quarter, quarter, out_channels - 3 * quarter]
        # stride=2 stays the modules' declared stride (what the layer computes);
        # forward applies it by slicing.
        self.convs = nn.ModuleList(WNConv2d(in_channels, s, 1, stride=2) for s in sizes)

    def forward(self, x):
        if x.shape[2] % 2 or x.shape[3] % 2:
            raise ValueError(f"FactorizedReduce needs an even height and width, got {x.shape[2]} x {x.shape[3]}")
        x = F.silu(x)
        # The inputs of the stride-2 convs at offsets (0, 0), (1, 1), (0, 1), (1, 0).
        shifted = (x[:, :, ::2, ::2], x[:, :, 1::2, 1::2], x[:, :, ::2, 1::2], x[:, :, 1::2, ::2])
        return torch.cat([F.conv2d(s, conv.normalized_weight(), conv.bias) for conv, s in zip(self.convs, shifted)],
                         dim=1)


class EncoderLayers(NamedTuple):
    """The layers of an EncoderCell's ops that the fused forward computes with."""
    bn0: BatchNorm2d
    conv1: WNConv2d
    bn1: BatchNorm2d
    conv2: WNConv2d


class GenerativeLayers(NamedTuple):
    """The layers of a GenerativeCell's ops that the fused forward computes with."""
    upsample: nn.Module
    bn0: BatchNorm2d
    conv_in: WNConv2d
    bn1: BatchNorm2d
    depthwise: WNConv2d
    bn2: BatchNorm2d
    conv_out: WNConv2d
    bn3: BatchNorm2d


def _named_layers(ops: nn.Sequential, layers_type, positions: dict):
    """layers_type's fields picked from ops at `positions` (name -> index), each
    checked to be of its field's type, so that a reordered Sequential is an error
    instead of a fused forward on the wrong layers."""
    picked = []
    for name, kind in layers_type.__annotations__.items():
        module = ops[positions[name]]
        if not isinstance(module, kind):
            raise TypeError(f"{name} at ops[{positions[name]}] is a {type(module).__name__}, expected a "
                            f"{kind.__name__}: the cell's ops and its layer positions disagree")
        picked.append(module)
    return layers_type(*picked)


class FusableCell(FusableModule):
    """A residual cell, skip(x) + residual_scale * SE(ops(x)), whose forward can
    run through ncpfast's fused kernels (see FusableModule for `kernels`)."""
    residual_scale = RESIDUAL_SCALE

    def _fused_forward(self, x):
        raise NotImplementedError

    def _torch_forward(self, x):
        return self.skip(x) + self.residual_scale * self.se(self.ops(x))

    def forward(self, x):
        if fused_kernels_apply(self.kernels, x):
            return self._fused_forward(x)
        return self._torch_forward(x)


class EncoderCell(FusableCell):
    """Encoder / pre-process cell: twice [BN -> Swish -> 3x3 conv], SE, scaled residual.
    stride 2 halves the resolution (and usually doubles the channels)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.skip = (nn.Identity() if stride == 1 and in_channels == out_channels
                     else FactorizedReduce(in_channels, out_channels))
        self.ops = nn.Sequential(
            batch_norm(in_channels), nn.SiLU(), WNConv2d(in_channels, out_channels, 3, stride, 1),
            batch_norm(out_channels), nn.SiLU(), WNConv2d(out_channels, out_channels, 3, 1, 1))
        self.se = SqueezeExcitation(out_channels)

    # Where each named layer sits in ops (the state dict's keys follow ops' indices).
    LAYER_POSITIONS = {"bn0": 0, "conv1": 2, "bn1": 3, "conv2": 5}

    def layers(self) -> EncoderLayers:
        return _named_layers(self.ops, EncoderLayers, self.LAYER_POSITIONS)

    def _fused_forward(self, x):
        from .fused_cells import encoder_cell_forward
        return encoder_cell_forward(self, x)


class UpsampleSkip(nn.Module):
    """Skip of an up cell: bilinear 2x upsample, then a 1x1 conv to the new width."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = WNConv2d(in_channels, out_channels, 1, bias=False)  # NVAE's has no bias

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True))


class GenerativeCell(FusableCell):
    """Decoder cell, inverted residual: BN -> 1x1 (C -> eC) -> BN -> Swish -> kxk depthwise
    -> BN -> Swish -> 1x1 (eC -> C') -> BN, SE, scaled residual. upsample=True starts
    with a nearest 2x upsample (skip: bilinear upsample + 1x1 conv)."""

    def __init__(self, in_channels: int, out_channels: int, upsample: bool = False,
                 expansion: int = 6, kernel_size: int = 5):
        super().__init__()
        hidden = in_channels * expansion
        if upsample:
            self.skip = UpsampleSkip(in_channels, out_channels)
        elif in_channels == out_channels:
            self.skip = nn.Identity()
        else:
            raise ValueError("a generative cell changes width only when it upsamples")
        self.ops = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest") if upsample else nn.Identity(),
            # NVAE's inverted residual: its three convs are plain (no weight norm, no bias).
            batch_norm(in_channels), WNConv2d(in_channels, hidden, 1, bias=False, weight_norm=False),
            batch_norm(hidden), nn.SiLU(),
            WNConv2d(hidden, hidden, kernel_size, padding=kernel_size // 2, groups=hidden, bias=False,
                     weight_norm=False),
            batch_norm(hidden), nn.SiLU(), WNConv2d(hidden, out_channels, 1, bias=False, weight_norm=False),
            batch_norm(out_channels))
        self.se = SqueezeExcitation(out_channels)

    # Where each named layer sits in ops (the state dict's keys follow ops' indices).
    LAYER_POSITIONS = {"upsample": 0, "bn0": 1, "conv_in": 2, "bn1": 3, "depthwise": 5, "bn2": 6, "conv_out": 8,
                       "bn3": 9}

    def layers(self) -> GenerativeLayers:
        return _named_layers(self.ops, GenerativeLayers, self.LAYER_POSITIONS)

    def _fused_forward(self, x):
        from .fused_cells import generative_cell_forward
        return generative_cell_forward(self, x)


class EncoderCombiner(nn.Module):
    """Posterior features for a group: encoder feature + 1x1 conv of the decoder state."""

    def __init__(self, encoder_channels: int, decoder_channels: int):
        super().__init__()
        self.conv = WNConv2d(decoder_channels, encoder_channels, 1)

    def forward(self, encoder_feature, decoder_state):
        return encoder_feature + self.conv(decoder_state)


class DecoderCombiner(nn.Module):
    """Merges a sampled z into the decoder state: s <- conv1x1(concat(s, z))."""

    def __init__(self, state_channels: int, latent_channels: int):
        super().__init__()
        self.conv = WNConv2d(state_channels + latent_channels, state_channels, 1)

    def forward(self, state, z):
        return self.conv(torch.cat([state, z], dim=1))
