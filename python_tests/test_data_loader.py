"""Stage 1's batch loader: the order is a function of (seed, epoch), the same with
and without worker processes, sharded across ranks, exactly resumable mid-epoch
(the trainer included), and a worker's bad image is a one-line DataError."""

import pytest
import torch

from data_helpers import write_celeba_folder
from ncpfast.data import BatchLoader, DataError, TrainingOrder, auto_workers, load_dataset
from ncpfast.data.prepare import prepare
from test_data import make_mnist_dir


@pytest.fixture(scope="module")
def celeba(tmp_path_factory):
    """A raw folder of 40 CelebA-size JPEGs and the same prepared."""
    root = tmp_path_factory.mktemp("celeba")
    raw = write_celeba_folder(root / "raw", n=40)
    prepare("celeba64", str(raw), str(root / "prepared"), progress=False)
    return load_dataset("celeba64", str(raw))[0], load_dataset("celeba64", str(root / "prepared"))[0]


def test_order_is_the_trainers_and_workers_keep_it(celeba):
    raw, prepared = celeba
    order = TrainingOrder(len(raw), seed=3, batch_size=4, steps_per_epoch=len(raw) // 4)
    # The permutation the trainer has always used (its data order must not change with the loader).
    g = torch.Generator().manual_seed(3 * 100003 + 1)
    expected_epoch1 = torch.randperm(len(raw), generator=g)[:order.steps_per_epoch * 4]
    assert torch.equal(order.epoch(1), expected_epoch1)
    steps = 3 * order.steps_per_epoch  # three epochs, read ahead across their ends
    reference = list(BatchLoader(prepared, order, 0).batches(0, steps))
    assert len(reference) == steps
    for b, batch in enumerate(reference):
        assert torch.equal(batch, prepared.uint8_batch(order.step_indices(b)))
    for split, workers in ((prepared, 2), (raw, 1)):
        batches = list(BatchLoader(split, order, workers).batches(0, steps))
        assert all(torch.equal(a, b) for a, b in zip(reference, batches)) and len(batches) == steps
    # A resume mid-epoch (step 13 of 9 per epoch: epoch 1, batch 4) sees the same batches.
    resumed = list(BatchLoader(prepared, order, 2).batches(13, steps))
    assert all(torch.equal(a, b) for a, b in zip(reference[13:], resumed)) and len(resumed) == steps - 13


def test_ranks_share_each_epoch_without_overlap(celeba):
    _, prepared = celeba
    world, batch = 2, 4
    steps = len(prepared) // (batch * world)
    shards = [TrainingOrder(len(prepared), 0, batch, steps, rank, world).epoch(0) for rank in range(world)]
    assert all(len(s) == steps * batch for s in shards)
    assert not set(shards[0].tolist()) & set(shards[1].tolist())
    g = torch.Generator().manual_seed(0)
    assert torch.equal(torch.stack(shards, 1).flatten(), torch.randperm(len(prepared), generator=g)[:2 * steps * batch])


def test_a_bad_image_in_a_worker_is_one_line_naming_it(tmp_path):
    raw = write_celeba_folder(tmp_path, n=20)
    (tmp_path / "000003.jpg").write_bytes(b"\xff\xd8\xff truncated")
    train, _ = load_dataset("celeba64", str(raw))
    order = TrainingOrder(len(train), 0, 18, 1)  # one batch that holds every training image
    with pytest.raises(DataError, match=r"000003\.jpg: not a readable image") as error:
        list(BatchLoader(train, order, 1).batches(0, 1))
    assert "\n" not in str(error.value) and "Traceback" not in str(error.value)


def test_auto_workers():
    train, _ = load_dataset("mnist-embedded")
    assert auto_workers(train) == 0  # in memory: a gather is cheaper than a hand-over
    lazy = type("Lazy", (), {"in_memory": False})()
    assert 1 <= auto_workers(lazy) <= 4 and auto_workers(lazy, processes_per_node=64) == 1
    with pytest.raises(ValueError, match="num_workers must be >= 0"):
        BatchLoader(train, TrainingOrder(10, 0, 1, 10), -2)


def test_trainer_resumed_with_workers_matches_an_uninterrupted_run(tmp_path):
    """The trainer with 2 loader workers on a prepared data set, stopped mid-epoch and
    resumed, ends bit-identical to one run straight through, and to a run without workers."""
    from ncpfast.config import resolve_config, with_changes
    from ncpfast.training.trainer import Trainer

    raw = tmp_path / "raw"
    raw.mkdir()
    make_mnist_dir(raw, False, n_train=60)
    prepare("mnist", str(raw), str(tmp_path / "prepared"), progress=False)
    config = resolve_config("tiny", {"data.dataset": "mnist", "data.data_dir": str(tmp_path / "prepared"),
                                     "model.kind": "mlp", "model.latent_dim": 4, "model.mlp.hidden_units": 16,
                                     "stage1.batch_size": 8, "stage1.epochs": 3, "data.num_workers": 2,
                                     "logging.progress": False, "run.device": "cpu", "logging.num_sample_images": 4,
                                     "logging.sample_every": 100, "logging.checkpoint_every": 1000})
    straight = Trainer(config, str(tmp_path / "straight"), final_nll=False).train()
    assert straight["step"] == 21
    Trainer(with_changes(config, stage1__max_steps=10), str(tmp_path / "broken"), final_nll=False).train()
    resumed = Trainer(config, str(tmp_path / "broken"), resume=True, final_nll=False)
    assert resumed.step == 10  # mid-epoch 2 (7 steps per epoch)
    resumed.train()
    # And the same as reading in the training thread: the workers change nothing but speed
    # (no draw from the training's random stream).
    Trainer(with_changes(config, data__num_workers=0), str(tmp_path / "in-thread"), final_nll=False).train()
    weights = [torch.load(tmp_path / run / "checkpoints" / "latest.pt", weights_only=True)["model"]
               for run in ("straight", "broken", "in-thread")]
    for other in weights[1:]:
        assert weights[0].keys() == other.keys() and all(torch.equal(weights[0][k], other[k]) for k in other)
