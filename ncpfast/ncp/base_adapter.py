"""A torch.distributions prior as an NCPPrior base: vector-valued, sampled from a
torch.Generator (torch.distributions takes none).

Exact generator paths, which draw every random number from the generator:
    Independent(Normal)            loc + scale * eps
    MultivariateNormal             loc + scale_tril @ eps
    LowRankMultivariateNormal      loc + cov_factor @ eps_W + sqrt(cov_diag) * eps_D
    MixtureSameFamily of those     a component per sample by torch.multinomial on the
                                   mixture's probabilities, then that component's
                                   transform of the noise
The noise is drawn on the base's device, so the generator must live there too (as
for the package's StandardNormal and GaussianMixture). These families keep a
detached copy of their parameters as buffers (the base is fixed; later changes to
the user's tensors do not reach it): `.to(device)` moves them and the
distribution is rebuilt from them, and NCPPrior can save them.

Any other family is sampled by the distribution itself inside
torch.random.fork_rng, with the CPU RNG and that of the distribution's device
seeded from one number drawn from the generator: the same generator state gives
the same samples, and the global RNG is left as it was; the generator may live
on any device. `.to(device)` does not move such a distribution (it has no
`.to`): its samples are moved to the device the base was moved to, and log_prob
moves its argument to the distribution's device and the result back, which costs
a copy each way; build the distribution on the device you will use instead.
Such a base cannot be saved.
"""
from typing import Optional

import torch
import torch.distributions as D
import torch.nn as nn

# kind -> the tensors that rebuild it (as keyword arguments of its constructor).
GAUSSIAN_KINDS = {"independent_normal": ("loc", "scale"),
                  "multivariate_normal": ("loc", "scale_tril"),
                  "low_rank_multivariate_normal": ("loc", "cov_factor", "cov_diag")}
MIXTURE_PREFIX = "mixture_of_"
SAVED_FAMILIES = ("Independent(Normal, 1)", "MultivariateNormal", "LowRankMultivariateNormal",
                  "MixtureSameFamily of those")


def check_vector_distribution(distribution: D.Distribution, argument: str = "base_prior") -> int:
    """The dimension of a distribution over vectors: batch_shape () and a 1-D event_shape."""
    if len(distribution.event_shape) != 1 or len(distribution.batch_shape) != 0:
        hint = (f"; wrap it as torch.distributions.Independent(..., {len(distribution.batch_shape)}) so that its "
                f"batch dimensions become the event" if len(distribution.event_shape) == 0
                and len(distribution.batch_shape) == 1 else "")
        raise ValueError(f"{argument} must be a distribution over vectors (batch_shape () and a 1-D event_shape), "
                         f"got {type(distribution).__name__} with batch_shape {tuple(distribution.batch_shape)} "
                         f"and event_shape {tuple(distribution.event_shape)}{hint}")
    return int(distribution.event_shape[0])


def _gaussian_kind(distribution: D.Distribution) -> Optional[str]:
    if type(distribution) is D.Independent and type(distribution.base_dist) is D.Normal \
            and distribution.reinterpreted_batch_ndims == 1:
        return "independent_normal"
    if type(distribution) is D.MultivariateNormal:
        return "multivariate_normal"
    if type(distribution) is D.LowRankMultivariateNormal:
        return "low_rank_multivariate_normal"
    return None


def _gaussian_tensors(kind: str, distribution: D.Distribution) -> dict:
    source = distribution.base_dist if kind == "independent_normal" else distribution
    return {name: getattr(source, name).detach().clone() for name in GAUSSIAN_KINDS[kind]}


def _build_gaussian(kind: str, tensors: dict) -> D.Distribution:
    if kind == "independent_normal":
        return D.Independent(D.Normal(tensors["loc"], tensors["scale"], validate_args=False), 1, validate_args=False)
    if kind == "multivariate_normal":
        return D.MultivariateNormal(tensors["loc"], scale_tril=tensors["scale_tril"], validate_args=False)
    return D.LowRankMultivariateNormal(tensors["loc"], tensors["cov_factor"], tensors["cov_diag"], validate_args=False)


def describe(distribution: D.Distribution):
    """(kind, {name: tensor}) for the families with exact generator paths, else None."""
    kind = _gaussian_kind(distribution)
    if kind is not None:
        return kind, _gaussian_tensors(kind, distribution)
    if type(distribution) is D.MixtureSameFamily:
        component_kind = _gaussian_kind(distribution.component_distribution)
        if component_kind is not None and len(distribution.mixture_distribution.batch_shape) == 0:
            tensors = _gaussian_tensors(component_kind, distribution.component_distribution)
            tensors["mixture_logits"] = distribution.mixture_distribution.logits.detach().clone()
            return MIXTURE_PREFIX + component_kind, tensors
    return None


def build(kind: str, tensors: dict) -> D.Distribution:
    """The distribution that describe() described."""
    if kind in GAUSSIAN_KINDS:
        return _build_gaussian(kind, tensors)
    if kind.startswith(MIXTURE_PREFIX) and kind[len(MIXTURE_PREFIX):] in GAUSSIAN_KINDS:
        component = {name: value for name, value in tensors.items() if name != "mixture_logits"}
        return D.MixtureSameFamily(D.Categorical(logits=tensors["mixture_logits"], validate_args=False),
                                   _build_gaussian(kind[len(MIXTURE_PREFIX):], component), validate_args=False)
    raise ValueError(f"unknown torch.distributions base kind {kind!r}; known: {sorted(GAUSSIAN_KINDS)} and "
                     f"{MIXTURE_PREFIX}<one of them>")


def _gaussian_noise(kind: str, tensors: dict, count: int, generator) -> list:
    """The standard normal draws one sample of the family needs, [count, width] each."""
    loc = tensors["loc"]
    widths = [tensors["cov_factor"].shape[-1], loc.shape[-1]] if kind == "low_rank_multivariate_normal" \
        else [loc.shape[-1]]
    return [torch.randn(count, width, device=loc.device, dtype=loc.dtype, generator=generator) for width in widths]


def _gaussian_transform(kind: str, tensors: dict, noise: list) -> torch.Tensor:
    """Noise -> samples for one Gaussian (tensors without a batch dimension)."""
    loc = tensors["loc"]
    if kind == "independent_normal":
        return loc + tensors["scale"] * noise[0]
    if kind == "multivariate_normal":
        return loc + noise[0] @ tensors["scale_tril"].transpose(-1, -2)
    return loc + noise[0] @ tensors["cov_factor"].transpose(-1, -2) + tensors["cov_diag"].sqrt() * noise[1]


def family_name(distribution: D.Distribution) -> str:
    """e.g. "Independent(Laplace)", "MixtureSameFamily(MultivariateNormal)"."""
    inner = getattr(distribution, "base_dist", None) or getattr(distribution, "component_distribution", None)
    name = type(distribution).__name__
    return f"{name}({family_name(inner)})" if inner is not None else name


def _tensor_device(distribution: D.Distribution) -> Optional[torch.device]:
    for value in vars(distribution).values():
        found = value.device if isinstance(value, torch.Tensor) else \
            _tensor_device(value) if isinstance(value, D.Distribution) else None
        if found is not None:
            return found
    return None


def _distribution_device(distribution: D.Distribution) -> torch.device:
    """Where a distribution's parameters live (the CPU for one without tensors)."""
    return _tensor_device(distribution) or torch.device("cpu")


class DistributionBase(nn.Module):
    """A torch.distributions.Distribution over vectors with sample(shape, generator)
    and log_prob(z), the interface NCPPrior's bases share (see the module docstring
    for which families are sampled exactly from the generator)."""

    def __init__(self, distribution: D.Distribution, argument: str = "base_prior"):
        super().__init__()
        if not isinstance(distribution, D.Distribution):
            raise TypeError(f"{argument} must be a torch.distributions.Distribution, got {type(distribution).__name__}")
        self.dim = check_vector_distribution(distribution, argument)
        described = describe(distribution)
        self.kind = described[0] if described is not None else None
        self._names = []
        if described is not None:
            for name, tensor in described[1].items():
                self.register_buffer(name, tensor)
                self._names.append(name)
            self._cache_key, self._distribution = self._key(), distribution
        else:
            self._distribution = distribution
            self.register_buffer("_device_anchor", torch.zeros((), device=_distribution_device(distribution)),
                                 persistent=False)

    @property
    def exact(self) -> bool:
        """Whether sampling draws every random number from the generator (else: a forked, seeded RNG)."""
        return self.kind is not None

    def tensors(self) -> dict:
        return {name: getattr(self, name) for name in self._names}

    def _key(self):
        return tuple((t.data_ptr(), t._version, t.device, t.dtype) for t in self.tensors().values())

    @property
    def distribution(self) -> D.Distribution:
        """The distribution, rebuilt from the buffers after .to() or load_state_dict changed them."""
        if self.kind is not None and self._key() != self._cache_key:
            self._distribution, self._cache_key = build(self.kind, self.tensors()), self._key()
        return self._distribution

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        if self.kind is not None:
            return self.distribution.log_prob(z)
        device = _distribution_device(self._distribution)
        return self._distribution.log_prob(z.to(device)).to(z.device)

    def sample(self, shape, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        if self.kind is None:
            return self._forked_sample(shape, generator).to(self._device_anchor.device)
        count = 1
        for size in shape:
            count *= size
        tensors = self.tensors()
        if self.kind in GAUSSIAN_KINDS:
            flat = _gaussian_transform(self.kind, tensors, _gaussian_noise(self.kind, tensors, count, generator))
        else:
            flat = self._mixture_sample(count, tensors, generator)
        return flat.view(*shape, self.dim)

    def _mixture_sample(self, count: int, tensors: dict, generator) -> torch.Tensor:
        kind = self.kind[len(MIXTURE_PREFIX):]
        logits = tensors.pop("mixture_logits")
        if count == 0:
            return logits.new_zeros(0, self.dim)
        component = torch.multinomial(torch.softmax(logits, -1), count, replacement=True, generator=generator)
        noise = _gaussian_noise(kind, {name: t[0] for name, t in tensors.items()}, count, generator)
        out = noise[-1].new_empty(count, self.dim)
        for k in range(logits.shape[0]):  # one transform per component: no [count, dim, dim] gather
            rows = (component == k).nonzero().squeeze(1)
            if rows.numel():
                out[rows] = _gaussian_transform(kind, {name: t[k] for name, t in tensors.items()},
                                                [part[rows] for part in noise])
        return out

    def _forked_sample(self, shape, generator) -> torch.Tensor:
        if generator is None:
            return self._distribution.sample(shape)
        seed = int(torch.randint(0, 2**62, (), generator=generator, device=generator.device))
        device = _distribution_device(self._distribution)
        devices = [device.index if device.index is not None else torch.cuda.current_device()] \
            if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.random.default_generator.manual_seed(seed)
            if devices:
                with torch.cuda.device(devices[0]):
                    torch.cuda.manual_seed(seed)
            return self._distribution.sample(shape)

    def extra_repr(self) -> str:
        return f"{family_name(self._distribution)}, dim={self.dim}, exact={self.exact}"
