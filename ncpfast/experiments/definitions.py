"""The experiments as data: which runs each one trains, which priors it compares,
and its sizes (the defaults, and --quick).

Every run is a command line of the stable programs (python -m ncpfast.train,
ncpfast.evaluate, ncpfast.sample); the runner adds --seed, --run-dir and the
progress switch. An argument list is written as one string and split on spaces.
Later arguments win (argparse), so a training's own arguments come after its
experiment's size arguments.
"""
from dataclasses import dataclass, field
from typing import Optional

# The option that picks group-wise or joint sampling (SIR and Langevin) in
# ncpfast.evaluate and ncpfast.sample.
SAMPLING_MODE_FLAG = "--mode"
# ncpfast.evaluate's --step-size value that tunes Langevin's step size first.
STEP_SIZE_AUTO = "auto"
# The option that picks the NCP base prior in stage 2.
NCP_BASE_FLAG = "--ncp-base"


def args(text: str) -> tuple[str, ...]:
    return tuple(text.split())


@dataclass(frozen=True)
class Training:
    """One trained model (stage 1 and stage 2 with the default base), and the
    stage-2 variants trained on copies of its stage-1 run."""
    key: str                 # names its run directories
    label: str               # names it in tables and plots
    train_args: tuple[str, ...]
    # variant key -> (label, extra stage-2 arguments); each gets a copy of the stage-1 run
    variants: dict[str, tuple[str, tuple[str, ...]]] = field(default_factory=dict)


@dataclass(frozen=True)
class Sampler:
    """One sampler setting of the `sampler` experiment, for ncpfast.evaluate and ncpfast.sample."""
    method: str              # sir | langevin
    mode: str                # group | joint
    amount: int              # SIR proposals M, or Langevin steps T

    @property
    def key(self) -> str:
        return f"{self.method}-{self.mode}-{self.amount}"

    @property
    def label(self) -> str:
        # joint SIR draws M whole samples per image; group-wise SIR M per latent group
        what = f"M={self.amount}" if self.method == "sir" else f"T={self.amount}"
        return f"{'SIR' if self.method == 'sir' else 'Langevin'} {self.mode} {what}"

    def cli_args(self) -> tuple[str, ...]:
        """The setting's options for ncpfast.evaluate: Langevin's step size tuned per
        setting on held-out training images (--step-size auto), as a user would, so
        that T is compared at a fair step size rather than at one fixed for all."""
        if self.method == "sir":
            return ("--method", "sir", "--num-proposals", str(self.amount), SAMPLING_MODE_FLAG, self.mode)
        return ("--method", "langevin", "--steps", str(self.amount), "--step-size", STEP_SIZE_AUTO,
                SAMPLING_MODE_FLAG, self.mode)

    def sample_args(self, step_size: Optional[float] = None) -> tuple[str, ...]:
        """The setting's options for ncpfast.sample, with the step size its evaluation chose."""
        arguments = tuple(a for a in self.cli_args() if a not in ("--step-size", STEP_SIZE_AUTO))
        return arguments + (("--step-size", str(step_size)) if step_size is not None else ())


@dataclass(frozen=True)
class Row:
    """A row of an experiment's table: one prior of one run (base or ncp), by
    training key, variant key ('' for the training's own stage 2) and sampler key
    ('' for the training's own evaluation)."""
    label: str
    training: str
    prior: str               # base | ncp
    variant: str = ""
    sampler: str = ""


@dataclass(frozen=True)
class Sizes:
    train_args: tuple[str, ...]          # before each training's own arguments
    evaluate_args: tuple[str, ...] = ()  # for the sampler experiment's ncpfast.evaluate calls
    samplers: tuple[Sampler, ...] = ()
    sample_images: int = 64              # images of each sampler's grid (ncpfast.sample -n)


@dataclass(frozen=True)
class Experiment:
    name: str
    title: str
    paper: str               # what the paper reports, for the generated section
    trainings: tuple[Training, ...]
    rows: tuple[Row, ...]
    comparisons: tuple[tuple[str, str], ...]   # (row a, row b): paired difference b - a, same seed
    metrics: tuple[str, ...]                   # what the tables and bar plots show
    default: Sizes
    quick: Sizes
    note: str = ""

    def sizes(self, quick: bool) -> Sizes:
        return self.quick if quick else self.default

    def training(self, key: str) -> Training:
        return next(t for t in self.trainings if t.key == key)


# --- sizes -------------------------------------------------------------------------------

# The tiny hierarchical model of the tests: seconds per run on 2 CPU cores.
_QUICK_NVAE = args("--channels 4 --latent-channels 2 --batch-size 250 --epochs 1 --iw-samples 3 "
                   "--max-images 20 --num-generated 100 --ncp-epochs 1 --ncp-hidden 8 --ncp-cells 1 "
                   "--log-z-samples 200 --num-proposals 5")
_QUICK_CONV_WIDTH = args("--channels 4")
_QUICK_FLAT = args("--batch-size 250 --epochs 1 --iw-samples 20 --max-images 50 --iw-chunk 0 "
                   "--num-generated 100 --ncp-epochs 1 --ncp-hidden 8 --ncp-cells 1 --log-z-samples 200 "
                   "--num-proposals 5")
# Defaults: each experiment about 45 minutes or less on 2 CPU cores. Measured on the 2-core
# AMD EPYC VM (docs/results.md), one thread per run: sampler 15 min (42 runs), groups 26 min for
# 10 of its 12 runs, gmm-base 8 min for 5 of its 6 (stage 1 of the conv VAE ~3 min); with two
# threads, alone: single-latent 9 min.
# The hierarchical model: the `tiny` preset at half its width
# (channels 8) and half its schedule (4 of 8 epochs), K = 50 on 200 test digits.
_DEFAULT_NVAE = args("--channels 8 --epochs 4 --iw-samples 50 --max-images 200 --num-generated 1000 "
                     "--ncp-epochs 5 --log-z-samples 10000 --num-proposals 50")
# The sampler experiment scores its samplers itself: its training's own evaluation is small.
_DEFAULT_SAMPLER = args("--channels 8 --epochs 4 --iw-samples 10 --max-images 20 --num-generated 200 "
                        "--ncp-epochs 5 --log-z-samples 1000 --num-proposals 5")
# The LARS/SNIS MLP VAE with its preset's 100 epochs; stage 2 as in docs/results.md's single-latent
# runs (50 epochs, 256 wide, log Z from 100,000 samples); NLL with K = 1,000 on all 1,000 test digits.
_DEFAULT_FLAT = args("--iw-samples 1000 --max-images 0 --iw-chunk 250 --num-generated 1000 "
                     "--ncp-epochs 50 --ncp-hidden 256 --log-z-samples 100000 --num-proposals 50")
# The conv VAE (preset mnist-conv, 30 epochs): Table 7 reports FID, so the NLL is the cheaper
# K = 100 on 500 test digits; stage 2 as for the MLP VAE.
_DEFAULT_CONV = args("--iw-samples 100 --max-images 500 --iw-chunk 100 --num-generated 1000 "
                     "--ncp-epochs 50 --ncp-hidden 256 --log-z-samples 100000 --num-proposals 50")


def _samplers(sir_group, sir_joint, langevin):
    return (tuple(Sampler("sir", "group", m) for m in sir_group)
            + tuple(Sampler("sir", "joint", m) for m in sir_joint)
            + tuple(Sampler("langevin", mode, t) for mode in ("group", "joint") for t in langevin))


# --- the experiments ---------------------------------------------------------------------

def _groups() -> Experiment:
    counts = (1, 2, 4, 8)
    trainings = tuple(Training(f"groups{g}", f"{g} group{'s' if g > 1 else ''}",
                               args(f"--preset tiny --num-latent-scales 1 --num-groups-per-scale {g}"))
                      for g in counts)
    rows = tuple(Row(f"{t.label}: {name}", t.key, prior) for t in trainings
                 for name, prior in (("base", "base"), ("NCP", "ncp")))
    return Experiment(
        name="groups", title="Latent groups: base vs NCP (paper Table 5)",
        paper="CelebA-64 FID, NVAE -> NCP-VAE: 6 groups 33.18 -> 18.68; 15 groups 14.96 -> 5.96; "
              "30 groups 13.48 -> 5.25 (more groups: NCP helps more, relative to the base).",
        trainings=trainings, rows=rows,
        comparisons=tuple((f"{t.label}: base", f"{t.label}: NCP") for t in trainings),
        metrics=("nll_nats", "fd"),
        default=Sizes(_DEFAULT_NVAE), quick=Sizes(_QUICK_NVAE),
        note="The hierarchical model of the `tiny` preset (at half its width and schedule by default) with one "
             "latent scale of 1, 2, 4 or 8 groups of 8 x 8 x 8 latents on the embedded MNIST; the paper's CelebA-64 "
             "runs need its data set.")


def _sampler() -> Experiment:
    training = Training("sampler", "2 groups", args("--preset tiny --num-latent-scales 1 --num-groups-per-scale 2 "
                                                     "--ncp-hidden 16 --ncp-cells 1"))
    default = Sizes(_DEFAULT_SAMPLER, args("--num-generated 500 --num-real 1000 --iw-samples 1 --max-images 2 "
                                        "--log-z-samples 100"),
                    _samplers((5, 50, 500, 5000), (5, 50, 500), (5, 20, 100)))
    quick = Sizes(_QUICK_NVAE, args("--num-generated 100 --num-real 200 --iw-samples 1 --max-images 2 "
                                    "--log-z-samples 20"),
                  _samplers((5, 50), (5,), (5,)), sample_images=16)
    samplers = {s.key: s for s in default.samplers + quick.samplers}
    rows = (Row("base prior", "sampler", "base", sampler=default.samplers[0].key),) + tuple(
        Row(s.label, "sampler", "ncp", sampler=s.key) for s in samplers.values())
    return Experiment(
        name="sampler", title="SIR vs Langevin at equal compute, group-wise and joint (paper Table 6)",
        paper="More SIR proposals or more Langevin steps improve FID; SIR is faster per batch (parallel) "
              "but its memory grows with the proposal count.",
        trainings=(training,), rows=rows, comparisons=tuple(("base prior", r.label) for r in rows[1:]),
        metrics=("fd", "seconds_per_1000", "peak_rss_mib"),
        default=default, quick=quick,
        note="One model (the `tiny` preset's at half width, one latent scale of 2 groups, classifiers 16 wide with "
             "one cell) per seed; "
             "each sampler setting is one `python -m ncpfast.evaluate` process: FD of its images against held-out "
             "digits, sampling seconds per 1,000 images, and the process's peak resident memory.")


# The single-group runs, with the Gaussian base (stage 2 of the training itself) and a GMM
# base (stage 2 on a copy of the same stage-1 run): the LARS/SNIS MLP VAE and the RAE conv VAE.
_GMM_VARIANT = {"gmm": ("GMM base", (NCP_BASE_FLAG, "gmm"))}
_SINGLE = Training("single", "MLP VAE", args("--preset mnist-single"), variants=_GMM_VARIANT)
_CONV = Training("conv", "conv VAE", args("--preset mnist-conv"), variants=_GMM_VARIANT)


def _prior_rows(training: str) -> tuple[Row, ...]:
    return (Row("Gaussian prior", training, "base"), Row("GMM prior", training, "gmm", variant="gmm"),
            Row("NCP (Gaussian base)", training, "ncp"), Row("NCP (GMM base)", training, "ncp", variant="gmm"))


def _gmm_base() -> Experiment:
    return Experiment(
        name="gmm-base", title="A GMM base under NCP (paper Table 7)",
        paper="Single latent group, RAE architecture, CelebA-64 FID: Gaussian prior 48.12, NCP with a Gaussian "
              "base 41.28, NCP with a GMM base 39.00.",
        trainings=(_CONV,), rows=_prior_rows("conv"),
        comparisons=(("Gaussian prior", "NCP (Gaussian base)"), ("Gaussian prior", "GMM prior"),
                     ("GMM prior", "NCP (GMM base)"), ("NCP (Gaussian base)", "NCP (GMM base)")),
        metrics=("fd", "nll_nats"), default=Sizes(_DEFAULT_CONV), quick=Sizes(_QUICK_FLAT + _QUICK_CONV_WIDTH),
        note="The RAE conv architecture of the paper's `celeba64-rae` preset at MNIST scale (preset `mnist-conv`: "
             "width 16 instead of 128, latent dimension 20, Bernoulli output on the embedded MNIST padded to "
             "32 x 32, 30 epochs); the paper's CelebA-64 run needs its data set (`--preset celeba64-rae "
             "--data-dir DIR`). NLL with K = 100 on 500 test digits.")


def _single_latent() -> Experiment:
    return Experiment(
        name="single-latent", title="Single latent group: Gaussian vs GMM vs NCP (paper Table 8)",
        paper="Single latent group, LARS/SNIS architecture, MNIST NLL (nats): Gaussian prior 84.82, LARS 83.03, "
              "SNIS 82.52, NCP-VAE 82.82.",
        trainings=(_SINGLE,), rows=_prior_rows("single"),
        comparisons=(("Gaussian prior", "NCP (Gaussian base)"), ("Gaussian prior", "GMM prior"),
                     ("GMM prior", "NCP (GMM base)")),
        metrics=("nll_nats", "fd"), default=Sizes(_DEFAULT_FLAT), quick=Sizes(_QUICK_FLAT),
        note="The `mnist-single` preset (latent dim 50, two tanh layers of 300) on the embedded MNIST "
             "(4,000 training and 1,000 test digits).")


EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in (_groups(), _sampler(), _gmm_base(), _single_latent())}
ALL = tuple(EXPERIMENTS)


def experiment(name: str) -> Experiment:
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; choose one of {', '.join(EXPERIMENTS)} or all")
    return EXPERIMENTS[name]


def sampler_by_key(exp: Experiment, key: str) -> Optional[Sampler]:
    for s in exp.default.samplers + exp.quick.samplers:
        if s.key == key:
            return s
    return None
