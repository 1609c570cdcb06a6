"""Where a run computes: the device it asks for (pick_device), and torch.distributed
set-up and collectives for data-parallel runs under torchrun (NCCL on GPU, gloo
on CPU; without torchrun's environment a no-op). Shared by both stages, the
pipeline and the command lines."""
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


# The context of a run without torchrun (immutable, so a safe default argument).
SINGLE_PROCESS = DistributedContext()


def init_distributed(device_request: str) -> DistributedContext:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return SINGLE_PROCESS
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_request.startswith("cuda") or (device_request == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    global _host_group
    if dist.get_backend() != "gloo" and _host_group is None:
        # NCCL's collectives time out (10 minutes by default) while rank 0
        # works alone; the waits for it (and the evaluation's small host-side
        # collectives) go through a gloo group created here, while every rank
        # is present.
        _host_group = dist.new_group(backend="gloo", timeout=FINAL_BARRIER_TIMEOUT)
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank)


# How long the other ranks wait for rank 0 working alone (log Z, sampling, the
# evaluation after training).
FINAL_BARRIER_TIMEOUT = timedelta(hours=24)
# CPU tensors' process group: that gloo group under NCCL, the default group under gloo.
_host_group = None


def wait_for_rank0(context: DistributedContext) -> None:
    """Returns on every rank once all have called it (gloo's monitored_barrier, with
    FINAL_BARRIER_TIMEOUT: rank 0 may be working alone for hours)."""
    if context.enabled:
        _wait_for_all_ranks()


def _wait_for_all_ranks() -> None:
    dist.monitored_barrier(group=_host_group, timeout=FINAL_BARRIER_TIMEOUT, wait_all_ranks=True)


def host_sum(tensor: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """The sum over ranks of a CPU tensor, through the host group (no device copy,
    no NCCL timeout while a rank is still working)."""
    if not context.enabled:
        return tensor
    reduced = tensor.clone()
    dist.all_reduce(reduced, group=_host_group)
    return reduced


def host_broadcast_float(value: float, context: DistributedContext) -> float:
    """Rank 0's value on every rank (exact: sent as float64), through the host group."""
    if not context.enabled:
        return value
    tensor = torch.tensor([value], dtype=torch.float64)
    dist.broadcast(tensor, 0, group=_host_group)
    return float(tensor.item())


def shutdown_distributed() -> None:
    """Waits until every rank is here, then tears the process group down.
    Rank 0 finishes alone (stage 1's test NLL, an evaluation's sampling); a rank that destroyed its gloo
    context while rank 0 still held the connection sometimes died in
    std::terminate ("terminate called without an active exception", seen in
    CI on the two-process stage-2 test). The wait gets its own long timeout
    (gloo's monitored_barrier; under NCCL on a gloo group made at start-up)
    because that evaluation can take longer than the process group's default."""
    if not dist.is_initialized():
        return
    global _host_group
    try:
        _wait_for_all_ranks()
    finally:
        _host_group = None
        dist.destroy_process_group()


@torch.no_grad()
def broadcast_module(module: torch.nn.Module, context: DistributedContext) -> None:
    """Copies rank 0's parameters and buffers to every rank (a common start)."""
    if context.enabled:
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, 0)


@torch.no_grad()
def average_gradients(module: torch.nn.Module, context: DistributedContext) -> None:
    """The mean gradient over ranks, in place: what DDP's reducer computes, for
    loops (stage 2) whose forward is not a single module call. One flat
    all-reduce instead of one per parameter."""
    if not context.enabled:
        return
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.flatten() for p in params])
    dist.all_reduce(flat)
    flat /= context.world_size
    offset = 0
    for p in params:
        p.grad.copy_(flat[offset:offset + p.numel()].view_as(p.grad))
        offset += p.numel()


def all_reduce_sum(tensor: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """The sum over ranks (a CPU tensor is reduced on the process group's device)."""
    if not context.enabled:
        return tensor
    device = torch.device(f"cuda:{context.local_rank}") if dist.get_backend() == "nccl" else torch.device("cpu")
    reduced = tensor.to(device).clone()
    dist.all_reduce(reduced)
    return reduced.to(tensor.device)


@torch.no_grad()
def broadcast_buffers(module: torch.nn.Module, context: DistributedContext) -> None:
    """Copies rank 0's buffers (BatchNorm statistics) to every rank. DDP does
    this at the start of each forward, so after the last step of a run the
    ranks' statistics differ by their own last batch until this is called."""
    if context.enabled:
        for buffer in module.buffers():
            dist.broadcast(buffer, 0)


def parameters_identical(module: torch.nn.Module, context: DistributedContext) -> bool:
    return replicas_identical(module, context, include_buffers=False)


@torch.no_grad()
def replicas_identical(module: torch.nn.Module, context: DistributedContext, include_buffers: bool = True) -> bool:
    """True when every rank holds bit-identical parameters (and buffers)."""
    if not context.enabled:
        return True
    tensors = list(module.parameters()) + (list(module.buffers()) if include_buffers else [])
    flat = torch.cat([t.detach().double().flatten().cpu() for t in tensors])
    device = next(module.parameters()).device
    flat = flat.to(device)
    gathered = [torch.empty_like(flat) for _ in range(context.world_size)]
    dist.all_gather(gathered, flat)
    return all(torch.equal(gathered[0], g) for g in gathered[1:])


def pick_device(request: str, local_rank: int = 0) -> torch.device:
    if request == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(request)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {request}: no CUDA device is available")
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{local_rank}")
    return device
