"""NCPPrior's base as plain data (a kind string and tensors) for checkpoints that
load with weights_only=True, and back. A base of any other kind is refused rather
than saved as something else."""
from .base_adapter import SAVED_FAMILIES, DistributionBase, family_name
from .base_adapter import build as build_distribution
from .base_priors import GaussianMixture, StandardNormal

_GMM_TENSORS = ("log_weights", "means", "log_stds")
DISTRIBUTION_PREFIX = "torch.distributions:"


def base_to_state(base) -> dict:
    """{"kind", "dim", "tensors"} for StandardNormal, GaussianMixture and the
    torch.distributions families with exact generator paths; TypeError otherwise."""
    if type(base) is StandardNormal:
        return {"kind": "standard_normal", "dim": base.dim, "tensors": {}}
    if type(base) is GaussianMixture:
        return {"kind": "gaussian_mixture", "dim": base.dim,
                "tensors": {name: getattr(base, name).detach().cpu() for name in _GMM_TENSORS}}
    if type(base) is DistributionBase and base.kind is not None:
        return {"kind": DISTRIBUTION_PREFIX + base.kind, "dim": base.dim,
                "tensors": {name: t.detach().cpu() for name, t in base.tensors().items()}}
    what = f"its base, torch.distributions {family_name(base._distribution)}" if type(base) is DistributionBase \
        else f"its base, of type {type(base).__name__}"
    raise TypeError(f"NCPPrior cannot save {what}: a checkpoint holds only tensors and plain data, and only "
                    f"StandardNormal, GaussianMixture and the torch.distributions {', '.join(SAVED_FAMILIES)} "
                    f"can be rebuilt from those. Save the classifier instead, "
                    f"torch.save(prior.classifier.state_dict(), path), and to restore it build "
                    f"NCPPrior(your_base, ...) and call prior.classifier.load_state_dict(torch.load(path)).")


def base_from_state(state: dict, map_location="cpu"):
    """The base that base_to_state described."""
    kind, dim = state["kind"], state["dim"]
    tensors = {name: t.to(map_location) for name, t in state["tensors"].items()}
    if kind == "standard_normal":
        return StandardNormal(dim).to(map_location)
    if kind == "gaussian_mixture":
        base = GaussianMixture(tensors["log_weights"].exp(), tensors["means"], tensors["log_stds"])
        base.log_weights.copy_(tensors["log_weights"])  # exp then log need not return the same bits
        return base
    if kind.startswith(DISTRIBUTION_PREFIX):
        return DistributionBase(build_distribution(kind[len(DISTRIBUTION_PREFIX):], tensors))
    raise ValueError(f"unknown base kind {kind!r} in the checkpoint; this version knows standard_normal, "
                     f"gaussian_mixture and {DISTRIBUTION_PREFIX}<family>")
