"""ncpfast.ops.sir_resample: against its twin, statistics, errors, opcheck, compile."""
import subprocess
import sys

import pytest
import torch

import ncpfast
from ncpfast.ops import reference, sir_resample

IMPLS = {"fused": sir_resample, "twin": reference.sir_resample}


def chi_square_p_value(observed, expected):
    """Pearson's goodness-of-fit test: P(chi2 with k - 1 dof >= statistic)."""
    statistic = ((observed - expected) ** 2 / expected).sum()
    dof = observed.numel() - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2.0, dtype=torch.float64), statistic / 2))


def make_generator(device, seed):
    return torch.Generator(device=device).manual_seed(seed)


def random_problem(device, B, M, trailing, dtype=torch.float32, proposal_dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    log_weights = (2 * torch.randn(B, M, generator=g)).to(device=device, dtype=dtype)
    proposals = torch.randn(B, M, *trailing, generator=g).to(device=device, dtype=proposal_dtype)
    return log_weights, proposals


def expected_gather(proposals, indices):
    rows = torch.arange(proposals.shape[0], device=proposals.device)[:, None]
    return proposals[rows, indices]


@pytest.mark.parametrize("method", ["multinomial", "systematic"])
@pytest.mark.parametrize("seed", range(6))
def test_outputs_agree_with_twin_on_random_shapes(device, method, seed):
    g = torch.Generator().manual_seed(100 + seed)
    B = int(torch.randint(1, 9, (), generator=g))
    M = int(torch.randint(1, 700, (), generator=g))
    S = int(torch.randint(1, 40, (), generator=g))
    trailing = tuple(int(x) for x in torch.randint(1, 5, (int(torch.randint(0, 3, (), generator=g)),), generator=g))
    proposal_dtype = [torch.float32, torch.float64, torch.float16, torch.bfloat16][seed % 4]
    log_weights, proposals = random_problem(device, B, M, trailing, proposal_dtype=proposal_dtype, seed=seed)
    for name, impl in IMPLS.items():
        samples, indices, log_z = impl(log_weights, proposals, S, method=method,
                                       generator=make_generator(device, seed), return_log_normalizer=True)
        assert samples.shape == (B, S, *trailing) and samples.dtype == proposal_dtype, name
        assert indices.shape == (B, S) and indices.dtype == torch.int64, name
        assert ((indices >= 0) & (indices < M)).all(), name
        torch.testing.assert_close(samples, expected_gather(proposals, indices), rtol=0, atol=0)
        torch.testing.assert_close(log_z, torch.logsumexp(log_weights.double(), 1).float(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_only_finite_weight_is_always_drawn(device, impl):
    B, M = 5, 33
    log_weights = torch.full((B, M), float("-inf"), device=device)
    chosen = torch.tensor([0, 32, 7, 16, 1], device=device)
    log_weights[torch.arange(B), chosen] = torch.randn(B, device=device)
    proposals = torch.randn(B, M, 3, device=device)
    for method in ("multinomial", "systematic"):
        _, indices = IMPLS[impl](log_weights, proposals, 50, method=method)
        assert (indices == chosen[:, None]).all()


@pytest.mark.parametrize("impl", IMPLS)
def test_multinomial_frequencies_pass_chi_square(device, impl):
    B, M, S = 4, 10, 40000
    log_weights, proposals = random_problem(device, B, M, (1,), seed=3)
    log_weights[1, 3] = float("-inf")
    _, indices = IMPLS[impl](log_weights, proposals, S, generator=make_generator(device, 11))
    probs = torch.softmax(log_weights.double(), 1).cpu()
    for row in range(B):
        counts = torch.bincount(indices[row].cpu(), minlength=M).double()
        support = probs[row] > 0
        assert counts[~support].sum() == 0, "a -inf weight was drawn"
        p_value = chi_square_p_value(counts[support], S * probs[row, support])
        # A correct sampler fails this with probability 1e-4 per row; the seed is fixed.
        assert p_value > 1e-4, (row, p_value)


@pytest.mark.parametrize("impl", IMPLS)
def test_systematic_counts_within_one_of_expectation(device, impl):
    for seed in range(5):
        B, M, S = 3, 17 + 40 * seed, 7 + 31 * seed
        log_weights, proposals = random_problem(device, B, M, (), seed=seed)
        log_weights[:, ::5] = float("-inf")
        _, indices = IMPLS[impl](log_weights, proposals, S, method="systematic",
                                 generator=make_generator(device, seed))
        expected = S * torch.softmax(log_weights.double(), 1)
        for row in range(B):
            counts = torch.bincount(indices[row], minlength=M).double()
            assert (counts - expected[row]).abs().max() <= 1 + 1e-6


def test_same_generator_state_gives_same_indices(device):
    log_weights, proposals = random_problem(device, 8, 300, (2,), seed=1)
    a = sir_resample(log_weights, proposals, 20, generator=make_generator(device, 5))[1]
    b = sir_resample(log_weights, proposals, 20, generator=make_generator(device, 5))[1]
    assert torch.equal(a, b)
    g = make_generator(device, 5)
    first = sir_resample(log_weights, proposals, 20, generator=g)[1]
    second = sir_resample(log_weights, proposals, 20, generator=g)[1]
    assert torch.equal(first, a)
    assert not torch.equal(first, second), "the generator must advance between calls"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_low_precision_weights_are_computed_in_float32(device, dtype):
    log_weights, proposals = random_problem(device, 6, 200, (4,), dtype=dtype, seed=2)
    low = sir_resample(log_weights, proposals, 30, generator=make_generator(device, 9), return_log_normalizer=True)
    high = sir_resample(log_weights.float(), proposals, 30, generator=make_generator(device, 9),
                        return_log_normalizer=True)
    assert torch.equal(low[1], high[1])
    torch.testing.assert_close(low[2], high[2])


def test_non_contiguous_inputs(device):
    log_weights, proposals = random_problem(device, 20, 64, (6,), seed=4)
    lw_view, prop_view = log_weights[::2], proposals.transpose(0, 1).contiguous().transpose(0, 1)[::2]
    assert not prop_view.is_contiguous()
    samples, indices = sir_resample(lw_view, prop_view, 9, generator=make_generator(device, 1))
    assert torch.equal(samples, expected_gather(prop_view, indices))


def test_large_rows_span_several_tiles(device):
    # 9000 > the CUDA kernel's 4096-weight tile; one heavy index far along the row.
    log_weights = torch.full((2, 9000), -30.0, device=device)
    log_weights[:, 8999] = 0.0
    log_weights[1, 4500] = 0.0
    proposals = torch.arange(2 * 9000, dtype=torch.float32, device=device).view(2, 9000, 1)
    _, indices = sir_resample(log_weights, proposals, 2000, generator=make_generator(device, 3))
    assert (indices[0] == 8999).float().mean() > 0.99
    share = (indices[1] == 4500).float().mean()
    assert 0.45 < share < 0.55


def test_gradient_flows_to_proposals():
    log_weights = torch.randn(3, 7, dtype=torch.float64)
    proposals = torch.randn(3, 7, 2, dtype=torch.float64, requires_grad=True)

    def fn(p):
        return sir_resample(log_weights, p, 5, generator=make_generator("cpu", 0))[0]

    assert torch.autograd.gradcheck(fn, (proposals,))


@pytest.mark.parametrize("method", ["multinomial", "systematic"])
def test_opcheck(device, method):
    log_weights, proposals = random_problem(device, 4, 50, (3,), seed=0)
    seed = torch.tensor([1234], dtype=torch.int64, device=device)
    proposals.requires_grad_(True)
    torch.library.opcheck(torch.ops.ncpfast.sir_resample.default,
                          (log_weights, proposals, 6, method == "systematic", seed))


def test_torch_compile_full_graph(device):
    @torch.compile(fullgraph=True)
    def resample_and_mean(log_weights, proposals):
        samples, indices = sir_resample(log_weights, proposals, 8, method="systematic")
        return samples.mean(dim=1), indices

    log_weights, proposals = random_problem(device, 4, 100, (5,), seed=0)
    means, indices = resample_and_mean(log_weights, proposals)
    assert means.shape == (4, 5)
    torch.testing.assert_close(means, expected_gather(proposals, indices).mean(dim=1))


# --- errors: every bad input gets a clear message naming what is wrong --------

def _error_cases(device):
    lw = torch.zeros(3, 4, device=device)
    props = torch.zeros(3, 4, 2, device=device)
    nan_row = lw.clone()
    nan_row[2, 1] = float("nan")
    inf_row = lw.clone()
    inf_row[1, 0] = float("inf")
    dead_row = lw.clone()
    dead_row[1] = float("-inf")
    return [
        ((nan_row, props, 1), {}, ValueError, "row 2 of log_weights contains NaN or \\+inf"),
        ((inf_row, props, 1), {}, ValueError, "row 1 of log_weights contains NaN or \\+inf"),
        ((dead_row, props, 1), {}, ValueError, "row 1 of log_weights has every weight -inf"),
        ((lw[:, :0], props[:, :0], 1), {}, ValueError, "M = 0"),
        ((lw, props, 0), {}, ValueError, "num_samples must be >= 1"),
        ((lw, props[:2], 1), {}, ValueError, "must start with log_weights"),
        ((lw[0], props, 1), {}, ValueError, "log_weights must be 2-D"),
        ((lw, props[:, :, 0, None][..., 0][..., 0], 1), {}, ValueError, "proposals must be \\[B, M, ...\\]"),
        ((lw.long(), props, 1), {}, TypeError, "log_weights must be float32"),
        ((lw, props.int(), 1), {}, TypeError, "proposals must have a floating dtype"),
        ((lw, props, 1), {"method": "stratified"}, ValueError, "method must be one of"),
        ((lw, props, 2.0), {}, TypeError, "num_samples must be an int"),
    ]


@pytest.mark.parametrize("impl", IMPLS)
def test_bad_inputs_raise_clear_errors(device, impl):
    for args, kwargs, error, pattern in _error_cases(device):
        with pytest.raises(error, match=pattern):
            IMPLS[impl](*args, **kwargs)


@pytest.mark.parametrize("impl", IMPLS)
def test_generator_on_wrong_device_is_rejected(impl):
    lw, props = torch.zeros(2, 3), torch.zeros(2, 3, 1)
    meta_gen = torch.Generator(device="cuda") if torch.cuda.is_available() else None
    if meta_gen is None:
        pytest.skip("needs a second device type for the generator")
    with pytest.raises(ValueError, match="generator is on"):
        IMPLS[impl](lw, props, 1, generator=meta_gen)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("impl", IMPLS)
def test_mixed_devices_are_rejected(impl):
    with pytest.raises(ValueError, match="proposals are on"):
        IMPLS[impl](torch.zeros(2, 3, device="cuda"), torch.zeros(2, 3, 1), 1)


def test_raw_op_checks_contiguity_and_seed():
    lw, props = torch.zeros(4, 6), torch.zeros(4, 6, 2)
    seed = torch.tensor([1])
    with pytest.raises(ValueError, match="log_weights must be contiguous"):
        torch.ops.ncpfast.sir_resample(lw.t().contiguous().t()[:, :4], props[:, :4], 1, False, seed)
    with pytest.raises(ValueError, match="proposals must be contiguous"):
        torch.ops.ncpfast.sir_resample(lw, props.transpose(0, 1).contiguous().transpose(0, 1), 1, False, seed)
    with pytest.raises(ValueError, match="seed must be one int64"):
        torch.ops.ncpfast.sir_resample(lw, props, 1, False, torch.tensor([1.0]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_and_cuda_share_the_random_stream():
    log_weights, proposals = random_problem("cpu", 16, 1000, (3,), seed=8)
    seed = torch.tensor([42], dtype=torch.int64)
    cpu = torch.ops.ncpfast.sir_resample(log_weights, proposals, 50, False, seed)
    gpu = torch.ops.ncpfast.sir_resample(log_weights.cuda(), proposals.cuda(), 50, False, seed.cuda())
    assert (cpu[1] != gpu[1].cpu()).float().mean() < 1e-3


def test_empty_batch(device):
    samples, indices = sir_resample(torch.zeros(0, 5, device=device), torch.zeros(0, 5, 3, device=device), 4)
    assert samples.shape == (0, 4, 3) and indices.shape == (0, 4)


def test_build_info_names_backends():
    info = ncpfast.build_info()
    assert "cpu" in info["backends"]
    assert info["torch_version"].split("+")[0] == torch.__version__.split("+")[0]
    if info["cuda"]:
        assert "cuda" in info["backends"] and info["cuda_arch_list"]


def test_import_without_extension_explains_how_to_build():
    # The twins import and run without the compiled extension; every fused op,
    # build_info and the NCP prior fail with the command that builds it.
    block = "import sys; sys.modules['ncpfast._C'] = None\n"
    twins = block + ("import torch\nfrom ncpfast.ops import reference\n"
                     "out = reference.sir_resample(torch.zeros(2, 3), torch.randn(2, 3, 4), 1)\n"
                     "assert out[0].shape == (2, 1, 4)\nimport ncpfast.ops.layout\n")
    result = subprocess.run([sys.executable, "-c", twins], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for use in ("from ncpfast.ops import sir_resample", "import ncpfast; ncpfast.build_info()",
                "from ncpfast import NCPPrior", "from ncpfast.ops import bn_swish_given_stats",
                "import ncpfast.ops.mlp_log_ratio"):
        result = subprocess.run([sys.executable, "-c", block + use], capture_output=True, text=True)
        assert result.returncode != 0, use
        assert "pip install --no-build-isolation" in result.stderr, (use, result.stderr)
