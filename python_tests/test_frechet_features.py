"""The FD feature network is one fixed metric per data set; FD has an error bar."""
import pytest
import torch

from ncpfast import frechet
from ncpfast.data import Split


def tiny_split(seed, n=120):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(10, (n,), generator=g)
    # Each class lights a different pixel block, so a classifier can learn it.
    images = (torch.rand(n, 1, 8, 8, generator=g) * 60).to(torch.uint8)
    for i, label in enumerate(labels.tolist()):
        images[i, 0, label % 8, :] = 250
    return Split(images, labels)


def test_feature_network_is_trained_once_per_data_set_and_identical_across_caches(tmp_path, monkeypatch):
    train, test = tiny_split(0), tiny_split(1, 60)
    torch.manual_seed(123)  # the global RNG must not matter
    first = frechet.feature_network(train, test, "cpu", cache_dir=str(tmp_path / "a"), progress=False)
    torch.manual_seed(456)
    second = frechet.feature_network(train, test, "cpu", cache_dir=str(tmp_path / "b"), progress=False)
    for p, q in zip(first.net.parameters(), second.net.parameters()):
        assert torch.equal(p, q)
    assert first.test_accuracy == second.test_accuracy and first.test_images == 60
    assert 0.0 <= first.test_accuracy <= 1.0

    def no_training(*args, **kwargs):
        raise AssertionError("the cached network must be reused")

    monkeypatch.setattr(frechet, "_train", no_training)
    cached = frechet.feature_network(train, test, "cpu", cache_dir=str(tmp_path / "a"), progress=False)
    assert cached.data_hash == first.data_hash and cached.test_accuracy == first.test_accuracy
    other = tiny_split(2)
    assert frechet.data_hash(other, test) != first.data_hash
    with pytest.raises(AssertionError, match="cached network"):
        frechet.feature_network(other, test, "cpu", cache_dir=str(tmp_path / "a"), progress=False)


def test_feature_network_needs_labels(tmp_path):
    train = tiny_split(0)
    with pytest.raises(ValueError, match="labelled"):
        frechet.feature_network(Split(train.images, None), train, "cpu", cache_dir=str(tmp_path))


def test_bootstrap_standard_error_matches_the_spread_over_sample_sets():
    # FD between two sets of 300 draws from N(0, I_4) and N(0.3, I_4): the
    # bootstrap error of one pair should be close to the spread of FD over
    # independent pairs.
    g = torch.Generator().manual_seed(0)

    def pair():
        return torch.randn(300, 4, generator=g), torch.randn(300, 4, generator=g) + 0.3

    spread = torch.tensor([frechet.frechet_distance(*pair()) for _ in range(60)]).std().item()
    a, b = pair()
    _, stderr = frechet.frechet_distance_with_stderr(a, b, resamples=100, generator=g)
    assert 0.5 * spread < stderr < 2.0 * spread
