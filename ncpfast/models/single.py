"""Single-latent-group VAEs for the paper's ablations.

MLPVAE: the LARS/SNIS MNIST setting (latent dim 50, two hidden layers of 300
tanh units, Bernoulli decoder on 28x28, N(0, I) prior). ConvVAE: the RAE
setting (4 stride-2 convs of width w, 2w, 4w, 8w with BN and ReLU, a linear
latent, transposed convs back): w = 128 and a logistic-mixture output for 64x64
colour images, or a Bernoulli output on the central 28x28 of padded MNIST.
"""
import torch
import torch.nn as nn

from ..nn.batch_norm import BatchNorm2d
from ..nn.distributions import DiscretizedLogisticMixture, Normal, bernoulli_log_prob
from .base import GroupOutput, LatentVAE, crop_border


class _FlatLatentVAE(LatentVAE):
    """Shared plumbing: one latent group with an N(0, I) prior."""

    latent_dim: int

    def _standard_prior(self, batch: int, device, dtype=torch.float32, temperature: float = 1.0) -> Normal:
        mu = torch.zeros(batch, self.latent_dim, device=device, dtype=dtype)
        return Normal.from_mean_std(mu, torch.full_like(mu, temperature))

    def encode(self, x: torch.Tensor) -> Normal:
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x, decode: bool = True):
        posterior = self.encode(x)
        z = posterior.sample()
        prior = self._standard_prior(x.shape[0], x.device, z.dtype)
        return (self.decode(z) if decode else None), [GroupOutput(z=z, prior=prior, posterior=posterior, context=None)]

    def sample_decoder_output(self, num_samples, temperature=1.0, intercept=None, generator=None, decode=True):
        device = next(self.parameters()).device
        prior = self._standard_prior(num_samples, device, temperature=temperature)
        z = prior.sample(generator)
        if intercept is not None:
            z = intercept(0, z, None, prior)
        return self.decode(z) if decode else None


class MLPVAE(_FlatLatentVAE):
    likelihood = "binary"

    def __init__(self, latent_dim: int = 50, hidden: int = 300, side: int = 28, border: int = 2):
        super().__init__()
        self.latent_dim, self.side, self.border = latent_dim, side, border
        pixels = side * side
        self.encoder = nn.Sequential(nn.Linear(pixels, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                                     nn.Linear(hidden, 2 * latent_dim))
        self.decoder = nn.Sequential(nn.Linear(latent_dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                                     nn.Linear(hidden, pixels))

    def _crop(self, x):
        return crop_border(x, self.border)

    def encode(self, x):
        mu, log_sigma = self.encoder(self._crop(x).flatten(1)).chunk(2, dim=1)
        return Normal(mu, log_sigma)

    def decode(self, z):
        return self.decoder(z).view(-1, 1, self.side, self.side)

    def reconstruction_log_prob(self, decoder_output, x):
        return bernoulli_log_prob(decoder_output, self._crop(x))

    def mean_image(self, decoder_output):
        return torch.sigmoid(decoder_output)

    def num_data_dims(self):
        return self.side * self.side


class ConvVAE(_FlatLatentVAE):
    def __init__(self, image_size: int = 64, latent_dim: int = 64, num_mix: int = 10, width: int = 128,
                 in_channels: int = 3, output: str = "logistic_mixture", crop_border: int = 2):
        super().__init__()
        if image_size % 16:
            raise ValueError(f"ConvVAE needs image_size divisible by 16, got {image_size}")
        if output == "logistic_mixture" and in_channels != 3:
            raise ValueError(f"ConvVAE's logistic_mixture output models 3-channel images, got in_channels="
                             f"{in_channels}; use output='bernoulli' for binary images")
        if output not in ("logistic_mixture", "bernoulli"):
            raise ValueError(f"ConvVAE output must be logistic_mixture or bernoulli, got {output!r}")
        self.latent_dim, self.num_mix, self.image_size, self.in_channels = latent_dim, num_mix, image_size, in_channels
        self.likelihood = "binary" if output == "bernoulli" else "8bit"
        # Binary MNIST is padded to 32 by the loader; the likelihood covers the real 28x28 only.
        self.crop_border = crop_border if self.likelihood == "binary" else 0
        widths = [in_channels, width, 2 * width, 4 * width, 8 * width]
        layers = []
        for cin, cout in zip(widths[:-1], widths[1:]):
            layers += [nn.Conv2d(cin, cout, 4, 2, 1, bias=False), BatchNorm2d(cout), nn.ReLU()]
        self.encoder = nn.Sequential(*layers, nn.Flatten())
        self.to_latent = nn.Linear(widths[-1] * (image_size // 16) ** 2, 2 * latent_dim)
        self.base = image_size // 8
        self.from_latent = nn.Linear(latent_dim, widths[-1] * self.base ** 2)
        up = []
        for cin, cout in zip(widths[:1:-1], widths[-2:0:-1]):
            up += [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), BatchNorm2d(cout), nn.ReLU()]
        out_channels = 10 * num_mix if self.likelihood == "8bit" else in_channels
        self.decoder = nn.Sequential(*up, nn.Conv2d(width, out_channels, 3, padding=1))
        self.top_width = widths[-1]

    def _crop(self, t):
        return crop_border(t, self.crop_border)

    def encode(self, x):
        mu, log_sigma = self.to_latent(self.encoder(2 * x - 1)).chunk(2, dim=1)
        return Normal(mu, log_sigma)

    def decode(self, z):
        return self.decoder(self.from_latent(z).view(-1, self.top_width, self.base, self.base))

    def reconstruction_log_prob(self, decoder_output, x):
        if self.likelihood == "binary":
            return bernoulli_log_prob(self._crop(decoder_output), self._crop(x))
        return DiscretizedLogisticMixture(decoder_output, self.num_mix).log_prob(x)

    def mean_image(self, decoder_output):
        if self.likelihood == "binary":
            return torch.sigmoid(self._crop(decoder_output))
        return DiscretizedLogisticMixture(decoder_output, self.num_mix).mean()

    def num_data_dims(self):
        side = self.image_size - 2 * self.crop_border
        return self.in_channels * side * side
