"""What every NCP prior offers, whatever it is built on: NCPPrior (flat latents,
any base), FlatNCP (a single-group VAE) and GroupedNCP (a hierarchical VAE, one
classifier per group).

- the log-ratio of group k, log r_k(z_k | z_<k) (group_log_ratio);
- log Z with its estimate (log_partition_estimate: standard error, effective
  sample size, proposal), cached in one form until the next fit and saved with
  the checkpoint (LogPartitionCache);
- sample(n, sampler) given a SamplerConfig, the one set of sampler knobs and
  defaults, with a temperature and a generator;
- to_checkpoint(): plain data that loads with weights_only=True.

The classifiers of all three are trained by one loop (fitting.fit_classifiers;
a flat prior is one group).
"""
import abc
import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn

from .estimators import LogPartitionEstimate, cached_estimate, check_proposal_arguments
from .joint_sampling import check_sampling_mode
from .sampling import check_sampling_arguments

# Draws of a log Z estimate when the caller names no count (stage 2's default is
# the config's; docs/results.md's convergence study says how many a model needs).
DEFAULT_LOG_Z_SAMPLES = 10_000


@dataclass(frozen=True)
class SamplerConfig:
    """How an NCP prior is sampled: method "sir" (num_proposals per latent group, or
    per image in joint mode), "langevin" (steps of size step_size) or "base" (the
    VAE's own prior, or a flat prior's base); mode "group" (group by group, the
    paper's) or "joint" (whole samples, the density the NLL scores);
    max_proposal_bytes bounds SIR's scoring working set (None: by device)."""
    method: str = "sir"
    mode: str = "group"
    num_proposals: int = 50
    steps: int = 50
    step_size: float = 1e-2
    max_proposal_bytes: Optional[int] = None

    def __post_init__(self):
        check_sampling_arguments(self.method, self.num_proposals, self.steps, self.step_size, self.max_proposal_bytes)
        check_sampling_mode(self.mode)

    def with_settings(self, **settings) -> "SamplerConfig":
        """This config with some knobs changed (validated again)."""
        unknown = set(settings) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise TypeError(f"unknown sampler setting(s) {sorted(unknown)}; a SamplerConfig has "
                            f"{[f.name for f in dataclasses.fields(self)]}")
        return dataclasses.replace(self, **settings) if settings else self


DEFAULT_SAMPLER = SamplerConfig()


def resolve_sampler(sampler: Optional[SamplerConfig], settings: dict) -> SamplerConfig:
    """sampler (default DEFAULT_SAMPLER) with the keyword settings applied."""
    if sampler is not None and not isinstance(sampler, SamplerConfig):
        raise TypeError(f"sampler must be a SamplerConfig, got {type(sampler).__name__}")
    return (sampler or DEFAULT_SAMPLER).with_settings(**settings)


def check_samples(n: int) -> None:
    if n < 1:
        raise ValueError(f"number of samples must be >= 1, got {n}")


def check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


class LogPartitionCache:
    """The one log Z cache: the last LogPartitionEstimate, which a request answers
    when its sample count, proposal and posterior are each the estimate's or not
    given (estimators.cached_estimate); a fit forgets it. Subclasses compute a new
    estimate in _new_log_partition_estimate."""
    default_log_z_batch = 1000
    _log_partition: Optional[LogPartitionEstimate] = None

    @property
    def stored_log_partition(self) -> Optional[LogPartitionEstimate]:
        """The last log Z estimate (a checkpoint's, after loading), or None."""
        return self._log_partition

    def forget_log_partition(self) -> None:
        self._log_partition = None

    def log_partition(self, num_samples: Optional[int] = None, *, batch_size: Optional[int] = None,
                      generator: Optional[torch.Generator] = None, refresh: bool = False,
                      proposal: Optional[str] = None,
                      posterior: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> tuple[float, float]:
        """(log Z, its standard error); see log_partition_estimate."""
        estimate = self.log_partition_estimate(num_samples, batch_size=batch_size, generator=generator,
                                               refresh=refresh, proposal=proposal, posterior=posterior)
        return estimate.log_z, estimate.stderr

    @torch.no_grad()
    def log_partition_estimate(self, num_samples: Optional[int] = None, *, batch_size: Optional[int] = None,
                               generator: Optional[torch.Generator] = None, refresh: bool = False,
                               proposal: Optional[str] = None,
                               posterior: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> LogPartitionEstimate:
        """Z = E_base[prod_k r_k] with its standard error and effective sample size,
        from num_samples (default DEFAULT_LOG_Z_SAMPLES) draws of the proposal:
        "prior" (the base itself, log w = log r) or "aggregate-posterior" (the
        defensive mixture of the base and posterior=(mu, sigma) [N, D] of N training
        images; single-group flat latents). Cached (see the class); proposal None
        takes the cached estimate whatever its proposal, else the prior's."""
        cached = None if refresh else cached_estimate(self._log_partition, num_samples, proposal, posterior)
        if cached is not None:
            return cached
        proposal = proposal or "prior"
        check_proposal_arguments(posterior, proposal)
        self._log_partition = self._new_log_partition_estimate(
            num_samples or DEFAULT_LOG_Z_SAMPLES, proposal, posterior, batch_size or self.default_log_z_batch,
            generator)
        return self._log_partition

    def _new_log_partition_estimate(self, num_samples: int, proposal: str, posterior, batch_size: int,
                                    generator: Optional[torch.Generator]) -> LogPartitionEstimate:
        raise NotImplementedError

    def _log_partition_state(self) -> Optional[dict]:
        return None if self._log_partition is None else self._log_partition.as_dict()

    def _load_log_partition_state(self, saved) -> None:
        self._log_partition = estimate_from_state(saved)


def estimate_from_state(saved) -> Optional[LogPartitionEstimate]:
    """A checkpoint's log Z: a dict (LogPartitionEstimate.as_dict), or the
    (log Z, stderr, samples) tuple of checkpoints written before the ESS was kept."""
    if saved is None:
        return None
    if isinstance(saved, dict):
        return LogPartitionEstimate.from_dict(saved)
    log_z, stderr, num_samples = saved
    return LogPartitionEstimate(log_z, stderr, float("nan"), num_samples, "prior")


class NoiseContrastivePrior(LogPartitionCache, nn.Module, abc.ABC):
    """The contract of an NCP prior (see the module's docstring)."""
    # "auto": the fused ops where they apply; "torch": the modules (the reference path)
    kernels = "auto"

    @property
    @abc.abstractmethod
    def num_groups(self) -> int:
        """Latent groups, each with its classifier."""

    @property
    def base_kind(self) -> str:
        """What the NCP reweights: "gaussian" (the VAE's own prior, N(0, I) for flat
        latents), "gmm", or a base's type name."""
        return "gaussian"

    @abc.abstractmethod
    def group_log_ratio(self, k: int, z: torch.Tensor, context: Optional[torch.Tensor]) -> torch.Tensor:
        """log r_k(z_k | z_<k), one value per sample; context: the decoder's for z_<k
        (None for flat latents)."""

    def sample(self, n: int, sampler: Optional[SamplerConfig] = None, *, temperature: float = 1.0,
               generator: Optional[torch.Generator] = None, **settings) -> torch.Tensor:
        """n samples (images for a VAE's prior, latents for NCPPrior) drawn as the
        SamplerConfig says (sampler, default DEFAULT_SAMPLER, with any of its fields
        given as keywords: sample(n, method="langevin", steps=100)). temperature T
        scales the base's standard deviations before the classifiers reweight it; at
        T < 1 they score latents (and decoder contexts) they were not trained on."""
        sampler = resolve_sampler(sampler, settings)
        check_samples(n)
        check_temperature(temperature)
        return self._sample(n, sampler, temperature, generator)

    @abc.abstractmethod
    def _sample(self, n: int, sampler: SamplerConfig, temperature: float,
                generator: Optional[torch.Generator]) -> torch.Tensor:
        ...

    @abc.abstractmethod
    def to_checkpoint(self) -> dict:
        """Plain data (loads with weights_only=True), the log Z estimate included."""
