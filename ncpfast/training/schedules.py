"""Schedules as pure functions of the step, so a resumed run needs no scheduler state."""
import math


def learning_rate(step: int, total_steps: int, warmup_steps: int, peak: float, final: float) -> float:
    """Linear warm-up from 0 to peak, then cosine decay to final."""
    if warmup_steps > 0 and step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return final + 0.5 * (peak - final) * (1 + math.cos(math.pi * min(1.0, progress)))


def kl_coefficient(step: int, total_steps: int, anneal_portion: float, const_portion: float, start: float) -> float:
    """KL warm-up: `start` for the first const_portion of the steps, then a linear
    rise to 1 by anneal_portion of the steps."""
    anneal_steps = anneal_portion * total_steps
    const_steps = const_portion * total_steps
    if anneal_steps <= 0:
        return 1.0
    return max(min((step - const_steps) / anneal_steps, 1.0), start)


def regularizer_weight(kl_coeff: float, initial: float, final: float) -> float:
    """Log-linear from `initial` (KL coefficient 0) to `final` (coefficient 1)."""
    if final <= 0 or initial <= 0:
        return final if final > 0 else 0.0
    return math.exp((1 - kl_coeff) * math.log(initial) + kl_coeff * math.log(final))
