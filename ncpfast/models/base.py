"""The contract every ncpfast VAE follows."""
import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..nn.distributions import Normal


@dataclass
class GroupOutput:
    """One latent group of one forward pass.

    z: the posterior sample z_k ~ q(z_k | z_<k, x).
    prior: p(z_k | z_<k), the prior given the posterior samples of earlier groups.
    posterior: q(z_k | z_<k, x).
    context: the decoder state that conditioned the prior (None for the top
        group and for single-group models), i.e. what a per-group NCP
        classifier sees besides z_k.
    """

    z: torch.Tensor
    prior: Normal
    posterior: Normal
    context: Optional[torch.Tensor]
    # With NVAE's flow cells: the Normal sample before the flows (z is the flows'
    # output, what the decoder and the prior see). The flows are volume-preserving
    # shifts, so log q(z) = posterior.log_prob(z0); q(z) is no longer a Normal and
    # the KL is the single-sample estimate log q(z) - log p(z), as NVAE trains it.
    z0: Optional[torch.Tensor] = None

    def kl(self) -> torch.Tensor:
        """KL(q || p) per image, [B]: analytic, or with flows the one-sample estimate."""
        if self.z0 is not None:
            return self.log_q_minus_log_p()
        return self.posterior.kl(self.prior).flatten(1).sum(1)

    def log_q_minus_log_p(self) -> torch.Tensor:
        """log q(z) - log p(z) at the sample, per image (for importance weights)."""
        log_q = self.posterior.log_prob(self.z if self.z0 is None else self.z0)
        return (log_q - self.prior.log_prob(self.z)).flatten(1).sum(1)


# intercept(k, z_k, context, prior) -> z_k: lets a caller replace each group's
# sample (e.g. by an SIR-resampled one) before the decoder moves on.
GroupIntercept = Callable[[int, torch.Tensor, Optional[torch.Tensor], Normal], torch.Tensor]


class LatentVAE(nn.Module):
    """Base class: subclasses implement forward, sample_decoder_output,
    reconstruction_log_prob and mean_image."""

    #: how the data are read: "binary" (dynamic binarisation) or "8bit"
    likelihood = "binary"

    def forward(self, x: torch.Tensor, decode: bool = True):
        """x in [0, 1] -> (decoder output, [GroupOutput per latent group]); decode=False
        skips the decoder after the last group (output None), for callers that need
        only the latents."""
        raise NotImplementedError

    def sample_decoder_output(self, num_samples: int, temperature: float = 1.0,
                              intercept: Optional[GroupIntercept] = None,
                              generator: Optional[torch.Generator] = None, decode: bool = True):
        """Samples z group by group from the prior and decodes them (decode=False:
        only walks the groups, for callers that need the latents alone)."""
        raise NotImplementedError

    def reconstruction_log_prob(self, decoder_output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log p(x | z) per image, [B], in nats."""
        raise NotImplementedError

    def mean_image(self, decoder_output: torch.Tensor) -> torch.Tensor:
        """The image to show for a decoder output, in [0, 1]."""
        raise NotImplementedError

    def num_data_dims(self) -> int:
        """Dimensions the likelihood covers (784 for MNIST's central 28x28): the bits/dim divisor."""
        raise NotImplementedError

    def in_data_frame(self, images: torch.Tensor, size: int) -> torch.Tensor:
        """Images [B, C, H, W] (generated, or read from the data set) as the data set
        stores them, size x size: the square the likelihood scores (num_data_dims:
        the central 28x28 of padded MNIST) with a zero border around it. A model
        that decodes 28x28 and one that decodes 32x32 with an unscored border then
        compare with real images in one frame, whose border is zero."""
        side = math.isqrt(self.num_data_dims() // images.shape[1])
        height, width = images.shape[2:]
        if height != width or height < side or (height - side) % 2 or size < side or (size - side) % 2:
            raise ValueError(f"images of {height} x {width} do not hold the scored {side} x {side} square "
                             f"centred, or it does not centre in {size} x {size}")
        pad = (size - side) // 2
        return F.pad(crop_border(images, (height - side) // 2), (pad, pad, pad, pad))

    @torch.no_grad()
    def sample(self, num_samples: int, temperature: float = 1.0, intercept: Optional[GroupIntercept] = None,
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Images in [0, 1] sampled from the prior (the decoder's mean, not a noisy sample)."""
        return self.mean_image(self.sample_decoder_output(num_samples, temperature, intercept, generator))

    @torch.no_grad()
    def importance_weighted_log_likelihood(self, x: torch.Tensor, num_samples: int, chunk: int = 0,
                                           extra_log_prior: Optional[Callable] = None) -> torch.Tensor:
        """log p(x) >= logsumexp_k [log p(x|z_k) + log p(z_k) - log q(z_k|x)] - log K, per image [B].

        chunk: importance samples evaluated per pass (0: all); bounds memory.
        extra_log_prior(groups) -> [B*k]: added to log p(z) (an NCP prior's
        sum of log-ratios minus log Z).
        """
        chunk = chunk or num_samples
        log_weights = []
        done = 0
        while done < num_samples:
            k = min(chunk, num_samples - done)
            repeated = x.repeat_interleave(k, dim=0)
            output, groups = self(repeated)
            log_w = self.reconstruction_log_prob(output, repeated)
            for group in groups:
                log_w = log_w - group.log_q_minus_log_p()
            if extra_log_prior is not None:
                log_w = log_w + extra_log_prior(groups)
            log_weights.append(log_w.view(x.shape[0], k))
            done += k
        return torch.logsumexp(torch.cat(log_weights, dim=1), dim=1) - math.log(num_samples)


def crop_border(t: torch.Tensor, border: int) -> torch.Tensor:
    """The central part of images [B, C, H, W] without `border` pixels on each side
    (MNIST is padded to 32x32; its likelihood covers the central 28x28)."""
    return t[:, :, border:t.shape[2] - border, border:t.shape[3] - border] if border else t


def iw_images_per_pass(num_samples: int, chunk: int = 0, device: Optional[torch.device] = None,
                       most: int = 250) -> int:
    """Images per pass of importance_weighted_log_likelihood so that a pass holds
    about 2,000 image copies (K, or the chunk, per image) on a GPU and 200 on the
    CPU, and at most `most` images. The CPU's smaller passes measured faster
    (big ones fault fresh pages in and spill the caches; see docs/design-notes.md)."""
    budget = 200 if device is None or torch.device(device).type == "cpu" else 2000
    return max(1, min(most, budget // max(1, chunk or num_samples)))

