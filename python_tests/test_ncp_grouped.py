"""GroupedNCP: per-group classifiers on a (small, untrained) VAE, and the CLIs of stage 2."""
import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch

from ncpfast.models import HierarchicalVAE, MLPVAE, NVAEConfig
from ncpfast.ncp import GroupedNCP
from ncpfast.ncp.fitting import CHANCE_ACCURACY, split_images

TINY = NVAEConfig(channels=8, num_preprocess_blocks=2, num_preprocess_cells=1, num_postprocess_blocks=2,
                  num_postprocess_cells=1, num_latent_scales=2, num_groups_per_scale=2, latent_channels=4,
                  num_cells_per_group_enc=1, num_cells_per_group_dec=1)


def constant_classifiers(ncp, value):
    """Every classifier returns `value`: r_k = e^value everywhere."""
    with torch.no_grad():
        for classifier in ncp.classifiers:
            last = classifier.head if classifier.spatial else classifier.mlp[-1]
            last.weight.zero_()
            last.bias.fill_(value)


@pytest.mark.parametrize("make_vae", [lambda: HierarchicalVAE(TINY), lambda: MLPVAE(latent_dim=6, hidden=16)])
def test_constant_ratios_leave_the_prior_unchanged(make_vae):
    torch.manual_seed(0)
    vae = make_vae().eval()
    ncp = GroupedNCP(vae, hidden=8, cells=1).eval()
    constant_classifiers(ncp, 0.7)
    log_z, stderr = ncp.log_partition(200, batch_size=64, generator=torch.Generator().manual_seed(0))
    assert log_z == pytest.approx(0.7 * ncp.num_groups, abs=1e-5) and stderr == pytest.approx(0, abs=1e-6)
    x = torch.rand(4, 1, 32, 32).bernoulli()
    torch.manual_seed(1)
    base = vae.importance_weighted_log_likelihood(x, 8)
    torch.manual_seed(1)
    reweighted = ncp.importance_weighted_log_likelihood(x, 8)
    torch.testing.assert_close(base, reweighted, rtol=0, atol=1e-4)


class Tilt(torch.nn.Module):
    """log r_k(z_k) = c * sum(z_k) + b: for z_k ~ N(0, I) in d dimensions, log Z_k = c^2 d / 2 + b."""
    spatial = False

    def __init__(self, c, b=0.0):
        super().__init__()
        self.c, self.b = c, b

    def forward(self, z, context):
        return self.c * z.flatten(1).sum(1) + self.b


def test_log_z_of_per_group_reweightings_is_the_sum_of_theirs():
    torch.manual_seed(0)
    vae = HierarchicalVAE(TINY).eval()
    ncp = GroupedNCP(vae, hidden=8, cells=1).eval()
    assert ncp.num_groups == 3
    # a constant per group, log r_k = c_k: log Z = sum_k c_k exactly, every weight equal
    with torch.no_grad():
        for classifier, value in zip(ncp.classifiers, (0.3, -0.4, 0.9)):
            classifier.head.weight.zero_()
            classifier.head.bias.fill_(value)
    log_z, stderr = ncp.log_partition(16, batch_size=16, generator=torch.Generator().manual_seed(0))
    assert log_z == pytest.approx(0.8, abs=1e-5) and stderr == pytest.approx(0, abs=1e-6)
    # the top group (prior N(0, I), no context) tilted linearly, the others constant: independent
    # factors, so log Z = c^2 d / 2 - 0.4 + 0.9, within the estimate's own error
    d = math.prod(ncp.classifiers[0].latent_shape)
    ncp.classifiers = torch.nn.ModuleList([Tilt(0.1), Tilt(0.0, -0.4), Tilt(0.0, 0.9)])
    estimate = ncp.log_partition_estimate(1000, batch_size=1000, generator=torch.Generator().manual_seed(1),
                                          refresh=True)
    exact = 0.01 * d / 2 + 0.5
    assert 0 < estimate.stderr < 0.05
    assert abs(estimate.log_z - exact) < 4 * estimate.stderr, (estimate, exact)


def test_held_out_images_are_whole_and_the_last_or_random_ones():
    fit, val = split_images(100, 0.1, minimum=16)
    assert torch.equal(fit, torch.arange(84)) and torch.equal(val, torch.arange(84, 100))
    fit, val = split_images(1000, 0.1, minimum=16)
    assert torch.equal(val, torch.arange(900, 1000)) and len(fit) == 900
    fit, val = split_images(50, 0.2, shuffle=True, generator=torch.Generator().manual_seed(0))
    assert len(val) == 10 and torch.equal(torch.cat([fit, val]).sort().values, torch.arange(50))
    assert not torch.equal(val, torch.arange(40, 50))
    fit, val = split_images(10, 0.1, minimum=64)
    assert len(fit) == 0 and len(val) == 10


def test_sir_prefers_high_ratio_proposals():
    torch.manual_seed(0)
    vae = MLPVAE(latent_dim=4, hidden=16).eval()
    ncp = GroupedNCP(vae, hidden=8).eval()
    chosen = []

    class FirstCoordinate(torch.nn.Module):  # log r(z) = z_0: tilts the prior towards z_0 = 1
        spatial = False

        def forward(self, z, context):
            return z[:, 0]

    ncp.classifiers[0] = FirstCoordinate()
    original = ncp._sir_group

    def spy(*args, **kwargs):
        z = original(*args, **kwargs)
        chosen.append(z)
        return z

    ncp._sir_group = spy
    ncp.sample(2000, num_proposals=200, generator=torch.Generator().manual_seed(0))
    z = chosen[0]
    # p_NCP = N(0, I) e^{z_0} / Z = N((1, 0, 0, 0), I)
    assert abs(float(z[:, 0].mean()) - 1.0) < 0.1 and abs(float(z[:, 1].mean())) < 0.1
    assert abs(float(z[:, 0].std()) - 1.0) < 0.1


def test_fit_reports_groups_and_round_trips(tmp_path):
    torch.manual_seed(0)
    vae = HierarchicalVAE(TINY).eval()
    ncp = GroupedNCP(vae, hidden=8, cells=1)
    images = torch.rand(64, 1, 32, 32)
    read = lambda idx: images[idx].bernoulli()  # noqa: E731
    history = ncp.fit(read, 48, lambda idx: read(idx + 48), 16, epochs=2, batch_size=16, progress=False)
    assert len(history["val_accuracy"]) == 2 and len(history["val_accuracy"][0]) == 3
    # each group keeps its own best held-out epoch, and is at chance by that epoch's accuracy
    val_loss, val_accuracy = history["val_loss"], history["val_accuracy"]
    for k in range(3):
        best = min(range(2), key=lambda epoch: val_loss[epoch][k])
        assert history["best_epoch"][k] == best and history["best_val_loss"][k] == val_loss[best][k]
        assert history["best_val_accuracy"][k] == val_accuracy[best][k]
    assert history["groups_at_chance"] == [k for k in range(3)
                                           if val_accuracy[history["best_epoch"][k]][k] < CHANCE_ACCURACY]
    state = ncp.to_checkpoint()
    again = GroupedNCP.from_checkpoint(vae, state)
    z = torch.randn(2, 4, 4, 4)
    torch.testing.assert_close(again.group_log_ratio(0, z, None), ncp.eval().group_log_ratio(0, z, None))
    for method in ("sir", "langevin", "base"):
        images = ncp.sample(3, method=method, num_proposals=4, steps=2, generator=torch.Generator().manual_seed(0))
        assert images.shape == (3, 1, 32, 32)
    with pytest.raises(ValueError, match="num_proposals must be >= 1"):
        ncp.sample(3, num_proposals=0)
    with pytest.raises(ValueError, match="max_proposal_bytes must be >= 1"):
        ncp.sample(3, max_proposal_bytes=0)


SMALL = ["--preset", "tiny", "--channels", "4", "--latent-channels", "2", "--no-progress", "--batch-size", "250",
         "--epochs", "1",
         "--iw-samples", "3", "--max-images", "20", "--num-generated", "100", "--ncp-epochs", "1",
         "--ncp-hidden", "8", "--ncp-cells", "1", "--log-z-samples", "200", "--num-proposals", "5"]


def run(module, *args):
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_both_stages_sample_and_evaluate_from_the_command_line(tmp_path):
    run_dir = tmp_path / "run"
    result = run("ncpfast.train", *SMALL, "--run-dir", str(run_dir))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FD (small classifier features)" in result.stdout and "log Z" in result.stdout
    metrics = json.loads((run_dir / "metrics.json").read_text())
    evaluation = metrics["evaluation"]
    for prior in ("base", "ncp"):
        assert evaluation[prior]["nll_nats"] > 0 and evaluation[prior]["fd"] >= 0
    assert evaluation["iw_samples"] == 3 and "log_z_stderr" in evaluation
    assert metrics["ncp"]["groups"] == 3 and len(metrics["ncp"]["val_accuracy"]) == 3
    assert (run_dir / "checkpoints" / "ncp.pt").is_file() and (run_dir / "samples.png").is_file()

    npz = tmp_path / "s.npz"
    result = run("ncpfast.sample", str(run_dir), "--method", "langevin", "-n", "6", "--steps", "3",
                 "--out", str(tmp_path / "s.png"), "--npz", str(npz))
    assert result.returncode == 0, result.stderr
    import numpy as np
    assert np.load(npz)["images"].shape == (6, 32, 32, 1) and (tmp_path / "s.png").is_file()

    result = run("ncpfast.evaluate", str(run_dir), "--iw-samples", "2", "--max-images", "10", "--num-generated", "50",
                 "--num-proposals", "3", "--log-z-samples", "100", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["ncp"]["num_proposals"] == 3

    # FID with a weights file laid out like pytorch-fid's (random values: the real one cannot be downloaded)
    from ncpfast.fid_inception import FIDInceptionV3
    weights = tmp_path / "pt_inception.pth"
    torch.save(FIDInceptionV3().state_dict(), weights)
    result = run("ncpfast.evaluate", str(run_dir), "--iw-samples", "2", "--max-images", "5", "--num-generated", "8",
                 "--num-real", "12", "--num-proposals", "2", "--log-z-samples", "50", "--fid-weights", str(weights))
    assert result.returncode == 0, result.stderr
    assert "FID (pytorch-fid Inception V3" in result.stdout and "8 generated vs 12 test images" in result.stdout
    assert "warning: log Z rests on an effective sample size of" in result.stdout  # at most 50 draws
    evaluation = json.loads((run_dir / "metrics.json").read_text())["evaluation"]
    assert evaluation["base"]["fid"] >= 0 and evaluation["ncp"]["fid"] >= 0 and evaluation["real_images"] == 12
    result = run("ncpfast.evaluate", str(run_dir), "--fid-weights", str(tmp_path / "missing.pth"))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "FID weights file not found" in result.stderr and "pt_inception-2015-12-05" in result.stderr

    result = run("ncpfast.sample", str(run_dir), "--num-proposals", "-1")
    assert result.returncode == 2 and result.stderr.strip() == "error: num_proposals must be >= 1, got -1"


@pytest.mark.slow
def test_commands_on_a_run_without_stage_two(tmp_path):
    run_dir = tmp_path / "run"
    result = run("ncpfast.train", *SMALL, "--stage", "1", "--run-dir", str(run_dir))
    assert result.returncode == 0, result.stderr
    for module in ("ncpfast.sample", "ncpfast.evaluate"):
        result = run(module, str(run_dir))
        assert result.returncode == 2 and "has no NCP stage" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    result = run("ncpfast.sample", str(run_dir), "--method", "base", "-n", "4", "--out", str(tmp_path / "b.png"))
    assert result.returncode == 0 and (tmp_path / "b.png").is_file()
    result = run("ncpfast.train", "--stage", "2")
    assert result.returncode == 2 and "--stage 2 needs --from" in result.stderr
    result = run("ncpfast.train", "--fid-weights", str(tmp_path / "missing.pth"))  # fails before any training
    assert result.returncode == 2 and "--fid-weights: no file at" in result.stderr
    result = run("ncpfast.evaluate", str(tmp_path / "nowhere"))
    assert result.returncode == 2 and "not a run directory" in result.stderr
    bare = tmp_path / "bare"
    shutil.copytree(run_dir, bare)
    os.remove(bare / "checkpoints" / "latest.pt")
    for args in (("ncpfast.train", "--stage", "2", "--from", str(bare)), ("ncpfast.evaluate", str(bare))):
        result = run(*args)
        assert result.returncode == 2 and "has no stage-1 checkpoint" in result.stderr, result.stderr


@pytest.mark.slow
def test_stage_two_on_an_unfinished_stage_one_says_so(tmp_path):
    run_dir = tmp_path / "run"
    result = run("ncpfast.train", *SMALL, "--stage", "1", "--max-steps", "2", "--run-dir", str(run_dir))
    assert result.returncode == 0, result.stderr
    result = run("ncpfast.train", "--stage", "2", "--from", str(run_dir), "--num-generated", "20")
    assert result.returncode == 0, result.stderr
    assert "warning: stage 1 is partial (step 2 of 16)" in result.stderr
    assert f"--resume {run_dir}" in result.stderr
