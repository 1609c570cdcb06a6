"""Summaries over seeds: mean +- sd, and paired differences with their standard errors.

A paired difference compares two priors on the same seed (the same stage-1 run
or the same data order and initialisation), so the seed-to-seed spread that both
share cancels. Its standard error over seeds is sd(d) / sqrt(n). With one seed
that is undefined, and the error of the evaluation itself (each run's standard
error over test images or generated images) is the only one there is; both are
reported, and `se` is the first where it exists.
"""
import math
from collections.abc import Sequence
from typing import Optional

from scipy import stats as _scipy_stats

# Two-sided level of the verdicts: a difference is `lower`/`higher` when its
# (1 - CONFIDENCE) confidence interval excludes 0.
CONFIDENCE = 0.95


def _finite(values: Sequence[Optional[float]]) -> bool:
    return all(v is not None and math.isfinite(v) for v in values)


def mean_sd(values: Sequence[float]) -> dict:
    """mean, sample standard deviation (n - 1; None for one value) and n."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("mean_sd needs at least one value")
    if not _finite(values):
        raise ValueError(f"mean_sd needs finite values, got {values}")
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return {"mean": mean, "sd": sd, "n": n}


def paired_difference(a: Sequence[float], b: Sequence[float],
                      within_se: Optional[Sequence[Optional[float]]] = None) -> dict:
    """b - a over paired seeds. `within_se[i]`: the standard error of seed i's
    difference from its own evaluation (None where unknown).

    Returns mean, sd and n of the differences, se_seeds = sd / sqrt(n) (n >= 2),
    se_within = sqrt(sum within_se^2) / n (when every seed has one),
    se = se_seeds, or se_within with one seed, and dof, the degrees of freedom
    of se: n - 1 over seeds, None (normal) for a run's own error over images."""
    if len(a) != len(b):
        raise ValueError(f"paired_difference needs as many values in a as in b, got {len(a)} and {len(b)}")
    diffs = [float(y) - float(x) for x, y in zip(a, b)]
    summary = mean_sd(diffs)
    n = summary["n"]
    se_seeds = summary["sd"] / math.sqrt(n) if summary["sd"] is not None else None
    se_within = None
    if within_se is not None:
        if len(within_se) != n:
            raise ValueError(f"within_se needs one value per pair ({n}), got {len(within_se)}")
        if _finite(within_se):
            se_within = math.sqrt(sum(float(s) ** 2 for s in within_se)) / n
    return {"mean": summary["mean"], "sd": summary["sd"], "n": n, "differences": diffs,
            "se_seeds": se_seeds, "se_within": se_within,
            "se": se_seeds if se_seeds is not None else se_within,
            "dof": n - 1 if se_seeds is not None else None}


def combined_se(se_a: Optional[float], se_b: Optional[float]) -> Optional[float]:
    """The standard error of b - a from two independent errors (None if either is unknown)."""
    if not _finite([se_a, se_b]):
        return None
    return math.sqrt(float(se_a) ** 2 + float(se_b) ** 2)


def critical_value(dof: Optional[int], confidence: float = CONFIDENCE) -> float:
    """The two-sided quantile a difference must pass, in standard errors:
    Student's t with `dof` degrees of freedom (4.30 for 3 seeds at 95%), the
    normal's (1.96) for dof None (an error over thousands of images)."""
    tail = 0.5 + confidence / 2
    if dof is None:
        return float(_scipy_stats.norm.ppf(tail))
    if dof < 1:
        raise ValueError(f"critical_value needs at least 1 degree of freedom, got {dof}")
    return float(_scipy_stats.t.ppf(tail, dof))


def direction(mean: float, se: Optional[float], dof: Optional[int] = None) -> str:
    """'lower' or 'higher' when the two-sided 95% interval mean +- critical_value(dof) * se
    excludes 0, 'within noise' when it does not, 'unknown' without a standard error."""
    if se is None or not math.isfinite(se):
        return "unknown"
    threshold = critical_value(dof) * se
    if mean < -threshold:
        return "lower"
    if mean > threshold:
        return "higher"
    return "within noise"
