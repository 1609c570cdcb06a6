"""The FD feature network is one fixed metric per data set; FD has an error bar."""
import os

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


@pytest.fixture(scope="module")
def embedded():
    from ncpfast.data import load_dataset
    return load_dataset("mnist-embedded")


def test_the_embedded_data_set_uses_the_shipped_weights_which_classify_98_percent(embedded, tmp_path, monkeypatch):
    train, test = embedded
    assert os.path.getsize(frechet.SHIPPED_WEIGHTS) < 1_000_000
    assert frechet.file_sha256(frechet.SHIPPED_WEIGHTS) == frechet.SHIPPED_SHA256
    assert frechet.data_hash(train, test) == frechet.SHIPPED_DATA_HASH

    def no_training(*args, **kwargs):
        raise AssertionError("the embedded data set must use the shipped weights")

    monkeypatch.setattr(frechet, "_train", no_training)
    torch.manual_seed(123)  # the global RNG must not matter
    network = frechet.feature_network(train, test, "cpu", cache_dir=str(tmp_path), progress=False)
    assert not os.listdir(tmp_path)  # nothing trained, nothing cached
    assert network.data_hash == frechet.SHIPPED_DATA_HASH and network.test_images == len(test) == 1000
    # Measured here, by inference: what the file claims and what it does.
    accuracy = frechet.accuracy_on(network.net, test)
    assert accuracy >= 0.98
    assert accuracy == pytest.approx(network.test_accuracy, abs=0.002)  # another CPU may flip a borderline digit
    features = frechet.extract_features(network.net.features, test.batch(torch.arange(50)))
    assert features.shape == (50, 128) and torch.isfinite(features).all()
    again = frechet.feature_network(train, test, "cpu", cache_dir=str(tmp_path), progress=False)
    for p, q in zip(network.net.state_dict().values(), again.net.state_dict().values()):
        assert torch.equal(p, q)


def test_tampered_shipped_weights_are_refused(embedded, tmp_path, monkeypatch):
    tampered = tmp_path / "tampered.pt"
    data = bytearray(open(frechet.SHIPPED_WEIGHTS, "rb").read())
    data[len(data) // 2] ^= 1  # one bit of one weight
    tampered.write_bytes(bytes(data))
    with pytest.raises(frechet.FeatureWeightsError, match="sha256 .* not the shipped .*modified or corrupted"):
        frechet.load_shipped_weights(str(tampered))
    # feature_network refuses it too, rather than falling back to training.
    monkeypatch.setattr(frechet, "SHIPPED_WEIGHTS", str(tampered))
    with pytest.raises(frechet.FeatureWeightsError, match="modified or corrupted"):
        frechet.feature_network(*embedded, "cpu", cache_dir=str(tmp_path), progress=False)
    with pytest.raises(frechet.FeatureWeightsError, match="missing"):
        frechet.load_shipped_weights(str(tmp_path / "absent.pt"))


def test_shipped_weights_from_another_recipe_are_refused(tmp_path):
    path = str(tmp_path / "other.pt")
    torch.save({"state_dict": {}, "test_accuracy": 1.0, "test_images": 1, "recipe": "feature-net-v2",
                "data_hash": frechet.SHIPPED_DATA_HASH}, path)
    with pytest.raises(frechet.FeatureWeightsError, match="recipe 'feature-net-v2'"):
        frechet.load_shipped_weights(path, frechet.file_sha256(path))


def test_random_shift_moves_each_image_by_whole_pixels_and_fills_with_zeros():
    images = torch.rand(40, 2, 9, 11) + 1  # no zeros of its own
    shifted = frechet.random_shift(images, torch.Generator().manual_seed(0), most=2)
    assert shifted.shape == images.shape
    assert torch.equal(shifted, frechet.random_shift(images, torch.Generator().manual_seed(0), most=2))
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    moves = set()
    for image, out in zip(padded, shifted):
        found = [(dy, dx) for dy in range(5) for dx in range(5) if torch.equal(image[:, dy:dy + 9, dx:dx + 11], out)]
        assert len(found) == 1
        moves.add(found[0])
    assert len(moves) > 10  # offsets drawn per image, from all of [-2, 2]^2
    assert torch.equal(frechet.random_shift(images, torch.Generator(), most=0), images)
