"""Stage 1 under torchrun (gloo, CPU) against a single process.

Data parallel training must be large-batch training: 2 processes x 16 images per
step must end where 1 process x 32 images ends, up to float summation order. The
training noise (binarisation, the posterior's eps) is drawn per rank, so the two
runs would differ by their draws alone: they run under a launcher that makes
that noise a function of the data (a fixed threshold, eps = sin(7 mu)), which
leaves the data split, the gradient averaging, the schedules and the optimiser
as they are.

And a 2-process run killed after a checkpoint and resumed must end bit-identical
to the same run uninterrupted.
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from launch_helpers import torchrun

ENV = {**{k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")},
       "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
COMMON = ["--preset", "tiny", "--stage", "1", "--device", "cpu", "--no-progress", "--iw-samples", "2",
          "--max-images", "10", "--log-every", "1", "--num-sample-images", "4"]
MLP = ["--model", "mlp", "--latent-dim", "4", "--hidden-units", "16", "--epochs", "2"]  # 4000 // 32 = 125 steps/epoch
NVAE = ["--channels", "4", "--latent-channels", "2", "--max-steps", "6"]

LAUNCHER = '''"""ncpfast.train with the training noise a function of the data (see the test)."""
import sys

import torch

import ncpfast.data
from ncpfast.nn import distributions


def binarize(x, generator=None):
    return (x > 0.5).to(x.dtype)


def sample(self, generator=None):
    return self.mu + self.sigma * torch.sin(7.0 * self.mu)


ncpfast.data.binarize = binarize
distributions.Normal.sample = sample

from ncpfast.train import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
'''


def descendants(pid):
    """Every process below pid (torchrun starts each rank in a session of its own,
    so killing torchrun's process group would leave the ranks running)."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except FileNotFoundError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{parent}/task/{task}/children") as f:
                    children = [int(c) for c in f.read().split()]
            except FileNotFoundError:
                continue
            found += children
            todo += children
    return found


def run(cmd, **kw):
    result = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600, **kw)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def checkpoint(run_dir):
    return torch.load(run_dir / "checkpoints" / "latest.pt", map_location="cpu", weights_only=False)


def logged_curve(run_dir, tag="train/nelbo"):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return torch.tensor([e.value for e in events.Scalars(tag)], dtype=torch.float64)


def one_and_two_processes(tmp_path, model_args):
    """The same training as 1 process x 32 images and 2 processes x 16: their run directories."""
    launcher = tmp_path / "deterministic_train.py"
    launcher.write_text(LAUNCHER)
    one, two = tmp_path / "one", tmp_path / "two"
    run([sys.executable, str(launcher), *COMMON, *model_args, "--batch-size", "32", "--run-dir", str(one)])
    run([*torchrun(2), str(launcher), *COMMON, *model_args, "--batch-size", "16", "--run-dir", str(two)])
    return one, two


def assert_same_weights(one, two, weights_tolerance, optimizer_tolerance):
    """Every weight and optimiser-state tensor equal up to the tolerance times the
    tensor's largest magnitude (float reordering drifts each tensor on its own scale)."""
    a, b = checkpoint(one), checkpoint(two)
    assert a["step"] == b["step"] and b["world_size"] == 2
    assert a["model"].keys() == b["model"].keys()

    def close(x, y, tolerance, what):
        x, y = torch.as_tensor(x).double(), torch.as_tensor(y).double()
        scale = float(y.abs().max()) if y.numel() else 0.0
        # A scale of at least 1e-2: some tensors are 0 in exact arithmetic (the bias of a
        # batch norm that another batch norm follows gets no gradient) and hold only
        # float noise (~1e-8), which differs between any two summation orders.
        torch.testing.assert_close(x, y, rtol=0, atol=tolerance * max(scale, 1e-2), msg=what)

    for key in a["model"]:
        close(b["model"][key], a["model"][key], weights_tolerance, key)
    for index, state in a["optimizer"]["state"].items():
        for name, value in state.items():
            close(b["optimizer"]["state"][index][name], value, optimizer_tolerance, f"optimizer {index} {name}")


@pytest.fixture(scope="module")
def mlp_runs(tmp_path_factory):
    return one_and_two_processes(tmp_path_factory.mktemp("mlp"), MLP)


@pytest.mark.slow
def test_two_processes_of_16_train_like_one_of_32(mlp_runs):
    one, two = mlp_runs
    # Summing the gradient over 2 ranks instead of 32 images in one pass reorders
    # float additions; over 250 Adamax steps that drifts the weights by up to ~8e-6
    # and the optimiser's moments by up to ~1.1e-4 of each tensor's largest value
    # (seen on the fixed data split). A wrong split of the data between ranks
    # moves them by 1e-2 and more.
    assert_same_weights(one, two, weights_tolerance=3e-5, optimizer_tolerance=1e-3)
    # the held-out loss curve (rank 0, the whole synchronised model) and the final NLL
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (one, two))
    assert a["step"] == b["step"] == 250 and b["world_size"] == 2 and b["replicas_identical"] is True
    torch.testing.assert_close(torch.tensor([h["test_nelbo"] for h in b["history"]]),
                               torch.tensor([h["test_nelbo"] for h in a["history"]]), rtol=1e-5, atol=0)
    assert b["test"]["nll_nats"] == pytest.approx(a["test"]["nll_nats"], rel=1e-5)


@pytest.mark.slow
def test_two_processes_log_the_loss_curve_of_one(mlp_runs):
    one, two = mlp_runs
    a, b = logged_curve(one), logged_curve(two)
    assert len(a) == len(b) == 250
    torch.testing.assert_close(b, a, rtol=1e-5, atol=0)


def test_hierarchical_model_two_processes_of_16_train_like_one_of_32(tmp_path):
    # Batch norm synchronised over the processes and KL balancing on the global
    # batch's mean KL: the per-process batch statistics that broke this are gone.
    one, two = one_and_two_processes(tmp_path, NVAE)
    assert_same_weights(one, two, weights_tolerance=3e-5, optimizer_tolerance=1e-3)


def test_hierarchical_model_without_sync_batch_norm_trains_differently(tmp_path):
    one, two = one_and_two_processes(tmp_path, [*NVAE, "--no-sync-batch-norm"])
    with pytest.raises(AssertionError):
        assert_same_weights(one, two, weights_tolerance=3e-5, optimizer_tolerance=1e-3)


@pytest.mark.slow
def test_two_process_kill_and_resume_matches_an_uninterrupted_run(tmp_path):
    steps = 10
    args = [*COMMON, *NVAE[:-2], "--batch-size", "16"]
    straight = tmp_path / "straight"
    run([*torchrun(2), "-m", "ncpfast.train", *args, "--max-steps", str(steps), "--run-dir", str(straight)])

    broken = tmp_path / "broken"
    latest = broken / "checkpoints" / "latest.pt"
    proc = subprocess.Popen([*torchrun(2), "-m", "ncpfast.train", *args, "--max-steps", "1000",
                             "--checkpoint-every", "1", "--run-dir", str(broken)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not latest.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    ranks = descendants(proc.pid)
    assert proc.poll() is None and len(ranks) >= 2, ranks
    for pid in ranks:  # the ranks first, then torchrun: no chance to clean up
        os.kill(pid, signal.SIGKILL)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    for pid in ranks:  # gone (or a zombie of a dead parent, reaped by init)
        deadline = time.time() + 30
        while os.path.exists(f"/proc/{pid}") and time.time() < deadline:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(")")[-1].split()[0] == "Z":
                    break
            time.sleep(0.05)
    killed_at = checkpoint(broken)["step"]
    assert 1 <= killed_at < steps, killed_at

    run([*torchrun(2), "-m", "ncpfast.train", "--resume", str(broken), "--max-steps", str(steps)])
    a, b = checkpoint(straight), checkpoint(broken)
    assert a["step"] == b["step"] == steps and a["world_size"] == b["world_size"] == 2
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for index, state in a["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["optimizer"]["state"][index][name]))
    for rank in range(2):  # every rank's random stream continues where the uninterrupted run's is
        assert torch.equal(a["rng"][rank]["torch"], b["rng"][rank]["torch"]), rank
