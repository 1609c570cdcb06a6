"""ncpfast.pipeline: the steps the programs run, called from Python on one run
directory, each recording what it measured there."""
import json

import pytest
import torch

from ncpfast import pipeline
from ncpfast.evaluation import EvaluationSettings
from ncpfast.ncp.contract import SamplerConfig
from ncpfast.run_dir import RunDir
from ncpfast.training.config import resolve_config

TINY_FLAT = dict(latent_dim=4, hidden_units=16, epochs=1, batch_size=250, progress=False, eval_iw_samples=2,
                 eval_max_images=10, eval_generated=20, ncp_epochs=1, ncp_hidden=8, ncp_log_z_samples=300,
                 ncp_num_proposals=3, device="cpu")


@pytest.mark.slow
def test_the_steps_from_python_record_their_results_in_the_run(tmp_path):
    run_dir = str(tmp_path / "run")
    config = resolve_config("mnist-single", {**TINY_FLAT, "run_dir": run_dir})
    metrics, distributed = pipeline.train_stage1(config, run_dir)
    assert metrics["status"] == "complete" and distributed.is_main
    summary, evaluation = pipeline.stage2_and_evaluation(config, run_dir)
    recorded = json.loads(open(RunDir(run_dir).metrics_path).read())
    assert recorded["ncp"]["log_z"] == summary["log_z"]
    assert recorded["evaluation"]["nll_difference_ncp_minus_base"] == evaluation.metrics[
        "nll_difference_ncp_minus_base"]
    assert set(evaluation.images) == {"base", "ncp"} and evaluation.images["ncp"].shape == (20, 1, 32, 32)
    # a later evaluation with other settings replaces the recorded one
    again = pipeline.evaluate(run_dir, torch.device("cpu"),
                              EvaluationSettings(iw_samples=3, max_images=6, num_generated=8),
                              SamplerConfig(method="langevin", steps=2), progress=False)
    recorded = json.loads(open(RunDir(run_dir).metrics_path).read())["evaluation"]
    assert recorded["iw_samples"] == 3 and recorded["ncp"]["sampling"] == "langevin"
    assert again.metrics["ncp"]["langevin_step_size"] == SamplerConfig().step_size
    images = pipeline.sample(run_dir, torch.device("cpu"), 5, SamplerConfig(num_proposals=4), seed=3)
    assert images.shape == (5, 1, 28, 28)  # the MLP VAE decodes MNIST's 28 x 28
    assert torch.equal(images, pipeline.sample(run_dir, torch.device("cpu"), 5, SamplerConfig(num_proposals=4),
                                               seed=3))
    with pytest.raises(ValueError, match="number of samples must be >= 1"):
        pipeline.sample(run_dir, torch.device("cpu"), 0)
