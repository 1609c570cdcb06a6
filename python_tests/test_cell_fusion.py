"""The fused residual-cell ops against their twins, their autograd formulas,
their registrations, their errors, and the cells that use them."""
import copy

import pytest
import torch

from ncpfast import ops
from ncpfast.nn.cells import EncoderCell, GenerativeCell, set_cell_kernels
from ncpfast.ops import reference as ref

cuda = pytest.mark.cuda  # needs a CUDA device: skipped without one (the root conftest.py)

# (N, C, H, W, K): odd channel counts, 1x1 planes, a batch of one, wide rows.
SHAPES = [(3, 5, 7, 6, 5), (1, 3, 1, 1, 5), (2, 7, 9, 17, 3), (2, 4, 12, 12, 7), (4, 16, 8, 8, 5)]


def make_inputs(shape, dtype=torch.float64, device="cpu", seed=0, grad=True, layout=torch.contiguous_format):
    """Random inputs of every op; layout: the activations' memory format."""
    N, C, H, W, K = shape
    g = torch.Generator().manual_seed(seed)
    param = torch.float64 if dtype == torch.float64 else torch.float32

    def t(*size, positive=False):
        v = (torch.rand(size, generator=g, dtype=torch.float64) + 0.5 if positive
             else torch.randn(size, generator=g, dtype=torch.float64))
        return v

    x = t(N, C, H, W).to(device, dtype).contiguous(memory_format=layout).requires_grad_(grad)
    skip = t(N, C, H, W).to(device, dtype).contiguous(memory_format=layout).requires_grad_(grad)
    bn = [t(C), t(C, positive=True), t(C), t(C)]
    bn = [p.to(device, param).requires_grad_(grad) for p in bn]
    conv_w = (t(C, 1, K, K) / K).to(device, param).requires_grad_(grad)
    conv_b = t(C).to(device, param).requires_grad_(grad)
    gate = torch.rand(N, C, generator=g, dtype=torch.float64).to(device, param).requires_grad_(grad)
    return dict(x=x, skip=skip, bn=bn, conv_w=conv_w, conv_b=conv_b, gate=gate)


def calls(i):
    """(name, fused call, twin call) for each op on the inputs i."""
    return [
        ("plane_moments", lambda m: m.plane_moments(i["x"])),
        ("bn_swish_given_stats", lambda m: m.bn_swish_given_stats(i["x"], *i["bn"])),
        ("bn_swish_batch_stats", lambda m: m.bn_swish_batch_stats(i["x"], i["bn"][2], i["bn"][3], 1e-3)),
        ("bn_swish_dwconv", lambda m: m.bn_swish_dwconv(i["x"], *i["bn"], i["conv_w"], i["conv_b"])),
        ("bn_gate_residual", lambda m: m.bn_gate_residual(i["x"], i["skip"], *i["bn"], i["gate"], 0.1)),
    ]


def as_tuple(out):
    return out if isinstance(out, tuple) else (out,)


def leaves(i):
    return [i["x"], i["skip"], *i["bn"], i["conv_w"], i["conv_b"], i["gate"]]


# The ops the CPU backend also runs on channels_last activations (all but the depthwise conv).
CHANNELS_LAST_OPS = ("plane_moments", "bn_swish_given_stats", "bn_swish_batch_stats", "bn_gate_residual")
LAYOUTS = [torch.contiguous_format, torch.channels_last]


def layout_ops(layout, shape=SHAPES[0]):
    """The ops to test on activations of this layout and shape (batch
    statistics need more than one value per channel: see the error test)."""
    N, _, H, W, _ = shape
    return [name for name, _ in calls(make_inputs(SHAPES[0]))
            if (layout == torch.contiguous_format or name in CHANNELS_LAST_OPS)
            and (name != "bn_swish_batch_stats" or N * H * W > 1)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_ops_match_twins_values_and_gradients(shape, dtype, layout, cpu_target):
    tol = dict(rtol=1e-9, atol=1e-9) if dtype == torch.float64 else dict(rtol=2e-4, atol=2e-4)
    for k, name in enumerate(layout_ops(layout, shape)):
        i_fused, i_twin = make_inputs(shape, dtype, seed=k, layout=layout), make_inputs(shape, dtype, seed=k)
        fused = as_tuple(dict(calls(i_fused))[name](ops))
        twin = as_tuple(dict(calls(i_twin))[name](ref))
        g = torch.Generator().manual_seed(k)
        weights = [torch.randn(o.shape, dtype=o.dtype, generator=g) for o in twin]
        for a, b in zip(fused, twin):
            torch.testing.assert_close(a, b.to(a.dtype), **tol, msg=f"{name} values")
        loss_f = sum((o * w.to(o.dtype)).sum() for o, w in zip(fused, weights))
        loss_t = sum((o * w).sum() for o, w in zip(twin, weights))
        gf = torch.autograd.grad(loss_f, leaves(i_fused), allow_unused=True)
        gt = torch.autograd.grad(loss_t, leaves(i_twin), allow_unused=True)
        for a, b in zip(gf, gt):
            assert (a is None) == (b is None), name
            if a is not None:
                torch.testing.assert_close(a, b, **tol, msg=f"{name} gradients")


@pytest.mark.parametrize("shape", SHAPES[:3])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_gradcheck(shape, layout, cpu_target):
    i = make_inputs(shape, layout=layout)
    checks = {
        "plane_moments": (lambda x: ops.plane_moments(x), [i["x"]]),
        "bn_swish_given_stats": (ops.bn_swish_given_stats, [i["x"], *i["bn"]]),
        "bn_swish_batch_stats": (lambda x, w, b: ops.bn_swish_batch_stats(x, w, b, 1e-3)[0], [i["x"], *i["bn"][2:]]),
        "bn_swish_dwconv": (ops.bn_swish_dwconv, [i["x"], *i["bn"], i["conv_w"], i["conv_b"]]),
        "bn_gate_residual": (lambda *a: ops.bn_gate_residual(*a, 0.1), [i["x"], i["skip"], *i["bn"], i["gate"]]),
    }
    for name in layout_ops(layout, shape):
        fn, args = checks[name]
        assert torch.autograd.gradcheck(fn, args), name


def test_moments_gradient_of_sums_alone_is_a_broadcast_view():
    """When only the sums are used (the SE mean pool), plane_moments' backward
    returns a broadcast view instead of a full-size tensor; values as the twin's."""
    i = make_inputs(SHAPES[0])
    x = i["x"]
    captured = []
    x.register_hook(lambda g: captured.append(g))
    weights = torch.randn(x.shape[:2], dtype=x.dtype)
    (ops.plane_moments(x)[0] * weights).sum().backward()
    assert captured[0].stride()[2:] == (0, 0)
    torch.testing.assert_close(x.grad, weights[:, :, None, None].expand(x.shape))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=cuda)])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_opcheck(device, layout):
    if device == "cuda" and layout == torch.channels_last:
        pytest.skip("the CUDA backend takes NCHW only")
    i = make_inputs((2, 3, 5, 4, 3), torch.float32, device, layout=layout)
    samples = {
        "plane_moments": (i["x"],),
        "bn_swish_given_stats": (i["x"], *i["bn"]),
        "bn_swish_batch_stats": (i["x"], i["bn"][2], i["bn"][3], 1e-5),
        "bn_swish_dwconv": (i["x"], *i["bn"], i["conv_w"], i["conv_b"]),
        "bn_gate_residual": (i["x"], i["skip"], *i["bn"], i["gate"], 0.1),
    }
    for name in layout_ops(layout):
        torch.library.opcheck(getattr(torch.ops.ncpfast, name).default, samples[name])


def test_torch_compile_fullgraph():
    i = make_inputs((2, 4, 6, 6, 5), torch.float32, grad=False)

    def chain(x, mean, invstd, w, b, cw, cb):
        y, s, q = ops.bn_swish_dwconv(x, mean, invstd, w, b, cw, cb)
        return ops.bn_swish_given_stats(y, mean, invstd, w, b), s, q

    args = (i["x"], *i["bn"], i["conv_w"], i["conv_b"])
    compiled = torch.compile(chain, fullgraph=True, backend="aot_eager")
    for a, b in zip(compiled(*args), chain(*args)):
        torch.testing.assert_close(a, b)


def test_errors_name_the_argument():
    i = make_inputs((2, 3, 5, 5, 5), torch.float32, grad=False)
    x, (mean, invstd, w, b) = i["x"], i["bn"]
    with pytest.raises(ValueError, match="x must be 4-D"):
        ops.bn_swish_given_stats(x[0], mean, invstd, w, b)
    with pytest.raises(TypeError, match="x must be float32 or float64"):
        ops.plane_moments(x.to(torch.int32))
    with pytest.raises(TypeError, match="float16/bfloat16 on CUDA"):
        ops.plane_moments(x.half())
    with pytest.raises(ValueError, match="invstd must have shape"):
        ops.bn_swish_given_stats(x, mean, invstd[:2], w, b)
    with pytest.raises(TypeError, match="weight must be Float"):
        ops.bn_swish_given_stats(x, mean, invstd, w.double(), b)
    with pytest.raises(ValueError, match="x must be contiguous \\(NCHW\\) or channels_last"):
        ops.bn_swish_given_stats(x.transpose(2, 3), mean, invstd, w, b)
    x_nhwc = x.contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="x is channels_last, but the depthwise conv takes NCHW"):
        ops.bn_swish_dwconv(x_nhwc, mean, invstd, w, b, i["conv_w"], i["conv_b"])
    with pytest.raises(ValueError, match="skip must be channels_last-contiguous like"):
        ops.bn_gate_residual(x_nhwc, x, mean, invstd, w, b, i["gate"], 0.1)
    with pytest.raises(ValueError, match="grad_out must be contiguous \\(NCHW\\) like"):
        torch.ops.ncpfast.bn_swish_given_stats_backward(x_nhwc, x, mean, invstd, w, b)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        ops.bn_swish_batch_stats(x[:1, :, :1, :1].contiguous(), w, b, 1e-5)
    with pytest.raises(ValueError, match="eps must be positive"):
        ops.bn_swish_batch_stats(x, w, b, 0.0)
    with pytest.raises(ValueError, match="bias must have shape"):
        ops.bn_swish_batch_stats(x, w, b[:2], 1e-5)
    with pytest.raises(ValueError, match="conv_weight must be \\[C, 1, K, K\\].*K odd"):
        ops.bn_swish_dwconv(x, mean, invstd, w, b, torch.zeros(3, 1, 4, 4), b)
    with pytest.raises(ValueError, match="gate must have shape"):
        ops.bn_gate_residual(x, x, mean, invstd, w, b, torch.zeros(3), 0.1)
    with pytest.raises(ValueError, match="skip must have shape"):
        ops.bn_gate_residual(x, x[:1], mean, invstd, w, b, i["gate"], 0.1)


CELLS = [
    (lambda: GenerativeCell(8, 8), (4, 8, 6, 6)),
    (lambda: GenerativeCell(8, 4, upsample=True), (3, 8, 5, 5)),
    (lambda: GenerativeCell(5, 5, kernel_size=3, expansion=3), (2, 5, 1, 1)),
    (lambda: EncoderCell(5, 5), (1, 5, 3, 3)),
    (lambda: EncoderCell(8, 8), (4, 8, 6, 6)),
    (lambda: EncoderCell(6, 12, stride=2), (2, 6, 6, 6)),
    # Fewer input channels than an AVX2 block, batch 16: oneDNN issue 6035's
    # shapes (see FactorizedReduce).
    (lambda: EncoderCell(2, 4, stride=2), (16, 2, 8, 8)),
    (lambda: EncoderCell(4, 8, stride=2), (16, 4, 8, 4)),
]


def run_cell(cell, x, mode, train):
    cell = set_cell_kernels(copy.deepcopy(cell), mode).train(train)
    x = x.detach().clone().requires_grad_(True)
    y = cell(x)
    weight = torch.linspace(-1, 1, y.numel(), dtype=y.dtype, device=y.device).view_as(y)
    grads = torch.autograd.grad((y * weight).sum(), [x, *cell.parameters()])
    return y, grads, [b.clone() for b in cell.buffers()]


@pytest.mark.parametrize("make, shape", CELLS)
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cells_fused_equal_torch(make, shape, train, dtype):
    torch.manual_seed(0)
    cell = make().to(dtype)
    with torch.no_grad():  # non-trivial running statistics for eval mode
        for m in cell.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(*shape, dtype=dtype)
    tol = dict(rtol=1e-9, atol=1e-9) if dtype == torch.float64 else dict(rtol=1e-3, atol=1e-4)
    y_f, g_f, b_f = run_cell(cell, x, "fused", train)
    y_t, g_t, b_t = run_cell(cell, x, "torch", train)
    torch.testing.assert_close(y_f, y_t, **tol)
    for a, b in zip(g_f, g_t):
        torch.testing.assert_close(a, b, **tol)
    for a, b in zip(b_f, b_t):  # running statistics and num_batches_tracked
        torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("make, shape", CELLS)
def test_cells_in_evaluation_without_autograd_equal_torch(make, shape):
    """The no-grad evaluation path (batch norms folded into the convolutions, Swish in place)."""
    torch.manual_seed(0)
    cell = make().double()
    with torch.no_grad():
        for m in cell.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
        x = torch.randn(*shape, dtype=torch.float64)
        fused = set_cell_kernels(copy.deepcopy(cell), "fused").eval()(x)
        eager = set_cell_kernels(copy.deepcopy(cell), "torch").eval()(x)
    torch.testing.assert_close(fused, eager, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("make, shape", CELLS)
def test_cells_take_channels_last_input(make, shape):
    torch.manual_seed(0)
    cell = make().double()
    x = torch.randn(*shape, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    y_f, g_f, _ = run_cell(cell, x, "fused", True)
    y_t, g_t, _ = run_cell(cell, x, "torch", True)
    torch.testing.assert_close(y_f, y_t, rtol=1e-9, atol=1e-9)
    for a, b in zip(g_f, g_t):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("train", [True, False])
def test_cpu_encoder_cell_computes_and_returns_channels_last(train):
    cell = EncoderCell(8, 8).train(train)
    y, _, _ = run_cell(cell, torch.randn(2, 8, 5, 5), "fused", train)
    assert y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()
    y_torch, _, _ = run_cell(cell, torch.randn(2, 8, 5, 5), "torch", train)
    assert y_torch.is_contiguous()  # the eager path keeps torch's layout rules


def test_cell_accepts_non_contiguous_input():
    cell = GenerativeCell(4, 4).double()
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64).transpose(2, 3)
    y_f, _, _ = run_cell(cell, x, "fused", True)
    y_t, _, _ = run_cell(cell, x, "torch", True)
    torch.testing.assert_close(y_f, y_t)


def test_one_value_per_channel_in_training_is_an_error_as_in_torch():
    cell = set_cell_kernels(GenerativeCell(4, 4), "fused")
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        cell(torch.randn(1, 4, 1, 1))


def test_kernel_switch_is_not_in_the_state_dict():
    cell = set_cell_kernels(GenerativeCell(4, 4), "torch")
    other = set_cell_kernels(GenerativeCell(4, 4), "fused")
    other.load_state_dict(cell.state_dict())  # strict: same keys either way
    with pytest.raises(ValueError, match="kernels must be one of"):
        set_cell_kernels(cell, "fast")


def test_fused_mode_without_backend_is_a_clear_error():
    cell = set_cell_kernels(GenerativeCell(4, 4), "fused").to(torch.bfloat16)
    with pytest.raises(RuntimeError, match="no fused cell kernels for torch.bfloat16 on cpu"):
        cell(torch.randn(1, 4, 4, 4, dtype=torch.bfloat16))
    set_cell_kernels(cell, "auto")(torch.randn(1, 4, 4, 4, dtype=torch.bfloat16))  # auto falls back


def assert_close_elementwise(got, want, rtol, atol, what):
    """|got - want| <= rtol * |want| + atol * rms(want) for every element: each
    element against its own magnitude, plus a small absolute term on the
    tensor's scale (for elements near zero). A bound scaled by the tensor's
    maximum would pass a dropped (zeroed) element; this one does not."""
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    assert got.shape == want.shape, (what, got.shape, want.shape)
    assert torch.isfinite(got).all(), f"{what}: non-finite values"
    scale = want.pow(2).mean().sqrt().clamp_min(1e-30)
    excess = (got - want).abs() - (rtol * want.abs() + atol * scale)
    outside = int((excess > 0).sum())
    assert outside == 0, (f"{what}: {outside} of {want.numel()} elements ({outside / want.numel():.2%}) outside "
                          f"the tolerance, the worst by {float(excess.max()):.3g} (rms {float(scale):.3g})")


def test_elementwise_tolerance_catches_a_dropped_element():
    want = torch.randn(4, 8, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    rtol, atol = CUDA_TOLERANCES[torch.bfloat16]
    assert_close_elementwise(want * (1 + rtol / 2), want, rtol, atol, "within")
    dropped = want.clone()
    dropped.view(-1)[want.abs().view(-1).argmin() + 1] = 0.0
    with pytest.raises(AssertionError, match="1 of 8192 elements"):
        assert_close_elementwise(dropped, want, rtol, atol, "dropped")


# (rtol, atol on the rms scale) per storage dtype: a few units of the storage's
# rounding; the twin runs in float64 on the same rounded inputs and weights.
CUDA_TOLERANCES = {torch.float64: (1e-10, 1e-12), torch.float32: (1e-4, 1e-5), torch.float16: (2e-3, 2e-3),
                   torch.bfloat16: (1.6e-2, 1.6e-2)}
# Planes wide enough that the CUDA depthwise kernels split them into several row
# tiles, the last one partial (cell_fusion_kernels.cuh, dwconv_tile_rows: 36 and
# 16 rows forward and backward at W = 200, K = 5 in float arithmetic, 16 and 6 in
# double; 14 and 6 at W = 500, K = 3), so the per-tile sums run on the device.
CUDA_TILED_SHAPES = [(2, 3, 40, 200, 5), (1, 2, 20, 500, 3)]


def _float64_copy(inputs):
    """The same (rounded) values as inputs, float64 leaves on the CPU."""
    def copy(t):
        return t.detach().double().cpu().requires_grad_(t.requires_grad)
    return {k: [copy(t) for t in v] if isinstance(v, list) else copy(v) for k, v in inputs.items()}


@cuda
@pytest.mark.parametrize("dtype", list(CUDA_TOLERANCES))
def test_cuda_ops_match_twins(dtype):
    rtol, atol = CUDA_TOLERANCES[dtype]
    for shape in SHAPES + CUDA_TILED_SHAPES:
        for name in layout_ops(torch.contiguous_format, shape):
            i_f = make_inputs(shape, dtype, "cuda")
            i_t = _float64_copy(i_f)
            fused = as_tuple(dict(calls(i_f))[name](ops))
            twin = as_tuple(dict(calls(i_t))[name](ref))
            what = f"{name} {shape} {dtype}"
            for k, (a, b) in enumerate(zip(fused, twin)):
                assert_close_elementwise(a, b, rtol, atol, f"{what} output {k}")
            # Output gradients rounded to each output's dtype, as autograd hands them to the op.
            g = torch.Generator().manual_seed(0)
            weights = [torch.randn(o.shape, dtype=torch.float64, generator=g).to(o.dtype) for o in fused]
            gf = torch.autograd.grad(sum((o * w.cuda()).float().sum() for o, w in zip(fused, weights)
                                         if o.requires_grad), leaves(i_f), allow_unused=True)
            differentiable = [o.requires_grad for o in fused]  # not the statistics of bn_swish_batch_stats
            gt = torch.autograd.grad(sum((o * w.double()).sum() for o, w, d in zip(twin, weights, differentiable) if d),
                                     leaves(i_t), allow_unused=True)
            for k, (a, b) in enumerate(zip(gf, gt)):
                assert (a is None) == (b is None), f"{what}: gradient {k} is {'missing' if a is None else 'extra'}"
                if a is not None:
                    # Gradients sum many products: 4x the outputs' absolute term.
                    assert_close_elementwise(a, b, rtol, 4 * atol, f"{what} gradient {k}")


@cuda
@pytest.mark.parametrize("make, shape", CELLS)
def test_cuda_cells_fused_equal_torch(make, shape):
    torch.manual_seed(0)
    cell = make().cuda()
    x = torch.randn(*shape, device="cuda")
    y_f, g_f, _ = run_cell(cell, x, "fused", True)
    y_t, g_t, _ = run_cell(cell, x, "torch", True)
    torch.testing.assert_close(y_f, y_t, rtol=1e-3, atol=1e-4)
    for a, b in zip(g_f, g_t):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y_f, _, _ = run_cell(cell, x, "fused", True)
        y_t, _, _ = run_cell(cell, x, "torch", True)
    torch.testing.assert_close(y_f.float(), y_t.float(), rtol=5e-2, atol=5e-2)


def test_fused_cells_save_less_activation_memory_than_eager():
    """The fused cells' point on memory: backward recomputes BN/Swish outputs
    from the saved inputs instead of keeping them (tiny NVAE, one forward)."""
    from ncpfast.config import resolve_config
    from ncpfast.models import build_model
    from ncpfast.training.memory import saved_activation_bytes

    saved = {}
    for kernels in ("fused", "torch"):
        torch.manual_seed(0)
        model = build_model(resolve_config("tiny", {"model.kernels": kernels}).model).train()
        x = (torch.rand(4, 1, 32, 32) > 0.5).float()
        saved[kernels] = saved_activation_bytes(lambda model=model, x=x: model(x), exclude=list(model.parameters()))
    assert 0 < saved["fused"] < 0.75 * saved["torch"], saved


@pytest.mark.parametrize("make", [lambda: EncoderCell(4, 8, stride=2), lambda: GenerativeCell(4, 4)])
def test_fused_cells_find_the_eager_layers_by_name(make):
    """The fused forward asks the cell for its layers by name; a reordered eager
    cell is a clear error, not a fused forward on the wrong layers."""
    cell = make()
    layers = cell.layers()
    for name, index in cell.LAYER_POSITIONS.items():
        assert getattr(layers, name) is cell.ops[index]
    cell.ops = torch.nn.Sequential(*reversed(list(cell.ops)))
    with pytest.raises(TypeError, match="the cell's ops and its layer positions disagree"):
        set_cell_kernels(cell, "fused")(torch.randn(2, 4, 4, 4))
