"""Checkpoints: atomic writes that survive a failure part-way, stale temporaries
removed, and loading that refuses anything but tensors and plain data."""
import dataclasses
import os

import pytest
import torch

from ncpfast import checkpoint
from ncpfast.checkpoint import CheckpointError, load, remove_stale_temporaries, save_atomic


def _temporaries(directory):
    return sorted(name for name in os.listdir(directory) if name.endswith(".tmp"))


def test_plain_data_round_trips(tmp_path):
    state = {"format": 1, "model": {"w": torch.arange(6.0).view(2, 3)}, "rng": [{"torch": torch.get_rng_state()}],
             "config": {"lr": 1e-3, "name": "x", "sizes": [1, 2], "none": None}, "pair": (1.5, 2)}
    save_atomic(state, str(tmp_path / "a.pt"))
    again = load(str(tmp_path / "a.pt"))
    assert torch.equal(again["model"]["w"], state["model"]["w"]) and again["config"] == state["config"]
    assert torch.equal(again["rng"][0]["torch"], state["rng"][0]["torch"]) and again["pair"] == (1.5, 2)


class _RunsCode:
    """Unpickling this would call open(marker, "w"): code run by merely loading a file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@dataclasses.dataclass
class _Config:
    lr: float = 1e-3


def test_a_pickled_object_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "payload": _RunsCode(str(marker))}, path)
    with pytest.raises(CheckpointError, match="holds objects other than tensors and plain data.*could run "
                                              "arbitrary code"):
        load(str(path))
    assert not marker.exists()


def test_a_dataclass_config_is_refused_and_named(tmp_path):
    torch.save({"config": _Config()}, tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match=r"objects other than tensors and plain data \(it refers to "
                                              r"[\w.]*_Config\)"):
        load(str(tmp_path / "old.pt"))


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load(str(tmp_path / "none.pt"))
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="is unreadable"):
        load(str(tmp_path / "garbage.pt"))
    save_atomic({"w": torch.zeros(1000)}, str(tmp_path / "whole.pt"))
    data = (tmp_path / "whole.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match="is unreadable"):
        load(str(tmp_path / "cut.pt"))


def _fail_fsync(fd):
    raise OSError("disk full (injected)")


def _fail_mid_write(obj, f):
    f.write(b"PK\x03\x04 half a checkpoint")  # the first bytes of a zip archive, then the failure
    raise OSError("disk full (injected)")


@pytest.mark.parametrize("target,replacement", [(os, ("fsync", _fail_fsync)),
                                                (checkpoint.torch, ("save", _fail_mid_write))])
def test_a_save_that_fails_part_way_keeps_the_previous_checkpoint(tmp_path, monkeypatch, target, replacement):
    path = str(tmp_path / "latest.pt")
    save_atomic({"step": 1, "w": torch.ones(3)}, path)
    monkeypatch.setattr(target, *replacement)
    with pytest.raises(OSError, match="injected"):
        save_atomic({"step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    state = load(path)
    assert state["step"] == 1 and torch.equal(state["w"], torch.ones(3))
    assert _temporaries(tmp_path) == []


def test_remove_stale_temporaries_deletes_only_those_of_the_path(tmp_path):
    for name in (".latest.pt.k3j_x9a2.tmp", ".latest.pt.abcdefgh.tmp", ".best.pt.abcdefgh.tmp", "latest.pt",
                 "notes.tmp", ".latest.pt.tmp", "latest.pt.abcdefgh.tmp"):
        (tmp_path / name).write_bytes(b"x")
    removed = remove_stale_temporaries(str(tmp_path / "latest.pt"))
    assert sorted(os.path.basename(p) for p in removed) == [".latest.pt.abcdefgh.tmp", ".latest.pt.k3j_x9a2.tmp"]
    assert sorted(os.listdir(tmp_path)) == [".best.pt.abcdefgh.tmp", ".latest.pt.tmp", "latest.pt",
                                            "latest.pt.abcdefgh.tmp", "notes.tmp"]
    assert remove_stale_temporaries(str(tmp_path / "missing" / "latest.pt")) == []


def test_weights_of_another_architecture_are_a_checkpoint_error_that_names_them(tmp_path):
    """A run written for another model (for instance a hierarchical run from before the
    NVAE-equal model) is refused with what does not fit, not a load_state_dict traceback."""
    from ncpfast.checkpoint import load_weights
    from ncpfast.models.single import MLPVAE

    other = MLPVAE(latent_dim=4, hidden=16).state_dict()
    with pytest.raises(CheckpointError, match=r"latest.pt: its weights do not fit .* of another shape"):
        load_weights(MLPVAE(latent_dim=4, hidden=32), other, str(tmp_path / "latest.pt"))
    load_weights(MLPVAE(latent_dim=4, hidden=16), other, str(tmp_path / "latest.pt"))  # the same model loads
