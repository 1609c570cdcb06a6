"""Evaluation of a run: NLL (importance-weighted, base prior vs NCP prior with
log Z folded in) and a Frechet distance of generated vs held-out images.

The Frechet distance always uses the features of a small classifier trained
on the data set's labels (cached in the run directory), reported as
"FD (small classifier features)", never as FID. When the user gives
pytorch-fid's Inception weights file, FID proper is computed as well
(ncpfast.fid_inception); those weights cannot be downloaded here.
"""
import math
import os
import time
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from . import checkpoint
from .data import load_dataset
from .fid_inception import load_fid_inception
from .models.base import iw_images_per_pass
from .ncp.stage2 import image_reader, load_ncp, load_run
from .run_dir import RunDir

FD_NAME = "FD (small classifier features)"
FID_NAME = "FID (pytorch-fid Inception V3, 2048-d pool features)"


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


def feature_net_for(run_dir: str, dataset: str, data_dir: Optional[str], device, epochs: int = 3,
                    progress: bool = True) -> FeatureNet:
    """The run's cached feature network, trained on the data set's labels on first use."""
    path = RunDir(run_dir).feature_net_path
    train, _ = load_dataset(dataset, data_dir)
    if train.labels is None:
        raise ValueError(f"{dataset} has no labels to train the Frechet-distance feature network on")
    net = FeatureNet(train.batch(torch.arange(1)).shape[1]).to(device)
    if os.path.isfile(path):
        net.load_state_dict(checkpoint.load(path, map_location=device))
        return net.eval()
    g = torch.Generator().manual_seed(0)
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    with torch.enable_grad():  # callers evaluate under no_grad
        _train_feature_net(net, train, optimizer, epochs, g, device, progress)
    checkpoint.save_atomic(net.state_dict(), path)
    return net.eval()


def _train_feature_net(net, train, optimizer, epochs, g, device, progress):
    for _ in tqdm(range(epochs), desc="FD feature net", disable=not progress, leave=False):
        order = torch.randperm(len(train), generator=g)
        for start in range(0, len(train), 128):
            idx = order[start:start + 128]
            loss = F.cross_entropy(net(train.batch(idx).to(device)), train.labels[idx].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """||mu_a - mu_b||^2 + tr(C_a + C_b - 2 (C_a^1/2 C_b C_a^1/2)^1/2), in float64."""
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    vals, vecs = torch.linalg.eigh(cov_a)
    sqrt_a = vecs @ torch.diag(vals.clamp_min(0).sqrt()) @ vecs.T
    middle = torch.linalg.eigvalsh(sqrt_a @ cov_b @ sqrt_a).clamp_min(0).sqrt().sum()
    return float((mu_a - mu_b).pow(2).sum() + cov_a.trace() + cov_b.trace() - 2 * middle)


@torch.no_grad()
def _features(extract, images, batch=500):
    """extract(images) a batch at a time (bounds memory), gathered on the CPU."""
    return torch.cat([extract(images[i:i + batch]).cpu() for i in range(0, images.shape[0], batch)])


@torch.no_grad()
def evaluate_run(run_dir: str, device: torch.device, iw_samples: int = 100, max_images: int = 0,
                 iw_chunk: int = 0, num_generated: int = 1000, method: str = "sir", num_proposals: int = 50,
                 steps: int = 50, step_size: float = 1e-2, temperature: float = 1.0, log_z_samples: int = 10_000,
                 seed: int = 0, progress: bool = True, fid_weights: str = "", num_real: int = 0) -> dict:
    """Base prior and NCP prior side by side: NLL and Frechet distance (and FID given `fid_weights`).

    `num_real` held-out images are the reference set of the Frechet distances
    (0: max(num_generated, 1000), at most the whole test split)."""
    if iw_samples < 1 or num_generated < 2 or num_real < 0 or num_real == 1:
        raise ValueError(f"need iw_samples >= 1, num_generated >= 2 and num_real 0 or >= 2, got {iw_samples}, "
                         f"{num_generated} and {num_real}")
    inception = load_fid_inception(fid_weights, device) if fid_weights else None  # a bad path fails first
    config, vae = load_run(run_dir, device)
    ncp = load_ncp(run_dir, vae)
    _, test = load_dataset(config.dataset, config.data_dir)
    n = len(test) if max_images <= 0 else min(max_images, len(test))
    g = torch.Generator(device).manual_seed(seed)
    torch.manual_seed(seed)
    log_z, log_z_stderr = ncp.log_partition(log_z_samples, generator=g)

    read = image_reader(test, vae.likelihood, device, g)
    batch = iw_images_per_pass(iw_samples, iw_chunk, device, most=100)
    base_ll, ncp_ll = [], []
    for start in tqdm(range(0, n, batch), desc=f"NLL (K={iw_samples})", disable=not progress, leave=False):
        x = read(torch.arange(start, min(n, start + batch)))
        state = torch.get_rng_state()  # the same posterior draws for both priors: a paired comparison
        base_ll.append(vae.importance_weighted_log_likelihood(x, iw_samples, iw_chunk))
        torch.set_rng_state(state)
        ncp_ll.append(ncp.importance_weighted_log_likelihood(x, iw_samples, iw_chunk, log_z=log_z))
    base_ll, ncp_ll = torch.cat(base_ll).cpu(), torch.cat(ncp_ll).cpu()
    dims = vae.num_data_dims()

    net = feature_net_for(run_dir, config.dataset, config.data_dir, device, progress=progress)
    real = test.batch(torch.arange(min(len(test), num_real or max(num_generated, 1000)))).to(device)
    real_features = _features(net.features, real)
    timings = {}

    def generate(name, **kw):
        start = time.perf_counter()
        images = torch.cat([ncp.sample(min(250, num_generated - i), temperature=temperature, generator=g, **kw)
                            for i in range(0, num_generated, 250)])
        timings[name] = time.perf_counter() - start
        return images

    base_images = generate("base", method="base")
    ncp_images = generate(method, method=method, num_proposals=num_proposals, steps=steps, step_size=step_size)

    def nll_summary(ll):
        nll = float(-ll.mean())
        return dict(nll_nats=nll, nll_std_error=float(ll.std() / math.sqrt(len(ll))),
                    bits_per_dim=nll / (math.log(2) * dims))

    result = {
        "iw_samples": iw_samples, "test_images": n, "temperature": temperature,
        "log_z": log_z, "log_z_stderr": log_z_stderr, "log_z_samples": log_z_samples,
        "fd_name": FD_NAME, "generated_images": num_generated, "real_images": real.shape[0],
        "base": {**nll_summary(base_ll), "fd": frechet_distance(_features(net.features, base_images), real_features),
                 "sampling_seconds": timings["base"]},
        "ncp": {**nll_summary(ncp_ll), "fd": frechet_distance(_features(net.features, ncp_images), real_features),
                "sampling": method, "num_proposals": num_proposals if method == "sir" else None,
                "langevin_steps": steps if method == "langevin" else None,
                "sampling_seconds": timings[method]},
        "nll_difference_ncp_minus_base": float(-(ncp_ll - base_ll).mean()),
        "nll_difference_std_error": float((ncp_ll - base_ll).std() / math.sqrt(len(base_ll))),
    }
    if inception is not None:
        real_inception = _features(inception, real, batch=50)
        result["fid_name"] = FID_NAME
        for prior, images in (("base", base_images), ("ncp", ncp_images)):
            result[prior]["fid"] = frechet_distance(_features(inception, images, batch=50), real_inception)
    return result, base_images, ncp_images


def format_table(result: dict) -> str:
    with_fid = "fid_name" in result
    rows = [("prior", "NLL (nats)", "bits/dim", result["fd_name"]) + ((result["fid_name"],) if with_fid else ())]
    for label, key in (("base", "base"), ("NCP", "ncp")):
        scores = result[key]
        rows.append((label, f"{scores['nll_nats']:.2f} +- {scores['nll_std_error']:.2f}",
                     f"{scores['bits_per_dim']:.4f}", f"{scores['fd']:.3f}")
                    + ((f"{scores['fid']:.3f}",) if with_fid else ()))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.append(f"log Z = {result['log_z']:.4f} +- {result['log_z_stderr']:.4f} ({result['log_z_samples']} samples); "
                 f"K = {result['iw_samples']} on {result['test_images']} test images; NCP - base NLL = "
                 f"{result['nll_difference_ncp_minus_base']:.3f} +- {result['nll_difference_std_error']:.3f} nats; "
                 f"temperature {result['temperature']}; Frechet distances: {result['generated_images']} generated vs "
                 f"{result['real_images']} test images")
    return "\n".join(lines)
