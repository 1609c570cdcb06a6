"""NVAE's BatchNorm re-adjustment for sampling at a temperature T < 1.

The decoder's BatchNorm running statistics are those of training, where the
latents came from the posterior. Prior samples at T < 1 have smaller variance,
so NVAE re-estimates the statistics on them before sampling: the decoder runs
in train mode on prior samples at temperature T, then samples in eval mode.
This is done on a copy of the model, so the checkpoint's statistics (and the
NLL, which always uses them) are untouched.
"""
import copy
from typing import Optional

import torch
import torch.nn as nn

DEFAULT_BATCHES = 100
DEFAULT_BATCH_SIZE = 64


@torch.no_grad()
def readjust_batchnorm(vae, temperature: float, batches: int = DEFAULT_BATCHES,
                       batch_size: int = DEFAULT_BATCH_SIZE, generator: Optional[torch.Generator] = None):
    """A copy of vae (eval mode) whose BatchNorm layers that prior sampling passes
    through hold the cumulative average of `batches` batches of batch_size prior
    samples at `temperature` (drawn from `generator`). Layers that sampling does
    not reach (the encoder's) keep their statistics. The cumulative average is
    what momentum=None gives nn.BatchNorm; it is set as momentum 1/i before
    batch i, so that the fused cells, which update the statistics themselves,
    compute it too."""
    if batches < 1 or batch_size < 2:
        raise ValueError(f"BN re-adjustment needs batches >= 1 and batch_size >= 2, got {batches} and {batch_size}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    model = copy.deepcopy(vae)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return model.eval()
    saved = [(m.momentum, copy.deepcopy(m.state_dict())) for m in norms]
    for m in norms:
        m.reset_running_stats()  # num_batches_tracked = 0 marks the layers sampling never reaches
    model.train()
    for i in range(1, batches + 1):
        for m in norms:
            m.momentum = 1.0 / i
        model.sample_decoder_output(batch_size, temperature, generator=generator)
    for m, (momentum, state) in zip(norms, saved):
        m.momentum = momentum
        if int(m.num_batches_tracked) == 0:
            m.load_state_dict(state)
    return model.eval()
