"""The NCP estimators against answers known in closed form (or by 1-d quadrature).

log Z: a logit that depends on z only through t = u.z (u a unit vector) has, under
N(0, I), log Z = log E[exp g(t)], t ~ N(0, 1): exactly b + |a|^2/2 for the linear
logit a.z + b, and a 1-d integral for an MLP whose first layer points along u.
The estimate must lie within a few of its reported standard errors, and those
standard errors must be calibrated (coverage over seeds).

NLL: with a decoder that ignores z, log p(x) is the decoder's Bernoulli
likelihood, and the importance weights are p(z) / q(z) (times the NCP ratio), so
the bound's value is known: exact for any K when q = p, and with known mean
(log p(x) - KL) for K = 1.
"""
import math

import pytest
import scipy.integrate
import torch
import torch.nn as nn
import torch.nn.functional as F

from ncpfast.models import MLPVAE
from ncpfast.ncp import GroupedNCP, NCPPrior, StandardNormal
from ncpfast.nn.distributions import Normal

DIM = 5
DIRECTION = torch.nn.functional.normalize(torch.tensor([1.0, -2.0, 0.5, 0.0, 1.5]), dim=0)


# --- logits along one direction, and their log Z by quadrature --------------------------

class Logit:
    """g(t), t = u.z: a linear logit |a| t + b, or a one-direction SiLU MLP."""

    def __init__(self, norm=None, bias=0.0, mlp=None):
        self.norm, self.bias, self.mlp = norm, bias, mlp

    def __call__(self, t):  # float, by hand (the reference the modules are checked against)
        if self.mlp is None:
            return self.norm * t + self.bias
        scales, biases, out_weights, out_bias = self.mlp
        silu = lambda v: v / (1 + math.exp(-v))  # noqa: E731
        return out_bias + sum(w * silu(c * t + b) for c, b, w in zip(scales, biases, out_weights))

    def of(self, z: torch.Tensor) -> torch.Tensor:
        """g(u.z) for a batch, in float64, without the module."""
        t = z.double() @ DIRECTION.double()
        if self.mlp is None:
            return self.norm * t + self.bias
        scales, biases, out_weights, out_bias = (torch.tensor(v, dtype=torch.float64) if isinstance(v, list)
                                                 else v for v in self.mlp)
        return F.silu(t[..., None] * scales + biases) @ out_weights + out_bias

    def module(self) -> nn.Module:
        """The logit as a classifier [N, DIM] -> [N, 1]: nn.Linear, or the MLP shape the fused op runs."""
        with torch.no_grad():
            if self.mlp is None:
                linear = nn.Linear(DIM, 1)
                linear.weight.copy_(self.norm * DIRECTION[None])
                linear.bias.fill_(self.bias)
                return linear
            scales, biases, out_weights, out_bias = self.mlp
            first, last = nn.Linear(DIM, len(scales)), nn.Linear(len(scales), 1)
            first.weight.copy_(torch.tensor(scales)[:, None] * DIRECTION[None])
            first.bias.copy_(torch.tensor(biases))
            last.weight.copy_(torch.tensor([out_weights]))
            last.bias.fill_(out_bias)
            return nn.Sequential(first, nn.SiLU(), last)

    def log_moment(self, power: int = 1) -> float:
        """log E[exp(power g(t))], t ~ N(0, 1), by adaptive quadrature."""
        def integrand(t):
            return math.exp(power * self(t) - 0.5 * t * t) / math.sqrt(2 * math.pi)
        value, error = scipy.integrate.quad(integrand, -40, 40, epsabs=1e-13, epsrel=1e-12, limit=500)
        assert error < 1e-9 * value
        return math.log(value)

    def log_z(self) -> float:
        return self.log_moment(1)

    def relative_variance(self) -> float:
        """Var(r) / E[r]^2: the delta method's N Var(log Z estimate)."""
        return math.exp(self.log_moment(2) - 2 * self.log_moment(1)) - 1


LINEAR = Logit(norm=math.sqrt(0.5), bias=-0.3)
MLP = Logit(mlp=([0.8, -0.5, 0.3], [0.1, -0.2, 0.4], [0.6, 0.5, -0.4], 0.2))
LOGITS = {"linear": LINEAR, "silu_mlp": MLP}


def test_quadrature_reproduces_the_closed_form():
    assert LINEAR.log_z() == pytest.approx(-0.3 + 0.5 / 2, abs=1e-10)
    assert LINEAR.relative_variance() == pytest.approx(math.exp(0.5) - 1, rel=1e-8)


@pytest.fixture
def op_calls(monkeypatch):
    """Counts the calls of the fused ops, to know which path an estimator took."""
    calls = {"mlp_log_ratio": 0, "sir_resample": []}
    mlp_op, sir_op = torch.ops.ncpfast.mlp_log_ratio, torch.ops.ncpfast.sir_resample

    def mlp_spy(*args):
        calls["mlp_log_ratio"] += 1
        return mlp_op(*args)

    def sir_spy(log_weights, proposals, *args):
        result = sir_op(log_weights, proposals, *args)
        calls["sir_resample"].append((log_weights.clone(), proposals.clone(), result[0].clone()))
        return result

    monkeypatch.setattr(torch.ops.ncpfast, "mlp_log_ratio", mlp_spy)
    monkeypatch.setattr(torch.ops.ncpfast, "sir_resample", sir_spy)
    return calls


def check_calibrated(estimates, stderrs, truth):
    """z = (estimate - truth) / SE over independent seeds: the +-2 SE coverage within
    three binomial standard deviations of 95.45%, mean z^2 = 1 and mean z = 0 within
    four of their standard errors (from the z themselves: z^2 is heavier-tailed than
    a chi-square, because the SE estimate is low exactly when no large weight was drawn)."""
    z = (torch.tensor(estimates, dtype=torch.float64) - truth) / torch.tensor(stderrs, dtype=torch.float64)
    n, expected = len(z), math.erf(2 / math.sqrt(2))
    coverage = float((z.abs() < 2).double().mean())
    assert abs(coverage - expected) < 3 * math.sqrt(expected * (1 - expected) / n), (coverage, z)
    squares = z * z
    assert abs(float(squares.mean()) - 1) < 4 * float(squares.std()) / math.sqrt(n), float(squares.mean())
    assert abs(float(z.mean())) < 4 / math.sqrt(n), float(z.mean())


SEEDS = 400

# --- log Z through NCPPrior ---------------------------------------------------------------

@pytest.mark.parametrize("name", LOGITS)
def test_ncp_prior_log_z_within_its_standard_error(name, op_calls):
    logit = LOGITS[name]
    prior = NCPPrior(StandardNormal(DIM), classifier=logit.module()).eval()
    n = 200_000
    log_z, stderr = prior.log_partition(num_samples=n, generator=torch.Generator().manual_seed(0))
    expected_stderr = math.sqrt(logit.relative_variance() / n)
    assert stderr == pytest.approx(expected_stderr, rel=0.05)
    assert abs(log_z - logit.log_z()) < 4 * expected_stderr, (log_z, logit.log_z(), stderr)
    # The MLP takes the fused op (the linear classifier is not its shape), and the
    # module path gives the same estimate from the same draws.
    assert (op_calls["mlp_log_ratio"] > 0) == (name == "silu_mlp")
    prior.kernels = "torch"
    again, _ = prior.log_partition(num_samples=n, generator=torch.Generator().manual_seed(0), refresh=True)
    assert again == pytest.approx(log_z, abs=1e-5)


@pytest.mark.parametrize("name", LOGITS)
def test_ncp_prior_log_z_standard_error_is_calibrated(name):
    logit = LOGITS[name]
    prior = NCPPrior(StandardNormal(DIM), classifier=logit.module()).eval()
    n = 500  # log-mean-exp's bias, -Var(r)/(2N E[r]^2), is ~2% of a standard error here: corrected anyway
    truth = logit.log_z() - logit.relative_variance() / (2 * n)
    runs = [prior.log_partition(num_samples=n, generator=torch.Generator().manual_seed(seed), refresh=True)
            for seed in range(SEEDS)]
    check_calibrated([r[0] for r in runs], [r[1] for r in runs], truth)


# --- log Z and SIR weights through GroupedNCP -------------------------------------------------

class PlainLogit(nn.Module):
    """A user's classifier module, called as classifier(z, context); no proposal_log_ratios."""

    def __init__(self, logit):
        super().__init__()
        self.inner = logit.module()

    def forward(self, z, context):
        return self.inner(z).squeeze(-1)


def grouped_ncp(logit, kind):
    """GroupedNCP over a single-group MLPVAE (prior exactly N(0, I)) whose classifier
    computes `logit`: a plain module, or a GroupClassifier with that MLP inside."""
    torch.manual_seed(0)
    ncp = GroupedNCP(MLPVAE(latent_dim=DIM, hidden=8), hidden=8).eval()
    if kind == "plain":
        ncp.classifiers[0] = PlainLogit(logit)
    else:
        ncp.classifiers[0].mlp = logit.module()
    return ncp


KINDS = [("linear", "plain"), ("linear", "group_classifier"), ("silu_mlp", "group_classifier")]


@pytest.mark.parametrize("name, kind", KINDS)
def test_grouped_log_z_within_its_standard_error_and_calibrated(name, kind):
    logit = LOGITS[name]
    ncp = grouped_ncp(logit, kind)
    n = 100_000
    estimate = ncp.log_partition_estimate(n, batch_size=10_000, generator=torch.Generator().manual_seed(0))
    log_z, stderr = estimate.log_z, estimate.stderr
    assert stderr == pytest.approx(math.sqrt(logit.relative_variance() / n), rel=0.05)
    # Kish's effective sample size (sum w)^2 / sum w^2 -> N / (1 + Var(w) / E[w]^2)
    assert estimate.ess == pytest.approx(n / (1 + logit.relative_variance()), rel=0.02)
    assert estimate.num_samples == n
    assert abs(log_z - logit.log_z()) < 4 * stderr, (log_z, logit.log_z(), stderr)
    n = 500
    runs = [ncp.log_partition(n, batch_size=n, generator=torch.Generator().manual_seed(seed), refresh=True)
            for seed in range(SEEDS)]
    check_calibrated([r[0] for r in runs], [r[1] for r in runs], logit.log_z() - logit.relative_variance() / (2 * n))


@pytest.mark.parametrize("name, kind", KINDS)
@pytest.mark.parametrize("kernels", ["auto", "torch"])
def test_sir_weights_are_the_log_ratios(name, kind, kernels, op_calls):
    logit = LOGITS[name]
    ncp = grouped_ncp(logit, kind)
    ncp.kernels = kernels
    proposals = torch.randn(3, 40, DIM, generator=torch.Generator().manual_seed(1))
    classifier = ncp.classifiers[0]
    if hasattr(classifier, "proposal_log_ratios"):
        with torch.no_grad():
            for fused in (True, False):
                torch.testing.assert_close(classifier.proposal_log_ratios(proposals, None, fused).double(),
                                           logit.of(proposals), rtol=1e-5, atol=1e-5)
    op_calls["mlp_log_ratio"] = 0
    with torch.no_grad():
        ncp.sample(6, num_proposals=30, generator=torch.Generator().manual_seed(2))
    (log_weights, scored, _), = op_calls["sir_resample"]
    assert log_weights.shape == (6, 30) and scored.shape == (6, 30, DIM)
    torch.testing.assert_close(log_weights.double(), logit.of(scored), rtol=1e-5, atol=1e-5)
    fused_expected = name == "silu_mlp" and kernels == "auto"
    assert (op_calls["mlp_log_ratio"] > 0) == fused_expected


@pytest.mark.parametrize("name", LOGITS)
def test_ncp_prior_sir_weights_are_the_log_ratios(name, op_calls):
    logit = LOGITS[name]
    prior = NCPPrior(StandardNormal(DIM), classifier=logit.module()).eval()
    prior.sample(7, num_proposals=25, generator=torch.Generator().manual_seed(3))
    (log_weights, scored, _), = op_calls["sir_resample"]
    assert log_weights.shape == (7, 25)
    torch.testing.assert_close(log_weights.double(), logit.of(scored), rtol=1e-5, atol=1e-5)


def test_sir_through_a_group_classifier_targets_the_tilted_prior(op_calls):
    # N(0, I) e^{a.z} / Z = N(a, I): the SIR draws' mean moves to a (up to SIR's O(1/M) bias).
    ncp = grouped_ncp(LINEAR, "group_classifier")
    with torch.no_grad():
        ncp.sample(4000, num_proposals=200, generator=torch.Generator().manual_seed(4))
    chosen = torch.cat([samples[:, 0] for _, _, samples in op_calls["sir_resample"]])
    assert chosen.shape == (4000, DIM)
    torch.testing.assert_close(chosen.mean(0), LINEAR.norm * DIRECTION, atol=0.08, rtol=0)
    torch.testing.assert_close(chosen.std(0), torch.ones(DIM), atol=0.08, rtol=0)


# --- the importance-weighted NLL with a decoder that ignores z ---------------------------

class DecoderIgnoresZ(MLPVAE):
    """MLPVAE whose decoder's first layer is zero (its logits are one constant image)
    and whose posterior is N(mean, std^2 I) whatever x (N(0, I): q equals the prior)."""

    def __init__(self, mean=0.0, std=1.0):
        super().__init__(latent_dim=DIM, hidden=16)
        with torch.no_grad():
            self.decoder[0].weight.zero_()
        self.q_mean, self.q_std = mean, std

    def encode(self, x):
        mu = torch.full((x.shape[0], self.latent_dim), self.q_mean)
        return Normal.from_mean_std(mu, torch.full_like(mu, self.q_std))

    def exact_log_likelihood(self, x):
        """log p(x) = sum of log Bernoulli(x | sigmoid(logits)), in float64, by hand."""
        with torch.no_grad():
            logits = self.decoder(torch.zeros(1, self.latent_dim)).double().view(1, -1)
        pixels = self._crop(x).double().flatten(1)
        return (pixels * F.logsigmoid(logits) + (1 - pixels) * F.logsigmoid(-logits)).sum(1)


def binary_images(n, seed=0):
    return torch.rand(n, 1, 32, 32, generator=torch.Generator().manual_seed(seed)).bernoulli(
        generator=torch.Generator().manual_seed(seed + 1))


@pytest.mark.parametrize("K", [1, 7, 50])
def test_iw_bound_is_exact_when_q_is_the_prior_and_z_is_ignored(K):
    torch.manual_seed(0)
    vae = DecoderIgnoresZ().eval()
    x = binary_images(6)
    exact = vae.exact_log_likelihood(x)
    assert exact.std() > 1  # distinct images: a mix-up between images would show
    with torch.no_grad():
        results = {chunk: vae.importance_weighted_log_likelihood(x, K, chunk=chunk) for chunk in (0, 1, 3, 7, K)}
    for chunk, value in results.items():
        torch.testing.assert_close(value.double(), exact, rtol=1e-6, atol=2e-4, msg=f"chunk {chunk}")
        torch.testing.assert_close(value, results[0], rtol=0, atol=1e-4, msg=f"chunk {chunk} vs unchunked")


def test_single_sample_bound_has_mean_log_px_minus_kl():
    # K = 1: E_q[log p(x) + log p(z) - log q(z)] = log p(x) - KL(q || p), the KL in closed form.
    mean, std = 0.3, 1.2
    torch.manual_seed(0)
    vae = DecoderIgnoresZ(mean, std).eval()
    x = binary_images(1).expand(4000, -1, -1, -1)
    kl = DIM * (0.5 * (std ** 2 + mean ** 2 - 1) - math.log(std))
    with torch.no_grad():
        elbo = vae.importance_weighted_log_likelihood(x, 1).double()
    gap = vae.exact_log_likelihood(x[:1])[0] - elbo
    assert abs(float(gap.mean()) - kl) < 4 * float(gap.std()) / math.sqrt(len(gap)), (float(gap.mean()), kl)


def test_many_sample_bound_converges_to_log_px():
    # K = 2000: log-mean of weights p/q with E_q[p/q] = 1; bias -Var(w)/(2K), Var(w) in closed form.
    mean, std = 0.3, 1.2
    torch.manual_seed(1)
    vae = DecoderIgnoresZ(mean, std).eval()
    K, x = 2000, binary_images(1).expand(20, -1, -1, -1)
    variance = math.exp(DIM * (math.log(std ** 2 / math.sqrt(2 * std ** 2 - 1)) + mean ** 2 / (2 * std ** 2 - 1))) - 1
    with torch.no_grad():
        iw = vae.importance_weighted_log_likelihood(x, K, chunk=300).double()
    error = iw - vae.exact_log_likelihood(x[:1])[0]
    stderr = math.sqrt(variance / K / len(error))
    assert abs(float(error.mean()) + variance / (2 * K)) < 4 * stderr, (float(error.mean()), stderr)


def test_ncp_bound_with_a_linear_log_ratio():
    # q = p = N(0, I), log r = a.z + b, log Z = b + |a|^2/2: the NCP weights are
    # p(x) e^{a.z - |a|^2/2}, so K = 1 has mean log p(x) - |a|^2/2 and a constant ratio
    # (a = 0) leaves the exact log p(x) for any K.
    torch.manual_seed(0)
    vae = DecoderIgnoresZ().eval()
    ncp = grouped_ncp(LINEAR, "plain")
    ncp.vae = vae
    x = binary_images(1).expand(4000, -1, -1, -1)
    exact = vae.exact_log_likelihood(x[:1])[0]
    with torch.no_grad():
        single = ncp.importance_weighted_log_likelihood(x, 1, log_z=LINEAR.log_z()).double()
    gap = exact - single
    assert abs(float(gap.mean()) - LINEAR.norm ** 2 / 2) < 4 * float(gap.std()) / math.sqrt(len(gap))

    constant = Logit(norm=0.0, bias=0.7)
    ncp.classifiers[0] = PlainLogit(constant)
    log_z, stderr = ncp.log_partition(300, batch_size=100, generator=torch.Generator().manual_seed(0))
    assert log_z == pytest.approx(0.7, abs=1e-6) and stderr == pytest.approx(0, abs=1e-6)
    x = binary_images(5, seed=3)
    with torch.no_grad():
        for K in (1, 7, 50):
            torch.testing.assert_close(ncp.importance_weighted_log_likelihood(x, K, chunk=3).double(),
                                       vae.exact_log_likelihood(x), rtol=1e-6, atol=2e-4)


def test_a_log_z_on_few_effective_draws_carries_a_warning():
    from ncpfast.ncp.estimators import MIN_RELIABLE_ESS, LogPartitionEstimate

    few = LogPartitionEstimate(0.3, 0.01, MIN_RELIABLE_ESS - 1, 10000, "prior")
    assert f"effective sample size of {MIN_RELIABLE_ESS - 1} (of 10000 draws)" in few.warning()
    assert few.as_dict()["warning"] == few.warning()
    assert LogPartitionEstimate(0.3, 0.01, MIN_RELIABLE_ESS, 10000, "prior").warning() is None
    assert LogPartitionEstimate(0.3, 0.01, float("nan"), 10000, "prior").warning() is None
