"""Stage-1 training: a complete small run, exact resume after a kill, DDP with
gloo, the command line's errors, the schedules."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from launch_helpers import free_port
from ncpfast.training.schedules import kl_coefficient, learning_rate, regularizer_weight

# A very small hierarchical model so that a step takes tens of milliseconds.
SMALL = ["--preset", "tiny", "--channels", "4", "--latent-channels", "2", "--batch-size", "16", "--no-progress",
         "--iw-samples", "3", "--max-images", "20", "--log-every", "5"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def train(*args, check=True, **kw):
    result = subprocess.run([sys.executable, "-m", "ncpfast.train", *args], capture_output=True, text=True,
                            env=ENV, timeout=600, **kw)
    if check and result.returncode != 0:
        raise AssertionError(f"train failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


@pytest.mark.slow
def test_complete_run_writes_the_run_directory(tmp_path):
    run = tmp_path / "run"
    # 4000 training digits / 250 per batch = 16 steps: one full epoch, then the test NLL.
    train(*SMALL, "--stage", "1", "--batch-size", "250", "--epochs", "1", "--run-dir", str(run))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "complete" and metrics["step"] == 16
    assert metrics["test"]["iw_samples"] == 3 and metrics["test"]["test_images"] == 20
    assert 0 < metrics["test"]["nll_nats"] < 800 and metrics["test"]["bits_per_dim"] > 0
    for name in ("config.json", "samples.png", "samples/epoch_0001.png", "checkpoints/latest.pt"):
        assert (run / name).is_file(), name
    assert os.listdir(run / "checkpoints") == ["latest.pt"]  # nothing chosen by a test score
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(run / "tensorboard"))
    assert json.loads((run / "config.json").read_text())["model"]["channels"] == 4


def _weights(path):
    state = torch.load(path, map_location="cpu", weights_only=True)  # checkpoints are plain data
    return state["step"], state["model"], state["optimizer"]["state"]


@pytest.mark.slow
def test_kill_then_resume_matches_an_uninterrupted_run(tmp_path):
    steps = "40"
    straight = tmp_path / "straight"
    train(*SMALL, "--max-steps", steps, "--run-dir", str(straight))

    broken = tmp_path / "broken"
    latest = broken / "checkpoints" / "latest.pt"
    proc = subprocess.Popen([sys.executable, "-m", "ncpfast.train", *SMALL, "--max-steps", "1000",
                             "--checkpoint-every", "1", "--run-dir", str(broken)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not latest.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # no chance to clean up
    proc.wait()
    killed_at = _weights(latest)[0]
    assert 1 <= killed_at < int(steps), killed_at
    # A kill inside save_atomic leaves a temporary behind, but only when it lands there by chance:
    # leave one on purpose, so that every run checks that a resume removes it.
    (latest.parent / ".latest.pt.k1lled00.tmp").write_bytes(b"PK\x03\x04 half a checkpoint")

    train("--resume", str(broken), "--max-steps", steps)
    step_a, model_a, optim_a = _weights(straight / "checkpoints" / "latest.pt")
    step_b, model_b, optim_b = _weights(latest)
    assert step_a == step_b == int(steps)
    for key in model_a:
        assert torch.equal(model_a[key], model_b[key]), key
    for key in optim_a:
        for name in optim_a[key]:
            assert torch.equal(torch.as_tensor(optim_a[key][name]), torch.as_tensor(optim_b[key][name]))
    assert not list((broken / "checkpoints").glob(".*.tmp")), "a temporary checkpoint was left behind"


@pytest.mark.slow
def test_two_process_gloo_training_keeps_replicas_identical(tmp_path):
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "ncpfast.train", *SMALL, "--device", "cpu",
           "--epochs", "2", "--max-steps", "4", "--run-dir", str(run)]
    result = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["replicas_identical"] is True and metrics["step"] == 4
    # 4000 digits / (16 x 2 processes) steps per epoch.
    assert metrics["total_steps"] == 2 * (4000 // 32)

    # Stage 2 data parallel on that run: the classifiers stay identical on both ranks.
    cmd = [*cmd[:cmd.index("--master_port") + 1], str(free_port()), "-m", "ncpfast.train", "--stage", "2",
           "--from", str(run), "--device", "cpu", "--no-progress", "--ncp-epochs", "1", "--ncp-batch-size", "32",
           "--ncp-hidden", "8", "--ncp-cells", "1", "--log-z-samples", "100", "--num-proposals", "3",
           "--num-generated", "20", "--iw-samples", "2", "--max-images", "10"]
    result = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("stage 2:") == 1  # rank 0 alone reports
    ncp = json.loads((run / "metrics.json").read_text())["ncp"]
    assert ncp["world_size"] == 2 and ncp["replicas_identical"] is True
    assert (run / "checkpoints" / "ncp.pt").is_file() and (run / "samples.png").is_file()
    # The ranks shared the evaluation's NLL: its numbers are a single process's.
    shared = json.loads((run / "metrics.json").read_text())["evaluation"]
    alone = subprocess.run([sys.executable, "-m", "ncpfast.evaluate", str(run), "--device", "cpu", "--no-progress",
                            "--num-proposals", "3", "--num-generated", "20", "--iw-samples", "2", "--max-images", "10",
                            "--json"], capture_output=True, text=True, env=ENV, timeout=600)
    assert alone.returncode == 0, alone.stderr
    alone = json.loads(alone.stdout)
    for prior in ("base", "ncp"):
        assert shared[prior]["nll_nats"] == alone[prior]["nll_nats"] and shared[prior]["fd"] == alone[prior]["fd"]


@pytest.mark.slow
def test_cli_help_and_errors(tmp_path):
    help_text = train("--help").stdout
    for word in ("--preset", "--resume", "--kl-anneal-portion", "--ema-decay"):
        assert word in help_text
    result = train("--preset", "nope", check=False)
    assert result.returncode == 2 and "unknown preset 'nope'" in result.stderr
    result = train("--resume", str(tmp_path / "missing"), check=False)
    assert result.returncode == 2 and "no config.json" in result.stderr
    result = train("--preset", "mnist", check=False)
    assert result.returncode == 2 and "needs --data-dir" in result.stderr
    result = train(*SMALL, "--lr", "-1", check=False)
    assert result.returncode == 2 and "lr must be > 0" in result.stderr
    presets = json.loads(train("--list-presets").stdout)
    expected = {"default", "tiny", "mnist", "cifar10", "celeba64", "celebahq256", "mnist-single", "celeba64-rae"}
    assert expected <= set(presets)


def test_boolean_options_and_help_grouped_by_stage():
    from ncpfast.cli.train import build_parser
    from ncpfast.config import given_values, resolve_config
    from ncpfast.config.sections import SECTION_TITLES

    parser = build_parser()
    config = resolve_config("default", given_values(parser.parse_args(["--no-progress", "--no-adaptive-groups",
                                                                        "--kl-balance"])))
    assert (config.logging.progress is False and config.model.nvae.adaptive_groups is False
            and config.stage1.kl_balance is True)
    assert resolve_config("default", given_values(parser.parse_args([]))).logging.progress is True  # the preset's
    help_text = parser.format_help()
    starts = [help_text.index(f"\n{title}:\n") for title in SECTION_TITLES.values()]
    assert starts == sorted(starts)
    assert starts[list(SECTION_TITLES).index("logging")] < help_text.index("--progress, --no-progress")
    assert "--min-groups-per-scale N" in help_text and "--lr LR" in help_text and "--data-dir DIR" in help_text


def test_schedules():
    assert learning_rate(0, 100, 10, 1.0, 0.0) == pytest.approx(0.1)
    assert learning_rate(9, 100, 10, 1.0, 0.0) == pytest.approx(1.0)
    assert learning_rate(100, 100, 10, 1.0, 0.01) == pytest.approx(0.01)
    assert kl_coefficient(0, 100, 0.3, 0.0001, 1e-4) == pytest.approx(1e-4)
    assert kl_coefficient(15, 100, 0.3, 0.0, 1e-4) == pytest.approx(0.5)
    assert kl_coefficient(50, 100, 0.3, 0.0, 1e-4) == 1.0
    assert regularizer_weight(0.0, 10, 1e-2) == pytest.approx(10)
    assert regularizer_weight(1.0, 10, 1e-2) == pytest.approx(1e-2)
    assert regularizer_weight(0.5, 10, 1e-2) == pytest.approx(10 ** 0.5 * 1e-2 ** 0.5)
