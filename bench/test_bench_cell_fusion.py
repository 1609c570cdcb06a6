"""Residual-cell kernels: each fused op, the issue's BN -> Swish -> dw5x5 -> BN -> Swish
chain, whole generative / encoder cells, and one training step of the tiny and
mnist models; fused vs eager PyTorch vs torch.compile of the eager code.
Forward+backward in training mode, forward alone in evaluation mode; peak
memory in extra_info (CUDA: allocator peak; CPU: resident-set peak).

    bash scripts/dev.sh bench -k cells --benchmark-json=bench/results/cells-<machine>.json
    python bench/report.py bench/results/cells-<machine>.json
"""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from measure import peak_memory_bytes, timed
from ncpfast import ops
from ncpfast.config import resolve_config
from ncpfast.models import build_model
from ncpfast.nn.cells import EncoderCell, GenerativeCell, set_cell_kernels
from ncpfast.ops import reference
from ncpfast.training.memory import saved_activation_bytes

IMPLS = ["fused", "torch", "torch.compile"]
N, C, S = 64, 96, 16  # the baseline: 64 x 96 x 16 x 16
# The torch.compile variant that runs by default (bench/conftest.py's --bench-compile).
COMPILE_REFERENCE = {"block": "generative-cell-C32-e6", "mode": "train fwd+bwd"}


def _run(benchmark, device, group, impl, fn, **info):
    call = timed(fn, device)
    for _ in range(3):  # warm-up (and compilation) outside the timings
        call()
    benchmark.group = f"{group} {device.type}"
    benchmark.extra_info.update(device=device.type, impl=impl, peak_bytes=peak_memory_bytes(fn, device)[1], **info)
    benchmark(call)


def _op_inputs(device, N=N, C=C, S=S):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, C, S, S, generator=g).to(device).requires_grad_()
    skip = torch.randn(N, C, S, S, generator=g).to(device).requires_grad_()
    bn = [torch.randn(C, generator=g).to(device), (torch.rand(C, generator=g) + 0.5).to(device),
          torch.randn(C, generator=g).to(device), torch.randn(C, generator=g).to(device)]
    bn = [p.requires_grad_() for p in bn]
    conv_w = (torch.randn(C, 1, 5, 5, generator=g) / 5).to(device).requires_grad_()
    conv_b = torch.zeros(C, device=device, requires_grad=True)
    gate = torch.rand(N, C, generator=g).to(device).requires_grad_()
    return {
        "plane_moments": ("plane_moments", (x,)),
        "bn_swish_given_stats": ("bn_swish_given_stats", (x, *bn)),
        "bn_swish_batch_stats": ("bn_swish_batch_stats", (x, bn[2], bn[3], 1e-5)),
        "bn_swish_dwconv": ("bn_swish_dwconv", (x, *bn, conv_w, conv_b)),
        "bn_gate_residual": ("bn_gate_residual", (x, skip, *bn, gate, 0.1)),
    }


# The depthwise conv also on the small maps of a model's coarse scales (the
# mnist preset's 8x8 and 4x4 generative cells, 6x expanded).
OP_SIZES = {"bn_swish_dwconv": [(N, C, S), (32, 768, 8), (32, 1536, 4)]}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("size", [0, 1, 2])
@pytest.mark.parametrize("op", ["plane_moments", "bn_swish_given_stats", "bn_swish_batch_stats", "bn_swish_dwconv",
                                "bn_gate_residual"])
def test_cell_op_forward_backward(benchmark, device, impl, op, size):
    sizes = OP_SIZES.get(op, [(N, C, S)])
    if size >= len(sizes):
        pytest.skip(f"{op} is timed at {len(sizes)} size(s)")
    n, c, s = sizes[size]
    name, args = _op_inputs(device, n, c, s)[op]
    fn = {"fused": getattr(ops, name), "torch": getattr(reference, name)}.get(impl)
    if fn is None:
        fn = torch.compile(getattr(reference, name), dynamic=False)
    def step():
        # Every output gets a gradient, as in the cells (where the moments feed
        # the batch statistics): backpropagating the first output alone would
        # time plane_moments' backward as the broadcast that eager runs for a
        # lone sum, which no cell ever needs.
        # (bn_swish_batch_stats's mean and var are statistics, not differentiable.)
        out = fn(*args)
        outs = [o for o in (out if isinstance(out, tuple) else (out,)) if o.requires_grad]
        torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])

    _run(benchmark, device, f"{op} fwd+bwd {n}x{c}x{s}x{s}", impl, step, op=op, pass_="fwd+bwd")


class _Chain(nn.Module):
    """BN -> Swish -> depthwise 5x5 -> BN -> Swish, as eager modules."""

    def __init__(self, channels):
        super().__init__()
        self.bn1, self.bn2 = nn.BatchNorm2d(channels), nn.BatchNorm2d(channels)
        self.dw = nn.Conv2d(channels, channels, 5, padding=2, groups=channels)

    def forward(self, x):
        return F.silu(self.bn2(self.dw(F.silu(self.bn1(x)))))


def _fused_chain(chain):
    from ncpfast.nn.batch_norm import batch_norm_statistics
    from ncpfast.nn.fused_cells import _statistics_of

    def forward(x):
        mean1, invstd1 = _statistics_of(chain.bn1, x)
        y, s, q = ops.bn_swish_dwconv(x, mean1, invstd1, chain.bn1.weight, chain.bn1.bias,
                                      chain.dw.weight, chain.dw.bias)
        stats = batch_norm_statistics(chain.bn2, s, q, x.shape[0] * x.shape[2] * x.shape[3])
        return ops.bn_swish_given_stats(y, *stats, chain.bn2.weight, chain.bn2.bias)
    return forward


def _module_variants(module, impl):
    if impl == "fused":
        return set_cell_kernels(module, "fused") if not isinstance(module, _Chain) else _fused_chain(module)
    module = set_cell_kernels(module, "torch") if not isinstance(module, _Chain) else module
    return module if impl == "torch" else torch.compile(module, dynamic=False)


# (module, input shape, input layout). The fused CPU encoder cell computes
# channels-last and the model feeds it channels-last activations (see
# HierarchicalVAE._encoder_input); the "-nhwc-in" blocks give that input to every variant.
NCHW, NHWC = torch.contiguous_format, torch.channels_last
BLOCKS = {
    "chain-bn-swish-dw5-bn-swish": (lambda: _Chain(C), (N, C, S, S), NCHW),
    "generative-cell-C16-e6": (lambda: GenerativeCell(16, 16), (N, 16, S, S), NCHW),
    "generative-cell-C32-e6": (lambda: GenerativeCell(32, 32), (N, 32, S, S), NCHW),
    "encoder-cell-C32": (lambda: EncoderCell(32, 32), (N, 32, S, S), NCHW),
    "encoder-cell-C32-nhwc-in": (lambda: EncoderCell(32, 32), (N, 32, S, S), NHWC),
    "encoder-cell-C96": (lambda: EncoderCell(96, 96), (N, 96, S, S), NCHW),
    "encoder-cell-C96-nhwc-in": (lambda: EncoderCell(96, 96), (N, 96, S, S), NHWC),
}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", ["train fwd+bwd", "eval fwd"])
@pytest.mark.parametrize("block", list(BLOCKS))
def test_cell(benchmark, device, impl, mode, block):
    make, shape, layout = BLOCKS[block]
    torch.manual_seed(0)
    module = make().to(device).train(mode.startswith("train"))
    fn = _module_variants(module, impl)
    x = torch.randn(*shape, device=device).contiguous(memory_format=layout).requires_grad_(mode.startswith("train"))
    grad = None

    def step():
        nonlocal grad
        if mode.startswith("train"):
            out = fn(x)
            grad = torch.ones_like(out) if grad is None else grad
            out.backward(grad)
        else:
            with torch.no_grad():
                fn(x)

    _run(benchmark, device, f"{block} {mode} {'x'.join(map(str, shape))}", impl, step, block=block, mode=mode)


@pytest.mark.parametrize("impl", ["fused", "torch"])
@pytest.mark.parametrize("preset", ["tiny", "mnist"])
def test_training_step(benchmark, device, impl, preset):
    config = resolve_config(preset, {"model.kernels": impl})
    batch = 32 if preset == "mnist" and device.type == "cpu" else config.stage1.batch_size
    torch.manual_seed(0)
    model = build_model(config.model).to(device).train()
    optimizer = torch.optim.Adamax(model.parameters(), lr=1e-3)
    size = config.model.image_size
    x = (torch.rand(batch, config.model.in_channels, size, size, device=device) > 0.5).float()

    def loss():  # the negative ELBO (KL weight 1): what a stage-1 step differentiates
        output, groups = model(x)
        return (sum(g.kl() for g in groups) - model.reconstruction_log_prob(output, x)).mean()

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss().backward()
        optimizer.step()

    saved = saved_activation_bytes(loss, exclude=list(model.parameters()))
    _run(benchmark, device, f"training step {preset} batch={batch}", impl, step, preset=preset, batch=batch,
         saved_activation_bytes=saved)
