"""The pipeline: each step of NCP-VAE as one function of a run directory and its
settings, what the command-line programs (and anyone scripting ncpfast) call.

    train_stage1(config, run_dir)        the VAE (ncpfast.training.Trainer)
    train_stage2(config, run_dir)        the NCP classifiers and log Z (ncpfast.stage2)
    evaluate(run_dir, device, ...)       base vs NCP: NLL (data parallel under torchrun), Frechet distances
    sample(run_dir, device, n, ...)      images from the base or NCP prior
    stage2_and_evaluation(config, run_dir)   what `python -m ncpfast.train` does after stage 1

Each step records its results in the run directory (metrics.json, checkpoints,
sample grids); the programs print them. ncpfast.ncp holds NCP's mathematics,
the modules below this one the mechanics of each step.
"""
from typing import NamedTuple, Optional

import torch

from .config import Config, EvaluationConfig
from .evaluation import Evaluation, evaluate_run
from .images import save_side_by_side
from .models.temperature import DEFAULT_BATCHES, readjust_batchnorm
from .ncp.contract import DEFAULT_SAMPLER, SamplerConfig, check_samples, check_temperature
from .run_dir import RunDir
from .runtime import SINGLE_PROCESS, DistributedContext, pick_device, wait_for_rank0
from .stage2 import train_stage2 as fit_stage2
from .trained_run import load_ncp, load_run


class Stage1Result(NamedTuple):
    metrics: dict                   # the training's summary (status, steps, images/s, test NLL)
    distributed: DistributedContext  # the process group it ran in (torchrun), for the stages after it


def train_stage1(config: Config, run_dir: str, resume: bool = False, final_nll: bool = False) -> Stage1Result:
    """Trains (or, resume=True, continues exactly) the VAE of `config` in run_dir;
    final_nll: the test NLL at the end (when no stage 2 follows to report it)."""
    from .training import Trainer  # the trainer pulls in TensorBoard: only when training

    trainer = Trainer(config, run_dir, resume=resume, final_nll=final_nll)
    return Stage1Result(trainer.train(), trainer.ctx)


def train_stage2(config: Config, run_dir: str, distributed: DistributedContext = SINGLE_PROCESS) -> Optional[dict]:
    """Stage 2 on the finished stage-1 run in run_dir with the config's stage-2
    settings (data parallel under torchrun), TensorBoard curves in the run; rank 0
    records and returns the summary (the other ranks: None)."""
    from torch.utils.tensorboard import SummaryWriter

    run = RunDir(run_dir)
    device = pick_device(config.run.device, distributed.local_rank)
    writer = SummaryWriter(run.tensorboard_dir) if distributed.is_main else None
    try:
        summary = fit_stage2(run_dir, device, config.stage2, config.run.seed, config.logging.progress, writer,
                             distributed)
    finally:
        if writer is not None:
            writer.close()
    if distributed.is_main:
        run.merge_metrics("ncp", summary)
    return summary


def evaluate(run_dir: str, device: torch.device, settings: Optional[EvaluationConfig] = None,
             sampler: SamplerConfig = DEFAULT_SAMPLER, seed: int = 0, progress: bool = True,
             distributed: DistributedContext = SINGLE_PROCESS) -> Optional[Evaluation]:
    """The run's priors side by side (ncpfast.evaluation.evaluate_run), recorded in
    its metrics.json under "evaluation". Under torchrun the ranks share the NLL and
    rank 0 records and returns the evaluation (the other ranks: None)."""
    evaluation = evaluate_run(run_dir, device, settings, sampler, seed, progress=progress, distributed=distributed)
    if evaluation is not None:
        RunDir(run_dir).merge_metrics("evaluation", evaluation.metrics)
    return evaluation


def stage2_and_evaluation(config: Config, run_dir: str,
                          distributed: DistributedContext = SINGLE_PROCESS) -> Optional[tuple[dict, Evaluation]]:
    """Stage 2, then the evaluation with the config's settings (under torchrun the ranks
    share its NLL) and, on rank 0, the side-by-side grid of both priors' samples
    (RunDir.sample_grid). Rank 0 returns (stage-2 summary, evaluation); the other ranks None."""
    summary = train_stage2(config, run_dir, distributed)
    wait_for_rank0(distributed)  # rank 0 estimates log Z and saves the classifiers alone
    device = pick_device(config.run.device, distributed.local_rank)
    evaluation = evaluate(run_dir, device, config.evaluation, config.sampler, config.run.seed, config.logging.progress,
                          distributed)
    if not distributed.is_main:
        return None
    n = config.logging.num_sample_images
    save_side_by_side([evaluation.images["base"][:n], evaluation.images["ncp"][:n]], RunDir(run_dir).sample_grid)
    return summary, evaluation


@torch.no_grad()
def sample(run_dir: str, device: torch.device, n: int, sampler: SamplerConfig = DEFAULT_SAMPLER,
           temperature: float = 1.0, readjust_bn: bool = False, readjust_bn_batches: int = DEFAULT_BATCHES,
           seed: int = 0) -> torch.Tensor:
    """n images in [0, 1] from the run's priors: sampler.method "base" (the VAE's own
    prior) or the NCP prior (sir, langevin). readjust_bn: from a copy of the VAE
    whose decoder BatchNorm statistics were re-estimated at the temperature first
    (NVAE's re-adjustment, on readjust_bn_batches batches of prior samples)."""
    check_samples(n)
    check_temperature(temperature)
    _, vae = load_run(run_dir, device)
    if readjust_bn:
        vae = readjust_batchnorm(vae, temperature, readjust_bn_batches,
                                 generator=torch.Generator(device).manual_seed(seed + 1))
    generator = torch.Generator(device).manual_seed(seed)
    if sampler.method == "base":
        return vae.sample(n, temperature, generator=generator)
    return load_ncp(run_dir, vae).sample(n, sampler, temperature=temperature, generator=generator)
