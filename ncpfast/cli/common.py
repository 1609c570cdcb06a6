"""What the command-line programs share."""
import argparse

from ..checkpoint import CheckpointError
from ..data import DataError
from ..evaluation import STEP_SIZE_CANDIDATES
from ..models.temperature import DEFAULT_BATCH_SIZE, DEFAULT_BATCHES
from ..ncp.contract import DEFAULT_SAMPLER, SamplerConfig
from ..ncp.joint_sampling import SAMPLING_MODES
from ..run_dir import RunDirError
from ..training import TrainingDiverged

# Errors that are the user's to fix: printed as one line, exit status 2.
USER_ERRORS = (ValueError, DataError, CheckpointError, RunDirError, TrainingDiverged, FileNotFoundError)


def add_sampler_arguments(group, tunable_step_size: bool = False) -> None:
    """The NCP samplers' options (sample and evaluate take the same ones), with the
    defaults of SamplerConfig; tunable_step_size: --step-size also takes "auto"."""
    d = DEFAULT_SAMPLER
    group.add_argument("--mode", choices=list(SAMPLING_MODES), default=d.mode,
                       help="group: group by group (the paper's samplers); joint: SIR over whole samples or "
                            f"Langevin on all groups, targeting the density the NLL scores (default {d.mode})")
    group.add_argument("--num-proposals", type=int, default=d.num_proposals, metavar="N",
                       help=f"SIR proposals per latent group, or per image in joint mode (default {d.num_proposals})")
    group.add_argument("--steps", type=int, default=d.steps, metavar="N",
                       help=f"Langevin steps per latent group (default {d.steps})")
    if tunable_step_size:
        group.add_argument("--step-size", type=_step_size, default=d.step_size, metavar="SIZE",
                           help=f"Langevin step size (default {d.step_size}), or auto: the one of "
                                f"{', '.join(map(str, STEP_SIZE_CANDIDATES))} whose samples are closest (FD) to "
                                "training images held out of stage 2, chosen before the evaluation")
    else:
        group.add_argument("--step-size", type=float, default=d.step_size, metavar="SIZE",
                           help=f"Langevin step size (default {d.step_size})")


def _step_size(text: str):
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or auto, got {text!r}") from None


def sampler_from_args(args) -> SamplerConfig:
    """The SamplerConfig of parsed sampler options (its checks name the bad value);
    --step-size auto leaves the default until the tuning picks one."""
    step_size = DEFAULT_SAMPLER.step_size if args.step_size == "auto" else args.step_size
    return SamplerConfig(method=args.method, mode=args.mode, num_proposals=args.num_proposals, steps=args.steps,
                         step_size=step_size)


def add_temperature_arguments(group) -> None:
    """The prior temperature and NVAE's BatchNorm re-adjustment for it."""
    group.add_argument("--temperature", type=float, default=1.0, metavar="T",
                       help="prior temperature (default 1.0); at T < 1 the NCP classifiers score latents and "
                            "decoder contexts they were not trained on")
    group.add_argument("--readjust-bn", action="store_true",
                       help="re-estimate the decoder's BatchNorm statistics on prior samples at the temperature "
                            "before sampling (NVAE's re-adjustment for T < 1; on a copy of the model)")
    group.add_argument("--readjust-bn-batches", type=int, default=DEFAULT_BATCHES, metavar="N",
                       help=f"batches of {DEFAULT_BATCH_SIZE} prior samples for --readjust-bn "
                            f"(default {DEFAULT_BATCHES})")
