"""Stage 2: noise contrastive priors (NCP), flat and hierarchical."""
from .base_priors import GaussianMixture, StandardNormal
from .grouped import GroupClassifier, GroupedNCP
from .prior import NCPPrior, log_mean_exp_with_stderr

__all__ = ["GroupedNCP", "GroupClassifier", "NCPPrior", "StandardNormal", "GaussianMixture", "log_mean_exp_with_stderr"]
