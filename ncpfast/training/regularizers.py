"""NVAE's regularisers: the spectral norms of the conv weights (power iteration,
batched by weight shape) and the largest |gamma| of every BatchNorm."""
from collections import defaultdict

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..nn.cells import WNConv2d


class SpectralRegularizer(nn.Module):
    """Sum of the largest singular values of all weight-normalised conv weights.

    The power-iteration vectors are buffers, so they are checkpointed and a
    resumed run continues exactly.
    """

    def __init__(self, model: nn.Module, init_iterations: int = 10):
        super().__init__()
        self._convs = [m for m in model.modules() if isinstance(m, WNConv2d)]
        self._by_shape = defaultdict(list)
        for i, conv in enumerate(self._convs):
            self._by_shape[self._matrix_shape(conv)].append(i)
        self._keys = sorted(self._by_shape)
        generator = torch.Generator().manual_seed(0)
        for n, key in enumerate(self._keys):
            rows, cols = key
            count = len(self._by_shape[key])
            u = F.normalize(torch.randn(count, rows, 1, generator=generator), dim=1)
            v = F.normalize(torch.randn(count, cols, 1, generator=generator), dim=1)
            self.register_buffer(f"u{n}", u)
            self.register_buffer(f"v{n}", v)
        self.init_iterations = init_iterations
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    @staticmethod
    def _matrix_shape(conv: WNConv2d):
        return conv.weight.shape[0], conv.weight[0].numel()

    def forward(self) -> torch.Tensor:
        iterations = 1 if bool(self.initialised) else self.init_iterations
        total = 0.0
        for n, key in enumerate(self._keys):
            weights = torch.stack([self._convs[i].normalized_weight().reshape(key) for i in self._by_shape[key]])
            u, v = getattr(self, f"u{n}"), getattr(self, f"v{n}")
            with torch.no_grad():
                w = weights.detach().to(u.dtype)
                for _ in range(iterations):
                    v = F.normalize(torch.bmm(w.transpose(1, 2), u), dim=1, eps=1e-3)
                    u = F.normalize(torch.bmm(w, v), dim=1, eps=1e-3)
                getattr(self, f"u{n}").copy_(u)
                getattr(self, f"v{n}").copy_(v)
            sigma = torch.bmm(u.transpose(1, 2), torch.bmm(weights.to(u.dtype), v)).flatten()
            total = total + sigma.sum()
        self.initialised.fill_(True)
        return total


def batchnorm_max_gamma(model: nn.Module) -> torch.Tensor:
    """Sum over BatchNorm layers of max |gamma| (NVAE's BN regulariser)."""
    terms = [m.weight.abs().max() for m in model.modules() if isinstance(m, nn.BatchNorm2d) and m.weight is not None]
    return torch.stack(terms).sum() if terms else torch.zeros(())
