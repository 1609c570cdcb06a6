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
from typing import Optional

import torch
from tqdm import tqdm

from .data import load_dataset
from .fid_inception import load_fid_inception
from .frechet import FD_NAME, extract_features, fd_summary, feature_network, frechet_distance
from .models.base import iw_images_per_pass
from .models.temperature import DEFAULT_BATCHES, readjust_batchnorm
from .pipeline import estimate_log_partition, image_reader, load_ncp, load_run, stored_log_partition

FID_NAME = "FID (pytorch-fid Inception V3, 2048-d pool features)"

# One random stream per purpose, each from the seed alone, so that changing one
# part (log Z's draws or proposal, the NCP type, the sampler) leaves the others'
# draws as they were: the test set's binarisation above all, which makes NLLs
# of different runs of one model paired on the same data.
_STREAMS = ("sampling", "log_z", "test_binarisation", "readjust_bn")


def random_stream(seed: int, purpose: str, device) -> torch.Generator:
    """The generator of one purpose (_STREAMS) of an evaluation with this seed
    (one seed per pair: the CPU generator keeps only a seed's low 32 bits)."""
    return torch.Generator(device).manual_seed(seed * len(_STREAMS) + _STREAMS.index(purpose))


@torch.no_grad()
def evaluate_run(run_dir: str, device: torch.device, iw_samples: int = 100, max_images: int = 0,
                 iw_chunk: int = 0, num_generated: int = 1000, method: str = "sir", num_proposals: int = 50,
                 steps: int = 50, step_size: float = 1e-2, temperature: float = 1.0,
                 log_z_samples: Optional[int] = None, seed: int = 0, progress: bool = True, fid_weights: str = "",
                 num_real: int = 0, mode: str = "group", log_z_proposal: Optional[str] = None, fd_cache_dir=None,
                 readjust_bn: bool = False,
                 readjust_bn_batches: int = DEFAULT_BATCHES) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """Base prior and NCP prior side by side: NLL and Frechet distance (and FID given `fid_weights`).

    `num_real` held-out images are the reference set of the Frechet distances
    (0: max(num_generated, 1000), at most the whole test split). mode: "group"
    or "joint" samplers (GroupedNCP.sample). log Z: stage 2's stored estimate,
    unless log_z_samples or log_z_proposal ("prior" or "aggregate-posterior",
    single-group flat models) asks for a new one (the other from stage 2's
    config), which is not stored. The NCP NLL's standard error includes log Z's,
    which shifts every image alike.

    An NCP whose base is a GMM (stage 2 with --ncp-base gmm, a FlatNCP) adds a "gmm"
    entry: NLL and FD under the GMM prior alone, with the paired differences
    NCP-GMM minus GMM and GMM minus base.

    temperature scales the priors of the generated images; at T < 1 the NCP
    classifiers score latents (and, in hierarchical models, decoder contexts)
    they were not trained on. readjust_bn: sample from a copy of the VAE whose
    decoder BatchNorm statistics were re-estimated on readjust_bn_batches batches
    of prior samples at that temperature (NVAE's re-adjustment,
    ncpfast.models.temperature); the NLL always uses the checkpoint's statistics.

    Returns (result, base images, NCP images): the images as the data set
    frames them (vae.in_data_frame), what the Frechet distances compared."""
    if iw_samples < 1 or num_generated < 2 or num_real < 0 or num_real == 1:
        raise ValueError(f"need iw_samples >= 1, num_generated >= 2 and num_real 0 or >= 2, got {iw_samples}, "
                         f"{num_generated} and {num_real}")
    inception = load_fid_inception(fid_weights, device) if fid_weights else None  # a bad path fails first
    config, vae = load_run(run_dir, device)
    ncp = load_ncp(run_dir, vae)
    sampler = ncp
    if readjust_bn:
        adjusted = readjust_batchnorm(vae, temperature, readjust_bn_batches,
                                      generator=random_stream(seed, "readjust_bn", device))
        sampler = load_ncp(run_dir, adjusted)
    gmm = getattr(ncp, "base_kind", None) == "gmm"
    train, test = load_dataset(config.dataset, config.data_dir)
    n = len(test) if max_images <= 0 else min(max_images, len(test))
    if log_z_samples is None and log_z_proposal is None:
        log_z_estimate, log_z_source = stored_log_partition(ncp, run_dir), "stage 2"
    else:
        log_z_estimate = estimate_log_partition(ncp, vae, train, device, log_z_samples or config.ncp_log_z_samples,
                                                log_z_proposal or config.ncp_log_z_proposal,
                                                random_stream(seed, "log_z", device))
        log_z_source = "re-estimated"
    log_z = log_z_estimate.log_z

    read = image_reader(test, vae.likelihood, device, random_stream(seed, "test_binarisation", device))
    batch = iw_images_per_pass(iw_samples, iw_chunk, device, most=100)
    base_ll, ncp_ll, gmm_ll = [], [], []
    for start in tqdm(range(0, n, batch), desc=f"NLL (K={iw_samples})", disable=not progress, leave=False):
        x = read(torch.arange(start, min(n, start + batch)))
        # The same posterior draws for both priors, on every device: a paired comparison.
        with _seeded(seed * 1_000_003 + start, device):
            base_ll.append(vae.importance_weighted_log_likelihood(x, iw_samples, iw_chunk))
        with _seeded(seed * 1_000_003 + start, device):
            ncp_ll.append(ncp.importance_weighted_log_likelihood(x, iw_samples, iw_chunk, log_z=log_z))
        if gmm:
            with _seeded(seed * 1_000_003 + start, device):
                gmm_ll.append(ncp.base_log_likelihood(x, iw_samples, iw_chunk))
    base_ll, ncp_ll = torch.cat(base_ll).cpu(), torch.cat(ncp_ll).cpu()
    dims = vae.num_data_dims()

    # The FD's feature network learns the data set's labels; without labels (CelebA)
    # there is no FD, only FID when its weights are given.
    labelled = getattr(train, "labels", None) is not None and getattr(test, "labels", None) is not None
    features = feature_network(train, test, device, cache_dir=fd_cache_dir, progress=progress) if labelled else None
    real = test.batch(torch.arange(min(len(test), num_real or max(num_generated, 1000)))).to(device)
    size = real.shape[-1]  # the data set's image size: generated images are framed to it
    real = vae.in_data_frame(real, size)
    real_features = extract_features(features.net.features, real) if labelled else None

    def fd_of(images):
        if images.shape[1:] != real.shape[1:]:
            raise ValueError(f"generated images {tuple(images.shape[1:])} and real ones {tuple(real.shape[1:])} "
                             "must have one shape for the Frechet distance")
        if not labelled:
            return {"fd": None, "fd_std_error": None}
        return fd_summary(extract_features(features.net.features, images), real_features, fd_generator)
    timings = {}
    g = random_stream(seed, "sampling", device)

    def generate(name, draw=None, **kw):
        start = time.perf_counter()
        draw = draw or sampler.sample
        images = torch.cat([draw(min(250, num_generated - i), temperature=temperature, generator=g, **kw)
                            for i in range(0, num_generated, 250)])
        timings[name] = time.perf_counter() - start
        return vae.in_data_frame(images, size)

    base_images = generate("base", method="base")
    ncp_images = generate(method, method=method, num_proposals=num_proposals, steps=steps, step_size=step_size,
                          mode=mode)
    fd_generator = torch.Generator().manual_seed(seed)

    def nll_summary(ll, extra_variance=0.0):
        nll = float(-ll.mean())
        data_error = float(ll.std() / math.sqrt(len(ll)))
        return dict(nll_nats=nll, nll_std_error=math.sqrt(data_error ** 2 + extra_variance),
                    nll_std_error_images=data_error, bits_per_dim=nll / (math.log(2) * dims))

    log_z_variance = log_z_estimate.stderr ** 2
    paired_error = float((ncp_ll - base_ll).std() / math.sqrt(len(base_ll)))
    result = {
        "iw_samples": iw_samples, "test_images": n, "temperature": temperature, "readjust_bn": readjust_bn,
        "readjust_bn_batches": readjust_bn_batches if readjust_bn else None,
        "log_z": log_z, "log_z_stderr": log_z_estimate.stderr, "log_z_samples": log_z_estimate.num_samples,
        "log_z_estimate": {**log_z_estimate.as_dict(), "source": log_z_source},
        "fd_name": FD_NAME, "fd_feature_net": features.describe() if labelled else None,
        "generated_images": num_generated,
        "real_images": real.shape[0],
        "base": {**nll_summary(base_ll),
                 **fd_of(base_images),
                 "sampling_seconds": timings["base"]},
        "ncp": {**nll_summary(ncp_ll, log_z_variance),
                **fd_of(ncp_images),
                "sampling": method, "sampling_mode": mode, "num_proposals": num_proposals if method == "sir" else None,
                "langevin_steps": steps if method == "langevin" else None,
                "sampling_seconds": timings[method]},
        "nll_difference_ncp_minus_base": float(-(ncp_ll - base_ll).mean()),
        "nll_difference_std_error": math.sqrt(paired_error ** 2 + log_z_variance),
        "nll_difference_std_error_images": paired_error,
    }
    sampled = [("base", base_images), ("ncp", ncp_images)]
    if gmm:
        gmm_ll = torch.cat(gmm_ll).cpu()
        gmm_images = generate("gmm", draw=sampler.base_sample)
        sampled.append(("gmm", gmm_images))
        result["ncp"]["base"] = "gmm"
        result["gmm"] = {**nll_summary(gmm_ll), "components": ncp.base.means.shape[0],
                         **fd_of(gmm_images),
                         "sampling_seconds": timings["gmm"]}
        ncp_gmm_error = float((ncp_ll - gmm_ll).std() / math.sqrt(len(gmm_ll)))
        result["nll_difference_ncp_minus_gmm"] = float(-(ncp_ll - gmm_ll).mean())
        result["nll_difference_ncp_minus_gmm_std_error"] = math.sqrt(ncp_gmm_error ** 2 + log_z_variance)
        result["nll_difference_gmm_minus_base"] = float(-(gmm_ll - base_ll).mean())
        result["nll_difference_gmm_minus_base_std_error"] = float((gmm_ll - base_ll).std() / math.sqrt(len(base_ll)))
    if inception is not None:
        real_inception = extract_features(inception, real, batch=50)
        result["fid_name"] = FID_NAME
        for prior, images in sampled:
            result[prior]["fid"] = frechet_distance(extract_features(inception, images, batch=50), real_inception)
    return result, base_images, ncp_images


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
                 f"{result['ncp']['sampling']} ({result['ncp']['sampling_mode']})")
    if estimate.get("warning"):
        lines.append(f"warning: {estimate['warning']}")
    return "\n".join(lines)


@contextlib.contextmanager
def _seeded(seed: int, device):
    """Every RNG the computation on `device` draws from set from one seed inside,
    restored outside."""
    devices = [device] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
