"""NVAE's BatchNorm re-adjustment for sampling at T < 1 (ncpfast.models.temperature)."""
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from ncpfast.models import HierarchicalVAE
from ncpfast.models.temperature import readjust_batchnorm
from test_ncp_grouped import SMALL, TINY


def statistics(model):
    return {name: (m.running_mean.clone(), m.running_var.clone())
            for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}


@pytest.mark.slow
def test_readjustment_changes_the_copy_only_and_is_reproducible():
    torch.manual_seed(0)
    vae = HierarchicalVAE(TINY)
    vae.train()
    with torch.no_grad():  # give the statistics something other than their initial values
        for _ in range(3):
            vae(torch.rand(8, 1, 32, 32).bernoulli())
    vae.eval()
    before = statistics(vae)
    a = readjust_batchnorm(vae, 0.6, batches=3, batch_size=8, generator=torch.Generator().manual_seed(5))
    b = readjust_batchnorm(vae, 0.6, batches=3, batch_size=8, generator=torch.Generator().manual_seed(5))
    c = readjust_batchnorm(vae, 0.6, batches=3, batch_size=8, generator=torch.Generator().manual_seed(6))
    assert not a.training and vae.training is False
    after, again, other = statistics(a), statistics(b), statistics(c)
    for name, (mean, var) in before.items():  # the original is untouched
        assert torch.equal(statistics(vae)[name][0], mean) and torch.equal(statistics(vae)[name][1], var)
    changed = [name for name in before if not torch.equal(after[name][0], before[name][0])]
    assert changed and all(name.startswith(("decoder_", "postprocess")) for name in changed)
    for name in before:  # reproducible from the generator; another seed differs where anything changed
        assert torch.equal(after[name][0], again[name][0]) and torch.equal(after[name][1], again[name][1])
    assert any(not torch.equal(after[name][0], other[name][0]) for name in changed)
    # The layers that prior sampling never reaches (the encoder's) keep the checkpoint's statistics.
    encoder = [name for name in before if name.startswith(("encoder_", "preprocess"))]
    assert encoder and all(torch.equal(after[name][0], before[name][0]) and
                           torch.equal(after[name][1], before[name][1]) for name in encoder)
    assert any(name.startswith("postprocess") for name in changed)
    # The cumulative average: one batch gives exactly that batch's statistics, so a second
    # readjustment with more batches differs from the one-batch result.
    one = statistics(readjust_batchnorm(vae, 0.6, batches=1, batch_size=8, generator=torch.Generator().manual_seed(5)))
    assert any(not torch.equal(one[name][0], after[name][0]) for name in changed)
    images = a.sample(4, 0.6, generator=torch.Generator().manual_seed(0))
    assert images.shape == (4, 1, 32, 32) and torch.isfinite(images).all()


class ToyDecoder(nn.Module):
    """z ~ N(0, T^2) [B, 2, 3, 3] through one BatchNorm: the running statistics are known."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(2)

    def sample_decoder_output(self, n, temperature=1.0, intercept=None, generator=None, decode=True):
        return self.bn(temperature * torch.randn(n, 2, 3, 3, generator=generator))


def test_the_statistics_are_the_cumulative_average_over_batches_at_the_temperature():
    adjusted = readjust_batchnorm(ToyDecoder(), 0.5, batches=3, batch_size=4,
                                  generator=torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(2)
    batches = [0.5 * torch.randn(4, 2, 3, 3, generator=g) for _ in range(3)]
    means = torch.stack([b.mean((0, 2, 3)) for b in batches]).mean(0)
    variances = torch.stack([b.var((0, 2, 3), unbiased=True) for b in batches]).mean(0)
    torch.testing.assert_close(adjusted.bn.running_mean, means)
    torch.testing.assert_close(adjusted.bn.running_var, variances)
    assert adjusted.bn.momentum == 0.1 and not adjusted.training


def run(module, *args):
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_readjust_bn_on_the_tiny_hierarchical_model_from_the_command_line(tmp_path):
    run_dir = tmp_path / "run"
    result = run("ncpfast.train", *SMALL, "--run-dir", str(run_dir))
    assert result.returncode == 0, result.stdout + result.stderr
    result = run("ncpfast.sample", str(run_dir), "-n", "4", "--num-proposals", "3", "--temperature", "0.7",
                 "--readjust-bn", "--readjust-bn-batches", "2", "--out", str(tmp_path / "s.png"))
    assert result.returncode == 0, result.stderr
    assert "temperature 0.7, BatchNorm re-adjusted on 2 batches" in result.stdout
    result = run("ncpfast.evaluate", str(run_dir), "--iw-samples", "2", "--max-images", "5", "--num-generated", "10",
                 "--num-proposals", "2", "--log-z-samples", "50", "--temperature", "0.7", "--readjust-bn",
                 "--readjust-bn-batches", "2")
    assert result.returncode == 0, result.stderr
    assert "temperature 0.7 (BatchNorm re-adjusted on 2 batches)" in result.stdout
    evaluation = json.loads((run_dir / "metrics.json").read_text())["evaluation"]
    assert evaluation["readjust_bn"] is True and evaluation["readjust_bn_batches"] == 2
    assert evaluation["temperature"] == 0.7
    result = run("ncpfast.sample", str(run_dir), "--readjust-bn", "--readjust-bn-batches", "0")
    assert result.returncode == 2 and "--readjust-bn-batches must be >= 1" in result.stderr
