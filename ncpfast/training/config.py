"""Training configuration: one dataclass, named presets, and the command line.

Every field can be overridden on the command line as --field-name VALUE
(booleans: --field-name / --no-field-name); `--help` lists them by stage. The
resolved config is saved as config.json in the run directory.
"""
import argparse
import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Optional

from ..fid_inception import WEIGHTS_FILE as FID_WEIGHTS_FILE

# The preset of `python -m ncpfast.train` without --preset (docs/results.md: how it was chosen).
DEFAULT_PRESET = "default"

# The argument groups of `--help`, in the order they are shown.
RUN = "run"
DATA = "data"
MODEL = "model"
STAGE1 = "stage 1: optimisation of the VAE"
LOGGING = "logging and checkpoints"
STAGE2 = "stage 2: the NCP classifiers"
EVALUATION = "evaluation"
ARGUMENT_GROUPS = (RUN, DATA, MODEL, STAGE1, LOGGING, STAGE2, EVALUATION)


def _f(default, help_text: str, group: str, metavar: Optional[str] = None):
    """A field with its --help line, its argument group and (for values other than
    counts and booleans) the metavar that says what the value is."""
    return field(default=default, metadata={"help": help_text, "group": group, "metavar": metavar})


@dataclass
class TrainConfig:
    preset: str = _f(DEFAULT_PRESET, "named configuration to start from (see --list-presets); its values "
                      "replace the defaults shown here", RUN, metavar="NAME")
    dataset: str = _f("mnist-embedded", "mnist-embedded | mnist | cifar10 | celeba64 | celebahq256 | ffhq256", DATA,
                      metavar="NAME")
    data_dir: Optional[str] = _f(None, "directory of the data set's files (not needed for mnist-embedded)", DATA,
                                 metavar="DIR")
    num_workers: int = _f(-1, "processes that read and decode the training batches beside each training process "
                          "(-1: auto: 0 for data held in memory, else the cores per process less one, at most 4)",
                          DATA)
    run_dir: Optional[str] = _f(None, "output directory (default: runs/<preset>-<time>)", RUN, metavar="DIR")
    seed: int = _f(0, "seed of every random stream (data order, model init, sampling)", RUN, metavar="SEED")
    device: str = _f("auto", "auto | cpu | cuda | cuda:N", RUN, metavar="DEVICE")
    kernels: str = _f("auto", "residual-cell kernels: auto (fused where the extension has the device's "
                      "backend) | fused | torch (eager; same parameters either way)", MODEL, metavar="KERNELS")
    model: str = _f("nvae", "nvae (hierarchical) | mlp (LARS/SNIS MNIST) | conv (RAE: CelebA-64, "
                      "MNIST)", MODEL, metavar="MODEL")
    image_size: int = _f(32, "image side after padding/resizing", MODEL, metavar="PIXELS")
    in_channels: int = _f(1, "1 (MNIST) or 3 (colour)", MODEL)
    output: str = _f("bernoulli", "bernoulli | logistic_mixture", MODEL, metavar="LIKELIHOOD")
    num_mix: int = _f(10, "logistic mixture components (colour)", MODEL)
    channels: int = _f(32, "nvae: width at full resolution (doubles at each down step); conv: width of the first "
                       "of its 4 stride-2 convs (doubles at each)", MODEL)
    num_preprocess_blocks: int = _f(2, "NVAE: pre-process blocks (each halves the resolution)", MODEL)
    num_preprocess_cells: int = _f(3, "NVAE: cells per pre-process block", MODEL)
    num_postprocess_blocks: int = _f(2, "NVAE: post-process blocks (each doubles the resolution)", MODEL)
    num_postprocess_cells: int = _f(3, "NVAE: cells per post-process block", MODEL)
    num_latent_scales: int = _f(2, "NVAE: latent scales", MODEL)
    num_groups_per_scale: int = _f(10, "NVAE: latent groups at the finest latent scale", MODEL)
    adaptive_groups: bool = _f(True, "NVAE: halve the group count at each coarser scale", MODEL)
    min_groups_per_scale: int = _f(1, "NVAE: floor of the adaptive group count", MODEL)
    latent_channels: int = _f(20, "NVAE: channels of each latent group", MODEL)
    num_cells_per_group_enc: int = _f(2, "NVAE: encoder cells per group", MODEL)
    num_cells_per_group_dec: int = _f(2, "NVAE: decoder cells per group", MODEL)
    num_nf: int = _f(0, "NVAE: paired normalizing-flow cells per latent group on the posterior (0-2)", MODEL)
    num_x_bits: int = _f(8, "NVAE: bits per colour channel the model reads and scores (its 256x256 models: 5)",
                         MODEL)
    latent_dim: int = _f(50, "mlp/conv: latent dimension", MODEL)
    hidden_units: int = _f(300, "mlp: hidden units per layer", MODEL)
    epochs: int = _f(400, "training epochs", STAGE1)
    batch_size: int = _f(200, "batch size per process", STAGE1)
    lr: float = _f(1e-2, "peak learning rate (Adamax); lower it (5e-3, 1e-3) if NaNs appear", STAGE1, metavar="LR")
    lr_min: float = _f(1e-4, "final learning rate of the cosine decay", STAGE1, metavar="LR")
    warmup_epochs: float = _f(5, "linear learning-rate warm-up, in epochs", STAGE1, metavar="EPOCHS")
    weight_decay: float = _f(3e-4, "Adamax weight decay", STAGE1, metavar="DECAY")
    adamax_eps: float = _f(1e-3, "Adamax epsilon", STAGE1, metavar="EPS")
    kl_anneal_portion: float = _f(0.3, "share of the iterations over which the KL coefficient rises to 1", STAGE1,
                                  metavar="FRACTION")
    kl_const_portion: float = _f(1e-4, "share of the iterations with a constant, tiny KL coefficient", STAGE1,
                                 metavar="FRACTION")
    kl_const_coeff: float = _f(1e-4, "the KL coefficient at the start", STAGE1, metavar="COEFF")
    kl_balance: bool = _f(True, "NVAE's KL balancing while the KL coefficient is below 1", STAGE1)
    spectral_reg_init: float = _f(10.0, "spectral+BN regulariser weight at the start (annealed log-linearly)",
                                  STAGE1, metavar="WEIGHT")
    spectral_reg: float = _f(1e-2, "spectral+BN regulariser weight at the end (0 disables)", STAGE1, metavar="WEIGHT")
    sync_batch_norm: bool = _f(True, "under torchrun, batch-norm statistics over the global batch, as NVAE "
                               "(off: each process normalises with its own share)", STAGE1)
    grad_clip: float = _f(200.0, "clip the gradient norm at this value (0: no clipping)", STAGE1, metavar="NORM")
    amp: str = _f("auto", "mixed precision: auto (bf16 on CUDA, none on CPU) | none | bf16 | fp16", STAGE1,
                  metavar="PRECISION")
    ema_decay: float = _f(0.0, "exponential moving average of the weights (0: off, e.g. 0.9999)", STAGE1,
                          metavar="DECAY")
    max_nan_skips: int = _f(20, "consecutive non-finite steps tolerated (skipped) before stopping", STAGE1)
    max_steps: int = _f(0, "stop after this many optimiser steps (0: run all epochs); resumable", STAGE1)
    log_every: int = _f(20, "steps between TensorBoard scalars", LOGGING, metavar="STEPS")
    sample_every: int = _f(1, "epochs between sample grids (samples/epoch_N.png)", LOGGING, metavar="EPOCHS")
    checkpoint_every: int = _f(200, "steps between checkpoints (and at every epoch end)", LOGGING, metavar="STEPS")
    eval_iw_samples: int = _f(100, "importance samples K of the final test NLL", EVALUATION)
    eval_max_images: int = _f(0, "test images of the final NLL (0: all)", EVALUATION)
    eval_chunk: int = _f(0, "importance samples per pass of the NLL (0: all at once; bounds memory)", EVALUATION)
    num_sample_images: int = _f(64, "images in a sample grid", LOGGING)
    ncp_epochs: int = _f(10, "epochs of the NCP classifiers", STAGE2)
    ncp_batch_size: int = _f(64, "batch size per process", STAGE2)
    ncp_lr: float = _f(1e-3, "Adam learning rate", STAGE2, metavar="LR")
    ncp_hidden: int = _f(32, "width of each group's classifier", STAGE2)
    ncp_cells: int = _f(2, "residual cells of each group's classifier", STAGE2)
    ncp_log_z_samples: int = _f(10000, "samples of the log Z estimate", STAGE2)
    ncp_log_z_proposal: str = _f("prior", "proposal of the log Z estimate: prior | aggregate-posterior (a defensive "
                                 "mixture with the posteriors of 2,000 training images; single-group flat models)",
                                 STAGE2, metavar="PROPOSAL")
    ncp_base: str = _f("gaussian", "base prior of the NCP: gaussian (the VAE's own prior) | gmm (a Gaussian mixture "
                       "fitted to posterior samples, the paper's NCP-GMM; models mlp and conv only)", STAGE2,
                       metavar="BASE")
    ncp_gmm_components: int = _f(10, "components of the GMM base (--ncp-base gmm)", STAGE2)
    ncp_num_proposals: int = _f(50, "SIR proposals per latent group (per image in joint mode)", EVALUATION)
    ncp_sampling_mode: str = _f("group", "NCP sampler: group (group by group, the paper's) | joint (targets the "
                                "density the NLL scores)", EVALUATION, metavar="MODE")
    eval_generated: int = _f(1000, "generated images for the Frechet distance", EVALUATION)
    fid_weights: str = _f("", "path of pytorch-fid's Inception weights "
                          "(pt_inception-2015-12-05-6726825d.pth); adds FID to the small-classifier FD",
                          EVALUATION, metavar="FILE")
    progress: bool = _f(True, "tqdm progress bars", LOGGING)


PRESETS = {
    # The default (DEFAULT_PRESET): the single-latent MLP VAE on the embedded MNIST
    # with a strong stage 2, chosen by measurement (docs/results.md) as a run of a few
    # minutes on 2 CPU cores in which NCP visibly beats the Gaussian prior.
    "default": dict(dataset="mnist-embedded", model="mlp", latent_dim=50, hidden_units=300, epochs=100,
                    batch_size=100, lr=1e-3, lr_min=1e-4, warmup_epochs=1, kl_anneal_portion=0.0,
                    kl_const_portion=0.0, kl_balance=False, spectral_reg=0.0, spectral_reg_init=0.0,
                    sample_every=10, eval_iw_samples=1000, eval_chunk=250, ncp_epochs=50, ncp_hidden=256,
                    ncp_log_z_samples=1_000_000),
    # A small hierarchical model that trains on the embedded MNIST on 2 CPU cores
    # in a few minutes (NCP's effect on it is small at this size: docs/results.md).
    "tiny": dict(dataset="mnist-embedded", model="nvae", channels=16, num_preprocess_blocks=2,
                 num_preprocess_cells=1, num_postprocess_blocks=2, num_postprocess_cells=1,
                 num_latent_scales=2, num_groups_per_scale=2, latent_channels=8,
                 num_cells_per_group_enc=1, num_cells_per_group_dec=1, epochs=8, batch_size=64,
                 lr=5e-3, warmup_epochs=1, checkpoint_every=100, eval_iw_samples=100, eval_max_images=200,
                 ncp_epochs=5),
    # NVAE-small as published for MNIST (2 x V100, ~21 h).
    "mnist": dict(dataset="mnist", in_channels=1, image_size=32, output="bernoulli", channels=32,
                  num_preprocess_blocks=2, num_preprocess_cells=3, num_postprocess_blocks=2,
                  num_postprocess_cells=3, num_latent_scales=2, num_groups_per_scale=10,
                  latent_channels=20, num_cells_per_group_enc=2, num_cells_per_group_dec=2,
                  epochs=400, batch_size=200, spectral_reg=1e-2, eval_iw_samples=1000, eval_chunk=100),
    "cifar10": dict(dataset="cifar10", in_channels=3, image_size=32, output="logistic_mixture", channels=128,
                    num_preprocess_blocks=1, num_preprocess_cells=2, num_postprocess_blocks=1,
                    num_postprocess_cells=2, num_latent_scales=1, num_groups_per_scale=30,
                    latent_channels=20, num_cells_per_group_enc=2, num_cells_per_group_dec=2, num_nf=1,
                    epochs=400, batch_size=32, spectral_reg=1e-2, eval_iw_samples=1000, eval_chunk=50),
    "celeba64": dict(dataset="celeba64", in_channels=3, image_size=64, output="logistic_mixture", channels=64,
                     num_preprocess_blocks=1, num_preprocess_cells=2, num_postprocess_blocks=1,
                     num_postprocess_cells=2, num_latent_scales=3, num_groups_per_scale=20,
                     latent_channels=20, num_cells_per_group_enc=2, num_cells_per_group_dec=2, num_nf=1,
                     epochs=90, batch_size=16, spectral_reg=1e-1, eval_iw_samples=1000, eval_chunk=20),
    "celebahq256": dict(dataset="celebahq256", in_channels=3, image_size=256, output="logistic_mixture",
                        channels=30, num_preprocess_blocks=1, num_preprocess_cells=2, num_postprocess_blocks=1,
                        num_postprocess_cells=2, num_latent_scales=5, num_groups_per_scale=16,
                        min_groups_per_scale=4, latent_channels=20, num_cells_per_group_enc=2,
                        num_cells_per_group_dec=2, num_nf=2, num_x_bits=5, epochs=300, batch_size=4, lr=8e-3,
                        spectral_reg=1e-2,
                        eval_iw_samples=1000, eval_chunk=4),
    # Single latent group, the LARS/SNIS MNIST setting: Gaussian prior, latent dim 50.
    "mnist-single": dict(dataset="mnist-embedded", model="mlp", latent_dim=50, hidden_units=300, epochs=100,
                         batch_size=100, lr=1e-3, lr_min=1e-4, warmup_epochs=1, kl_anneal_portion=0.0,
                         kl_const_portion=0.0, kl_balance=False, spectral_reg=0.0, spectral_reg_init=0.0,
                         eval_iw_samples=1000, eval_chunk=250),
    # Single latent group, the RAE architecture at MNIST scale (a quarter of its width,
    # Bernoulli output): the conv model whose prior holes Table 7's GMM base targets.
    "mnist-conv": dict(dataset="mnist-embedded", model="conv", in_channels=1, image_size=32, output="bernoulli",
                       channels=16, latent_dim=20, epochs=30, batch_size=100, lr=1e-3, lr_min=1e-4,
                       warmup_epochs=1, kl_anneal_portion=0.0, kl_const_portion=0.0, kl_balance=False,
                       spectral_reg=0.0, spectral_reg_init=0.0, eval_iw_samples=100, eval_chunk=100),
    # Single latent group, the RAE CelebA-64 setting.
    "celeba64-rae": dict(dataset="celeba64", model="conv", in_channels=3, image_size=64,
                         output="logistic_mixture", latent_dim=64, channels=128, epochs=70, batch_size=100, lr=1e-3,
                         lr_min=1e-5, warmup_epochs=1, kl_anneal_portion=0.1, kl_balance=False,
                         spectral_reg=0.0, spectral_reg_init=0.0, eval_iw_samples=100, eval_chunk=10),
}


def add_config_arguments(parser: argparse.ArgumentParser, groups: Optional[dict] = None) -> dict:
    """One --option per TrainConfig field, defaulting to 'not given' (the preset decides),
    in argument groups by stage (those in `groups`, {title: group}, are used as
    they are, the others are made here). Returns {title: argument group}."""
    groups = dict(groups or {})
    for title in ARGUMENT_GROUPS:
        if title not in groups:
            groups[title] = parser.add_argument_group(title)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata["help"] + ("" if f.default in (None, "") else f" (default: {f.default})")
        group = groups[f.metadata["group"]]
        if f.type in (bool, "bool"):
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                               help=help_text)
            continue
        kind = {int: int, "int": int, float: float, "float": float}.get(f.type, str)
        metavar = f.metadata["metavar"] or {int: "N", float: "X"}.get(kind, "VALUE")
        group.add_argument(flag, dest=f.name, type=kind, default=None, metavar=metavar, help=help_text)
    return groups


def resolve_config(preset: str, overrides: dict) -> TrainConfig:
    """The preset's values, then the explicit overrides."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    values = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}, "preset": preset}
    config = TrainConfig(**values)
    validate_config(config)
    return config


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    overrides = {k: v for k, v in vars(args).items() if k in names and k != "preset"}
    return resolve_config(args.preset or DEFAULT_PRESET, overrides)


def validate_config(config: TrainConfig) -> None:
    problems = []
    if config.epochs < 1:
        problems.append(f"epochs must be >= 1, got {config.epochs}")
    if config.batch_size < 1:
        problems.append(f"batch_size must be >= 1, got {config.batch_size}")
    if config.lr <= 0:
        problems.append(f"lr must be > 0, got {config.lr}")
    if config.amp not in ("auto", "none", "bf16", "fp16"):
        problems.append(f"amp must be auto, none, bf16 or fp16, got {config.amp!r}")
    if config.kernels not in ("auto", "fused", "torch"):
        problems.append(f"kernels must be auto, fused or torch, got {config.kernels!r}")
    if config.model not in ("nvae", "mlp", "conv"):
        problems.append(f"model must be nvae, mlp or conv, got {config.model!r}")
    if not 0 <= config.ema_decay < 1:
        problems.append(f"ema_decay must be in [0, 1), got {config.ema_decay}")
    if config.ncp_log_z_proposal not in ("prior", "aggregate-posterior"):
        problems.append(f"ncp_log_z_proposal must be prior or aggregate-posterior, got "
                        f"{config.ncp_log_z_proposal!r}")
    if config.ncp_base not in ("gaussian", "gmm"):
        problems.append(f"ncp_base must be gaussian or gmm, got {config.ncp_base!r}")
    elif config.ncp_base == "gmm" and config.model == "nvae":
        problems.append("ncp_base gmm needs a single-group model (model mlp or conv); the hierarchical nvae "
                        "model's groups have conditional priors a GMM cannot replace")
    if config.ncp_gmm_components < 1:
        problems.append(f"ncp_gmm_components must be >= 1, got {config.ncp_gmm_components}")
    if config.ncp_sampling_mode not in ("group", "joint"):
        problems.append(f"ncp_sampling_mode must be group or joint, got {config.ncp_sampling_mode!r}")
    if config.ncp_num_proposals < 1:
        problems.append(f"ncp_num_proposals must be >= 1, got {config.ncp_num_proposals}")
    if config.eval_iw_samples < 1:
        problems.append(f"eval_iw_samples must be >= 1, got {config.eval_iw_samples}")
    if config.fid_weights and not os.path.isfile(config.fid_weights):
        problems.append(f"fid_weights: no file at {config.fid_weights!r} (pytorch-fid's {FID_WEIGHTS_FILE} "
                        "is expected; it cannot be downloaded here)")
    if problems:
        raise ValueError("invalid configuration: " + "; ".join(problems))


def save_config(config: TrainConfig, path: str) -> None:
    with open(path, "w") as f:
        json.dump(dataclasses.asdict(config), f, indent=2)


def load_config(path: str) -> TrainConfig:
    with open(path) as f:
        values = json.load(f)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in values.items() if k in known})
