"""Argument handling that both SIR implementations (fused and twin) share."""
import torch

SIR_METHODS = ("multinomial", "systematic")


def check_method_and_count(method: str, num_samples) -> None:
    if method not in SIR_METHODS:
        raise ValueError(f"sir_resample: method must be one of {SIR_METHODS}, got {method!r}")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int):
        raise TypeError(f"sir_resample: num_samples must be an int, got {type(num_samples).__name__}")


def check_generator(generator, device: torch.device) -> None:
    if generator is not None and generator.device.type != device.type:
        raise ValueError(
            f"sir_resample: generator is on {generator.device} but log_weights are on {device}; "
            "pass a generator of the same device type"
        )


def bad_row_message(row: int, log_normalizer_value: float) -> str:
    """The error for a row that cannot be sampled (same wording as the C++ op)."""
    reason = ("has every weight -inf: nothing can be drawn"
              if log_normalizer_value == float("-inf") else "contains NaN or +inf")
    return f"sir_resample: row {row} of log_weights {reason}"
