"""Distributions of the VAEs: NVAE's soft-clamped Normal, Bernoulli pixels,
and the discretised mixture of logistics for 8-bit colour images."""
import math
from typing import Optional

import torch
import torch.nn.functional as F

LOG_2PI = math.log(2 * math.pi)


def soft_clamp5(x: torch.Tensor) -> torch.Tensor:
    """5 tanh(x / 5): keeps means and log-scales in (-5, 5) without hard edges."""
    return 5.0 * torch.tanh(x / 5.0)


class Normal:
    """Diagonal Normal parameterised as in NVAE: mu and log sigma are soft-clamped,
    sigma = exp(log sigma) + 1e-2, and a temperature multiplies sigma."""

    def __init__(self, mu: torch.Tensor, log_sigma: torch.Tensor, temperature: float = 1.0):
        self.mu = soft_clamp5(mu)
        self.sigma = (torch.exp(soft_clamp5(log_sigma)) + 1e-2) * temperature

    @classmethod
    def from_mean_std(cls, mu: torch.Tensor, sigma: torch.Tensor) -> "Normal":
        """A Normal with exactly these parameters (no clamping), e.g. N(0, I)."""
        dist = cls.__new__(cls)
        dist.mu, dist.sigma = mu, sigma
        return dist

    def sample(self, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        eps = torch.randn(self.mu.shape, dtype=self.mu.dtype, device=self.mu.device, generator=generator)
        return self.mu + self.sigma * eps

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """Elementwise log density."""
        normalized = (z - self.mu) / self.sigma
        return -0.5 * normalized * normalized - 0.5 * LOG_2PI - torch.log(self.sigma)

    def kl(self, other: "Normal") -> torch.Tensor:
        """Elementwise analytic KL(self || other)."""
        term1 = (self.mu - other.mu) / other.sigma
        term2 = self.sigma / other.sigma
        return 0.5 * (term1 * term1 + term2 * term2) - 0.5 - torch.log(term2)


def standard_normal_like(shape, device, dtype=torch.float32) -> Normal:
    """NVAE's top prior: Normal(0, 0) in its parameterisation (sigma = 1.01)."""
    zeros = torch.zeros(shape, device=device, dtype=dtype)
    return Normal(zeros, zeros)


def bernoulli_log_prob(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p(x | logits) summed per image; x binary, shapes [B, C, H, W]."""
    return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)


class DiscretizedLogisticMixture:
    """PixelCNN++-style discretised mixture of logistics for 3-channel 8-bit images,
    with channel-autoregressive means (G depends on R, B on R and G) and
    log-scales clamped at >= -7.

    params: [B, 10 * num_mix, H, W] laid out as num_mix mixture logits, then
    [3 channels x (mean, log_scale, coeff) x num_mix].
    """

    def __init__(self, params: torch.Tensor, num_mix: int, num_bits: int = 8):
        B, _, H, W = params.shape
        self.num_mix = num_mix
        self.max_level = 2.0**num_bits - 1  # images of num_bits bits: levels 0..max_level on [-1, 1]
        self.logit_probs = params[:, :num_mix]
        rest = params[:, num_mix:].view(B, 3, 3, num_mix, H, W)
        self.means = rest[:, :, 0]
        self.log_scales = torch.clamp(rest[:, :, 1], min=-7.0)
        self.coeffs = torch.tanh(rest[:, :, 2])

    def _channel_means(self, x: torch.Tensor) -> torch.Tensor:
        """Means of every channel given the (observed or sampled) earlier channels; x in [-1, 1]."""
        m, c = self.means, self.coeffs
        x0, x1 = x[:, 0:1], x[:, 1:2]
        return torch.stack([m[:, 0], m[:, 1] + c[:, 0] * x0, m[:, 2] + c[:, 1] * x0 + c[:, 2] * x1], dim=1)

    def log_prob(self, x01: torch.Tensor) -> torch.Tensor:
        """log p(x) per image (nats), x01 in [0, 1] with shape [B, 3, H, W]."""
        x = (2.0 * x01 - 1.0).unsqueeze(2)  # [B, 3, 1, H, W]
        centered = x - self._channel_means(x[:, :, 0])
        inv_scale = torch.exp(-self.log_scales)
        plus_in = inv_scale * (centered + 1.0 / self.max_level)
        min_in = inv_scale * (centered - 1.0 / self.max_level)
        cdf_delta = torch.sigmoid(plus_in) - torch.sigmoid(min_in)
        log_cdf_plus = plus_in - F.softplus(plus_in)  # the bin at 0: everything below
        log_one_minus_cdf_min = -F.softplus(min_in)  # the bin at 255: everything above
        mid_in = inv_scale * centered
        log_pdf_mid = mid_in - self.log_scales - 2.0 * F.softplus(mid_in)
        log_mid = torch.where(cdf_delta > 1e-5, torch.log(torch.clamp(cdf_delta, min=1e-12)),
                              log_pdf_mid - math.log(self.max_level / 2))
        # The top bin starts above 0.99 as in NVAE (whose numbers the imported checkpoints reproduce):
        # there grey level 254 (0.992) is scored as "254 or above" too, not only 255.
        log_probs = torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.99, log_one_minus_cdf_min, log_mid))
        log_mix = log_probs.sum(dim=1) + F.log_softmax(self.logit_probs, dim=1)
        return torch.logsumexp(log_mix, dim=1).flatten(1).sum(1)

    def mean(self) -> torch.Tensor:
        """The image to show: per pixel, the most probable component's means,
        channel by channel; in [0, 1]."""
        choice = self.logit_probs.argmax(dim=1, keepdim=True)  # [B, 1, H, W]
        pick = lambda t: torch.gather(t, 1, choice).squeeze(1)  # noqa: E731  [B, M, H, W] -> [B, H, W]
        x0 = pick(self.means[:, 0]).clamp(-1, 1)
        x1 = (pick(self.means[:, 1]) + pick(self.coeffs[:, 0]) * x0).clamp(-1, 1)
        x2 = (pick(self.means[:, 2]) + pick(self.coeffs[:, 1]) * x0 + pick(self.coeffs[:, 2]) * x1).clamp(-1, 1)
        return (torch.stack([x0, x1, x2], dim=1) + 1.0) / 2.0
