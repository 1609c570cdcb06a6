"""FlatNCP (an NCPPrior over a single-group VAE's latents, any base) and the GMM base
in the pipeline (--ncp-base gmm): likelihood, log Z, checkpoints, the CLI end to end."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from ncpfast import checkpoint
from ncpfast.config import resolve_config
from ncpfast.models import HierarchicalVAE, MLPVAE
from ncpfast.ncp import GaussianMixture, GroupedNCP
from ncpfast.ncp.flat import FlatNCP, posterior_samples
from test_ncp_grouped import TINY


def constant_classifier(ncp, value):
    last = ncp.prior.classifier[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(value)


def standard_normal_gmm(dim):
    """A one-component GMM equal to the VAE's own N(0, I) prior."""
    return GaussianMixture(torch.ones(1), torch.zeros(1, dim), torch.zeros(1, dim))


def on_the_same_draws(*likelihoods, args):
    """Each likelihood(*args), every one after the same global seed: the same posterior draws."""
    results = []
    for likelihood in likelihoods:
        torch.manual_seed(1)
        results.append(likelihood(*args))
    return results


def test_constant_classifier_over_the_vae_prior_gives_the_base_likelihood():
    torch.manual_seed(0)
    vae = MLPVAE(latent_dim=6, hidden=16).eval()
    ncp = FlatNCP(vae, standard_normal_gmm(6), hidden=8)
    constant_classifier(ncp, 0.8)
    estimate = ncp.log_partition_estimate(500, generator=torch.Generator().manual_seed(0))
    assert estimate.log_z == pytest.approx(0.8, abs=1e-6) and estimate.stderr == pytest.approx(0, abs=1e-6)
    x = torch.rand(5, 1, 32, 32).bernoulli()
    base, reweighted, gmm_only = on_the_same_draws(vae.importance_weighted_log_likelihood,
                                                   ncp.importance_weighted_log_likelihood, ncp.base_log_likelihood,
                                                   args=(x, 8))
    torch.testing.assert_close(reweighted, base, rtol=0, atol=1e-4)
    torch.testing.assert_close(gmm_only, base, rtol=0, atol=1e-4)
    # A different constant moves log Z with it and leaves the likelihood where it was; a wrong
    # log Z (not the estimate) shifts every image by the difference.
    torch.manual_seed(1)
    shifted = ncp.importance_weighted_log_likelihood(x, 8, log_z=0.3)
    torch.testing.assert_close(shifted, base + 0.5, rtol=0, atol=1e-4)


def test_a_constant_classifier_over_a_gmm_leaves_the_gmm_nll_exactly():
    # log r(z) = c everywhere: p_NCP = p_GMM, log Z = c exactly (every weight equal: no error,
    # ESS = all draws), and the paired NCP - GMM NLL difference is c - log Z = 0 on every image,
    # so with zero spread; a log Z off by d moves every image by d alike.
    torch.manual_seed(0)
    vae = MLPVAE(latent_dim=4, hidden=16).eval()
    gmm = GaussianMixture(torch.tensor([0.3, 0.7]), torch.tensor([[0.5] * 4, [-1.0] * 4]), torch.full((2, 4), -0.3))
    ncp = FlatNCP(vae, gmm, hidden=8)
    constant_classifier(ncp, -1.3)
    estimate = ncp.log_partition_estimate(400, generator=torch.Generator().manual_seed(0))
    assert estimate.log_z == pytest.approx(-1.3, abs=1e-6) and estimate.stderr == pytest.approx(0, abs=1e-6)
    assert estimate.ess == pytest.approx(400)
    x = torch.rand(6, 1, 32, 32).bernoulli()
    gmm_ll, ncp_ll, base_ll = on_the_same_draws(ncp.base_log_likelihood, ncp.importance_weighted_log_likelihood,
                                                vae.importance_weighted_log_likelihood, args=(x, 8))
    assert (gmm_ll - base_ll).abs().max() > 0.1  # the GMM is not the VAE's prior
    difference = -(ncp_ll - gmm_ll)  # per-image NLL difference NCP - GMM
    torch.testing.assert_close(difference, torch.zeros(6), rtol=0, atol=1e-4)
    assert float(difference.std()) < 1e-4
    torch.manual_seed(1)
    off = -(ncp.importance_weighted_log_likelihood(x, 8, log_z=-1.05) - gmm_ll)
    torch.testing.assert_close(off, torch.full((6,), 0.25), rtol=0, atol=1e-4)


def test_the_held_out_split_takes_whole_images():
    # Image i's posterior has z_0 = i exactly, so each positive the classifier sees names its image.
    torch.manual_seed(0)
    vae = MLPVAE(latent_dim=2, hidden=16).eval()
    n, draws, epochs = 40, 5, 2
    mu = torch.stack([torch.arange(n, dtype=torch.float32), torch.zeros(n)], 1)
    sigma = torch.stack([torch.zeros(n), torch.ones(n)], 1)
    samples = posterior_samples(mu, sigma, draws, torch.Generator().manual_seed(0))
    ncp = FlatNCP(vae, standard_normal_gmm(2), hidden=8)
    seen = {"train": [], "val": []}
    pair_losses = ncp.prior._pair_losses

    def spy(pair):  # the positives of every batch, by side
        seen["train" if ncp.prior.classifier.training else "val"].append(pair[0][:, 0].round().long())
        return pair_losses(pair)

    ncp.prior._pair_losses = spy
    history = ncp.fit(samples, epochs=epochs, batch_size=16, generator=torch.Generator().manual_seed(1),
                      progress=False, draws=draws)
    # every epoch scores the whole held-out split: the first epoch's batches are all of it
    train, val = torch.cat(seen["train"]), torch.cat(seen["val"])[:draws * (n // 10)]
    assert set(train.tolist()).isdisjoint(val.tolist())  # no image on both sides of early stopping
    # a tenth of the images held out, each with all its draws; the rest trained on, all draws each epoch
    assert torch.equal(torch.bincount(val, minlength=n)[val.unique()], torch.full((n // 10,), draws))
    counts = torch.bincount(train, minlength=n)
    assert (counts > 0).sum() == n - n // 10
    assert set(counts[counts > 0].tolist()) == {draws * history["epochs_run"]}
    with pytest.raises(ValueError, match="not 3 draws per image"):
        ncp.fit(samples, epochs=1, draws=3, progress=False)


@pytest.mark.parametrize("kind", ["flat", "grouped"])
def test_a_cached_log_z_answers_only_a_request_for_its_own_proposal(kind):
    torch.manual_seed(0)
    vae = MLPVAE(latent_dim=4, hidden=16).eval()
    ncp = FlatNCP(vae, standard_normal_gmm(4), hidden=8) if kind == "flat" else GroupedNCP(vae, hidden=8)
    posterior = (torch.randn(20, 4), torch.rand(20, 4) + 0.5)
    prior_estimate = ncp.log_partition_estimate(300, generator=torch.Generator().manual_seed(0))
    assert prior_estimate.proposal == "prior" and prior_estimate.posterior_fingerprint is None
    assert ncp.log_partition_estimate() is prior_estimate  # naming nothing: whatever is cached
    assert ncp.log_partition_estimate(proposal="prior") is prior_estimate
    # another proposal without a sample count is estimated anew, not served the prior's estimate
    aggregate = ncp.log_partition_estimate(proposal="aggregate-posterior", posterior=posterior,
                                           generator=torch.Generator().manual_seed(1))
    assert aggregate is not prior_estimate and aggregate.proposal == "aggregate-posterior"
    assert aggregate.num_samples == 10_000 and aggregate.log_z != prior_estimate.log_z
    assert ncp.log_partition_estimate(proposal="aggregate-posterior", posterior=posterior) is aggregate
    assert ncp.log_partition_estimate(proposal="aggregate-posterior") is aggregate
    assert ncp.log_partition() == (aggregate.log_z, aggregate.stderr)
    # other posterior components make another proposal
    moved = ncp.log_partition_estimate(proposal="aggregate-posterior", posterior=(posterior[0] + 1, posterior[1]))
    assert moved is not aggregate and moved.posterior_fingerprint != aggregate.posterior_fingerprint
    # the key survives a checkpoint
    again = type(ncp).from_checkpoint(vae, ncp.to_checkpoint())
    assert again.log_partition_estimate(proposal="aggregate-posterior",
                                        posterior=(posterior[0] + 1, posterior[1])) == moved
    back = again.log_partition_estimate(proposal="prior", generator=torch.Generator().manual_seed(2))
    assert back.proposal == "prior" and back.num_samples == 10_000


def test_a_gmm_base_changes_the_likelihood_and_log_z_sees_the_classifier():
    torch.manual_seed(0)
    vae = MLPVAE(latent_dim=4, hidden=16).eval()
    gmm = GaussianMixture(torch.tensor([0.5, 0.5]), torch.tensor([[1.0] * 4, [-1.0] * 4]), torch.zeros(2, 4))
    ncp = FlatNCP(vae, gmm, hidden=8)
    x = torch.rand(3, 1, 32, 32).bernoulli()
    torch.manual_seed(1)
    base = vae.importance_weighted_log_likelihood(x, 4)
    torch.manual_seed(1)
    assert not torch.allclose(ncp.base_log_likelihood(x, 4), base, atol=1e-3)
    # log r(z) = z_0 under the GMM: Z = E[e^{z_0}] = e^{1/2} (e^1 + e^-1) / 2 in closed form.
    ncp.prior.classifier = torch.nn.Sequential(torch.nn.Linear(4, 1))
    with torch.no_grad():
        ncp.prior.classifier[0].weight.copy_(torch.tensor([[1.0, 0, 0, 0]]))
        ncp.prior.classifier[0].bias.zero_()
    exact = 0.5 + float(torch.log(torch.cosh(torch.tensor(1.0))))
    for proposal, posterior in (("prior", None), ("aggregate-posterior", (torch.randn(20, 4), torch.rand(20, 4) + .5))):
        estimate = ncp.log_partition_estimate(20_000, generator=torch.Generator().manual_seed(3), proposal=proposal,
                                              posterior=posterior, refresh=True)
        assert abs(estimate.log_z - exact) < 4 * estimate.stderr + 1e-3, (proposal, estimate)
        assert 0 < estimate.ess <= 20_000


def test_fit_sample_and_weights_only_round_trip(tmp_path):
    torch.manual_seed(0)
    vae = MLPVAE(latent_dim=4, hidden=16).eval()
    mu, sigma = torch.randn(60, 4) * 0.5 + 1.0, torch.full((60, 4), 0.3)
    g = torch.Generator().manual_seed(0)
    gmm = GaussianMixture.fit(mu, 3, generator=g)
    ncp = FlatNCP(vae, gmm, hidden=8)
    assert ncp.prior.hidden == 64 and ncp.base_kind == "gmm"  # the flat classifier's minimum width
    samples = posterior_samples(mu, sigma, 3, g)
    assert samples.shape == (180, 4)
    history = ncp.fit(samples, epochs=2, batch_size=32, generator=g, progress=False)
    assert 1 <= history["epochs_run"] <= 2
    ncp.log_partition_estimate(300, generator=g)
    path = tmp_path / "ncp.pt"
    checkpoint.save_atomic(ncp.to_checkpoint(), str(path))
    state = torch.load(path, weights_only=True)
    again = FlatNCP.from_checkpoint(vae, state)
    z = torch.randn(7, 4)
    torch.testing.assert_close(again.log_ratio(z), ncp.log_ratio(z))
    torch.testing.assert_close(again.base.log_prob(z), ncp.base.log_prob(z))
    assert again.log_partition() == ncp.log_partition()
    for method in ("sir", "langevin", "base"):
        images = again.sample(3, method=method, num_proposals=4, steps=2, generator=torch.Generator().manual_seed(0))
        assert images.shape == (3, 1, 28, 28) and torch.isfinite(images).all()
    a = again.sample(4, temperature=0.5, generator=torch.Generator().manual_seed(1))
    b = again.sample(4, temperature=0.5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert again.base_sample(2, generator=torch.Generator().manual_seed(0)).shape == (2, 1, 28, 28)


def test_flat_ncp_refuses_a_hierarchical_vae_and_gmm_config_refuses_nvae():
    with pytest.raises(ValueError, match="single-group VAE"):
        FlatNCP(HierarchicalVAE(TINY).eval(), standard_normal_gmm(4))
    with pytest.raises(ValueError, match="stage2.base gmm needs a single-group model"):
        resolve_config("tiny", {"stage2.base": "gmm"})
    with pytest.raises(ValueError, match="stage2.base must be one of gaussian, gmm"):
        resolve_config("mnist-single", {"stage2.base": "flow"})
    with pytest.raises(ValueError, match="stage2.gmm_components must be >= 1"):
        resolve_config("mnist-single", {"stage2.base": "gmm", "stage2.gmm_components": 0})
    assert resolve_config("mnist-single", {"stage2.base": "gmm"}).stage2.gmm_components == 10


def run(module, *args):
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


MLP_GMM = ["--preset", "mnist-single", "--latent-dim", "4", "--hidden-units", "16", "--epochs", "1",
           "--batch-size", "250", "--no-progress", "--iw-samples", "3", "--max-images", "20",
           "--iw-chunk", "0", "--num-generated", "50", "--ncp-base", "gmm", "--ncp-gmm-components", "3",
           "--ncp-epochs", "1", "--ncp-hidden", "8", "--log-z-samples", "300", "--num-proposals", "5"]


@pytest.mark.slow
def test_gmm_base_end_to_end_from_the_command_line(tmp_path):
    run_dir = tmp_path / "run"
    result = run("ncpfast.train", *MLP_GMM, "--run-dir", str(run_dir))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "\nGMM " in result.stdout and "NCP-GMM - GMM NLL" in result.stdout
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["ncp"]["base"] == "gmm" and metrics["ncp"]["gmm_components"] == 3
    evaluation = metrics["evaluation"]
    assert evaluation["gmm"]["components"] == 3 and evaluation["ncp"]["base"] == "gmm"
    for prior in ("base", "gmm", "ncp"):
        for key in ("nll_nats", "nll_std_error", "fd", "fd_std_error"):
            assert math.isfinite(evaluation[prior][key]), (prior, key)
    for key in ("nll_difference_ncp_minus_gmm", "nll_difference_gmm_minus_base"):
        assert abs(evaluation[key]) < float("inf") and evaluation[key + "_std_error"] >= 0
    # the NCP-GMM difference's error includes log Z's
    assert evaluation["nll_difference_ncp_minus_gmm_std_error"] >= evaluation["log_z_stderr"]
    state = torch.load(run_dir / "checkpoints" / "ncp.pt", weights_only=True)
    assert state["kind"] == "flat"

    result = run("ncpfast.sample", str(run_dir), "-n", "4", "--num-proposals", "3", "--out", str(tmp_path / "s.png"))
    assert result.returncode == 0, result.stderr
    result = run("ncpfast.evaluate", str(run_dir), "--iw-samples", "2", "--max-images", "10", "--num-generated", "20",
                 "--num-proposals", "3", "--log-z-samples", "100", "--json")
    assert result.returncode == 0, result.stderr
    assert "gmm" in json.loads(result.stdout)

    result = run("ncpfast.train", "--preset", "tiny", "--ncp-base", "gmm", "--run-dir", str(tmp_path / "nvae"))
    assert result.returncode == 2 and "--ncp-base gmm needs a single-group model (--model mlp or conv)" in result.stderr
