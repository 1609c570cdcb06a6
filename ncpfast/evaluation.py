"""Evaluation of a run: NLL (importance-weighted, base prior vs NCP prior with
log Z folded in) and a Frechet distance of generated vs held-out images.

The Frechet distance always uses the features of a small classifier trained
once per data set (ncpfast.frechet: fixed seed, cached under a hash of the
data, its test accuracy reported), reported as "FD (small classifier
features)" with a bootstrap standard error, never as FID. When the user gives
pytorch-fid's Inception weights file, FID proper is computed as well
(ncpfast.fid_inception); those weights cannot be downloaded here.
"""
import contextlib
import math
import time
from typing import Callable, NamedTuple, Optional

import torch
from tqdm import tqdm

from .config import EvaluationConfig
from .data import load_dataset
from .fid_inception import load_fid_inception
from .frechet import FD_NAME, extract_features, fd_summary, feature_network, frechet_distance
from .models.base import iw_images_per_pass
from .models.temperature import readjust_batchnorm
from .ncp.contract import DEFAULT_SAMPLER, SamplerConfig
from .ncp.fitting import split_images
from .runtime import SINGLE_PROCESS, DistributedContext, host_broadcast_float, host_sum
from .stage2 import estimate_log_partition
from .trained_run import image_reader, load_ncp, load_run, stored_log_partition

FID_NAME = "FID (pytorch-fid Inception V3, 2048-d pool features)"

# One random stream per purpose, each from the seed alone, so that changing one
# part (log Z's draws or proposal, the NCP type, the sampler) leaves the others'
# draws as they were: the test set's binarisation above all, which makes NLLs
# of different runs of one model paired on the same data.
_STREAMS = ("sampling", "log_z", "test_binarisation", "readjust_bn", "step_size_tuning")
# Images generated per sampler call (bounds the SIR working set of a call).
_GENERATION_BATCH = 250
# Langevin step sizes tried by --step-size auto: a log grid from the 0.01 default
# (which moves a chain 5% of the way to its target in T = 10 steps) to 3, past
# where a unit-variance prior's chain is biased (stationary variance bias
# eta / (4 - eta)) or diverges (eta >= 4): on the embedded-scale hierarchical
# models the best FD at T = 5 and 20 sat at the grid's end when it stopped at 1.
# And the images each is scored on (their FD only has to rank step sizes whose
# samples differ widely).
STEP_SIZE_CANDIDATES = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
STEP_SIZE_TUNING_IMAGES = 250


def random_stream(seed: int, purpose: str, device) -> torch.Generator:
    """The generator of one purpose (_STREAMS) of an evaluation with this seed
    (one seed per pair: the CPU generator keeps only a seed's low 32 bits)."""
    return torch.Generator(device).manual_seed(seed * len(_STREAMS) + _STREAMS.index(purpose))


class Evaluation(NamedTuple):
    """metrics: what metrics.json keeps under "evaluation"; images: each prior's
    generated images (base, ncp, and gmm for an NCP-GMM), as the data set frames
    them (vae.in_data_frame), what the Frechet distances compared."""
    metrics: dict
    images: dict


class _ComparedPrior(NamedTuple):
    name: str
    log_likelihood: Callable   # (x, K, chunk) -> [B]
    draw: Callable             # (n, temperature, generator) -> images


@torch.no_grad()
def evaluate_run(run_dir: str, device: torch.device, settings: Optional[EvaluationConfig] = None,
                 sampler: SamplerConfig = DEFAULT_SAMPLER, seed: int = 0, progress: bool = True,
                 fd_cache_dir=None, distributed: DistributedContext = SINGLE_PROCESS) -> Optional[Evaluation]:
    """The run's priors side by side: the VAE's own ("base"), a GMM base alone where
    the NCP has one ("gmm", stage 2 with --ncp-base gmm), and the NCP prior ("ncp",
    sampled as `sampler` says). NLLs paired on the same posterior draws, with the
    differences NCP minus each other prior (and GMM minus base); Frechet distances
    (and FID given the weights). The NCP NLL's standard error includes log Z's,
    which shifts every image alike. seed: every random stream's (random_stream).

    Under torchrun (distributed) every rank computes its share of the NLL, which
    is most of an evaluation's time at the paper's K = 1,000, and rank 0 the rest
    (log Z, sampling, Frechet distances); the result is the single process's,
    number for number (_paired_log_likelihoods). Rank 0 returns the evaluation,
    the other ranks None."""
    s = settings or EvaluationConfig()
    main = distributed.is_main
    inception = load_fid_inception(s.fid_weights, device) if s.fid_weights and main else None  # bad path: first
    config, vae = load_run(run_dir, device)
    ncp = load_ncp(run_dir, vae)
    train, test = load_dataset(config.data.dataset, config.data.data_dir)
    log_z_estimate = log_z_source = None  # rank 0's alone
    if main:
        if s.log_z_samples is None and s.log_z_proposal is None:
            log_z_estimate, log_z_source = stored_log_partition(ncp, run_dir), "stage 2"
        else:
            log_z_estimate = estimate_log_partition(
                ncp, vae, train, device, s.log_z_samples or config.stage2.log_z_samples,
                s.log_z_proposal or config.stage2.log_z_proposal, random_stream(seed, "log_z", device))
            log_z_source = "re-estimated"
    log_z = host_broadcast_float(log_z_estimate.log_z if main else 0.0, distributed)

    sampling_ncp = ncp  # what the samples come from: rank 0's, on the re-adjusted copy when asked
    if main and s.readjust_bn:
        adjusted = readjust_batchnorm(vae, s.temperature, s.readjust_bn_batches,
                                      generator=random_stream(seed, "readjust_bn", device))
        sampling_ncp = load_ncp(run_dir, adjusted)
    # base and ncp first, then an NCP's own base (a GMM) as a prior of its own: the
    # order in which they share the sampling stream
    priors = [_ComparedPrior("base", vae.importance_weighted_log_likelihood,
                             lambda n, t, g: sampling_ncp.sample(n, method="base", temperature=t, generator=g)),
              _ComparedPrior("ncp",
                             lambda x, k, chunk: ncp.importance_weighted_log_likelihood(x, k, chunk, log_z=log_z),
                             lambda n, t, g: sampling_ncp.sample(n, sampler, temperature=t, generator=g))]
    if ncp.base_kind != "gaussian":
        priors.append(_ComparedPrior(ncp.base_kind, ncp.base_log_likelihood, sampling_ncp.base_sample))

    log_likelihoods = _paired_log_likelihoods(priors, vae, test, device, s, seed, progress, distributed)
    if not main:
        return None

    # The FD's feature network learns the data set's labels; without labels (CelebA)
    # there is no FD (and no step-size tuning), only FID when its weights are given.
    labelled = getattr(train, "labels", None) is not None and getattr(test, "labels", None) is not None
    features = feature_network(train, test, device, cache_dir=fd_cache_dir, progress=progress) if labelled else None
    tuning = None
    if s.tune_step_size and sampler.method == "langevin":
        tuning = tune_langevin_step_size(sampling_ncp, vae, train, features, config.stage2.batch_size, device,
                                         sampler, s, seed)
        sampler = sampler.with_settings(step_size=tuning["step_size"])
    real = test.batch(torch.arange(min(len(test), s.num_real or max(s.num_generated, 1000)))).to(device)
    real = vae.in_data_frame(real, real.shape[-1])  # generated images are framed to the data set's size
    generated, seconds = _generate(priors, vae, device, s, seed, real.shape[-1])
    metrics = {
        "iw_samples": s.iw_samples, "test_images": len(log_likelihoods["base"]), "temperature": s.temperature,
        "readjust_bn": s.readjust_bn, "readjust_bn_batches": s.readjust_bn_batches if s.readjust_bn else None,
        "log_z": log_z, "log_z_stderr": log_z_estimate.stderr, "log_z_samples": log_z_estimate.num_samples,
        "log_z_estimate": {**log_z_estimate.as_dict(), "source": log_z_source},
        "generated_images": s.num_generated,
    }
    metrics.update(_frechet_distances(generated, real, features, seed, inception))
    dims = vae.num_data_dims()
    log_z_variance = log_z_estimate.stderr ** 2
    for prior in priors:
        extra = log_z_variance if prior.name == "ncp" else 0.0
        metrics[prior.name] = {**_nll_summary(log_likelihoods[prior.name], dims, extra), **metrics.pop(prior.name),
                               "sampling_seconds": seconds[prior.name]}
    metrics["ncp"].update(sampling=sampler.method, sampling_mode=sampler.mode,
                          num_proposals=sampler.num_proposals if sampler.method == "sir" else None,
                          langevin_steps=sampler.steps if sampler.method == "langevin" else None,
                          langevin_step_size=sampler.step_size if sampler.method == "langevin" else None,
                          step_size_tuning=tuning)
    if ncp.base_kind != "gaussian":
        metrics["ncp"]["base"] = ncp.base_kind
        metrics[ncp.base_kind]["components"] = ncp.base.means.shape[0]
    # Paired differences (b - a in NLL): NCP against every other prior, and an NCP's
    # own base against the VAE's prior; log Z's error joins those that involve NCP.
    extras = [p.name for p in priors[2:]]
    pairs = [("base", "ncp")] + [(name, "ncp") for name in extras] + [("base", name) for name in extras]
    for a, b in pairs:
        difference = log_likelihoods[b] - log_likelihoods[a]
        images_error = float(difference.std() / math.sqrt(len(difference)))
        total_error = math.sqrt(images_error ** 2 + (log_z_variance if b == "ncp" else 0.0))
        key = f"nll_difference_{b}_minus_{a}"
        metrics[key] = float(-difference.mean())
        if (a, b) == ("base", "ncp"):  # the headline pair keeps its historical key names
            metrics["nll_difference_std_error"] = total_error
            metrics["nll_difference_std_error_images"] = images_error
        else:
            metrics[f"{key}_std_error"] = total_error
    return Evaluation(metrics, generated)


def tune_langevin_step_size(ncp, vae, train, features, stage2_batch_size: int, device, sampler: SamplerConfig,
                            s: EvaluationConfig, seed: int = 0, candidates=STEP_SIZE_CANDIDATES,
                            num_generated: int = STEP_SIZE_TUNING_IMAGES) -> dict:
    """The Langevin step size of STEP_SIZE_CANDIDATES whose samples (sampler's steps
    and mode, at the evaluation's temperature) have the smallest Frechet distance to
    held-out training images: those stage 2 held out from its classifiers
    (fitting.split_images, the last tenth), never the test images. A chain that
    diverges (non-finite images) scores infinity. features: the data set's FD
    feature network (frechet.feature_network; None without labels). Returns the
    choice and the table."""
    if sampler.method != "langevin":
        raise ValueError(f"step-size tuning is for the langevin sampler, not {sampler.method!r}")
    if features is None:
        raise ValueError("step-size tuning scores samples by the Frechet distance on a classifier's features, "
                         "which needs a labelled data set; give --step-size a number")
    _, held_out = split_images(len(train), 0.1, minimum=stage2_batch_size)
    real = train.batch(held_out).to(device)
    real = vae.in_data_frame(real, real.shape[-1])
    real_features = extract_features(features.net.features, real)
    fds = []
    for step_size in candidates:
        generator = random_stream(seed, "step_size_tuning", device)  # each candidate from the same noise
        chosen = sampler.with_settings(step_size=step_size)
        images = _draw_batched(lambda n, t, g, chosen=chosen: ncp.sample(n, chosen, temperature=t, generator=g),
                               num_generated, s.temperature, generator)
        if not torch.isfinite(images).all():
            fds.append(math.inf)
            continue
        images = vae.in_data_frame(images, real.shape[-1])
        fds.append(frechet_distance(extract_features(features.net.features, images), real_features))
    best = min(range(len(candidates)), key=fds.__getitem__)
    if not math.isfinite(fds[best]):
        raise ValueError(f"every Langevin step size of {list(candidates)} diverged; give --step-size a number")
    return {"step_size": candidates[best], "candidates": list(candidates),
            "at_grid_edge": best == len(candidates) - 1,  # a larger step might do better still
            "fd": [fd if math.isfinite(fd) else None for fd in fds], "generated_images": num_generated,
            "held_out_images": len(held_out), "criterion": f"{FD_NAME} against training images held out of stage 2"}


def _paired_log_likelihoods(priors, vae, test, device, s: EvaluationConfig, seed: int, progress: bool,
                            distributed: DistributedContext = SINGLE_PROCESS) -> dict:
    """Each prior's IW log-likelihood of the first max_images test images (CPU tensors),
    every prior on the same posterior draws (a paired comparison), on every device.

    Under torchrun, rank r scores the batches r, r + world_size, ...: every rank still
    reads (binarises) every batch in order, so each batch's images are the single
    process's, and each batch's posterior draws come from its own seed; the ranks'
    values meet in one sum in which each image has one non-zero term, so every number
    is the single process's exactly, on any number of ranks."""
    n = len(test) if s.max_images <= 0 else min(s.max_images, len(test))
    read = image_reader(test, vae.likelihood, device, random_stream(seed, "test_binarisation", device))
    batch = iw_images_per_pass(s.iw_samples, s.iw_chunk, device, most=100)
    values = {p.name: torch.zeros(n, dtype=torch.float64) for p in priors}  # exact for float32 and float64
    dtypes = {}
    for i, start in enumerate(tqdm(range(0, n, batch), desc=f"NLL (K={s.iw_samples})",
                                   disable=not (progress and distributed.is_main), leave=False)):
        stop = min(n, start + batch)
        x = read(torch.arange(start, stop))
        if i % distributed.world_size != distributed.rank:
            continue
        for prior in priors:
            with _seeded(seed * 1_000_003 + start, device):
                scored = prior.log_likelihood(x, s.iw_samples, s.iw_chunk)
            values[prior.name][start:stop] = scored.cpu()
            dtypes[prior.name] = scored.dtype
    # rank 0 scores the first batch, so it knows the dtype of every value it reports
    return {name: host_sum(value, distributed).to(dtypes.get(name, torch.float64))
            for name, value in values.items()}


def _draw_batched(draw, n: int, temperature: float, generator) -> torch.Tensor:
    """n images from draw(count, temperature, generator), _GENERATION_BATCH at a time."""
    return torch.cat([draw(min(_GENERATION_BATCH, n - i), temperature, generator)
                      for i in range(0, n, _GENERATION_BATCH)])


def _generate(priors, vae, device, s: EvaluationConfig, seed: int, size: int) -> tuple[dict, dict]:
    """({prior: num_generated images framed as the data set's, size x size}, {prior: seconds}),
    every prior drawing from the one sampling stream in turn."""
    generator = random_stream(seed, "sampling", device)
    images, seconds = {}, {}
    for prior in priors:
        start = time.perf_counter()
        drawn = _draw_batched(prior.draw, s.num_generated, s.temperature, generator)
        seconds[prior.name] = time.perf_counter() - start
        images[prior.name] = vae.in_data_frame(drawn, size)
    return images, seconds


def _frechet_distances(generated: dict, real: torch.Tensor, features, seed: int, inception) -> dict:
    """The Frechet distances' part of the metrics: {prior: {fd, fd_std_error[, fid]}}
    and what they were measured with; no FD without a feature network (features
    None: a data set without labels)."""
    labelled = features is not None
    out = {"fd_name": FD_NAME, "fd_feature_net": features.describe() if labelled else None,
           "real_images": real.shape[0]}
    real_features = extract_features(features.net.features, real) if labelled else None
    real_inception = extract_features(inception, real, batch=50) if inception is not None else None
    fd_generator = torch.Generator().manual_seed(seed)
    for name, images in generated.items():
        if images.shape[1:] != real.shape[1:]:
            raise ValueError(f"generated images {tuple(images.shape[1:])} and real ones {tuple(real.shape[1:])} "
                             "must have one shape for the Frechet distance")
        out[name] = (fd_summary(extract_features(features.net.features, images), real_features, fd_generator)
                     if labelled else {"fd": None, "fd_std_error": None})
        if inception is not None:
            out[name]["fid"] = frechet_distance(extract_features(inception, images, batch=50), real_inception)
    if inception is not None:
        out["fid_name"] = FID_NAME
    return out


def _nll_summary(log_likelihood: torch.Tensor, dims: int, extra_variance: float = 0.0) -> dict:
    nll = float(-log_likelihood.mean())
    data_error = float(log_likelihood.std() / math.sqrt(len(log_likelihood)))
    return dict(nll_nats=nll, nll_std_error=math.sqrt(data_error ** 2 + extra_variance),
                nll_std_error_images=data_error, bits_per_dim=nll / (math.log(2) * dims))


def format_table(result: dict) -> str:
    with_fid = "fid_name" in result
    rows = [("prior", "NLL (nats)", "bits/dim", result["fd_name"]) + ((result["fid_name"],) if with_fid else ())]
    gmm = "gmm" in result
    priors = (("base", "base"),) + ((("GMM", "gmm"),) if gmm else ()) + (("NCP-GMM" if gmm else "NCP", "ncp"),)
    for label, key in priors:
        scores = result[key]
        rows.append((label, f"{scores['nll_nats']:.2f} +- {scores['nll_std_error']:.2f}",
                     f"{scores['bits_per_dim']:.4f}",
                     "n/a (no labels)" if scores["fd"] is None
                     else f"{scores['fd']:.3f} +- {scores['fd_std_error']:.3f}")
                    + ((f"{scores['fid']:.3f}",) if with_fid else ()))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    estimate = result["log_z_estimate"]
    lines.append(f"log Z = {result['log_z']:.4f} +- {result['log_z_stderr']:.4f} ({estimate['num_samples']} samples "
                 f"from the {estimate['proposal']} proposal, effective sample size {estimate['ess']:.0f} = "
                 f"{100 * estimate['ess_fraction']:.1f}%); "
                 f"K = {result['iw_samples']} on {result['test_images']} test images; NCP - base NLL = "
                 f"{result['nll_difference_ncp_minus_base']:.3f} +- {result['nll_difference_std_error']:.3f} nats; "
                 + (f"NCP-GMM - GMM NLL = {result['nll_difference_ncp_minus_gmm']:.3f} +- "
                    f"{result['nll_difference_ncp_minus_gmm_std_error']:.3f} nats; GMM - base NLL = "
                    f"{result['nll_difference_gmm_minus_base']:.3f} +- "
                    f"{result['nll_difference_gmm_minus_base_std_error']:.3f} nats "
                    f"(GMM of {result['gmm']['components']} components); " if "gmm" in result else "")
                 + f"temperature {result['temperature']}"
                 + (f" (BatchNorm re-adjusted on {result['readjust_bn_batches']} batches)"
                    if result.get("readjust_bn") else "")
                 + f"; Frechet distances: {result['generated_images']} generated vs {result['real_images']} test "
                 + (f"images, features of a classifier with {100 * result['fd_feature_net']['test_accuracy']:.1f}% "
                    "test accuracy" if result["fd_feature_net"] else "images (no FD: the data set has no labels)")
                 + "; NCP sampling: "
                 f"{result['ncp']['sampling']} ({result['ncp']['sampling_mode']})" + _step_size_note(result["ncp"]))
    if estimate.get("warning"):
        lines.append(f"warning: {estimate['warning']}")
    return "\n".join(lines)


def _step_size_note(ncp: dict) -> str:
    if ncp.get("langevin_step_size") is None:
        return ""
    tuning = ncp.get("step_size_tuning")
    return f", step size {ncp['langevin_step_size']}" + (
        f" (tuned on {tuning['held_out_images']} held-out training images"
        + ("; the grid's largest: a larger one might do better" if tuning.get("at_grid_edge") else "") + ")"
        if tuning else "")


@contextlib.contextmanager
def _seeded(seed: int, device):
    """Every RNG the computation on `device` draws from set from one seed inside,
    restored outside."""
    devices = [device] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
