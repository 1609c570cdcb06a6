"""An NVAE-style hierarchical VAE (NVAE, Vahdat & Kautz, 2020): encoder and
decoder towers of residual cells, latent groups at several scales (adaptive
group counts), a residual posterior, and Bernoulli (binary MNIST, central
28x28) or logistic-mixture (colour) outputs.
"""
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..nn.cells import DecoderCombiner, EncoderCell, EncoderCombiner, GenerativeCell, WNConv2d
from ..nn.distributions import DiscretizedLogisticMixture, Normal, bernoulli_log_prob, standard_normal_like
from ..nn.fused_cells import encoder_input_layout
from .base import GroupOutput, LatentVAE, crop_border
from .nvae_flows import PairedFlow

MAX_NUM_NF = 2  # the most flow cells per group NVAE's published models use (CelebA-HQ-256, FFHQ)


@dataclass
class NVAEConfig:
    in_channels: int = 1
    image_size: int = 32
    output: str = "bernoulli"  # or "logistic_mixture"
    num_mix: int = 10
    channels: int = 32  # encoder/decoder width at full resolution; doubles at every down step
    num_preprocess_blocks: int = 2
    num_preprocess_cells: int = 3
    num_postprocess_blocks: int = 2
    num_postprocess_cells: int = 3
    num_latent_scales: int = 2
    num_groups_per_scale: int = 10
    adaptive_groups: bool = True
    min_groups_per_scale: int = 1
    latent_channels: int = 20
    num_cells_per_group_enc: int = 2
    num_cells_per_group_dec: int = 2
    crop_border: int = 2  # MNIST: padded to 32, likelihood on the central 28x28
    num_nf: int = 0  # NVAE's paired flow cells per group on the posterior (nvae_flows)
    num_x_bits: int = 8  # NVAE's --num_x_bits: images quantised to this many bits (5 for its 256x256 models)

    def groups_per_scale(self) -> list[int]:
        """Groups at each latent scale, finest first (adaptive: halve per coarser scale)."""
        counts, n = [], self.num_groups_per_scale
        for _ in range(self.num_latent_scales):
            counts.append(n)
            if self.adaptive_groups:
                n = max(self.min_groups_per_scale, n // 2)
        return counts


class HierarchicalVAE(LatentVAE):
    def __init__(self, config: NVAEConfig):
        super().__init__()
        c = self.config = config
        if c.image_size % (2 ** (c.num_preprocess_blocks + c.num_latent_scales - 1)):
            raise ValueError(f"image_size {c.image_size} must be divisible by 2^(preprocess blocks + "
                             f"latent scales - 1) = {2 ** (c.num_preprocess_blocks + c.num_latent_scales - 1)}")
        if (c.num_postprocess_blocks != c.num_preprocess_blocks
                or min(c.num_preprocess_cells, c.num_postprocess_cells) < 1):
            raise ValueError("num_postprocess_blocks must equal num_preprocess_blocks (each undoes one "
                             "halving of the resolution), with at least one cell per block")
        if not 0 <= c.num_nf <= MAX_NUM_NF:
            raise ValueError(f"num_nf must be 0 to {MAX_NUM_NF} (flow cells per latent group), got {c.num_nf}")
        if not 1 <= c.num_x_bits <= 8 or (c.num_x_bits != 8 and c.output != "logistic_mixture"):
            raise ValueError(f"num_x_bits must be 1 to 8 (and 8 for a Bernoulli output), got {c.num_x_bits}")
        if c.output not in ("bernoulli", "logistic_mixture"):
            raise ValueError(f"output must be bernoulli or logistic_mixture, got {c.output!r}")
        self.likelihood = "binary" if c.output == "bernoulli" else "8bit"
        self.groups = c.groups_per_scale()
        # Decoder order: coarsest scale first; scale index of every group in that order.
        self.group_scales = [s for s in reversed(range(c.num_latent_scales)) for _ in range(self.groups[s])]
        width = c.channels

        self.stem = WNConv2d(c.in_channels, width, 3, padding=1)
        pre = []
        for _ in range(c.num_preprocess_blocks):
            for cell in range(c.num_preprocess_cells):
                last = cell == c.num_preprocess_cells - 1
                pre.append(EncoderCell(width, width * 2 if last else width, stride=2 if last else 1))
                width = width * 2 if last else width
        self.preprocess = nn.Sequential(*pre)

        # Encoder tower, finest latent scale first; a feature is recorded after each group's cells.
        self.encoder_groups = nn.ModuleList()
        self.encoder_down = nn.ModuleList()
        self.scale_widths = []
        for s in range(c.num_latent_scales):
            self.scale_widths.append(width)
            for _ in range(self.groups[s]):
                self.encoder_groups.append(nn.Sequential(*[EncoderCell(width, width)
                                                          for _ in range(c.num_cells_per_group_enc)]))
            if s < c.num_latent_scales - 1:
                self.encoder_down.append(EncoderCell(width, width * 2, stride=2))
                width *= 2
        # NVAE's top encoder head: ELU, 1x1 conv, ELU (the posterior of group 0 reads its output).
        self.encoder_top = nn.Sequential(nn.ELU(), WNConv2d(width, width, 1), nn.ELU())

        top_size = c.image_size // 2 ** (c.num_preprocess_blocks + c.num_latent_scales - 1)
        self.decoder_input = nn.Parameter(torch.rand(1, width, top_size, top_size))
        self.decoder_groups = nn.ModuleList()  # cells before each group (empty for the first)
        self.prior_heads = nn.ModuleList()  # decoder state -> (mu_p, log sigma_p); unused for group 0
        self.posterior_combiners = nn.ModuleList()
        self.posterior_heads = nn.ModuleList()
        self.decoder_combiners = nn.ModuleList()
        self.decoder_up = nn.ModuleDict()
        L = c.latent_channels
        for k, s in enumerate(self.group_scales):
            w = self.scale_widths[s]
            cells = c.num_cells_per_group_dec if k else 0
            self.decoder_groups.append(nn.Sequential(*[GenerativeCell(w, w) for _ in range(cells)]))
            self.prior_heads.append(nn.Sequential(nn.ELU(), WNConv2d(w, 2 * L, 1)) if k else nn.Identity())
            self.posterior_combiners.append(EncoderCombiner(w, w) if k else nn.Identity())
            self.posterior_heads.append(WNConv2d(w, 2 * L, 3, padding=1))
            self.decoder_combiners.append(DecoderCombiner(w, L))
            if k + 1 < len(self.group_scales) and self.group_scales[k + 1] != s:
                self.decoder_up[str(k)] = GenerativeCell(w, w // 2, upsample=True)

        # Posterior flows, num_nf per group in decoder order (group k: flows[k * num_nf: (k + 1) * num_nf]).
        self.flows = nn.ModuleList(PairedFlow(L) for _ in range(len(self.group_scales) * c.num_nf))

        # Post-process blocks mirror the pre-process ones: each starts with an up cell.
        post, w = [], self.scale_widths[0]
        for _ in range(c.num_postprocess_blocks):
            for cell in range(c.num_postprocess_cells):
                post.append(GenerativeCell(w, w // 2 if cell == 0 else w, upsample=cell == 0, expansion=3))
                w = w // 2 if cell == 0 else w
        self.postprocess = nn.Sequential(*post)
        out_width = w
        out_channels = c.in_channels if c.output == "bernoulli" else 10 * c.num_mix
        self.output_head = nn.Sequential(nn.ELU(), WNConv2d(out_width, out_channels, 3, padding=1))

    # --- towers -----------------------------------------------------------------

    def _encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encoder features per group, in decoder order (coarsest scale first)."""
        h = self.preprocess(self.stem(self._encoder_input(2.0 * x - 1.0)))
        features, k = [], 0
        for s in range(self.config.num_latent_scales):
            for _ in range(self.groups[s]):
                h = self.encoder_groups[k](h)
                features.append(h)
                k += 1
            if s < self.config.num_latent_scales - 1:
                h = self.encoder_down[s](h)
        features.reverse()
        features[0] = self.encoder_top(features[0])
        return features

    def _encoder_input(self, x: torch.Tensor) -> torch.Tensor:
        """x in the layout the encoder cells compute in. Fused CPU cells work
        channels-last; converting the image (a few channels) makes the stem's
        output, and so every encoder activation, channels-last from the start,
        instead of the first cell converting a wide activation."""
        first = next((m for m in self.modules() if isinstance(m, EncoderCell)), None)
        layout = None if first is None else encoder_input_layout(first, x)
        return x if layout is None else x.contiguous(memory_format=layout)

    def _prior(self, k: int, state: torch.Tensor, temperature: float = 1.0) -> Normal:
        if k == 0:
            L, size = self.config.latent_channels, self.decoder_input.shape[-1]
            prior = standard_normal_like((state.shape[0], L, size, size), state.device, state.dtype)
            if temperature != 1.0:
                prior.sigma = prior.sigma * temperature
            return prior
        mu, log_sigma = self.prior_heads[k](state).chunk(2, dim=1)
        return Normal(mu, log_sigma, temperature)

    def _decode_tail(self, state: torch.Tensor) -> torch.Tensor:
        return self.output_head(self.postprocess(state))

    def _advance(self, k: int, state: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        state = self.decoder_combiners[k](state, z)
        up = self.decoder_up[str(k)] if str(k) in self.decoder_up else None
        return up(state) if up is not None else state

    def forward(self, x: torch.Tensor, decode: bool = True):
        features = self._encode(self._quantise(x))
        state = self.decoder_input.expand(x.shape[0], -1, -1, -1)
        groups = []
        for k in range(len(self.group_scales)):
            state = self.decoder_groups[k](state)
            prior = self._prior(k, state)
            posterior_feature = features[k] if k == 0 else self.posterior_combiners[k](features[k], state)
            d_mu, d_log_sigma = self.posterior_heads[k](posterior_feature).chunk(2, dim=1)
            if k == 0:
                posterior = Normal(d_mu, d_log_sigma)
            else:  # residual parameterisation relative to the prior's (pre-clamp) parameters
                mu_p, log_sigma_p = self.prior_heads[k](state).chunk(2, dim=1)
                posterior = Normal(mu_p + d_mu, log_sigma_p + d_log_sigma)
            z = z0 = posterior.sample()
            for flow in self.flows[k * self.config.num_nf:(k + 1) * self.config.num_nf]:
                z = flow(z)
            groups.append(GroupOutput(z=z, prior=prior, posterior=posterior, context=state if k else None,
                                      z0=z0 if self.config.num_nf else None))
            state = self._advance(k, state, z) if (decode or k + 1 < len(self.group_scales)) else state
        return (self._decode_tail(state) if decode else None), groups

    def sample_decoder_output(self, num_samples, temperature=1.0, intercept=None, generator=None, decode=True):
        state = self.decoder_input.expand(num_samples, -1, -1, -1)
        for k in range(len(self.group_scales)):
            state = self.decoder_groups[k](state)
            prior = self._prior(k, state, temperature)
            z = prior.sample(generator)
            if intercept is not None:
                z = intercept(k, z, state if k else None, prior)
            state = self._advance(k, state, z)
        return self._decode_tail(state) if decode else None

    # --- likelihood ---------------------------------------------------------------

    def _crop(self, t: torch.Tensor) -> torch.Tensor:
        return crop_border(t, self.config.crop_border if self.likelihood == "binary" else 0)

    def reconstruction_log_prob(self, decoder_output, x):
        if self.likelihood == "binary":
            return bernoulli_log_prob(self._crop(decoder_output), self._crop(x))
        return DiscretizedLogisticMixture(decoder_output, self.config.num_mix, self.config.num_x_bits).log_prob(
            self._quantise(x))

    def _quantise(self, x: torch.Tensor) -> torch.Tensor:
        """8-bit images in [0, 1] at num_x_bits bits, as NVAE reads them (same arithmetic, so
        the same levels); the encoder and the likelihood both see the quantised image."""
        bits = self.config.num_x_bits
        if bits == 8:
            return x
        return torch.floor(x * 255 / 2 ** (8 - bits)) / (2**bits - 1)

    def mean_image(self, decoder_output):
        if self.likelihood == "binary":
            return torch.sigmoid(decoder_output)
        return DiscretizedLogisticMixture(decoder_output, self.config.num_mix, self.config.num_x_bits).mean()

    def num_data_dims(self):
        c = self.config
        side = c.image_size - 2 * (c.crop_border if self.likelihood == "binary" else 0)
        return c.in_channels * side * side

    def kl_balance_scale(self) -> torch.Tensor:
        """NVAE's per-group KL-balancing factor: (2^s)^2 / groups at scale s (s: index of
        the group's scale counted from the coarsest), normalised to mean 1."""
        coarse_index = [self.config.num_latent_scales - 1 - s for s in self.group_scales]
        alpha = torch.tensor([4.0 ** i / self.groups[s] for i, s in zip(coarse_index, self.group_scales)])
        return alpha / alpha.mean()
