"""python -m ncpfast.import_nvae: NVAE checkpoints in, ncpfast run directories out,
and one-line errors for what is not an NVAE checkpoint ncpfast can hold."""
import argparse
import json
import os
import subprocess
import sys

import pytest
import torch

from ncpfast.import_nvae import main

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def nvae_checkpoint(name="nvae_mnist_nf1.pt"):
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(os.path.join(FIXTURES, name), weights_only=True)["checkpoint"]


def import_error(capsys, path, tmp_path):
    assert main([str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert not (tmp_path / "run" / "config.json").exists()
    return err


def test_import_writes_a_run_directory(tmp_path, capsys):
    path = tmp_path / "checkpoint.pt"
    torch.save(nvae_checkpoint(), path)
    assert main([str(path), "--out", str(tmp_path / "run")]) == 0
    run = tmp_path / "run"
    config = json.loads((run / "config.json").read_text())
    assert (config["run"]["preset"] == "mnist" and config["data"]["dataset"] == "mnist"
            and config["model"]["nvae"]["num_nf"] == 1)
    assert config["model"]["channels"] == 4 and config["model"]["nvae"]["latent_channels"] == 3
    state = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
    assert "flows.0.forward_order.conv_in.weight" in state["model"]
    assert "NVAE checkpoint" in (run / "IMPORTED_FROM_NVAE.txt").read_text()
    assert "--stage 2 --from" in capsys.readouterr().out
    # An existing run is never overwritten.
    assert main([str(path), "--out", str(run)]) == 2 and "already holds a run" in capsys.readouterr().err


def test_old_checkpoints_get_nvae_defaults(tmp_path, capsys):
    checkpoint = nvae_checkpoint()
    args = vars(checkpoint["args"]).copy()
    for name in ("ada_groups", "min_groups_per_scale", "num_mixture_dec"):
        del args[name]
    checkpoint["args"] = argparse.Namespace(**args)
    # Without ada_groups (NVAE's default: off) both scales have 2 groups: the fixture's
    # state_dict (2 + 1 groups) no longer fits, and the error names the keys.
    path = tmp_path / "old.pt"
    torch.save(checkpoint, path)
    err = import_error(capsys, path, tmp_path)
    assert "does not match the architecture" in err and "missing keys" in err


def test_args_missing_from_old_checkpoints_take_nvae_defaults(tmp_path, capsys):
    checkpoint = nvae_checkpoint()
    args = vars(checkpoint["args"]).copy()
    del args["min_groups_per_scale"], args["num_mixture_dec"]  # NVAE's defaults: 1 and 10
    checkpoint["args"] = argparse.Namespace(**args)
    torch.save(checkpoint, tmp_path / "old.pt")
    assert main([str(tmp_path / "old.pt"), "--out", str(tmp_path / "run")]) == 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model"]["nvae"]["min_groups_per_scale"] == 1 and config["model"]["num_mix"] == 10


def test_not_a_checkpoint(tmp_path, capsys):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    assert "is not a readable NVAE checkpoint" in import_error(capsys, path, tmp_path)
    torch.save({"model": {}}, tmp_path / "ncpfast.pt")
    err = import_error(capsys, tmp_path / "ncpfast.pt", tmp_path)
    assert "expected a dict with 'args'" in err and "found ['model']" in err
    assert "does not exist" in import_error(capsys, tmp_path / "missing.pt", tmp_path)


def test_truncated_checkpoint(tmp_path, capsys):
    path = tmp_path / "checkpoint.pt"
    torch.save(nvae_checkpoint(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert "is not a readable NVAE checkpoint" in import_error(capsys, path, tmp_path)


def test_code_in_the_checkpoint_is_refused(tmp_path, capsys):
    path = tmp_path / "checkpoint.pt"
    checkpoint = nvae_checkpoint()
    checkpoint["extra"] = subprocess.CompletedProcess  # a class weights_only must refuse
    torch.save(checkpoint, path)
    assert "is not a readable NVAE checkpoint" in import_error(capsys, path, tmp_path)


@pytest.mark.parametrize("change, message", [
    (dict(arch_instance="res_elu"), "arch_instance 'res_elu' is not supported; ncpfast has NVAE's 'res_mbconv'"),
    (dict(num_nf=3), "num_nf must be 0 to 2"),
    (dict(dataset="lsun_church_64"), "dataset 'lsun_church_64' is not supported"),
    (dict(num_x_bits=5), "num_x_bits must be 1 to 8 (and 8 for a Bernoulli output), got 5"),
])
def test_unsupported_architectures(tmp_path, capsys, change, message):
    checkpoint = nvae_checkpoint()
    checkpoint["args"] = argparse.Namespace(**{**vars(checkpoint["args"]), **change})
    torch.save(checkpoint, tmp_path / "checkpoint.pt")
    assert message in import_error(capsys, tmp_path / "checkpoint.pt", tmp_path)


def test_unknown_state_dict_keys_are_named(tmp_path, capsys):
    checkpoint = nvae_checkpoint()
    checkpoint["state_dict"]["extra_head.weight"] = torch.zeros(1)
    del checkpoint["state_dict"]["stem.bias"]
    torch.save(checkpoint, tmp_path / "checkpoint.pt")
    err = import_error(capsys, tmp_path / "checkpoint.pt", tmp_path)
    assert "1 unknown keys ['extra_head.weight']" in err and "1 missing keys ['stem.bias']" in err


@pytest.mark.slow
def test_stage_two_sample_and_evaluate_on_an_imported_nvae(tmp_path):
    """The imported (Bernoulli, flow-cell) fixture through the unchanged command lines,
    on the embedded MNIST at tiny sizes."""
    path = tmp_path / "checkpoint.pt"
    torch.save(nvae_checkpoint(), path)
    run = str(tmp_path / "run")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def cli(*args):
        result = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, env=env, timeout=600)
        assert result.returncode == 0, result.stdout + result.stderr
        return result

    cli("ncpfast.import_nvae", str(path), "--out", run, "--dataset", "mnist-embedded")
    cli("ncpfast.train", "--stage", "2", "--from", run, "--device", "cpu", "--no-progress", "--ncp-epochs", "1",
        "--ncp-batch-size", "64", "--ncp-hidden", "8", "--ncp-cells", "1", "--log-z-samples", "100",
        "--num-proposals", "3", "--num-generated", "20", "--iw-samples", "2", "--max-images", "10")
    cli("ncpfast.sample", run, "-n", "4", "--device", "cpu", "--out", str(tmp_path / "s.png"))
    cli("ncpfast.evaluate", run, "--device", "cpu", "--iw-samples", "2", "--max-images", "10", "--num-generated",
        "20", "--log-z-samples", "100")
    assert (tmp_path / "s.png").is_file()
