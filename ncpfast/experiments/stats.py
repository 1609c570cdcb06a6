"""Summaries over seeds: mean +- sd, and paired differences with their standard errors.

A paired difference compares two priors on the same seed (the same stage-1 run
or the same data order and initialisation), so the seed-to-seed spread that both
share cancels. Its standard error over seeds is sd(d) / sqrt(n). With one seed
that is undefined, and the error of the evaluation itself (each run's standard
error over test images or generated images) is the only one there is; both are
reported, and `se` is the first where it exists.
"""
import math
from typing import Optional, Sequence


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
    se_within = sqrt(sum within_se^2) / n (when every seed has one), and
    se = se_seeds, or se_within with one seed."""
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
            "se": se_seeds if se_seeds is not None else se_within}


def combined_se(se_a: Optional[float], se_b: Optional[float]) -> Optional[float]:
    """The standard error of b - a from two independent errors (None if either is unknown)."""
    if not _finite([se_a, se_b]):
        return None
    return math.sqrt(float(se_a) ** 2 + float(se_b) ** 2)


def direction(mean: float, se: Optional[float], z: float = 2.0) -> str:
    """'lower' or 'higher' when the difference is more than z standard errors from 0,
    'within noise' when it is not, 'unknown' without a standard error."""
    if se is None or not math.isfinite(se):
        return "unknown"
    if mean < -z * se:
        return "lower"
    if mean > z * se:
        return "higher"
    return "within noise"
