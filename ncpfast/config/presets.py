"""Named configurations, each written as the changes it makes to a parent (None:
the defaults of config.sections), by dotted path."""
from typing import NamedTuple, Optional

from .sections import DEFAULT_PRESET, Config
from .tree import from_dotted


class Preset(NamedTuple):
    parent: Optional[str]
    changes: dict
    about: str


_SINGLE_LATENT_OPTIMISER = {
    # Adam-like optimisation without NVAE's KL schedule and regulariser: the
    # single-latent models' (LARS/SNIS, RAE) settings.
    "stage1.lr": 1e-3, "stage1.lr_min": 1e-4, "stage1.warmup_epochs": 1, "stage1.kl_anneal_portion": 0.0,
    "stage1.kl_const_portion": 0.0, "stage1.kl_balance": False, "stage1.spectral_reg": 0.0,
    "stage1.spectral_reg_init": 0.0,
}

PRESETS = {
    "mnist-single": Preset(None, {
        "model.kind": "mlp", "model.latent_dim": 50, "model.mlp.hidden_units": 300,
        "stage1.epochs": 100, "stage1.batch_size": 100, **_SINGLE_LATENT_OPTIMISER,
        "evaluation.iw_samples": 1000, "evaluation.iw_chunk": 250,
    }, "single latent group, the LARS/SNIS MNIST setting: an MLP VAE with a Gaussian prior, latent dim 50"),
    "default": Preset("mnist-single", {
        "logging.sample_every": 10, "stage2.epochs": 50, "stage2.hidden": 256, "stage2.log_z_samples": 1_000_000,
    }, "python -m ncpfast.train without --preset: mnist-single with a strong stage 2, chosen by measurement "
       "(docs/results.md) as a run of a few minutes on 2 CPU cores in which NCP visibly beats the Gaussian prior"),
    "tiny": Preset(None, {
        "model.channels": 16, "model.nvae.num_preprocess_cells": 1, "model.nvae.num_postprocess_cells": 1,
        "model.nvae.num_groups_per_scale": 2, "model.nvae.latent_channels": 8,
        "model.nvae.num_cells_per_group_enc": 1, "model.nvae.num_cells_per_group_dec": 1,
        "stage1.epochs": 8, "stage1.batch_size": 64, "stage1.lr": 5e-3, "stage1.warmup_epochs": 1,
        "logging.checkpoint_every": 100, "evaluation.max_images": 200, "stage2.epochs": 5,
    }, "a small hierarchical model that trains on the embedded MNIST on 2 CPU cores in a few minutes (NCP's "
       "effect on it is small at this size: docs/results.md)"),
    "mnist": Preset(None, {
        "data.dataset": "mnist", "evaluation.iw_samples": 1000, "evaluation.iw_chunk": 100,
    }, "NVAE's MNIST model as its README trains it (2 x V100, ~21 h); the defaults are its architecture"),
    "cifar10": Preset(None, {
        "data.dataset": "cifar10", "model.in_channels": 3, "model.likelihood": "logistic_mixture",
        "model.channels": 128, "model.nvae.num_preprocess_blocks": 1, "model.nvae.num_preprocess_cells": 2,
        "model.nvae.num_postprocess_blocks": 1, "model.nvae.num_postprocess_cells": 2,
        "model.nvae.num_latent_scales": 1, "model.nvae.num_groups_per_scale": 30, "model.nvae.num_nf": 1,
        "stage1.batch_size": 32, "evaluation.iw_samples": 1000, "evaluation.iw_chunk": 50,
    }, "NVAE's CIFAR-10 model as its README trains it"),
    "celeba64": Preset("cifar10", {
        "data.dataset": "celeba64", "model.image_size": 64, "model.channels": 64,
        "model.nvae.num_latent_scales": 3, "model.nvae.num_groups_per_scale": 20,
        "stage1.epochs": 90, "stage1.batch_size": 16, "stage1.spectral_reg": 1e-1, "evaluation.iw_chunk": 20,
    }, "NVAE's CelebA-64 model as its README trains it"),
    "celebahq256": Preset("celeba64", {
        "data.dataset": "celebahq256", "model.image_size": 256, "model.channels": 30,
        "model.nvae.num_latent_scales": 5, "model.nvae.num_groups_per_scale": 16,
        "model.nvae.min_groups_per_scale": 4, "model.nvae.num_nf": 2, "model.nvae.num_x_bits": 5,
        "stage1.epochs": 300, "stage1.batch_size": 4, "stage1.lr": 8e-3, "stage1.spectral_reg": 1e-2,
        "evaluation.iw_chunk": 4,
    }, "NVAE's CelebA-HQ-256 model as its README trains it (FFHQ's is the same network: --dataset ffhq256)"),
    "mnist-conv": Preset("mnist-single", {
        "model.kind": "conv", "model.channels": 16, "model.latent_dim": 20, "stage1.epochs": 30,
        "evaluation.iw_samples": 100, "evaluation.iw_chunk": 100,
    }, "single latent group, the RAE architecture at MNIST scale (a quarter of its width, Bernoulli output): "
       "the conv model whose prior holes Table 7's GMM base targets"),
    "celeba64-rae": Preset("mnist-conv", {
        "data.dataset": "celeba64", "model.in_channels": 3, "model.image_size": 64,
        "model.likelihood": "logistic_mixture", "model.latent_dim": 64, "model.channels": 128, "stage1.epochs": 70,
        "stage1.lr_min": 1e-5, "stage1.kl_anneal_portion": 0.1, "stage1.kl_const_portion": 1e-4,
        "evaluation.iw_chunk": 10,
    }, "single latent group, the RAE CelebA-64 setting"),
}


def check_preset(name: str) -> str:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return name


def preset_changes(name: str) -> dict:
    """The dotted values of a preset: its ancestors' changes, then its own."""
    preset = PRESETS[check_preset(name)]
    inherited = preset_changes(preset.parent) if preset.parent else {}
    return {**inherited, **preset.changes, "run.preset": name}


def resolve_config(preset: str = DEFAULT_PRESET, overrides: Optional[dict] = None) -> Config:
    """The defaults, the preset's changes, then the dotted overrides (None: not given)."""
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    return from_dotted({**preset_changes(preset), **given, "run.preset": preset})
