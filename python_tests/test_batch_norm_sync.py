"""Synchronised batch norm: two processes with half a batch each compute what one
process computes with the whole batch (outputs, running statistics, and the
parameter gradients once summed over the processes), eagerly and through the
fused cells; unsynchronised they do not."""
import copy
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

from ncpfast.nn.batch_norm import BatchNorm2d, set_synchronized
from ncpfast.nn.cells import EncoderCell, GenerativeCell, set_cell_kernels

WORLD = 2


def _modules():
    torch.manual_seed(0)
    bn = BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    return {"eager": bn,
            "generative-fused": set_cell_kernels(GenerativeCell(4, 4), "fused"),
            "encoder-fused": set_cell_kernels(EncoderCell(4, 4), "fused"),
            "generative-torch": set_cell_kernels(GenerativeCell(4, 4), "torch")}


def _inputs(name):
    g = torch.Generator().manual_seed(1)
    channels = 3 if name == "eager" else 4
    x = torch.randn(8, channels, 6, 6, generator=g, dtype=torch.float64) * 2 + 3  # a mean unlike 0
    weights = torch.randn(8, channels, 6, 6, generator=g, dtype=torch.float64)
    return x, weights


def _step(module, x, weights):
    """Output, the input's gradient and the parameters' gradients of sum(module(x) * weights)."""
    x = x.clone().requires_grad_(True)
    module.zero_grad()
    out = module(x)
    (out * weights).sum().backward()
    return out.detach(), x.grad, [p.grad.clone() for p in module.parameters()]


def _worker(rank, path, synchronized, results):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=WORLD)
    try:
        out = {}
        for name, module in _modules().items():
            module = module.double().train()
            set_synchronized(module, synchronized)
            x, weights = _inputs(name)
            half = slice(rank * 4, rank * 4 + 4)
            y, gx, grads = _step(module, x[half], weights[half])
            for g in grads:
                dist.all_reduce(g)
            buffers = [b.clone() for b in module.buffers() if b.dtype.is_floating_point]
            out[name] = (y, gx, grads, buffers)
        results[rank] = out
    finally:
        dist.destroy_process_group()


def _two_processes(tmp_path, synchronized):
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(str(tmp_path / "store"), synchronized, results), nprocs=WORLD, join=True)
    return results[0], results[1]


@pytest.fixture(scope="module")
def whole_batch():
    out = {}
    for name, module in _modules().items():
        module = module.double().train()
        x, weights = _inputs(name)
        y, gx, grads = _step(module, x, weights)
        out[name] = (y, gx, grads, [b.clone() for b in module.buffers() if b.dtype.is_floating_point])
    return out


def test_two_synchronised_processes_compute_what_one_computes_with_the_whole_batch(tmp_path, whole_batch):
    ranks = _two_processes(tmp_path, synchronized=True)
    for name, (y, gx, grads, buffers) in whole_batch.items():
        for rank, result in enumerate(ranks):
            ry, rgx, rgrads, rbuffers = result[name]
            half = slice(rank * 4, rank * 4 + 4)
            torch.testing.assert_close(ry, y[half], msg=f"{name}: output of rank {rank}")
            torch.testing.assert_close(rgx, gx[half], msg=f"{name}: input gradient of rank {rank}")
            for a, b in zip(rgrads, grads):
                torch.testing.assert_close(a, b, msg=f"{name}: parameter gradient summed over ranks")
            for a, b in zip(rbuffers, buffers):
                torch.testing.assert_close(a, b, msg=f"{name}: running statistics of rank {rank}")


def test_unsynchronised_processes_differ_from_the_whole_batch(tmp_path, whole_batch):
    ranks = _two_processes(tmp_path, synchronized=False)
    y = whole_batch["eager"][0]
    assert not torch.allclose(ranks[0]["eager"][0], y[:4])


def test_synchronisation_outside_a_process_group_is_plain_batch_norm():
    torch.manual_seed(0)
    bn, plain = BatchNorm2d(3), nn.BatchNorm2d(3)
    set_synchronized(bn, True)
    x = torch.randn(4, 3, 5, 5)
    torch.testing.assert_close(bn(x), plain(x))
    torch.testing.assert_close(bn.running_var, plain.running_var)


def test_a_plain_torch_batch_norm_cannot_be_synchronised():
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
    with pytest.raises(TypeError, match="1 is a plain torch.nn.BatchNorm2d"):
        set_synchronized(model, True)


def test_synchronisation_is_not_in_the_state_dict():
    a, b = BatchNorm2d(3), copy.deepcopy(BatchNorm2d(3))
    set_synchronized(a, True)
    assert a.state_dict().keys() == b.state_dict().keys() == nn.BatchNorm2d(3).state_dict().keys()
