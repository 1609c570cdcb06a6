"""ncpfast.pipeline: the steps the programs run, called from Python on one run
directory, each recording what it measured there."""
import json

import pytest
import torch

from ncpfast import pipeline
from ncpfast.config import EvaluationConfig, resolve_config
from ncpfast.ncp.contract import SamplerConfig
from ncpfast.run_dir import RunDir

TINY_FLAT = {"model.latent_dim": 4, "model.mlp.hidden_units": 16, "stage1.epochs": 1, "stage1.batch_size": 250,
             "logging.progress": False, "evaluation.iw_samples": 2, "evaluation.max_images": 10,
             "evaluation.num_generated": 20, "stage2.epochs": 1, "stage2.hidden": 8, "stage2.log_z_samples": 300,
             "sampler.num_proposals": 3, "run.device": "cpu"}


@pytest.mark.slow
def test_the_steps_from_python_record_their_results_in_the_run(tmp_path):
    run_dir = str(tmp_path / "run")
    config = resolve_config("mnist-single", {**TINY_FLAT, "run.run_dir": run_dir})
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
                              EvaluationConfig(iw_samples=3, max_images=6, num_generated=8),
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
