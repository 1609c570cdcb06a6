"""What the command-line programs share."""
from ..checkpoint import CheckpointError
from ..data import DataError
from ..models.temperature import DEFAULT_BATCH_SIZE, DEFAULT_BATCHES
from ..run_dir import RunDirError
from ..training import TrainingDiverged

# Errors that are the user's to fix: printed as one line, exit status 2.
USER_ERRORS = (ValueError, DataError, CheckpointError, RunDirError, TrainingDiverged, FileNotFoundError)


def add_sampler_arguments(group) -> None:
    """The NCP samplers' options (sample and evaluate take the same ones)."""
    group.add_argument("--mode", choices=["group", "joint"], default="group",
                       help="group: group by group (the paper's samplers); joint: SIR over whole samples or "
                            "Langevin on all groups, targeting the density the NLL scores (default group)")
    group.add_argument("--num-proposals", type=int, default=50, metavar="N",
                       help="SIR proposals per latent group, or per image in joint mode (default 50)")
    group.add_argument("--steps", type=int, default=50, metavar="N",
                       help="Langevin steps per latent group (default 50)")
    group.add_argument("--step-size", type=float, default=1e-2, metavar="SIZE",
                       help="Langevin step size (default 0.01)")


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
