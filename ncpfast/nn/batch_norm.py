"""Batch normalisation whose training statistics can span every process of a
data-parallel run, as NVAE trains (its SyncBatchNorm).

Without synchronisation each process normalises with the statistics of its own
share of the batch, so two processes of 16 images do not train like one of 32
and the result depends on the process count. `set_synchronized(model, True)`
makes every BatchNorm2d of this module reduce its per-channel sums over the
default process group in training; the reduction is differentiable (the
backward reduces the statistics' gradients too), so the gradients are those of
one process with the whole batch. Both the eager forward below and the fused
cells (ncpfast.nn.fused_cells) take their statistics from
batch_norm_statistics, the one place that knows the rule.
"""
import torch
import torch.distributed as dist
import torch.nn as nn


class BatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d (same parameters, buffers and state dict) that, when
    `synchronized` and a process group of more than one process is up,
    normalises with the statistics of the whole global batch in training."""

    synchronized = False

    def forward(self, x):
        if not (self.training and spans_processes(self)):
            return super().forward(x)
        xa = x.to(torch.promote_types(x.dtype, torch.float32))  # half precision: sums in float32
        mean, invstd = batch_norm_statistics(self, xa.sum((2, 3)), (xa * xa).sum((2, 3)),
                                             x.shape[0] * x.shape[2] * x.shape[3])
        scale = invstd * self.weight.to(xa.dtype)
        shift = self.bias.to(xa.dtype) - mean * scale
        return (xa * scale[None, :, None, None] + shift[None, :, None, None]).to(x.dtype)


class _AllReduceSum(torch.autograd.Function):
    """The sum over the processes, differentiable: the gradient of every process's
    share is the sum of the gradients of all processes' results."""

    @staticmethod
    def forward(ctx, tensor):
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad):
        total = grad.clone()
        dist.all_reduce(total)
        return total


def set_synchronized(module: nn.Module, enabled: bool) -> int:
    """Turns synchronisation of every BatchNorm2d in module on or off; returns how
    many there are. A plain nn.BatchNorm2d cannot synchronise: it is refused."""
    count = 0
    for name, m in module.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            if not isinstance(m, BatchNorm2d):
                raise TypeError(f"{name or 'the module'} is a plain torch.nn.BatchNorm2d; build it as "
                                "ncpfast.nn.batch_norm.BatchNorm2d to synchronise its statistics")
            m.synchronized = enabled
            count += 1
    return count


def spans_processes(bn: nn.BatchNorm2d) -> bool:
    """Whether bn's training statistics are summed over more than one process now."""
    return (getattr(bn, "synchronized", False) and dist.is_available() and dist.is_initialized()
            and dist.get_world_size() > 1)


def batch_norm_statistics(bn: nn.BatchNorm2d, sums=None, sumsqs=None, count: int = 0):
    """(mean, invstd) that bn normalises with. In training they come from the
    per-plane sums of its input ([N, C] each, differentiable; count values per
    channel in this process), summed over the processes when bn is synchronised,
    and update the running statistics exactly as nn.BatchNorm2d does; in
    evaluation they are the running statistics and the sums are not used."""
    if not bn.training:
        return bn.running_mean, torch.rsqrt(bn.running_var + bn.eps)
    check_count(count)
    channel_sums, channel_sumsqs = sums.sum(0), sumsqs.sum(0)
    if spans_processes(bn):
        # The count travels with the sums (processes may hold different shares), and
        # stays a tensor: reading it on the host would synchronise a GPU at every BN.
        local = torch.cat([channel_sums, channel_sumsqs, channel_sums.new_full((1,), float(count))])
        total = _AllReduceSum.apply(local)
        c = bn.num_features
        channel_sums, channel_sumsqs, count = total[:c], total[c:2 * c], total[2 * c].detach()
    mean = channel_sums / count
    var = (channel_sumsqs / count - mean * mean).clamp_min(0)
    update_running_statistics(bn, mean, var, count)
    return mean, torch.rsqrt(var + bn.eps)


def check_count(count: int):
    if count <= 1:  # the same rule (and message) as nn.BatchNorm2d
        raise ValueError(f"Expected more than 1 value per channel when training, got {count}")


def update_running_statistics(bn: nn.BatchNorm2d, mean, var, count):
    """What nn.BatchNorm2d does with a training batch's mean and biased var."""
    with torch.no_grad():
        bn.num_batches_tracked.add_(1)
        bn.running_mean.lerp_(mean.detach().to(bn.running_mean.dtype), bn.momentum)
        unbiased = var.detach() * (count / (count - 1))  # count > 1: check_count
        bn.running_var.lerp_(unbiased.to(bn.running_var.dtype), bn.momentum)
