"""ncpfast.evaluation: the random streams of an evaluation, the frame generated
and real images are compared in, the reuse of stage 2's log Z."""
import json
import os
import subprocess
import sys

import pytest
import torch

from launch_helpers import torchrun
from ncpfast.config import EvaluationConfig
from ncpfast.evaluation import evaluate_run, random_stream
from ncpfast.models.nvae import HierarchicalVAE, NVAEConfig
from ncpfast.models.single import ConvVAE, MLPVAE
from ncpfast.ncp.contract import SamplerConfig

FLAT = ["--preset", "mnist-single", "--latent-dim", "4", "--hidden-units", "16", "--epochs", "1",
        "--batch-size", "250", "--no-progress", "--iw-samples", "2", "--max-images", "10",
        "--num-generated", "20", "--ncp-epochs", "1", "--ncp-hidden", "8", "--log-z-samples", "300",
        "--num-proposals", "3"]


def run(module, *args, launcher=(sys.executable,)):
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    return subprocess.run([*launcher, "-m", module, *args], capture_output=True, text=True, timeout=600,
                          env={**env, "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def flat_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("evaluation") / "run"
    result = run("ncpfast.train", *FLAT, "--run-dir", str(run_dir))
    assert result.returncode == 0, result.stdout + result.stderr
    return run_dir


def test_each_purpose_has_its_own_reproducible_stream():
    draws = {p: torch.rand(4, generator=random_stream(3, p, "cpu")) for p in
             ("sampling", "log_z", "test_binarisation", "readjust_bn")}
    assert len({tuple(d.tolist()) for d in draws.values()}) == 4
    assert torch.equal(draws["log_z"], torch.rand(4, generator=random_stream(3, "log_z", "cpu")))
    assert not torch.equal(draws["log_z"], torch.rand(4, generator=random_stream(4, "log_z", "cpu")))
    with pytest.raises(ValueError):
        random_stream(0, "other", "cpu")


@pytest.mark.slow
def test_test_set_and_samples_do_not_depend_on_log_z_draws(flat_run):
    """The same weights and seed give the same binarised test set, so the base
    NLL and base samples do not move when log Z's draws change."""
    kw = dict(iw_samples=2, max_images=12, num_generated=8)
    sampler = SamplerConfig(num_proposals=3)
    a, images_a = evaluate_run(str(flat_run), torch.device("cpu"), EvaluationConfig(log_z_samples=200, **kw),
                               sampler, progress=False)
    b, images_b = evaluate_run(str(flat_run), torch.device("cpu"), EvaluationConfig(log_z_samples=700, **kw),
                               sampler, progress=False)
    base_a, base_b = images_a["base"], images_b["base"]
    assert a["log_z_samples"] == 200 and b["log_z_samples"] == 700
    assert a["base"]["nll_nats"] == b["base"]["nll_nats"]
    assert torch.equal(base_a, base_b)


@pytest.mark.slow
def test_generated_and_real_images_share_the_data_frame(flat_run):
    """MLPVAE decodes 28 x 28 and the data set stores MNIST padded to 32 x 32:
    the FD compares both as 32 x 32 with a zero border."""
    _, images = evaluate_run(str(flat_run), torch.device("cpu"),
                             EvaluationConfig(iw_samples=2, max_images=4, num_generated=6, log_z_samples=100),
                             SamplerConfig(num_proposals=3), progress=False)
    for prior in ("base", "ncp"):
        drawn = images[prior]
        assert drawn.shape[1:] == (1, 32, 32)
        assert drawn[:, :, :2].abs().max() == 0 and drawn[:, :, :, -2:].abs().max() == 0


@pytest.mark.parametrize("make, side", [
    (lambda: MLPVAE(latent_dim=3, hidden=8), 28),
    (lambda: ConvVAE(image_size=32, latent_dim=3, width=4, in_channels=1, output="bernoulli"), 28),
    (lambda: HierarchicalVAE(NVAEConfig(channels=4, latent_channels=2, num_latent_scales=1, num_groups_per_scale=1,
                                        num_preprocess_blocks=1, num_postprocess_blocks=1)), 28),
])
def test_in_data_frame_keeps_the_scored_square_and_zeroes_the_border(make, side):
    vae = make()
    generated = torch.rand(2, 1, 32, 32) + 1.0
    framed = vae.in_data_frame(generated, 32)
    assert framed.shape == (2, 1, 32, 32)
    torch.testing.assert_close(framed[:, :, 2:30, 2:30], generated[:, :, 2:30, 2:30])
    border = framed.clone()
    border[:, :, 2:30, 2:30] = 0
    assert border.abs().max() == 0
    decoded = torch.rand(2, 1, side, side)
    torch.testing.assert_close(vae.in_data_frame(decoded, 32)[:, :, 2:30, 2:30], decoded)
    with pytest.raises(ValueError, match="do not hold the scored 28 x 28 square"):
        vae.in_data_frame(torch.rand(2, 1, 27, 27), 32)


@pytest.mark.slow
def test_standalone_evaluation_reuses_stage_2s_log_z(flat_run):
    stored = json.loads((flat_run / "metrics.json").read_text())["ncp"]
    result = run("ncpfast.evaluate", str(flat_run), "--iw-samples", "2", "--max-images", "6", "--num-generated", "8",
                 "--num-proposals", "3", "--json")
    assert result.returncode == 0, result.stderr
    evaluation = json.loads(result.stdout)
    assert evaluation["log_z"] == pytest.approx(stored["log_z"], abs=0) and evaluation["log_z_samples"] == 300
    assert evaluation["log_z_estimate"]["source"] == "stage 2"
    again = run("ncpfast.evaluate", str(flat_run), "--iw-samples", "2", "--max-images", "6", "--num-generated", "8",
                "--num-proposals", "3", "--log-z-samples", "150", "--json")
    assert again.returncode == 0, again.stderr
    evaluation = json.loads(again.stdout)
    assert evaluation["log_z_samples"] == 150 and evaluation["log_z_estimate"]["source"] == "re-estimated"


@pytest.mark.slow
def test_evaluation_under_torchrun_gives_the_single_process_numbers(flat_run):
    """Under torchrun the ranks share the NLL's batches (3 ranks, 5 batches of 10 images
    at K = 20: uneven shares) and rank 0 does the rest; every number, log Z re-estimated
    and broadcast included, is the single process's, and only rank 0 prints and writes."""
    args = [str(flat_run), "--iw-samples", "20", "--max-images", "45", "--num-generated", "12",
            "--num-proposals", "3", "--log-z-samples", "200", "--no-progress", "--json"]
    one = run("ncpfast.evaluate", *args)
    assert one.returncode == 0, one.stderr
    three = run("ncpfast.evaluate", *args, launcher=torchrun(3))
    assert three.returncode == 0, three.stdout + three.stderr
    single, shared = json.loads(one.stdout), json.loads(three.stdout)  # one JSON document: rank 0's
    stored = json.loads((flat_run / "metrics.json").read_text())["evaluation"]
    for metrics in (single, shared, stored):
        for prior in ("base", "ncp"):
            metrics[prior].pop("sampling_seconds")
    assert single["test_images"] == 45 and single["log_z_estimate"]["source"] == "re-estimated"
    assert shared == single
    assert stored == single


@pytest.mark.slow
def test_langevin_step_size_is_tuned_on_held_out_training_images(flat_run):
    """--step-size auto: each candidate's samples scored by FD against training images
    stage 2 held out; the evaluation samples at the best one and reports it."""
    from ncpfast.evaluation import STEP_SIZE_CANDIDATES

    settings = EvaluationConfig(iw_samples=2, max_images=4, num_generated=6, tune_step_size=True)
    metrics, _ = evaluate_run(str(flat_run), torch.device("cpu"), settings,
                              SamplerConfig(method="langevin", steps=3), progress=False)
    tuning = metrics["ncp"]["step_size_tuning"]
    assert tuning["candidates"] == list(STEP_SIZE_CANDIDATES) and len(tuning["fd"]) == len(STEP_SIZE_CANDIDATES)
    scored = [(fd, size) for fd, size in zip(tuning["fd"], tuning["candidates"]) if fd is not None]
    assert metrics["ncp"]["langevin_step_size"] == tuning["step_size"] == min(scored)[1]
    assert tuning["at_grid_edge"] == (tuning["step_size"] == STEP_SIZE_CANDIDATES[-1])
    assert tuning["held_out_images"] == 400  # the last tenth of the 4,000 embedded training digits
    # a fixed step size is reported as such, with no tuning
    fixed, _ = evaluate_run(str(flat_run), torch.device("cpu"), EvaluationConfig(iw_samples=2, max_images=4,
                                                                                  num_generated=6),
                            SamplerConfig(method="langevin", steps=3, step_size=0.05), progress=False)
    assert fixed["ncp"]["langevin_step_size"] == 0.05 and fixed["ncp"]["step_size_tuning"] is None
