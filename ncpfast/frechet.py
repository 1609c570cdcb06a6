"""Frechet distances between image sets, in the features of a small classifier.

The feature network is part of the metric, so it must be the same network for
every run, seed and device that is compared. For the embedded MNIST (the
default data set) its weights ship with the package
(fd_feature_net_mnist_embedded.pt, made by scripts/train_fd_feature_net.py and
checked against SHIPPED_SHA256 at load): CPU kernels round differently on
AVX2 and AVX-512 machines, so retraining on each machine would give each its
own weights and its own FD. Any other data set gets a network trained once, on
the CPU, from a fixed seed, and cached under a hash of the training data (and
of this recipe). Its test accuracy is reported with every distance, so a
reader can see what the features know. The distance carries a bootstrap
standard error over both image sets.

FID proper (pytorch-fid's Inception) is in ncpfast.fid_inception; these are
"FD (small classifier features)", never called FID.
"""
import hashlib
import math
import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from . import checkpoint

FD_NAME = "FD (small classifier features)"
# Part of the cache key: bump it when the architecture or the training recipe changes
# (and retrain the shipped weights with scripts/train_fd_feature_net.py).
RECIPE = ("feature-net-v3: convs 32 s2, 64 s1, 64 s2, 128 s2 with BatchNorm, 128-d average pool; AdamW 2e-3, "
          "weight decay 0.05, cosine to 0, batch 64, 30 epochs, label smoothing 0.1, random shifts of up to "
          "2 px, seed 0, CPU")
EPOCHS, BATCH, LR, WEIGHT_DECAY, LABEL_SMOOTHING, MAX_SHIFT, SEED = 30, 64, 2e-3, 0.05, 0.1, 2, 0

# The network for the embedded MNIST (load_dataset("mnist-embedded")), trained once with
# this recipe and shipped: data_hash(train, test) of that data set, and the file's sha256.
SHIPPED_WEIGHTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fd_feature_net_mnist_embedded.pt")
SHIPPED_DATA_HASH = "b268191dd1decc1a"
SHIPPED_SHA256 = "040e79ce7eebaadbbfb011a85fed9d9ae397a8369b21c4b4a91e4522ca71f50e"


class FeatureWeightsError(checkpoint.CheckpointError):
    """The shipped feature-network weights are missing, modified, or from another recipe."""


def _conv(in_channels: int, out_channels: int, stride: int):
    return [nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU()]


class FeatureNet(nn.Module):
    """A small CNN classifier; its 128-d pooled features define the Frechet distance."""

    def __init__(self, in_channels: int, classes: int = 10):
        super().__init__()
        self.body = nn.Sequential(*_conv(in_channels, 32, 2), *_conv(32, 64, 1), *_conv(64, 64, 2),
                                  *_conv(64, 128, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(128, classes)

    def features(self, x):
        return self.body(2 * x - 1)

    def forward(self, x):
        return self.head(self.features(x))


@dataclass
class FeatureNetwork:
    """The cached network and what it scores on the held-out split."""
    net: FeatureNet
    test_accuracy: float
    test_images: int
    data_hash: str

    def describe(self) -> dict:
        return {"recipe": RECIPE, "data_hash": self.data_hash, "test_accuracy": self.test_accuracy,
                "test_images": self.test_images}


def data_hash(train, test) -> str:
    """sha256 over the splits' images and labels and the recipe (first 16 hex digits)."""
    digest = hashlib.sha256(RECIPE.encode())
    for split in (train, test):
        for tensor in (split.images, split.labels):
            digest.update(str(tuple(tensor.shape)).encode())
            digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def default_cache_dir() -> str:
    return os.environ.get("NCPFAST_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "ncpfast")


def feature_network(train, test, device, cache_dir: Optional[str] = None, progress: bool = True) -> FeatureNetwork:
    """The data set's feature network: the shipped one for the embedded MNIST, else
    loaded from the cache, or trained (CPU, seed 0) and cached. train/test: in-memory
    splits with labels (ncpfast.data.Split)."""
    if getattr(train, "labels", None) is None or getattr(test, "labels", None) is None:
        raise ValueError("the Frechet-distance feature network needs a labelled data set (train and test labels)")
    key = data_hash(train, test)
    path = os.path.join(cache_dir or default_cache_dir(), f"fd-feature-net-{key}.pt")
    if key == SHIPPED_DATA_HASH:
        state = load_shipped_weights()
    elif os.path.isfile(path):
        state = checkpoint.load(path)
    else:
        net = train_feature_net(train, progress)
        accuracy, count = save_feature_net(net, test, key, path)
        return FeatureNetwork(net.to(device).eval(), accuracy, count, key)
    net = FeatureNet(train.images.shape[1])
    net.load_state_dict(state["state_dict"])
    return FeatureNetwork(net.to(device).eval(), state["test_accuracy"], state["test_images"], key)


def save_feature_net(net: FeatureNet, test, key: str, path: str) -> tuple[float, int]:
    """Writes net with its test accuracy, RECIPE and the data hash `key` to path
    (atomically); returns (test accuracy, test images)."""
    accuracy, count = accuracy_on(net, test), len(test)
    checkpoint.save_atomic({"state_dict": net.state_dict(), "test_accuracy": accuracy, "test_images": count,
                            "recipe": RECIPE, "data_hash": key}, path)
    return accuracy, count


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_shipped_weights(path: Optional[str] = None, sha256: Optional[str] = None) -> dict:
    """The shipped checkpoint ({"state_dict", "test_accuracy", "test_images", "recipe",
    "data_hash"}; default SHIPPED_WEIGHTS), after checking the file's sha256 (default
    SHIPPED_SHA256); FeatureWeightsError if it is missing, differs, or was made by
    another recipe."""
    path, sha256 = path or SHIPPED_WEIGHTS, sha256 or SHIPPED_SHA256
    if not os.path.isfile(path):
        raise FeatureWeightsError(
            f"the FD feature-network weights {path} are missing: the package data was not installed "
            "(reinstall ncpfast with pip), or remake them with scripts/train_fd_feature_net.py")
    actual = file_sha256(path)
    if actual != sha256:
        raise FeatureWeightsError(
            f"the FD feature-network weights {path} have sha256 {actual}, not the shipped {sha256}: the file "
            "was modified or corrupted, and an FD from it would not be comparable. Reinstall ncpfast, or remake "
            "the file with scripts/train_fd_feature_net.py and set SHIPPED_SHA256 in ncpfast/frechet.py to match")
    state = checkpoint.load(path)
    if state.get("recipe") != RECIPE or state.get("data_hash") != SHIPPED_DATA_HASH:
        raise FeatureWeightsError(
            f"the FD feature-network weights {path} were made by recipe {state.get('recipe')!r} for data hash "
            f"{state.get('data_hash')}, not by {RECIPE!r} for {SHIPPED_DATA_HASH}")
    return state


def train_feature_net(train, progress: bool = True) -> FeatureNet:
    """A FeatureNet trained by RECIPE on the CPU, from seed 0, whatever the global RNG."""
    with torch.random.fork_rng(devices=[]), torch.enable_grad():
        torch.manual_seed(SEED)
        net = FeatureNet(train.images.shape[1])
        _train(net, train, progress)
    return net


def random_shift(images: torch.Tensor, generator: torch.Generator, most: int = MAX_SHIFT) -> torch.Tensor:
    """Each image moved by its own whole-pixel offset in [-most, most] on both axes,
    with zeros (black) shifted in."""
    if most == 0:
        return images
    n, _, height, width = images.shape
    padded = F.pad(images, (most, most, most, most))
    offsets = torch.randint(0, 2 * most + 1, (2, n), generator=generator)
    rows = offsets[0][:, None] + torch.arange(height)
    cols = offsets[1][:, None] + torch.arange(width)
    # Advanced indexing puts the indexed axes first: [n, height, width, channels].
    return padded[torch.arange(n)[:, None, None], :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def _train(net: FeatureNet, train, progress: bool) -> None:
    g = torch.Generator().manual_seed(SEED)
    optimizer = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    steps = EPOCHS * math.ceil(len(train) / BATCH)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / steps)))
    net.train()
    for _ in tqdm(range(EPOCHS), desc="FD feature net", disable=not progress, leave=False):
        order = torch.randperm(len(train), generator=g)
        for start in range(0, len(train), BATCH):
            idx = order[start:start + BATCH]
            if len(idx) < 2:  # BatchNorm needs two images in a batch
                continue
            images = random_shift(train.batch(idx), g).contiguous()
            loss = F.cross_entropy(net(images), train.labels[idx], label_smoothing=LABEL_SMOOTHING)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    net.eval()


@torch.no_grad()
def accuracy_on(net: FeatureNet, test) -> float:
    """The share of the split's images that the network classifies right (in eval mode)."""
    net.eval()
    correct = 0
    for start in range(0, len(test), 500):
        idx = torch.arange(start, min(len(test), start + 500))
        correct += int((net(test.batch(idx)).argmax(1) == test.labels[idx]).sum())
    return correct / len(test)


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """||mu_a - mu_b||^2 + tr(C_a + C_b - 2 (C_a^1/2 C_b C_a^1/2)^1/2), in float64."""
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    # atleast_2d: torch.cov of a single feature is 0-d.
    cov_a, cov_b = torch.atleast_2d(torch.cov(a.T)), torch.atleast_2d(torch.cov(b.T))
    vals, vecs = torch.linalg.eigh(cov_a)
    sqrt_a = vecs @ torch.diag(vals.clamp_min(0).sqrt()) @ vecs.T
    middle = torch.linalg.eigvalsh(sqrt_a @ cov_b @ sqrt_a).clamp_min(0).sqrt().sum()
    return float((mu_a - mu_b).pow(2).sum() + cov_a.trace() + cov_b.trace() - 2 * middle)


def frechet_distance_with_stderr(a: torch.Tensor, b: torch.Tensor, resamples: int = 50,
                                 generator: Optional[torch.Generator] = None):
    """(FD, bootstrap standard error): both sets resampled with replacement
    `resamples` times. The error covers the finite sample sizes (the FD of
    finite sets is also biased upward, by about the same order)."""
    g = generator or torch.Generator().manual_seed(0)
    value = frechet_distance(a, b)
    if resamples < 2:
        return value, float("nan")
    draws = [frechet_distance(a[torch.randint(len(a), (len(a),), generator=g)],
                              b[torch.randint(len(b), (len(b),), generator=g)]) for _ in range(resamples)]
    return value, float(torch.tensor(draws).std())


@torch.no_grad()
def extract_features(extract, images: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """extract(images) a batch at a time (bounds memory), gathered on the CPU."""
    return torch.cat([extract(images[i:i + batch]).cpu() for i in range(0, images.shape[0], batch)])


def fd_summary(features: torch.Tensor, reference: torch.Tensor, generator: Optional[torch.Generator] = None) -> dict:
    value, stderr = frechet_distance_with_stderr(features, reference, generator=generator)
    return {"fd": value, "fd_std_error": stderr}
