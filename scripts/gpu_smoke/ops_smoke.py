"""Calls each fused op's kernels a few times at small sizes, forward and
backward, and checks the results against the op's pure-PyTorch twin: the
program that compute-sanitizer watches (memcheck, racecheck, initcheck,
synccheck), where a whole pytest run would take far too long under it.

    python scripts/gpu_smoke/ops_smoke.py [--device cuda|cpu] [--calls N] OP [OP ...]
    python scripts/gpu_smoke/ops_smoke.py all

OP: sir_resample, mlp_log_ratio, plane_moments, bn_swish_given_stats,
bn_swish_batch_stats, bn_swish_dwconv, bn_gate_residual, or all. The sizes
are small (a sanitizer slows kernels by 10-100x) but reach every code path the
launchers pick: several SIR tiles and both methods, -inf weights; each MLP
thread-group variant; several row tiles of the depthwise conv; half and
bfloat16 storage on CUDA. Exit status 1 when an op's output is non-finite or
differs from its twin (each failure printed), 0 otherwise. `--device cpu` runs
the same calls on the CPU kernels (how CI checks this script).
"""
import argparse
import sys

import torch

from ncpfast import ops
from ncpfast.ops import reference

CELL_OPS = ("plane_moments", "bn_swish_given_stats", "bn_swish_batch_stats", "bn_swish_dwconv", "bn_gate_residual")
OPS = ("sir_resample", "mlp_log_ratio", *CELL_OPS)
# (N, C, H, W, K): odd sizes, a 1x1 plane, and planes of several row tiles at the
# kernels' real tile sizes (dwconv_tile_rows: 36/16 rows at W = 200, K = 5; 14/6 at
# W = 500, K = 3), the last tile partial.
CELL_SHAPES = [(2, 5, 7, 6, 5), (3, 3, 1, 1, 3), (2, 4, 40, 200, 5), (1, 2, 20, 500, 3)]
# (B, M, D, hidden, layers): the narrow (thread-group) and wide MLP variants.
MLP_SHAPES = [(2, 70, 5, 32, 2), (2, 65, 50, 64, 3), (2, 33, 10, 96, 3), (1, 17, 20, 256, 2)]
# (B, M, trailing): one tile, a partial tile, several 4096-weight tiles.
SIR_SHAPES = [(3, 5, (3,)), (2, 700, (4,)), (2, 9000, (2,))]


class Failures:
    def __init__(self):
        self.messages = []

    def check_close(self, what, got, want, rtol, atol):
        got, want = got.detach().double().cpu(), want.detach().double().cpu()
        if not torch.isfinite(got).all():
            self.messages.append(f"{what}: non-finite output")
            return
        bound = atol + rtol * want.abs()
        outside = int(((got - want).abs() > bound).sum())
        if outside:
            worst = float(((got - want).abs() - bound).max())
            self.messages.append(f"{what}: {outside} of {got.numel()} elements outside the tolerance "
                                 f"(worst by {worst:.3g})")

    def check(self, what, condition):
        if not condition:
            self.messages.append(what)


def _dtypes(device):
    """Activation dtypes of the ops: half storage runs only on CUDA (float64 cell ops,
    with their smaller depthwise tiles, are in test_cell_fusion.py's CUDA tests)."""
    return [torch.float32, torch.float16, torch.bfloat16] if device.type == "cuda" else [torch.float32]


def _tolerance(dtype):
    return {torch.float32: (1e-4, 1e-4), torch.float16: (2e-2, 2e-2), torch.bfloat16: (8e-2, 8e-2)}[dtype]


def _cell_inputs(shape, dtype, device, generator):
    N, C, H, W, K = shape

    def t(*size, positive=False):
        v = torch.rand(size, generator=generator) + 0.5 if positive else torch.randn(size, generator=generator)
        return v

    activation = [t(N, C, H, W).to(device, dtype).requires_grad_() for _ in range(2)]
    bn = [t(C).to(device), t(C, positive=True).to(device), t(C).to(device), t(C).to(device)]
    conv = [(t(C, 1, K, K) / K).to(device), t(C).to(device)]
    gate = torch.rand(N, C, generator=generator).to(device)
    params = [p.requires_grad_() for p in bn + conv + [gate]]
    return activation, params


def _cell_call(name, module, activation, params):
    x, skip = activation
    mean, invstd, weight, bias, conv_w, conv_b, gate = params
    return {
        "plane_moments": lambda: module.plane_moments(x),
        "bn_swish_given_stats": lambda: module.bn_swish_given_stats(x, mean, invstd, weight, bias),
        "bn_swish_batch_stats": lambda: module.bn_swish_batch_stats(x, weight, bias, 1e-3),
        "bn_swish_dwconv": lambda: module.bn_swish_dwconv(x, mean, invstd, weight, bias, conv_w, conv_b),
        "bn_gate_residual": lambda: module.bn_gate_residual(x, skip, mean, invstd, weight, bias, gate, 0.1),
    }[name]()


def _outputs(out):
    return [o for o in (out if isinstance(out, tuple) else (out,))]


def smoke_cell_op(name, device, calls, failures):
    g = torch.Generator().manual_seed(0)
    for shape in CELL_SHAPES:
        N, _, H, W, _ = shape
        if name == "bn_swish_batch_stats" and N * H * W == 1:
            continue  # batch statistics need more than one value per channel
        for dtype in _dtypes(device):
            activation, params = _cell_inputs(shape, dtype, device, g)
            leaves = activation + params
            for _ in range(calls):
                outs = _outputs(_cell_call(name, ops, activation, params))
                weights = [torch.randn(o.shape, generator=g).to(device) for o in outs]
                loss = sum((o.float() * w).sum() for o, w in zip(outs, weights) if o.requires_grad)
                grads = torch.autograd.grad(loss, leaves, allow_unused=True)
            # The twin in float64 on the CPU, from the same (rounded) inputs.
            twin_activation = [a.detach().double().cpu().requires_grad_() for a in activation]
            twin_params = [p.detach().double().cpu().requires_grad_() for p in params]
            twin_outs = _outputs(_cell_call(name, reference, twin_activation, twin_params))
            twin_loss = sum((o * w.double().cpu()).sum() for o, w in zip(twin_outs, weights) if o.requires_grad)
            twin_grads = torch.autograd.grad(twin_loss, twin_activation + twin_params, allow_unused=True)
            rtol, atol = _tolerance(dtype)
            what = f"{name} {tuple(shape)} {str(dtype).replace('torch.', '')}"
            for k, (o, t) in enumerate(zip(outs, twin_outs)):
                failures.check_close(f"{what} output {k}", o, t, rtol, atol)
            for k, (a, b) in enumerate(zip(grads, twin_grads)):
                failures.check(f"{what} gradient {k}: {'missing' if a is None else 'unexpected'}",
                               (a is None) == (b is None))
                if a is not None and b is not None:
                    failures.check_close(f"{what} gradient {k}", a, b, 10 * rtol, 10 * atol)


def smoke_sir_resample(device, calls, failures):
    for B, M, trailing in SIR_SHAPES:
        g = torch.Generator().manual_seed(M)
        log_weights = 2 * torch.randn(B, M, generator=g)
        log_weights[:, ::3] = float("-inf")  # never drawn
        log_weights = log_weights.to(device)
        for dtype in _dtypes(device):
            proposals = torch.randn(B, M, *trailing, generator=g).to(device, dtype).requires_grad_()
            for method in ("multinomial", "systematic"):
                generator = torch.Generator(device).manual_seed(7)
                for _ in range(calls):
                    samples, indices, log_z = ops.sir_resample(log_weights, proposals, 33, method=method,
                                                               generator=generator, return_log_normalizer=True)
                    grad, = torch.autograd.grad((samples.float() ** 2).sum(), proposals)
                what = f"sir_resample M={M} {method} {str(dtype).replace('torch.', '')}"
                failures.check(f"{what}: index out of range", bool(((indices >= 0) & (indices < M)).all()))
                failures.check(f"{what}: a -inf weight was drawn", not bool((indices % 3 == 0).any()))
                rows = torch.arange(B, device=device)[:, None]
                failures.check(f"{what}: samples are not the indexed proposals",
                               torch.equal(samples, proposals[rows, indices]))
                failures.check_close(f"{what} log normalizer", log_z, torch.logsumexp(log_weights.double(), 1),
                                     1e-5, 1e-5)
                want = torch.zeros_like(proposals, dtype=torch.float32).index_put_(
                    (rows.expand_as(indices), indices), 2 * samples.detach().float(), accumulate=True)
                failures.check_close(f"{what} gradient", grad, want, 1e-2, 1e-2)


def smoke_mlp_log_ratio(device, calls, failures):
    from ncpfast.ncp.prior import default_classifier

    for B, M, D, hidden, layers in MLP_SHAPES:
        torch.manual_seed(D + hidden)
        weights, biases = ops.mlp_parameters(default_classifier(D, hidden, layers))
        weights, biases = [w.to(device) for w in weights], [b.to(device) for b in biases]
        z = torch.randn(B, M, D, generator=torch.Generator().manual_seed(1))
        for dtype in _dtypes(device):
            zd = z.to(device, dtype)
            for _ in range(calls):
                log_ratio, lse = ops.mlp_log_ratio(zd, weights, biases)
            want, want_lse = reference.mlp_log_ratio(zd.float().cpu(), [w.cpu() for w in weights],
                                                     [b.cpu() for b in biases])
            rtol, atol = _tolerance(dtype)
            what = f"mlp_log_ratio B={B} M={M} D={D} hidden={hidden} {str(dtype).replace('torch.', '')}"
            failures.check_close(f"{what} log ratio", log_ratio, want, rtol, atol)
            failures.check_close(f"{what} row logsumexp", lse, want_lse, rtol, atol)


def run(names, device, calls):
    """Runs the named ops' smoke calls; returns the failures' messages."""
    failures = Failures()
    for name in names:
        before = len(failures.messages)
        if name == "sir_resample":
            smoke_sir_resample(device, calls, failures)
        elif name == "mlp_log_ratio":
            smoke_mlp_log_ratio(device, calls, failures)
        else:
            smoke_cell_op(name, device, calls, failures)
        if device.type == "cuda":
            torch.cuda.synchronize()  # a kernel fault surfaces here, attributed to this op
        print(f"{name} on {device.type}: {'ok' if len(failures.messages) == before else 'FAILED'}", flush=True)
    return failures.messages


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ops", nargs="+", choices=[*OPS, "all"], metavar="OP", help="ops to call (or all)")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--calls", type=int, default=3, help="calls of each op per size and dtype (default 3)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA device (use --device cpu)")
    if args.calls < 1:
        p.error(f"--calls must be >= 1, got {args.calls}")
    names = OPS if "all" in args.ops else list(dict.fromkeys(args.ops))
    messages = run(names, device, args.calls)
    for message in messages:
        print("FAIL", message, file=sys.stderr)
    return 1 if messages else 0


if __name__ == "__main__":
    sys.exit(main())
