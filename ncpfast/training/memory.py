"""Activation memory: what autograd keeps from a forward for its backward.

Device-independent (it counts tensors, not allocator pages), so it compares
the fused and eager cells on the CPU too, where the resident set says little.
"""
from typing import Callable

import torch


def saved_activation_bytes(forward: Callable[[], object], exclude=()) -> int:
    """Runs forward() and returns the bytes of the distinct storages autograd
    saved for the backward, leaving out those of the tensors in `exclude`
    (e.g. the model's parameters, which exist anyway)."""
    excluded = {t.untyped_storage().data_ptr() for t in exclude}
    saved = {}

    def pack(t):
        storage = t.untyped_storage()
        saved[storage.data_ptr()] = storage.nbytes()
        # Not t itself: an op's output saved as itself would hold its own grad_fn, a
        # reference cycle in C++ that no collector frees, leaking every measured graph.
        return t.detach()

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward()
    return sum(n for ptr, n in saved.items() if ptr not in excluded)
