"""Stage 2 on a finished stage-1 run: the NCP classifiers trained on the frozen
VAE (data parallel under torchrun), log Z estimated, checkpoints/ncp.pt saved.
A Gaussian base (the VAE's own prior) gives a GroupedNCP, one classifier per
latent group; a GMM base (single-group models) a FlatNCP over a Gaussian mixture
fitted to the aggregate posterior."""
import time
from typing import Optional

import torch

from . import checkpoint
from .config import Stage2Config
from .data import load_dataset
from .ncp.base_priors import GaussianMixture
from .ncp.estimators import PROPOSALS, LogPartitionEstimate, flat_posterior_parameters
from .ncp.fitting import CHANCE_ACCURACY, split_images
from .ncp.flat import FlatNCP, posterior_samples
from .ncp.grouped import GroupedNCP
from .run_dir import RunDir
from .runtime import SINGLE_PROCESS, DistributedContext, replicas_identical
from .trained_run import image_reader, load_run

# Posterior samples per training image that the flat classifier sees (each epoch).
FLAT_POSTERIOR_DRAWS = 10


# Training images whose posteriors make up the aggregate-posterior proposal of log Z.
AGGREGATE_POSTERIOR_IMAGES = 2000


def check_log_z_proposal(proposal: str) -> str:
    """The prior is the default: on the default preset the aggregate-posterior
    mixture's weights were no less heavy-tailed and it cost 20x the time
    (docs/results.md, log Z convergence)."""
    if proposal not in PROPOSALS:
        raise ValueError(f"log Z proposal must be {' or '.join(PROPOSALS)}, got {proposal!r}")
    return proposal


@torch.no_grad()
def estimate_log_partition(ncp, vae, train, device, num_samples: int, proposal: str,
                           generator: torch.Generator) -> LogPartitionEstimate:
    """ncp's log Z from num_samples draws of the proposal (estimators.PROPOSALS)."""
    proposal = check_log_z_proposal(proposal)
    posterior = None
    if proposal == "aggregate-posterior":
        read = image_reader(train, vae.likelihood, device, generator)
        posterior = flat_posterior_parameters(vae, read, min(len(train), AGGREGATE_POSTERIOR_IMAGES))
    return ncp.log_partition_estimate(num_samples, generator=generator, refresh=True, proposal=proposal,
                                      posterior=posterior)


def train_stage2(run_dir: str, device: torch.device, settings: Stage2Config, seed: int = 0, progress: bool = True,
                 writer=None, distributed: DistributedContext = SINGLE_PROCESS) -> Optional[dict]:
    """Fits the classifiers (data parallel under torchrun: batch_size per process); rank 0 then
    estimates log Z and saves checkpoints/ncp.pt and returns the summary (the other ranks: None).
    base "gmm" (single-group models): train_flat_gmm_stage2, on rank 0 alone."""
    s = settings
    config, vae = load_run(run_dir, device)
    train, _ = load_dataset(config.data.dataset, config.data.data_dir)
    if s.base == "gmm":
        if not distributed.is_main:
            return None
        return train_flat_gmm_stage2(run_dir, vae, train, device, s, seed, progress)
    # Each rank draws its own posterior samples, negatives and binarisations;
    # rank 0's streams are those of a single-process run.
    g = torch.Generator(device).manual_seed(seed + 1000 * distributed.rank)
    torch.manual_seed(seed)  # the same initial classifiers everywhere (rank 0's are broadcast anyway)
    ncp = GroupedNCP(vae, hidden=s.hidden, cells=s.cells).to(device)
    if distributed.rank:
        torch.manual_seed(seed + 1000 * distributed.rank)
    # the last 10% of the training split (at least a batch) is held out
    fit_images, val_images = split_images(len(train), 0.1, minimum=s.batch_size)
    n_fit, n_val = len(fit_images), len(val_images)
    if n_fit < s.batch_size * distributed.world_size:
        raise ValueError(f"stage 2: {n_fit} training images cannot fill one step of {s.batch_size} images x "
                         f"{distributed.world_size} processes; lower --ncp-batch-size")
    read = image_reader(train, vae.likelihood, device, g)
    start = time.perf_counter()
    history = ncp.fit(lambda idx: read(fit_images[idx]), n_fit, lambda idx: read(val_images[idx]), n_val,
                      epochs=s.epochs, batch_size=s.batch_size, lr=s.lr, generator=torch.Generator().manual_seed(seed),
                      progress=progress, writer=writer, distributed=distributed)
    fit_seconds = time.perf_counter() - start
    identical = replicas_identical(ncp.classifiers, distributed)  # collective: before rank 0 goes on alone
    if not distributed.is_main:
        return None
    estimate = estimate_log_partition(ncp, vae, train, device, s.log_z_samples, s.log_z_proposal, g)
    checkpoint.save_atomic({**ncp.to_checkpoint(), "history": history}, RunDir(run_dir).ncp_checkpoint)
    return dict(groups=ncp.num_groups, epochs=s.epochs, fit_seconds=fit_seconds, world_size=distributed.world_size,
                replicas_identical=identical, log_z=estimate.log_z, log_z_stderr=estimate.stderr,
                log_z_samples=s.log_z_samples, log_z_estimate=estimate.as_dict(),
                val_accuracy=history["best_val_accuracy"], groups_at_chance=history["groups_at_chance"])


def train_flat_gmm_stage2(run_dir: str, vae, train, device: torch.device, settings: Stage2Config, seed: int = 0,
                          progress: bool = True, gmm_data: str = "samples") -> dict:
    """NCP-GMM on a single-group VAE: a GaussianMixture of settings.gmm_components fitted (on the
    model's device) to the training images' posteriors (the last 10% held out, as for
    GroupedNCP), then a FlatNCP classifier of posterior samples against GMM samples,
    log Z, and checkpoints/ncp.pt. One process.

    gmm_data "samples" (the default): the GMM is fitted to FLAT_POSTERIOR_DRAWS posterior
    samples per image, i.e. to the aggregate posterior. "means": to the posterior
    means, as the paper does for the RAE, whose codes are deterministic; in a VAE the
    means miss the posteriors' spread (an inactive dimension has means near 0 and
    sigma near 1), so that GMM is far narrower than the aggregate posterior and its
    NLL far worse than N(0, I)'s."""
    if gmm_data not in ("samples", "means"):
        raise ValueError(f"gmm_data must be samples or means, got {gmm_data!r}")
    s, components = settings, settings.gmm_components
    g = torch.Generator(device).manual_seed(seed)
    torch.manual_seed(seed)  # the classifier's initial weights
    n_fit = len(split_images(len(train), 0.1, minimum=s.batch_size)[0])  # as train_stage2 holds out
    if n_fit < max(components, 10):
        raise ValueError(f"stage 2: {n_fit} training images are too few for a GMM of {components} components")
    read = image_reader(train, vae.likelihood, device, g)
    start = time.perf_counter()
    mu, sigma = flat_posterior_parameters(vae, read, n_fit)
    samples = posterior_samples(mu, sigma, FLAT_POSTERIOR_DRAWS, g)
    gmm = GaussianMixture.fit(samples if gmm_data == "samples" else mu, components, generator=g)
    ncp = FlatNCP(vae, gmm, hidden=s.hidden).to(device)
    history = ncp.fit(samples, epochs=s.epochs, batch_size=s.batch_size, lr=s.lr, generator=g, progress=progress,
                      draws=FLAT_POSTERIOR_DRAWS)
    fit_seconds = time.perf_counter() - start
    estimate = estimate_log_partition(ncp, vae, train, device, s.log_z_samples, s.log_z_proposal, g)
    checkpoint.save_atomic({**ncp.to_checkpoint(), "history": history}, RunDir(run_dir).ncp_checkpoint)
    accuracy = history["val_accuracy"][history["best_epoch"]]
    return dict(groups=1, base="gmm", gmm_components=components, gmm_data=gmm_data, epochs=s.epochs,
                epochs_run=history["epochs_run"], fit_seconds=fit_seconds, world_size=1, replicas_identical=True,
                log_z=estimate.log_z, log_z_stderr=estimate.stderr, log_z_samples=s.log_z_samples,
                log_z_estimate=estimate.as_dict(), val_accuracy=[accuracy],
                groups_at_chance=[0] if accuracy < CHANCE_ACCURACY else [])
