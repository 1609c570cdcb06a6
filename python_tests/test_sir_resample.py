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


def two_sample_p_value(counts_a, counts_b, expected_share):
    """Chi-square test that two equal-sized samples of indices come from one
    distribution: bins with an expected count below 5 (from expected_share,
    the probabilities) are pooled into one bin."""
    n = counts_a.sum()
    small = expected_share * n < 5
    a = torch.cat([counts_a[~small], counts_a[small].sum()[None]])
    b = torch.cat([counts_b[~small], counts_b[small].sum()[None]])
    used = (a + b) > 0
    a, b = a[used], b[used]
    statistic = ((a - b) ** 2 / (a + b)).sum()
    dof = a.numel() - 1
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
    # The fused op against the twin: the same log-normaliser (up to float
    # rounding, a few ulps) and, from different random streams, the same
    # index distribution per row.
    draws = 4000
    fused = sir_resample(log_weights, proposals, draws, method=method, generator=make_generator(device, seed),
                         return_log_normalizer=True)
    twin = reference.sir_resample(log_weights, proposals, draws, method=method,
                                  generator=make_generator(device, 50 + seed), return_log_normalizer=True)
    torch.testing.assert_close(fused[2], twin[2], rtol=2e-6, atol=2e-6)
    probs = torch.softmax(log_weights.double(), 1).cpu()
    for row in range(B):
        counts_fused = torch.bincount(fused[1][row].cpu(), minlength=M).double()
        counts_twin = torch.bincount(twin[1][row].cpu(), minlength=M).double()
        if method == "systematic":  # both within one draw of draws * p per index
            assert (counts_fused - counts_twin).abs().max() <= 2, row
        else:
            # A correct pair fails this with probability 1e-4 per row; the seeds are fixed.
            assert two_sample_p_value(counts_fused, counts_twin, probs[row]) > 1e-4, row


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


@pytest.mark.parametrize("method", ["multinomial", "systematic"])
def test_large_rows_span_several_tiles(device, method):
    # 9000 weights: three of the CUDA kernel's (and the CPU's) 4096-weight
    # tiles, each with a large share of the mass (a carry bug across tiles
    # would move it); heavy weights either side of each tile boundary and a
    # -inf weight at the start of the second and third tiles.
    B, M, S = 2, 9000, 40000
    g = torch.Generator().manual_seed(12)
    log_weights = torch.randn(B, M, generator=g)
    log_weights[:, 8192:] += 1.6  # the short last tile: as much mass as the others
    heavy = [4095, 4097, 8191, 8193]
    log_weights[:, heavy] = 6.0
    log_weights[:, [4096, 8192]] = float("-inf")
    log_weights = log_weights.to(device)
    proposals = torch.arange(B * M, dtype=torch.float32, device=device).view(B, M, 1)
    _, indices = sir_resample(log_weights, proposals, S, method=method, generator=make_generator(device, 3))
    probs = torch.softmax(log_weights.double(), 1).cpu()
    tiles = [range(0, 4096), range(4096, 8192), range(8192, M)]
    for row in range(B):
        counts = torch.bincount(indices[row].cpu(), minlength=M).double()
        assert counts[4096] == 0 and counts[8192] == 0, "a -inf weight was drawn"
        if method == "systematic":
            assert (counts - S * probs[row]).abs().max() <= 1 + 1e-6
            continue
        # Bins: each heavy index, and the rest of each tile.
        rest = torch.ones(M, dtype=torch.bool)
        rest[heavy] = False
        bins = [[k] for k in heavy] + [[k for k in tile if rest[k]] for tile in tiles]
        observed = torch.stack([counts[b].sum() for b in bins])
        expected = torch.stack([S * probs[row, b].sum() for b in bins])
        assert (expected[len(heavy):] > 0.15 * S).all(), "every tile holds a large share of the mass"
        assert chi_square_p_value(observed, expected) > 1e-4, (row, observed, expected)


@pytest.mark.parametrize("method", ["multinomial", "systematic"])
def test_index_probabilities_at_large_m(device, method):
    # 2^20 weights: 2^19 of weight 1, then 2^19 of weight 0.975. A float CDF
    # over the whole row (spacing 1/16 past 2^19) rounds each step of 0.975 to
    # 1 and gives the second half 0.5 of the mass instead of 0.4937 (+1.3%);
    # 24-bit uniforms times a float total move single indices by up to 6% at
    # this M. 10^6 multinomial draws resolve the half's share to 5e-4 (the
    # bias is 12 standard errors); 10^5 systematic points to one point.
    M = 1 << 20
    half = M // 2
    log_weights = torch.zeros(1, M)
    log_weights[0, half:] = torch.tensor(0.975).log()
    log_weights = log_weights.to(device)
    proposals = torch.zeros(1, M, 0, device=device)
    S = 1_000_000 if method == "multinomial" else 100_000
    _, indices = sir_resample(log_weights, proposals, S, method=method, generator=make_generator(device, 21))
    hits = int((indices >= half).sum())
    p = float(torch.softmax(log_weights.double().cpu(), 1)[0, half:].sum())
    if method == "systematic":
        # One point per 1/S of the mass, up to the tiles' float CDF (2^-12 of a weight).
        assert abs(hits - S * p) <= 1 + 2.5e-4 * S * p, (hits, S * p)
    else:
        z = (hits - S * p) / (S * p * (1 - p)) ** 0.5
        assert abs(z) < 4.5, (hits / S, p, z)


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


@pytest.mark.cuda  # needs a second device type for the generator
@pytest.mark.parametrize("impl", IMPLS)
def test_generator_on_wrong_device_is_rejected(impl):
    lw, props = torch.zeros(2, 3), torch.zeros(2, 3, 1)
    with pytest.raises(ValueError, match="generator is on"):
        IMPLS[impl](lw, props, 1, generator=torch.Generator(device="cuda"))


@pytest.mark.cuda
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


@pytest.mark.cuda
def test_cpu_and_cuda_share_the_random_stream():
    # The same Philox stream and the same tiles: the indices agree except where
    # a target falls within float rounding of a CDF step (the two sum a tile
    # in different orders). Like the native test: every index has weight, few
    # differ, and a differing pair is separated only by (almost) no mass.
    log_weights, proposals = random_problem("cpu", 16, 1000, (3,), seed=8)
    log_weights[:, ::7] = float("-inf")
    seed = torch.tensor([42], dtype=torch.int64)
    cpu = torch.ops.ncpfast.sir_resample(log_weights, proposals, 50, False, seed)[1]
    gpu = torch.ops.ncpfast.sir_resample(log_weights.cuda(), proposals.cuda(), 50, False, seed.cuda())[1].cpu()
    rows = torch.arange(16)[:, None]
    assert torch.isfinite(log_weights[rows, gpu]).all(), "a -inf weight was drawn on CUDA"
    differ = cpu != gpu
    assert differ.float().mean() <= 0.02, f"{int(differ.sum())} of {differ.numel()} indices differ"
    cdf = torch.softmax(log_weights.double(), 1).cumsum(1)
    for row, j in differ.nonzero().tolist():
        low, high = sorted((int(cpu[row, j]), int(gpu[row, j])))
        between = cdf[row, high - 1] - cdf[row, low]  # the mass strictly between the two indices
        assert between <= 1e-5, (row, j, low, high, float(between))


@pytest.mark.cuda
def test_cuda_graph_capture_and_replay():
    # No host synchronisation inside the op: it can be captured into a CUDA
    # graph, and a replay equals an eager call with the same seed.
    log_weights, proposals = random_problem("cuda", 4, 5000, (2,), seed=6)
    seed = torch.tensor([7], dtype=torch.int64, device="cuda")
    op = torch.ops.ncpfast.sir_resample
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the graph
        op(log_weights, proposals, 16, False, seed)
        sir_resample(log_weights, proposals, 16)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = op(log_weights, proposals, 16, False, seed)
    for value in (7, 8):
        seed.fill_(value)
        graph.replay()
        torch.cuda.synchronize()
        eager = op(log_weights, proposals, 16, False, seed)
        for a, b in zip(captured, eager):
            assert torch.equal(a, b)
    # The wrapper too: its seed comes from the (graph-safe) default CUDA generator.
    wrapper_graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(wrapper_graph):
        samples, indices = sir_resample(log_weights, proposals, 16)
    replays = []
    for _ in range(2):
        wrapper_graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(samples, expected_gather(proposals, indices))
        replays.append(indices.clone())
    assert not torch.equal(replays[0], replays[1]), "each replay draws a new seed"


def test_empty_batch(device):
    samples, indices = sir_resample(torch.zeros(0, 5, device=device), torch.zeros(0, 5, 3, device=device), 4)
    assert samples.shape == (0, 4, 3) and indices.shape == (0, 4)


def test_build_info_names_backends():
    info = ncpfast.build_info()
    assert "cpu" in info["backends"]
    assert info["torch_version"].split("+")[0] == torch.__version__.split("+")[0]
    if info["cuda"]:
        assert "cuda" in info["backends"] and info["cuda_arch_list"]


@pytest.mark.slow
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
