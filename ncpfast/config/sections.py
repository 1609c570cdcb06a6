"""The config of a run, one dataclass per concern: run, data, model (its
hierarchical and MLP parts apart), stage 1, logging, stage 2, evaluation and
the NCP sampler. Each section checks its own values when it is made (so a
config that exists is valid); Config checks what spans sections.

The sampler section is ncp.contract.SamplerConfig itself, the knobs every NCP
prior's sample() takes; its flags are declared here (SAMPLER_OPTIONS).
"""
import dataclasses
import os
from dataclasses import dataclass
from typing import Optional

from ..data.recipes import DATASETS
from ..fid_inception import WEIGHTS_FILE as FID_WEIGHTS_FILE
from ..models.temperature import DEFAULT_BATCHES
from ..ncp.contract import SamplerConfig, check_temperature
from ..ncp.estimators import PROPOSALS
from ..ncp.joint_sampling import SAMPLING_MODES
from .options import EVALUATE, SAMPLE, TRAIN, Option, check_choice, option

# The preset of `python -m ncpfast.train` without --preset (docs/results.md: how it was chosen).
DEFAULT_PRESET = "default"
MODEL_KINDS = ("nvae", "mlp", "conv")
LIKELIHOODS = ("bernoulli", "logistic_mixture")
KERNEL_CHOICES = ("auto", "fused", "torch")
PRECISIONS = ("auto", "none", "bf16", "fp16")
NCP_BASES = ("gaussian", "gmm")
ALL = (TRAIN, EVALUATE, SAMPLE)


def _raise(section: str, problems: list) -> None:
    problems = [p for p in problems if p]
    if problems:
        raise ValueError(f"invalid configuration ({section}): " + "; ".join(problems))


def _at_least(section: str, obj, minimum, *names) -> list:
    return [f"{section}.{name} must be >= {minimum}, got {getattr(obj, name)}"
            for name in names if getattr(obj, name) < minimum]


@dataclass(frozen=True)
class RunConfig:
    preset: str = option(DEFAULT_PRESET, "named configuration to start from (see --list-presets); its values "
                         "replace the defaults shown here", metavar="NAME")
    run_dir: Optional[str] = option(None, "output directory (default: runs/<preset>-<time>)", metavar="DIR")
    seed: int = option(0, "seed of every random stream (data order, model init, sampling)", metavar="SEED",
                       programs=ALL)
    device: str = option("auto", "auto | cpu | cuda | cuda:N", metavar="DEVICE", programs=ALL)


@dataclass(frozen=True)
class DataConfig:
    dataset: str = option("mnist-embedded", "the data set", choices=DATASETS, metavar="NAME")
    data_dir: Optional[str] = option(None, "directory of the data set's files (not needed for mnist-embedded)",
                                     metavar="DIR")
    num_workers: int = option(-1, "processes that read and decode the training batches beside each training "
                              "process (-1: auto: 0 for data held in memory, else the cores per process less one, "
                              "at most 4)")

    def __post_init__(self):
        _raise("data", [check_choice("data", "dataset", self.dataset, DATASETS),
                        *_at_least("data", self, -1, "num_workers")])


@dataclass(frozen=True)
class HierarchyConfig:
    """The hierarchy of model kind nvae (NVAE's own argument names where it has them)."""
    num_preprocess_blocks: int = option(2, "pre-process blocks (each halves the resolution)")
    num_preprocess_cells: int = option(3, "cells per pre-process block")
    num_postprocess_blocks: int = option(2, "post-process blocks (each doubles the resolution)")
    num_postprocess_cells: int = option(3, "cells per post-process block")
    num_latent_scales: int = option(2, "latent scales")
    num_groups_per_scale: int = option(10, "latent groups at the finest latent scale")
    adaptive_groups: bool = option(True, "halve the group count at each coarser scale")
    min_groups_per_scale: int = option(1, "floor of the adaptive group count")
    latent_channels: int = option(20, "channels of each latent group")
    num_cells_per_group_enc: int = option(2, "encoder cells per group")
    num_cells_per_group_dec: int = option(2, "decoder cells per group")
    num_nf: int = option(0, "paired normalizing-flow cells per latent group on the posterior (0-2)")
    num_x_bits: int = option(8, "bits per colour channel the model reads and scores (its 256x256 models: 5)")

    def __post_init__(self):
        _raise("model.nvae", _at_least("model.nvae", self, 1, "num_preprocess_blocks", "num_preprocess_cells",
                                       "num_postprocess_blocks", "num_postprocess_cells", "num_latent_scales",
                                       "num_groups_per_scale", "min_groups_per_scale", "latent_channels",
                                       "num_cells_per_group_enc", "num_cells_per_group_dec")
               + _at_least("model.nvae", self, 0, "num_nf"))


@dataclass(frozen=True)
class MLPConfig:
    """Model kind mlp (the LARS/SNIS MNIST VAE)."""
    hidden_units: int = option(300, "hidden units per layer")

    def __post_init__(self):
        _raise("model.mlp", _at_least("model.mlp", self, 1, "hidden_units"))


@dataclass(frozen=True)
class ModelConfig:
    kind: str = option("nvae", "nvae (hierarchical) | mlp (LARS/SNIS MNIST) | conv (RAE: CelebA-64, MNIST)",
                       flag="--model", choices=MODEL_KINDS, metavar="MODEL", legacy="model")
    kernels: str = option("auto", "residual-cell kernels: auto (fused where the extension has the device's "
                          "backend) | fused | torch (eager; same parameters either way)", choices=KERNEL_CHOICES,
                          metavar="KERNELS")
    image_size: int = option(32, "image side after padding/resizing", metavar="PIXELS")
    in_channels: int = option(1, "1 (MNIST) or 3 (colour)")
    likelihood: str = option("bernoulli", "the decoder's output distribution", choices=LIKELIHOODS,
                             metavar="LIKELIHOOD", legacy="output", old_flags=("--output",))
    num_mix: int = option(10, "logistic mixture components (colour)")
    channels: int = option(32, "nvae: width at full resolution (doubles at each down step); conv: width of the "
                           "first of its 4 stride-2 convs (doubles at each)")
    latent_dim: int = option(50, "mlp/conv: latent dimension")
    nvae: HierarchyConfig = dataclasses.field(default_factory=HierarchyConfig)
    mlp: MLPConfig = dataclasses.field(default_factory=MLPConfig)

    def __post_init__(self):
        _raise("model", [check_choice("model", "kind", self.kind, MODEL_KINDS),
                         check_choice("model", "kernels", self.kernels, KERNEL_CHOICES),
                         check_choice("model", "likelihood", self.likelihood, LIKELIHOODS),
                         *_at_least("model", self, 1, "image_size", "in_channels", "num_mix", "channels",
                                    "latent_dim")])


@dataclass(frozen=True)
class Stage1Config:
    """The VAE's optimisation (NVAE's: Adamax, warm-up and cosine decay, KL
    annealing and balancing, the spectral regulariser)."""
    epochs: int = option(400, "training epochs")
    batch_size: int = option(200, "batch size per process")
    lr: float = option(1e-2, "peak learning rate (Adamax); lower it (5e-3, 1e-3) if NaNs appear", metavar="LR")
    lr_min: float = option(1e-4, "final learning rate of the cosine decay", metavar="LR")
    warmup_epochs: float = option(5, "linear learning-rate warm-up, in epochs", metavar="EPOCHS")
    weight_decay: float = option(3e-4, "Adamax weight decay", metavar="DECAY")
    adamax_eps: float = option(1e-3, "Adamax epsilon", metavar="EPS")
    kl_anneal_portion: float = option(0.3, "share of the iterations over which the KL coefficient rises to 1",
                                      metavar="FRACTION")
    kl_const_portion: float = option(1e-4, "share of the iterations with a constant, tiny KL coefficient",
                                     metavar="FRACTION")
    kl_const_coeff: float = option(1e-4, "the KL coefficient at the start", metavar="COEFF")
    kl_balance: bool = option(True, "NVAE's KL balancing while the KL coefficient is below 1")
    spectral_reg_init: float = option(10.0, "spectral+BN regulariser weight at the start (annealed "
                                      "log-linearly)", metavar="WEIGHT")
    spectral_reg: float = option(1e-2, "spectral+BN regulariser weight at the end (0 disables)", metavar="WEIGHT")
    sync_batch_norm: bool = option(True, "under torchrun, batch-norm statistics over the global batch, as NVAE "
                                   "(off: each process normalises with its own share)")
    grad_clip: float = option(200.0, "clip the gradient norm at this value (0: no clipping)", metavar="NORM")
    amp: str = option("auto", "mixed precision: auto (bf16 on CUDA, none on CPU) | none | bf16 | fp16",
                      choices=PRECISIONS, metavar="PRECISION")
    ema_decay: float = option(0.0, "exponential moving average of the weights (0: off, e.g. 0.9999)",
                              metavar="DECAY")
    max_nan_skips: int = option(20, "consecutive non-finite steps tolerated (skipped) before stopping")
    max_steps: int = option(0, "stop after this many optimiser steps (0: run all epochs); resumable")

    def __post_init__(self):
        problems = _at_least("stage1", self, 1, "epochs", "batch_size") + _at_least(
            "stage1", self, 0, "warmup_epochs", "weight_decay", "grad_clip", "max_nan_skips", "max_steps",
            "spectral_reg", "spectral_reg_init")
        if self.lr <= 0 or self.lr_min < 0:
            problems.append(f"stage1.lr must be > 0 and lr_min >= 0, got {self.lr} and {self.lr_min}")
        if not 0 <= self.ema_decay < 1:
            problems.append(f"stage1.ema_decay must be in [0, 1), got {self.ema_decay}")
        _raise("stage 1", problems + [check_choice("stage1", "amp", self.amp, PRECISIONS)])


@dataclass(frozen=True)
class LoggingConfig:
    log_every: int = option(20, "steps between TensorBoard scalars", metavar="STEPS")
    sample_every: int = option(1, "epochs between sample grids (samples/epoch_N.png)", metavar="EPOCHS")
    checkpoint_every: int = option(200, "steps between checkpoints (and at every epoch end)", metavar="STEPS")
    num_sample_images: int = option(64, "images in a sample grid")
    progress: bool = option(True, "tqdm progress bars", programs=(TRAIN, EVALUATE))

    def __post_init__(self):
        _raise("logging", _at_least("logging", self, 1, "log_every", "sample_every", "checkpoint_every",
                                    "num_sample_images"))


@dataclass(frozen=True)
class Stage2Config:
    """What stage 2 trains: the classifiers (epochs, batch size per process, Adam's
    learning rate, width and residual cells of each group's classifier), the base
    the NCP reweights (gaussian: the VAE's prior; gmm: a mixture of gmm_components
    fitted to the aggregate posterior, single-group models), and its log Z estimate
    (draws and proposal)."""
    epochs: int = option(10, "epochs of the NCP classifiers", flag="--ncp-epochs", legacy="ncp_epochs")
    batch_size: int = option(64, "batch size per process", flag="--ncp-batch-size", legacy="ncp_batch_size")
    lr: float = option(1e-3, "Adam learning rate", flag="--ncp-lr", metavar="LR", legacy="ncp_lr")
    hidden: int = option(32, "width of each group's classifier", flag="--ncp-hidden", legacy="ncp_hidden")
    cells: int = option(2, "residual cells of each group's classifier", flag="--ncp-cells", legacy="ncp_cells")
    log_z_samples: int = option(10_000, "draws of the log Z estimate", legacy="ncp_log_z_samples",
                                old_flags=("--ncp-log-z-samples",))
    log_z_proposal: str = option("prior", "proposal of the log Z estimate: prior | aggregate-posterior (a "
                                 "defensive mixture with the posteriors of 2,000 training images; single-group "
                                 "flat models)", choices=PROPOSALS, metavar="PROPOSAL", legacy="ncp_log_z_proposal",
                                 old_flags=("--ncp-log-z-proposal",))
    base: str = option("gaussian", "base prior of the NCP: gaussian (the VAE's own prior) | gmm (a Gaussian "
                       "mixture fitted to posterior samples, the paper's NCP-GMM; models mlp and conv only)",
                       flag="--ncp-base", choices=NCP_BASES, metavar="BASE", legacy="ncp_base")
    gmm_components: int = option(10, "components of the GMM base (--ncp-base gmm)", flag="--ncp-gmm-components",
                                 legacy="ncp_gmm_components")

    def __post_init__(self):
        _raise("stage 2", [check_choice("stage2", "base", self.base, NCP_BASES),
                           check_choice("stage2", "log_z_proposal", self.log_z_proposal, PROPOSALS),
                           *_at_least("stage2", self, 1, "epochs", "batch_size", "hidden", "cells",
                                      "log_z_samples", "gmm_components")]
               + ([] if self.lr > 0 else [f"stage2.lr must be > 0, got {self.lr}"]))


@dataclass(frozen=True)
class EvaluationConfig:
    """What an evaluation measures. NLL: the importance-weighted bound with
    iw_samples K on max_images test images (0: all), iw_chunk samples per pass (0:
    all). log Z: stage 2's stored estimate, unless log_z_samples or log_z_proposal
    asks for a new one (the other from stage 2's config; not stored). Frechet
    distances: num_generated images per prior against num_real held-out images (0:
    max(num_generated, 1000), at most the test split); FID too with pytorch-fid's
    Inception weights (fid_weights). temperature scales the priors of the
    generated images; readjust_bn samples from a copy of the VAE whose decoder
    BatchNorm statistics were re-estimated on readjust_bn_batches batches of prior
    samples at that temperature (NVAE's re-adjustment; the NLL keeps the
    checkpoint's statistics). tune_step_size: a Langevin sampler's step size is
    chosen first (tune_langevin_step_size), as a user would, on held-out training
    images, never on the test images the reported numbers use."""
    iw_samples: int = option(100, "importance samples K of the test NLL", metavar="K", legacy="eval_iw_samples",
                             old_flags=("--eval-iw-samples",), programs=(TRAIN, EVALUATE))
    max_images: int = option(0, "test images of the NLL (0: all)", legacy="eval_max_images",
                             old_flags=("--eval-max-images",), programs=(TRAIN, EVALUATE))
    iw_chunk: int = option(0, "importance samples per pass of the NLL (0: all at once; bounds memory)",
                           legacy="eval_chunk", old_flags=("--eval-chunk",), programs=(TRAIN, EVALUATE))
    num_generated: int = option(1000, "images per prior for the Frechet distances", legacy="eval_generated",
                                old_flags=("--eval-generated",), programs=(TRAIN, EVALUATE))
    num_real: int = option(0, "test images of the Frechet distances' reference set (0: max(num-generated, 1000))",
                           programs=(TRAIN, EVALUATE))
    log_z_samples: Optional[int] = option(None, "estimate log Z anew from N draws (default: the run's own "
                                          "estimate from stage 2)", programs=(EVALUATE,))
    log_z_proposal: Optional[str] = option(None, "proposal of a new log Z estimate (default: stage 2's; "
                                           "aggregate-posterior: a defensive mixture with training images' "
                                           "posteriors, single-group flat models)", choices=PROPOSALS,
                                           metavar="PROPOSAL", programs=(EVALUATE,))
    fid_weights: str = option("", "path of pytorch-fid's Inception weights (pt_inception-2015-12-05-6726825d.pth); "
                              "adds FID to the small-classifier FD", metavar="FILE", programs=(TRAIN, EVALUATE))
    temperature: float = option(1.0, "prior temperature; at T < 1 the NCP classifiers score latents and decoder "
                                "contexts they were not trained on", metavar="T", programs=(EVALUATE, SAMPLE))
    readjust_bn: bool = option(False, "re-estimate the decoder's BatchNorm statistics on prior samples at the "
                               "temperature before sampling (NVAE's re-adjustment for T < 1; on a copy of the "
                               "model)", programs=(EVALUATE, SAMPLE))
    readjust_bn_batches: int = option(DEFAULT_BATCHES, "batches of prior samples for --readjust-bn",
                                      programs=(EVALUATE, SAMPLE))
    tune_step_size: bool = option(False, flag=None)

    def __post_init__(self):
        problems = _at_least("evaluation", self, 1, "iw_samples", "readjust_bn_batches") + _at_least(
            "evaluation", self, 0, "max_images", "iw_chunk")
        if self.num_generated < 2 or self.num_real < 0 or self.num_real == 1:
            problems.append(f"evaluation needs num_generated >= 2 and num_real 0 or >= 2, got {self.num_generated} "
                            f"and {self.num_real}")
        if self.log_z_samples is not None and self.log_z_samples < 1:
            problems.append(f"evaluation.log_z_samples must be >= 1, got {self.log_z_samples}")
        if self.log_z_proposal is not None:
            problems.append(check_choice("evaluation", "log_z_proposal", self.log_z_proposal, PROPOSALS))
        _raise("evaluation", problems)
        check_temperature(self.temperature)

    def check_files(self) -> None:
        """That fid_weights names a file: checked before a run starts (and not when a
        saved config is read, on a machine where that file may live elsewhere)."""
        if self.fid_weights and not os.path.isfile(self.fid_weights):
            raise ValueError(f"evaluation.fid_weights: no file at {self.fid_weights!r} (pytorch-fid's "
                             f"{FID_WEIGHTS_FILE} is expected; it cannot be downloaded here)")


# The flags of the sampler section (SamplerConfig is NCP's, declared in ncp/contract.py).
# Its method is each program's own choice (sample adds "base"; training's
# evaluation samples with SIR), and so is the parsing of --step-size (evaluate: "auto").
SAMPLER_OPTIONS = {
    "mode": Option("NCP sampler: group (group by group, the paper's) | joint (SIR over whole samples or Langevin on "
                   "all groups, targeting the density the NLL scores)", "--mode", "MODE", SAMPLING_MODES, ALL,
                   "ncp_sampling_mode", ("--ncp-sampling-mode",)),
    "num_proposals": Option("SIR proposals per latent group, or per image in joint mode", "--num-proposals", "N",
                            None, ALL, "ncp_num_proposals", ("--ncp-num-proposals",)),
    "steps": Option("Langevin steps per latent group", "--steps", "N", None, (EVALUATE, SAMPLE), None, ()),
    "step_size": Option("Langevin step size", "--step-size", "SIZE", None, (EVALUATE, SAMPLE), None, ()),
}


@dataclass(frozen=True)
class Config:
    """Everything a run is: what `python -m ncpfast.train` saves as config.json."""
    run: RunConfig = dataclasses.field(default_factory=RunConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    stage1: Stage1Config = dataclasses.field(default_factory=Stage1Config)
    logging: LoggingConfig = dataclasses.field(default_factory=LoggingConfig)
    stage2: Stage2Config = dataclasses.field(default_factory=Stage2Config)
    evaluation: EvaluationConfig = dataclasses.field(default_factory=EvaluationConfig)
    sampler: SamplerConfig = dataclasses.field(default_factory=SamplerConfig)

    def __post_init__(self):
        if self.stage2.base == "gmm" and self.model.kind == "nvae":
            raise ValueError("invalid configuration: stage2.base gmm needs a single-group model (model.kind mlp "
                             "or conv); the hierarchical nvae model's groups have conditional priors a GMM cannot "
                             "replace")


# The section titles of --help, in order, by the dotted path of each section.
SECTION_TITLES = {
    "run": "run",
    "data": "data",
    "model": "model",
    "model.nvae": "model: nvae (hierarchical)",
    "model.mlp": "model: mlp",
    "stage1": "stage 1: optimisation of the VAE",
    "logging": "logging and checkpoints",
    "stage2": "stage 2: the NCP classifiers",
    "evaluation": "evaluation",
    "sampler": "sampling the NCP prior",
}
EXTERNAL_OPTIONS = {SamplerConfig: SAMPLER_OPTIONS}
