"""Stage 2: noise contrastive priors (NCP), flat and hierarchical."""
from .base_priors import GaussianMixture, StandardNormal
from .classifiers import GroupClassifier
from .estimators import LogPartitionEstimate, log_mean_exp_with_stderr
from .flat import FlatNCP
from .grouped import GroupedNCP
from .prior import NCPPrior

__all__ = ["GroupedNCP", "FlatNCP", "GroupClassifier", "NCPPrior", "StandardNormal", "GaussianMixture",
           "log_mean_exp_with_stderr",
           "LogPartitionEstimate"]
