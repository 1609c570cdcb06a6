"""Base priors for NCPPrior: anything with sample(shape, generator) and log_prob(z)."""
import math
from typing import Optional

import torch
import torch.nn as nn


class StandardNormal(nn.Module):
    """N(0, I) in `dim` dimensions."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.register_buffer("_device_anchor", torch.zeros(()))

    def sample(self, shape, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        return torch.randn(*shape, self.dim, device=self._device_anchor.device, generator=generator)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return -0.5 * (z * z).sum(-1) - 0.5 * self.dim * math.log(2 * math.pi)


class GaussianMixture(nn.Module):
    """A diagonal Gaussian mixture, fitted by EM (the paper's "GMM base"; the
    pipeline fits it to posterior samples: ncpfast.stage2 says why)."""

    def __init__(self, weights: torch.Tensor, means: torch.Tensor, log_stds: torch.Tensor):
        super().__init__()
        if means.dim() != 2 or weights.shape != means.shape[:1] or log_stds.shape != means.shape:
            raise ValueError(f"GaussianMixture needs weights [K], means [K, dim] and log_stds [K, dim]; got "
                             f"{tuple(weights.shape)}, {tuple(means.shape)} and {tuple(log_stds.shape)}")
        self.register_buffer("log_weights", torch.log(weights))
        self.register_buffer("means", means)
        self.register_buffer("log_stds", log_stds)
        self.dim = means.shape[1]

    @classmethod
    def fit(cls, data: torch.Tensor, components: int = 10, iterations: int = 100, min_std: float = 1e-3,
            generator: Optional[torch.Generator] = None) -> "GaussianMixture":
        """EM from `components` distinct data points chosen with `generator` (on any device);
        every tensor lives on data.device."""
        if data.dim() != 2:
            raise ValueError(f"GaussianMixture.fit: data must be [N, dim], got shape {tuple(data.shape)}")
        if components < 1:
            raise ValueError(f"GaussianMixture.fit: components must be >= 1, got {components}")
        data = data.detach().float()
        n = data.shape[0]
        if n < components:
            raise ValueError(f"GaussianMixture.fit: {n} points cannot fit {components} components")
        order = torch.randperm(n, generator=generator, device=generator.device if generator is not None else "cpu")
        means = data[order[:components].to(data.device)].clone()
        stds = data.std(0, keepdim=True).expand(components, -1).clone().clamp_min(min_std)
        weights = torch.full((components,), 1.0 / components, device=data.device)
        for _ in range(iterations):
            mixture = cls(weights, means, stds.log())
            resp = torch.softmax(mixture._component_log_probs(data), dim=1)  # [N, K]
            mass = resp.sum(0) + 1e-8
            weights = mass / n
            means = (resp.T @ data) / mass[:, None]
            # The weighted mean of (x - mu)^2, not E[x^2] - mu^2: in float32 that difference
            # cancels away the variance of a component narrow next to its mean (the
            # [N, K, dim] tensor is as large as _component_log_probs's).
            diff = data[:, None, :] - means
            var = torch.einsum("nk,nkd->kd", resp, diff * diff) / mass[:, None]
            stds = var.clamp_min(min_std ** 2).sqrt()
        return cls(weights, means, stds.log())

    def _component_log_probs(self, z: torch.Tensor) -> torch.Tensor:
        diff = (z[..., None, :] - self.means) / self.log_stds.exp()
        return (self.log_weights - 0.5 * (diff * diff).sum(-1) - self.log_stds.sum(-1)
                - 0.5 * self.dim * math.log(2 * math.pi))

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return torch.logsumexp(self._component_log_probs(z), dim=-1)

    def sample(self, shape, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        count = math.prod(shape)
        if count == 0:
            return self.means.new_zeros(*shape, self.dim)
        component = torch.multinomial(self.log_weights.exp(), count, replacement=True, generator=generator)
        eps = torch.randn(count, self.dim, device=self.means.device, generator=generator)
        z = self.means[component] + self.log_stds.exp()[component] * eps
        return z.view(*shape, self.dim)
