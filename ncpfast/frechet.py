"""Frechet distances between image sets, in the features of a small classifier.

The feature network is part of the metric, so it must be the same network for
every run, seed and device that is compared: it is trained once per data set,
on the CPU, from a fixed seed, and cached under a hash of the training data
(and of this recipe). Its test accuracy is reported with every distance, so a
reader can see what the features know. The distance carries a bootstrap
standard error over both image sets.

FID proper (pytorch-fid's Inception) is in ncpfast.fid_inception; these are
"FD (small classifier features)", never called FID.
"""
import hashlib
import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from . import checkpoint

FD_NAME = "FD (small classifier features)"
# Part of the cache key: bump it when the architecture or the training recipe changes.
RECIPE = "feature-net-v2: 3 stride-2 convs 32/64/128, Adam 2e-3, batch 128, 3 epochs, seed 0, CPU"
EPOCHS, BATCH, LR, SEED = 3, 128, 2e-3, 0


class FeatureNet(nn.Module):
    """A small CNN classifier; its 128-d pooled features define the Frechet distance."""

    def __init__(self, in_channels: int, classes: int = 10):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, 2, 1), nn.ReLU(), nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(),
            nn.Conv2d(64, 128, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
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
    """The data set's feature network: loaded from the cache, or trained (CPU, seed
    0) and cached. train/test: in-memory splits with labels (ncpfast.data.Split)."""
    if getattr(train, "labels", None) is None or getattr(test, "labels", None) is None:
        raise ValueError("the Frechet-distance feature network needs a labelled data set (train and test labels)")
    key = data_hash(train, test)
    path = os.path.join(cache_dir or default_cache_dir(), f"fd-feature-net-{key}.pt")
    in_channels = train.images.shape[1]
    net = FeatureNet(in_channels)
    if os.path.isfile(path):
        state = checkpoint.load(path)
        net.load_state_dict(state["state_dict"])
        accuracy, count = state["test_accuracy"], state["test_images"]
    else:
        with torch.random.fork_rng(devices=[]), torch.enable_grad():
            torch.manual_seed(SEED)
            net = FeatureNet(in_channels)
            _train(net, train, progress)
        accuracy, count = _accuracy(net, test), len(test)
        checkpoint.save_atomic({"state_dict": net.state_dict(), "test_accuracy": accuracy, "test_images": count,
                                "recipe": RECIPE}, path)
    return FeatureNetwork(net.to(device).eval(), accuracy, count, key)


def _train(net: FeatureNet, train, progress: bool) -> None:
    g = torch.Generator().manual_seed(SEED)
    optimizer = torch.optim.Adam(net.parameters(), lr=LR)
    net.train()
    for _ in tqdm(range(EPOCHS), desc="FD feature net", disable=not progress, leave=False):
        order = torch.randperm(len(train), generator=g)
        for start in range(0, len(train), BATCH):
            idx = order[start:start + BATCH]
            loss = F.cross_entropy(net(train.batch(idx)), train.labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    net.eval()


@torch.no_grad()
def _accuracy(net: FeatureNet, test) -> float:
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
