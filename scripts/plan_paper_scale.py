"""Paper-scale plan: estimated images/s, hours and memory per GPU for the paper presets,
and the torchrun commands that run them.

    PYTHONPATH=. python scripts/plan_paper_scale.py            # writes the two files below
    PYTHONPATH=. python scripts/plan_paper_scale.py --presets mnist --json-out /tmp/x.json --doc-out /tmp/x.md

No GPU is measured here: every speed is an ESTIMATE from counted work and stated
machine ceilings (the method is written into docs/paper-scale.md). What is counted:
- FLOPs of one training step (forward + backward) with torch.utils.flop_counter on the
  meta device, at the full image size and two batch sizes (counts depend on shapes
  only; python_tests/test_paper_scale.py checks meta and CPU agree). The eager cells
  (kernels="torch") are counted, because the fused custom ops are invisible to the
  counter. torch's formula for the weight gradient of a grouped convolution ignores the
  groups (a depthwise 5x5 conv's weight gradient comes out `channels` times too large),
  so this script counts convolution_backward with a group-aware formula.
- Saved-activation bytes per image (ncpfast.training.memory.saved_activation_bytes),
  fused vs eager cells, and every stage-2 / sampling / evaluation cost, measured on the
  CPU with real tensors at a reduced image side and scaled by the pixel ratio (the
  models are fully convolutional). The scaling's error is measured where a full-size
  count exists: the training forward FLOPs (reduced x ratio vs full-size meta count).
"""
import argparse
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

# Run as a script from the repository root: make the package importable.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from ncpfast.config import resolve_config  # noqa: E402
from ncpfast.models import build_model  # noqa: E402
from ncpfast.ncp.grouped import GroupedNCP  # noqa: E402
from ncpfast.nn.cells import set_cell_kernels  # noqa: E402
from ncpfast.training.memory import saved_activation_bytes  # noqa: E402
from ncpfast.training.regularizers import (  # noqa: E402
    SpectralRegularizer,
    batchnorm_max_gamma,
)
from ncpfast.training.trainer import _Objective, balanced_kl  # noqa: E402

PAPER_PRESETS = ("mnist", "cifar10", "celeba64", "celebahq256")

# Data sets that ncpfast.data loads without labels: ncpfast.frechet's feature network
# trains on labels, so their evaluation stops with an error today.
NO_LABELS = ("celeba64", "celebahq256")

# Generated images per prior in the paper-scale evaluation: the paper's FID sample.
EVAL_GENERATED = 50_000

# The CPU measurements (real tensors): image side and two batch sizes. The side is the
# smallest the model takes (the coarsest latent scale at 1x1, or 2x2 where that is
# cheap), because this machine's cores are shared; BatchNorm in training needs more
# than one value per channel, hence batches of 2 and 3 where the top is 1x1.
CPU_MEASURE = {"tiny": (16, (1, 2)), "mnist": (8, (2, 3)), "cifar10": (4, (1, 2)), "celeba64": (8, (2, 3)),
               "celebahq256": (32, (2, 3))}

# Training-split sizes (what ncpfast.data loads), and where the number comes from.
DATASETS = {
    "mnist": dict(train=60_000, test=10_000, note="IDX files: 60,000 train, 10,000 test"),
    "cifar10": dict(train=50_000, test=10_000, note="python batches: 50,000 train, 10,000 test"),
    "celeba64": dict(train=162_770, test=39_829,
                     note="list_eval_partition.txt: partition 0 (162,770) trains; ncpfast.data puts "
                          "validation and test (19,867 + 19,962) in the test split"),
    "celebahq256": dict(train=27_000, test=3_000,
                        note="30,000 images, no partition file: the last 10% (3,000) are the test split"),
}

# The NVAE paper's training runs (shared/NVAE-NOTES.md), for the cross-check.
NVAE_REPORTED = {
    "mnist": dict(gpus=2, hours=21.0, gpu="V100"),
    "cifar10": dict(gpus=8, hours=55.0, gpu="V100"),
    "celeba64": dict(gpus=8, hours=92.0, gpu="V100"),
}

# Machine ceilings. H200: /work/.library/device/KINDS.md measured a bf16 8192^3 matrix
# product at 769-798 TFLOP/s and a device-to-device copy at ~4.3 TB/s (datasheet:
# ~990 TFLOP/s dense bf16, 4.8 TB/s HBM3e, 141 GB; one GPU showed 143,771 MiB).
# V100 (SXM2, 32 GB): NVIDIA's datasheet, 125 TFLOP/s fp16 tensor, 900 GB/s HBM2;
# the same measured/datasheet ratios as the H200's are applied (an assumption).
GPUS = {
    "H200": dict(matrix_flops=780e12, bandwidth=4.3e12, memory_bytes=141e9,
                 source="KINDS.md measurements: bf16 matmul 769-798 TFLOP/s, copy ~4.3 TB/s; 141 GB"),
    "V100": dict(matrix_flops=125e12 * 780 / 990, bandwidth=900e9 * 4.3 / 4.8, memory_bytes=32e9,
                 source="datasheet 125 TFLOP/s fp16, 900 GB/s, scaled by the H200's measured/datasheet ratios"),
}

ASSUMPTIONS = dict(
    # Sustained share of the matrix rate over a whole NVAE step (many small convs,
    # depthwise convs, BatchNorm): the low and high brackets.
    flop_efficiency=(0.15, 0.35),
    # Device-memory bytes moved per training image, as a multiple of the saved
    # activations (forward writes them, backward reads them and writes and reads
    # gradients of the same size): high bracket (fewer bytes) and low bracket.
    traffic_multiple=(3.0, 6.0),
    # bf16 autocast keeps most saved activations at 2 bytes instead of 4.
    bf16_activation_factor=0.5,
    # Data-parallel efficiency on 8 GPUs of one host (and on 2 hosts x 8).
    scaling_efficiency_8=0.90,
    scaling_efficiency_16=0.80,
    # Allocator overhead on activations (fragmentation, cuDNN workspaces, the
    # backward's transient gradients).
    allocator_overhead=1.5,
    # Per parameter: fp32 weight 4 + grad 4 + Adamax exp_avg 4 + exp_inf 4 + autocast's
    # bf16 weight copy 2 (weight-normalised weights are activations, counted there).
    bytes_per_parameter=18,
    # CUDA context, NCCL buffers, cuDNN/cuBLAS handles.
    context_bytes=2e9,
    # Adamax step: reads param, grad, exp_avg, exp_inf, writes param, exp_avg, exp_inf.
    optimizer_bytes_per_parameter=28,
)


# --- counting ------------------------------------------------------------------------------

def _conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                        _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:
    """Both gradients of a convolution cost what its forward does (same multiply-adds,
    regrouped); the forward formula takes the groups from the weight's shape."""
    forward = conv_flop_count(list(x_shape), list(w_shape), list(grad_out_shape), transposed)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def flop_counter() -> FlopCounterMode:
    return FlopCounterMode(display=False, custom_mapping={torch.ops.aten.convolution_backward: _conv_backward_flop})


def count_flops(fn) -> int:
    counter = flop_counter()
    with counter:
        fn()
    return counter.get_total_flops()


def _config(preset: str, image_size=None, kernels="torch"):
    overrides = {"model.kernels": kernels}
    if image_size is not None:
        overrides["model.image_size"] = image_size
    return resolve_config(preset, overrides)


def _build(config, device):
    torch.manual_seed(0)
    with torch.device(device):
        return build_model(config.model)


def _images(config, batch, device):
    x = torch.rand(batch, config.model.in_channels, config.model.image_size, config.model.image_size, device=device)
    return x.round() if config.model.likelihood == "bernoulli" else (x * 255).round() / 255


def _loss(objective, model, x):
    """The stage-1 loss as the trainer forms it (KL coefficient 1, KL balancing on)."""
    recon, kl_all = objective(x)
    alpha = model.kl_balance_scale().to(x.device) if hasattr(model, "kl_balance_scale") else None
    return (-recon + balanced_kl(kl_all, alpha)).mean()


def training_step_flops(model, config, batch: int) -> dict:
    """Forward and backward FLOPs of one stage-1 step of `model` (train mode, no regularisers)."""
    model.train()
    objective = _Objective(model)
    x = _images(config, batch, next(model.parameters()).device)
    counter = flop_counter()
    with counter:
        loss = _loss(objective, model, x)
    return dict(forward=counter.get_total_flops(), backward=count_flops(loss.backward))


def _linear_fit(batches, values):
    """(per image, per step) of a cost measured at two batch sizes (linear in the batch)."""
    (b1, b2), (v1, v2) = batches, values
    per_image = (v2 - v1) / (b2 - b1)
    return per_image, v1 - b1 * per_image


def _log_z_pass(ncp, n: int) -> None:
    """The work of one batch of GroupedNCP.log_partition: prior samples through the
    decoder's groups, each group's classifier scored on the way."""
    def score(k, z, context, prior):
        ncp.group_log_ratio(k, z, context)
        return z
    ncp.vae.sample_decoder_output(n, intercept=score, decode=False)


def measure_on_cpu(config, side: int, batches) -> tuple:
    """What needs real tensors, on the CPU at image side `side`: saved-activation bytes
    (fused and eager cells, same weights), the forward FLOPs (for the scaling check), the
    regularisers' FLOPs per step, and the stage-2 classifiers' saved bytes. Returns the
    results (per image at this side, and per step) and the GroupedNCP built on this model."""
    small = _config(config.run.preset, side)
    model = _build(small, "cpu").train()
    params = list(model.parameters())
    objective = _Objective(model)
    out = {}
    for kernels in ("torch", "fused"):
        set_cell_kernels(model, kernels)
        saved = []
        for batch in batches:
            x = _images(small, batch, "cpu")
            saved.append(saved_activation_bytes(lambda x=x: _loss(objective, model, x), exclude=params))
        out[f"saved_bytes_{kernels}"] = _linear_fit(batches, saved)
    # The eager forward's FLOPs (the fused ops are invisible to the counter). They have no
    # per-step part (see measure_on_meta): one batch gives them.
    set_cell_kernels(model, "torch")
    x = _images(small, batches[0], "cpu")
    out["forward_flops"] = (count_flops(lambda: _loss(objective, model, x)) / batches[0], 0.0)

    # The regularisers cost the same at any image size and batch (weights only). The
    # power iteration's first call runs 10 iterations; later steps run one.
    spectral = SpectralRegularizer(model)
    spectral.initialised.fill_(True)
    out["regularizer_flops_per_step"] = count_flops(lambda: (spectral() + batchnorm_max_gamma(model)).backward())

    # Stage 2's classifiers (the VAE frozen, in eval mode): saved bytes of a training step.
    ncp = GroupedNCP(model, hidden=config.stage2.hidden, cells=config.stage2.cells)
    ncp.classifiers.train()
    classifier_params = list(ncp.classifiers.parameters())
    saved = [saved_activation_bytes(lambda b=b: ncp._group_losses(_images(small, b, "cpu")), exclude=classifier_params)
             for b in batches]
    out["stage2_saved_bytes"] = _linear_fit(batches, saved)
    return out, ncp


def measure_on_meta(config, ncp, proposals: int) -> dict:
    """FLOPs per image at the full image size on the meta device (shapes only, no
    arithmetic): a stage-1 step, a stage-2 step, SIR and base sampling, a log Z sample and
    an importance sample of the NLL. Counted at batch 1: every op the counter sees
    (convolutions, linear layers, matrix products) is per image, so the counts are
    proportional to the batch (python_tests/test_paper_scale.py checks it); the one
    per-step matrix work, the spectral regulariser, is counted on the CPU. `ncp`'s
    classifiers depend on the latent channel counts only, so the ones built on the CPU
    model serve the full-size VAE, which replaces the small one."""
    model = _build(config, "meta")
    step = training_step_flops(model, config, 1)
    out = {"parameters": sum(p.numel() for p in model.parameters()),
           "train_forward_flops": step["forward"], "train_backward_flops": step["backward"]}
    model.zero_grad(set_to_none=True)
    ncp.classifiers.to("meta")
    ncp.vae = model.eval().requires_grad_(False)
    x = _images(config, 1, "meta")
    ncp.classifiers.train()

    def stage2_step():
        losses, _ = ncp._group_losses(x)
        losses.sum().backward()
    out["stage2_flops"] = count_flops(stage2_step)
    ncp.classifiers.eval()
    with torch.no_grad():
        out["stage2_vae_flops"] = count_flops(lambda: model(x, decode=False))
        out["sir_flops"] = count_flops(lambda: ncp.sample(1, method="sir", num_proposals=proposals))
        out["base_flops"] = count_flops(lambda: ncp.sample(1, method="base"))
        out["log_z_flops"] = count_flops(lambda: _log_z_pass(ncp, 1))
        out["nll_base_flops"] = count_flops(lambda: model.importance_weighted_log_likelihood(x, 1))
        out["nll_ncp_flops"] = count_flops(lambda: ncp.importance_weighted_log_likelihood(x, 1, log_z=0.0))
    return out


def measure_preset(preset: str, side=None, batches=None, proposals: int = 50) -> dict:
    """Every count of one preset: full-size FLOPs on the meta device, bytes on the CPU at
    a reduced side scaled by the pixel ratio."""
    config = _config(preset)
    default_side, default_batches = CPU_MEASURE.get(preset, (config.model.image_size, (1, 2)))
    side, batches = side or default_side, batches or default_batches
    start = time.perf_counter()
    cpu, ncp = measure_on_cpu(config, side, batches)
    meta = measure_on_meta(config, ncp, proposals)
    ratio = (config.model.image_size / side) ** 2
    forward, backward = meta["train_forward_flops"], meta["train_backward_flops"]
    scaled = {k: v[0] * ratio for k, v in cpu.items() if isinstance(v, tuple)}
    return dict(
        preset=preset, image_size=config.model.image_size, measure_side=side, measure_batches=list(batches),
        pixel_ratio=ratio, parameters=meta["parameters"],
        train_flops_per_image=forward + backward, train_forward_flops_per_image=forward,
        train_flops_per_step_batch_independent=cpu["regularizer_flops_per_step"],
        regularizer_flops_per_step=cpu["regularizer_flops_per_step"],
        scaling_check=dict(full_forward_flops=forward, reduced_forward_flops_times_ratio=scaled["forward_flops"],
                           relative_error=scaled["forward_flops"] / forward - 1),
        saved_bytes_per_image=dict(torch=scaled["saved_bytes_torch"], fused=scaled["saved_bytes_fused"]),
        # Mostly the weight-normalised weights: independent of the batch and the image size.
        saved_bytes_per_step=dict(torch=cpu["saved_bytes_torch"][1], fused=cpu["saved_bytes_fused"][1]),
        stage2=dict(flops_per_image=meta["stage2_flops"], vae_forward_flops_per_image=meta["stage2_vae_flops"],
                    saved_bytes_per_image=scaled["stage2_saved_bytes"]),
        sampling=dict(sir_proposals=proposals, sir_flops_per_image=meta["sir_flops"],
                      base_flops_per_image=meta["base_flops"], log_z_flops_per_sample=meta["log_z_flops"]),
        evaluation=dict(nll_base_flops_per_importance_sample=meta["nll_base_flops"],
                        nll_ncp_flops_per_importance_sample=meta["nll_ncp_flops"]),
        measure_seconds=time.perf_counter() - start,
    )


# --- estimates -------------------------------------------------------------------------------

def images_per_second(flops_per_image, bytes_per_image, gpu, efficiency, traffic_multiple, per_step=(0.0, 0.0),
                      batch=1):
    """The slower of a FLOP bound and a bandwidth bound (per-step work spread over the batch)."""
    flops = flops_per_image + per_step[0] / batch
    moved = traffic_multiple * bytes_per_image + per_step[1] / batch
    flop_bound = efficiency * gpu["matrix_flops"] / flops
    bandwidth_bound = gpu["bandwidth"] / moved
    return min(flop_bound, bandwidth_bound), ("FLOPs" if flop_bound < bandwidth_bound else "bandwidth")


def _train_rates(m: dict, gpu: dict, batch: int):
    """(low, high) training images/s per GPU of preset measurements m, and what bounds each."""
    a = ASSUMPTIONS
    act = m["saved_bytes_per_image"]["fused"] * a["bf16_activation_factor"]
    per_step = (m["train_flops_per_step_batch_independent"],
                m["parameters"] * a["optimizer_bytes_per_parameter"]
                + a["traffic_multiple"][1] * m["saved_bytes_per_step"]["fused"] * a["bf16_activation_factor"])
    low = images_per_second(m["train_flops_per_image"], act, gpu, a["flop_efficiency"][0], a["traffic_multiple"][1],
                            per_step, batch)
    per_step_high = (per_step[0], per_step[1] - (a["traffic_multiple"][1] - a["traffic_multiple"][0])
                     * m["saved_bytes_per_step"]["fused"] * a["bf16_activation_factor"])
    high = images_per_second(m["train_flops_per_image"], act, gpu, a["flop_efficiency"][1], a["traffic_multiple"][0],
                             per_step_high, batch)
    return low, high


def estimate(m: dict) -> dict:
    """Hours, memory and the cross-check for preset measurements m."""
    a = ASSUMPTIONS
    config = _config(m["preset"])
    data = DATASETS[m["preset"]]
    h200 = GPUS["H200"]
    (low, low_bound), (high, high_bound) = _train_rates(m, h200, config.stage1.batch_size)

    def hours(rate, gpus, efficiency):
        steps = config.stage1.epochs * (data["train"] // (config.stage1.batch_size * gpus))
        return steps * config.stage1.batch_size / (rate * efficiency) / 3600

    out = dict(
        batch_size_per_process=config.stage1.batch_size, epochs=config.stage1.epochs, train_images=data["train"],
        images_per_second_per_gpu=dict(low=low, high=high, low_bound=low_bound, high_bound=high_bound),
        stage1_hours={"1_gpu": [hours(low, 1, 1.0), hours(high, 1, 1.0)],
                      "8_gpus": [hours(low, 8, a["scaling_efficiency_8"]), hours(high, 8, a["scaling_efficiency_8"])],
                      "16_gpus": [hours(low, 16, a["scaling_efficiency_16"]),
                                  hours(high, 16, a["scaling_efficiency_16"])]},
    )
    # Memory per GPU at the preset's per-process batch.
    act = (m["saved_bytes_per_image"]["fused"] * config.stage1.batch_size + m["saved_bytes_per_step"]["fused"])
    act_eager = (m["saved_bytes_per_image"]["torch"] * config.stage1.batch_size + m["saved_bytes_per_step"]["torch"])
    static = m["parameters"] * a["bytes_per_parameter"] + a["context_bytes"]
    memory = dict(
        bf16_fused=a["allocator_overhead"] * a["bf16_activation_factor"] * act + static,
        fp32_fused=a["allocator_overhead"] * act + static,
        fp32_eager=a["allocator_overhead"] * act_eager + static,
        parameters_and_optimizer=m["parameters"] * a["bytes_per_parameter"],
    )
    memory["fits_141GB"] = {k: v <= h200["memory_bytes"] for k, v in memory.items() if k != "parameters_and_optimizer"}
    out["memory_bytes_per_gpu"] = memory

    # Stage 2: each epoch fits on 90% of the training split and scores the other 10%
    # (forward only, counted here at the training step's cost: a slight overestimate).
    eff = a["flop_efficiency"]
    stage2_images = config.stage2.epochs * data["train"]
    s2 = m["stage2"]["flops_per_image"] * stage2_images
    out["stage2_hours_1_gpu"] = [s2 / (e * h200["matrix_flops"]) / 3600 for e in eff]
    # Stage 2 runs in float32 (no autocast): the classifiers' saved activations at the NCP
    # batch, the frozen VAE's weights, the classifiers' parameters are negligible.
    out["stage2_memory_bytes_per_gpu"] = (a["allocator_overhead"] * m["stage2"]["saved_bytes_per_image"]
                                          * config.stage2.batch_size + 4 * m["parameters"] + a["context_bytes"])
    test = data["test"]  # the evaluation command scores the whole test split
    ev = m["evaluation"]
    nll = test * config.evaluation.iw_samples * (ev["nll_base_flops_per_importance_sample"]
                                           + ev["nll_ncp_flops_per_importance_sample"])
    sampling = (EVAL_GENERATED * (m["sampling"]["sir_flops_per_image"] + m["sampling"]["base_flops_per_image"])
                + 2 * config.stage2.log_z_samples * m["sampling"]["log_z_flops_per_sample"])
    out["evaluation"] = dict(
        test_images=test, iw_samples=config.evaluation.iw_samples, nll_flops=nll, sampling_and_log_z_flops=sampling,
        nll_share=nll / (nll + sampling),  # the part that torchrun's ranks share (the rest is rank 0's)
        hours_1_gpu=[(nll + sampling) / (e * h200["matrix_flops"]) / 3600 for e in eff])
    out["sir_seconds_per_1000_images"] = [1000 * m["sampling"]["sir_flops_per_image"] / (e * h200["matrix_flops"])
                                          for e in eff]
    # Cross-check: the same method on the GPU NVAE's authors used, against their times.
    reported = NVAE_REPORTED.get(m["preset"])
    if reported:
        gpu = GPUS[reported["gpu"]]
        (v_low, _), (v_high, _) = _train_rates(m, gpu, config.stage1.batch_size)
        measured = config.stage1.epochs * data["train"] / (reported["gpus"] * reported["hours"] * 3600)
        out["cross_check"] = dict(
            gpu=reported["gpu"], gpus=reported["gpus"], reported_hours=reported["hours"],
            reported_images_per_second_per_gpu=measured, predicted_images_per_second_per_gpu=[v_low, v_high],
            predicted_over_reported=[v_low / measured, v_high / measured])
    return out


def _geometric_middle(pair):
    return math.sqrt(pair[0] * pair[1])


def calibrate(results: dict) -> None:
    """Adds planning figures: the geometric middle of each bracket corrected by the factor
    (geometric mean over the data sets that have a published NVAE time) by which this
    method overestimates NVAE's reported V100 throughput."""
    ratios = [_geometric_middle(r["cross_check"]["predicted_over_reported"])
              for r in results.values() if "cross_check" in r]
    if not ratios:
        return
    factor = math.exp(sum(math.log(x) for x in ratios) / len(ratios))
    for r in results.values():
        rates = r["images_per_second_per_gpu"]
        rate = _geometric_middle((rates["low"], rates["high"])) / factor
        hours = {k: _geometric_middle(v) * factor for k, v in r["stage1_hours"].items()}
        r["calibrated"] = dict(
            factor=factor, images_per_second_per_gpu=rate, stage1_hours=hours,
            stage2_hours_1_gpu=_geometric_middle(r["stage2_hours_1_gpu"]) * factor,
            stage2_hours_8_gpus=_geometric_middle(r["stage2_hours_1_gpu"]) * factor
            / (8 * ASSUMPTIONS["scaling_efficiency_8"]),
            evaluation_hours_1_gpu=_geometric_middle(r["evaluation"]["hours_1_gpu"]) * factor)
        share = r["evaluation"]["nll_share"]
        r["calibrated"]["evaluation_hours_8_gpus"] = r["calibrated"]["evaluation_hours_1_gpu"] * (
            share / (8 * ASSUMPTIONS["scaling_efficiency_8"]) + 1 - share)


# --- commands --------------------------------------------------------------------------------

def commands(preset: str) -> dict:
    """The commands of a paper-scale run of `preset` (DATA, RUN, HOST, JOB are placeholders)."""
    config = _config(preset)
    run = f"runs/{preset}"
    dist1 = "torchrun --standalone --nproc_per_node 8"
    dist2 = "torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500 --rdzv_id JOB"
    # The final NLL of --stage 1 and the evaluation at the end of --stage 2 run on rank 0
    # alone while the other ranks idle in the closing barrier, so under torchrun both are
    # shrunk to a token and the evaluation runs as its own job, whose ranks share the NLL.
    token_eval = "--iw-samples 1 --max-images 1 --num-generated 2"
    stage1 = f"-m ncpfast.train --stage 1 --preset {preset} --data-dir DATA --run-dir {run} " \
             f"--batch-size {config.stage1.batch_size} {token_eval}"
    stage2 = f"-m ncpfast.train --stage 2 --from {run} --ncp-batch-size {config.stage2.batch_size} {token_eval}"
    chunk = f" --iw-chunk {config.evaluation.iw_chunk}" if config.evaluation.iw_chunk else ""
    evaluate = (f"-m ncpfast.evaluate {run} --iw-samples {config.evaluation.iw_samples}{chunk} "
                f"--num-generated {EVAL_GENERATED} --num-proposals {config.sampler.num_proposals} "
                f"--fid-weights pt_inception-2015-12-05-6726825d.pth --json")
    return {
        "stage1_1gpu": f"torchrun --standalone --nproc_per_node 1 {stage1}",
        "stage1_8gpus": f"{dist1} {stage1}",
        "stage1_2x8gpus": f"{dist2} {stage1}",
        "stage2_8gpus": f"{dist1} {stage2}",
        "stage2_2x8gpus": f"{dist2} {stage2}",
        "evaluate_1gpu": f"CUDA_VISIBLE_DEVICES=0 python {evaluate}",
        "evaluate_8gpus": f"{dist1} {evaluate}",
        "resume_8gpus": f"{dist1} -m ncpfast.train --stage 1 --resume {run} {token_eval}",
        "import_nvae": f"python -m ncpfast.import_nvae NVAE_RUN/checkpoint.pt --out {run} --data-dir DATA",
    }


# --- output ------------------------------------------------------------------------------------

def _git_commit() -> str:
    try:
        return subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _n(x):
    """A number for a table: three significant figures, thousands separated."""
    if x >= 1000:
        return f"{x:,.0f}"
    return f"{x:.3g}"


def _gb(x):
    return f"{x / 1e9:.1f}"


def _range(pair, fmt=_n):
    lo, hi = sorted(pair)
    return f"{fmt(lo)}-{fmt(hi)}"


def render_markdown(report: dict) -> str:
    meta = report["meta"]
    a = report["assumptions"]
    lines = [
        "# Paper scale, planned (estimates, no GPU measured)",
        "",
        f"Generated by `{meta['command']}` on {meta['date']} ({meta['machine']}), commit {meta['commit']}, "
        f"torch {meta['torch']}; {meta['seconds']:.0f} s"
        + (f"; estimates re-rendered from its measurements on {meta['rerendered']} (`--from-json`)"
           if meta.get("rerendered") else "") + ". Do not edit by hand: rerun the script. "
        "JSON: `bench/results/paper-scale-estimates.json`.",
        "",
        "Every speed and hour below is an ESTIMATE: no GPU was lent to the session that wrote this. "
        "The method, its assumptions and how far it misses NVAE's published training times follow the table. "
        "Batch sizes are per process (per GPU); `torchrun` multiplies them by the number of processes.",
        "",
        "## The table",
        "",
        "| preset (epochs, batch per process) | params | train GFLOP/image | saved activations MB/image (fp32: "
        "fused / eager) | H200 images/s per GPU: planning (method's bounds) | stage 1 h on 1 GPU: planning "
        "(bounds) | stage 1 h on 8 GPUs: planning (bounds) | memory per GPU GB (bf16 fused; fp32 eager) "
        "| stage 2 h: 1 / 8 GPUs | evaluation h: 1 / 8 GPUs |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for preset, r in report["presets"].items():
        m = report["measurements"][preset]
        ips = r["images_per_second_per_gpu"]
        cal = r.get("calibrated")
        mem = r["memory_bytes_per_gpu"]
        flag = "" if mem["fits_141GB"]["bf16_fused"] else " DOES NOT FIT"
        flag_eager = "" if mem["fits_141GB"]["fp32_eager"] else " (does not fit)"
        h1, h8 = r["stage1_hours"]["1_gpu"], r["stage1_hours"]["8_gpus"]
        lines.append(
            f"| `{preset}` ({r['epochs']}, {r['batch_size_per_process']}) | {m['parameters'] / 1e6:.1f} M "
            f"| {m['train_flops_per_image'] / 1e9:.1f} "
            f"| {m['saved_bytes_per_image']['fused'] / 1e6:.0f} / {m['saved_bytes_per_image']['torch'] / 1e6:.0f} "
            f"| **{_n(cal['images_per_second_per_gpu']) if cal else '-'}** ({_n(ips['low'])}-{_n(ips['high'])}, "
            + (ips["low_bound"] if ips["low_bound"] == ips["high_bound"] else f"{ips['low_bound']}/{ips['high_bound']}")
            + " bound) "
            f"| **{_n(cal['stage1_hours']['1_gpu']) if cal else '-'}** ({_n(min(h1))}-{_n(max(h1))}) "
            f"| **{_n(cal['stage1_hours']['8_gpus']) if cal else '-'}** ({_n(min(h8))}-{_n(max(h8))}) "
            f"| {_gb(mem['bf16_fused'])}{flag}; {_gb(mem['fp32_eager'])}{flag_eager} "
            f"| {_n(cal['stage2_hours_1_gpu']) if cal else '-'} / {_n(cal['stage2_hours_8_gpus']) if cal else '-'} "
            f"| {_n(cal['evaluation_hours_1_gpu']) if cal else '-'} "
            f"/ {_n(cal['evaluation_hours_8_gpus']) if cal else '-'}"
            f"{' (no FD, see below)' if preset in NO_LABELS else ''} |")
    lines += [
        "",
        "Reading it: in brackets, the range between the low and the high bracket of the method below and "
        "which bound (FLOPs or bandwidth) set it. In bold, the planning figure: the geometric middle of that "
        "range divided by the factor by which the same method overestimates NVAE's own published V100 runs "
        "(the cross-check below). Plan with the bold numbers; the brackets show what the hardware would allow "
        "if the step were not bound by many small kernels. Hours count the paper's epochs over the training "
        "split at the preset's per-process batch; 8 GPUs assume "
        f"{a['scaling_efficiency_8']:.0%} data-parallel efficiency (16 GPUs on 2 hosts: "
        f"{a['scaling_efficiency_16']:.0%}; in the JSON). Stage 2 (the preset's `stage2.epochs` over the training "
        "split, plus the held-out pass) and the evaluation (K importance samples for both priors on the whole "
        f"test split, {EVAL_GENERATED:,} images per prior, log Z) are FLOP-bound figures corrected by the same "
        "factor. Under `torchrun` the evaluation's ranks share the NLL (same "
        f"{a['scaling_efficiency_8']:.0%} efficiency) and rank 0 alone samples, scores the Frechet distances and "
        "estimates log Z; for the large test splits, `--max-images` (e.g. 5,000) divides the NLL's part.",
        "",
        "**CelebA has no labels**, so its evaluation reports the NLL and, given pytorch-fid's weights "
        "(`--fid-weights`), FID, but no small-classifier FD (that network is trained on labels). At 256x256, "
        f"{EVAL_GENERATED:,} generated images per prior are also {EVAL_GENERATED * 3 * 256 * 256 * 4 / 1e9:.0f} GB "
        "of float32 held on the device at once by `evaluate_run`; generate fewer (`--num-generated`).",
        "",
        "## NCP on a published NVAE checkpoint",
        "",
        "With NVAE's own checkpoint (NVlabs publishes MNIST, CIFAR-10, CelebA-64, CelebA-HQ-256 and FFHQ "
        "models) stage 1 is skipped: `python -m ncpfast.import_nvae` writes a run directory from it in seconds "
        "(docs/usage.md, \"NCP on a trained NVAE\"), and what is left is stage 2 and the evaluation. Same "
        "method and same caveats as the table above: estimates, no GPU measured.",
        "",
        "| preset | stage 2 h: 1 / 8 GPUs | evaluation h: 1 / 8 GPUs | stage 2 + evaluation on 8 GPUs, h "
        "| stage 1 on 8 GPUs that the import saves, h |",
        "|---|---|---|---|---|",
    ]
    for preset, r in report["presets"].items():
        cal = r.get("calibrated")
        if not cal:
            continue
        lines.append(
            f"| `{preset}` | {_n(cal['stage2_hours_1_gpu'])} / {_n(cal['stage2_hours_8_gpus'])} "
            f"| {_n(cal['evaluation_hours_1_gpu'])} / {_n(cal['evaluation_hours_8_gpus'])} "
            f"| {_n(cal['stage2_hours_8_gpus'] + cal['evaluation_hours_8_gpus'])} "
            f"| {_n(cal['stage1_hours']['8_gpus'])} |")
    lines += [
        "",
        "The commands of this path are each preset's `import`, `stage 2` and `evaluation` lines below (the "
        "import reads NVAE's `checkpoint.pt`; `NVAE_RUN` is its folder). The evaluation dominates: the "
        "paper's NLL protocol (K = 1,000 importance samples for each of two priors over the whole test split) "
        "costs more on one GPU than the stage 1 the import saves. Under `torchrun` (the `evaluation, 8 GPUs` "
        "line) the ranks share the NLL's batches and give the one-process numbers exactly (a test checks it "
        "on 3 CPU ranks); rank 0 alone samples and scores the Frechet distances. `--max-images N` scores the "
        "first N test images: the NLL's hours scale with N, and its standard error (reported) as 1/sqrt(N).",
        "",
        "## Per preset: what the counts say",
        "",
        "| preset | fwd GFLOP/image | per-step GFLOP (regularisers etc.) | saved act. per step MB (fused / eager) "
        "| scaling check (reduced x ratio vs full) | stage 2 GFLOP/image (VAE fwd part) | stage 2 memory/GPU GB "
        "(fp32) | SIR M=50 GFLOP/image (base) | NLL GFLOP/importance sample (base + NCP) "
        "| H200 s per 1,000 SIR images |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for preset, r in report["presets"].items():
        m = report["measurements"][preset]
        s, ev = m["sampling"], m["evaluation"]
        lines.append(
            f"| `{preset}` | {m['train_forward_flops_per_image'] / 1e9:.1f} "
            f"| {m['train_flops_per_step_batch_independent'] / 1e9:.2f} "
            f"| {m['saved_bytes_per_step']['fused'] / 1e6:.0f} / {m['saved_bytes_per_step']['torch'] / 1e6:.0f} "
            f"| side {m['measure_side']} x {m['pixel_ratio']:.0f}: {m['scaling_check']['relative_error']:+.2%} "
            f"| {m['stage2']['flops_per_image'] / 1e9:.1f} ({m['stage2']['vae_forward_flops_per_image'] / 1e9:.1f}) "
            f"| {_gb(r['stage2_memory_bytes_per_gpu'])}"
            f"{' (near 141 GB: halve --ncp-batch-size)' if r['stage2_memory_bytes_per_gpu'] > 0.8 * 141e9 else ''} "
            f"| {s['sir_flops_per_image'] / 1e9:.1f} ({s['base_flops_per_image'] / 1e9:.1f}) "
            f"| {(ev['nll_base_flops_per_importance_sample'] + ev['nll_ncp_flops_per_importance_sample']) / 1e9:.1f} "
            f"| {_range(r['sir_seconds_per_1000_images'])} |")
    lines += ["", "## Cross-check against NVAE's published training times", "",
              "| preset | NVAE: GPUs x hours | NVAE images/s per V100 (epochs x train images / GPU-seconds) "
              "| this method on a V100 | predicted / reported |",
              "|---|---|---|---|---|"]
    factor = None
    for preset, r in report["presets"].items():
        c = r.get("cross_check")
        if not c:
            continue
        factor = r.get("calibrated", {}).get("factor")
        lines.append(f"| `{preset}` | {c['gpus']} x {c['reported_hours']:g} h "
                     f"| {c['reported_images_per_second_per_gpu']:.1f} "
                     f"| {_range(c['predicted_images_per_second_per_gpu'])} "
                     f"| {_range(c['predicted_over_reported'], lambda v: f'{v:.1f}x')} |")
    if factor:
        lines += ["", f"The method overestimates NVAE's measured V100 throughput by a factor of about {factor:.1f} "
                  "(geometric mean over the data sets above of the geometric middle of each bracket). The reported "
                  "times include what a training run does besides steps (per-epoch test ELBO, sample grids, "
                  "checkpoints, data loading) and multi-GPU overhead, and NVAE's code is not this code, so part of "
                  "the gap is not the method's error; but most of it says that an NVAE step is bound neither by "
                  "matrix FLOPs nor by streaming its activations once: it is a long chain of small kernels "
                  "(depthwise convs, BatchNorm statistics, Swish, SE gates, weight normalisation, KL terms per "
                  "group) whose launch and latency costs the two bounds do not see. The planning figures divide "
                  "by this factor. They assume the H200 gains over the V100 what its ceilings gain "
                  f"({GPUS['H200']['matrix_flops'] / GPUS['V100']['matrix_flops']:.1f}x in matrix rate, "
                  f"{GPUS['H200']['bandwidth'] / GPUS['V100']['bandwidth']:.1f}x in bandwidth); a step bound by "
                  "kernel launches and latency gains less, so they are more likely optimistic than pessimistic: "
                  "if the H200 ran NVAE only 3x faster than a V100, the hours would be about "
                  f"{GPUS['H200']['matrix_flops'] / GPUS['V100']['matrix_flops'] / 3:.1f}x the planning figures. "
                  "CelebA-HQ-256 has no published NVAE time in the notes, so its planning figure rests on the "
                  "other three. Spread of the per-data-set factors: "
                  + ", ".join(f"{p} {_geometric_middle(r['cross_check']['predicted_over_reported']):.1f}x"
                              for p, r in report["presets"].items() if "cross_check" in r) + "."]
    lines += ["", "## Commands", "",
              "Placeholders: `DATA` (the data set's folder), `HOST` (the first node's address, reachable from the "
              "others), `JOB` (any id shared by the nodes). `--batch-size` is per process: 8 processes at the "
              "preset's batch train on 8 x that many images per step, as in the paper (NVAE: batch per GPU). "
              "Start the 2-node command on both nodes. `--standalone` is the single-host rendezvous.", ""]
    for preset, cmds in report["commands"].items():
        lines += [f"### `{preset}`", "", "```bash"]
        lines += [f"# or, with NVAE's trained checkpoint instead of stage 1: import it (seconds, CPU)\n"
                  f"{cmds['import_nvae']}",
                  f"# stage 1 (the VAE), one GPU\n{cmds['stage1_1gpu']}",
                  f"# stage 1, 8 GPUs of one host\n{cmds['stage1_8gpus']}",
                  f"# stage 1, 2 hosts x 8 GPUs (run on each host)\n{cmds['stage1_2x8gpus']}",
                  f"# continue an interrupted stage 1 (same number of processes)\n{cmds['resume_8gpus']}",
                  f"# stage 2 (the NCP classifiers, data parallel), 8 GPUs\n{cmds['stage2_8gpus']}",
                  f"# stage 2, 2 hosts x 8 GPUs\n{cmds['stage2_2x8gpus']}",
                  f"# evaluation: NLL (K={_config(preset).evaluation.iw_samples}), FID on 50,000 samples, base vs "
                  f"NCP; one GPU\n{cmds['evaluate_1gpu']}",
                  f"# evaluation, 8 GPUs: the ranks share the NLL (the same numbers), rank 0 samples and scores "
                  f"FID\n{cmds['evaluate_8gpus']}"]
        lines += ["```", ""]
    lines += [
        "Why the commands look like this:",
        "- `--stage 1` ends with the test NLL on rank 0 alone, while the other ranks wait in the closing "
        "barrier of `ncpfast/runtime.py` (a gloo barrier with a 24-hour timeout, under NCCL too); `--stage 2` "
        "ends with an evaluation whose NLL the ranks share. The paper-scale evaluation takes hours (table), so "
        "the commands shrink those in-job evaluations to a token (`--iw-samples 1 --max-images 1 "
        "--num-generated 2`) and run `python -m ncpfast.evaluate` as its own job afterwards: its settings "
        "and its reruns then need no training.",
        "- Under `torchrun`, `ncpfast.evaluate`'s ranks share the NLL's batches (every rank binarises every "
        "batch in order and each batch has its own seed, so the numbers are one process's, on any number of "
        "ranks); rank 0 estimates log Z (when asked to re-estimate it), samples, scores the Frechet distances "
        "and writes `metrics.json`. Its FID needs pytorch-fid's weights file, which the user supplies "
        "(nothing here downloads it); without `--fid-weights` it reports the small-classifier FD only.",
        "- `--stage 2 --from RUN` reads the run's `config.json`; options given on the command line override it "
        "(here the NCP batch and the token evaluation). `--resume` needs the same process count as the run it "
        "continues.",
        "- The token makes the stage-1 `test` NLL in the run's `metrics.json` a K=1, one-image number; the "
        "real NLL (both priors) is the evaluation command's. On one GPU there is no process group and no "
        "barrier, so `python -m ncpfast.train --preset PRESET --data-dir DATA --run-dir RUN` (both stages and "
        "the preset's own evaluation in one process) is the simpler single-GPU alternative.",
        "- Progress bars are on by default and drawn by rank 0 only; no flag is needed for them.",
        "",
        "## Method",
        "",
        "Script: `scripts/plan_paper_scale.py` (this page and the JSON are its output). Per preset:",
        "",
        "1. **Training FLOPs.** The preset's model (`ncpfast.models.build_model`, float32) is built on the meta "
        "device at the full image size, and one stage-1 step (the trainer's `_Objective`, KL balancing, the "
        "loss, `backward()`) is counted with `torch.utils.flop_counter.FlopCounterMode` at batch 1. Every op "
        "the counter sees is per image, so counts are proportional to the batch (the test checks batch 2 = 2 x "
        "batch 1 and meta = CPU on `tiny`); the one per-step matrix work, the spectral regulariser's power "
        "iteration and sigma (independent of batch and image size), is counted on the CPU. Cells run eagerly "
        "(`kernels=\"torch\"`): the fused custom ops are invisible to the counter. The counter counts only "
        "matrix work (convolutions, linear layers, matrix products; 2 FLOPs per multiply-add); it misses "
        "every elementwise op (BatchNorm, Swish, SE gating, weight normalisation, the likelihoods, KL), which "
        "is why the bandwidth bound exists. torch's formula for `convolution_backward` ignores the groups in "
        "the weight gradient, so a depthwise 5x5 conv's weight gradient comes out `channels` times too large "
        "(it made `tiny`'s backward 32x its forward, and the paper presets' step 5-10x too large); the script "
        "registers a group-aware formula (each gradient costs what the forward does).",
        "2. **Activation memory.** `ncpfast.training.memory.saved_activation_bytes` (the distinct storages "
        "autograd saves for the backward, parameters excluded) over one training forward, with the fused "
        "cells and with the eager cells on the same weights, at two batch sizes: a straight line through the "
        "two gives bytes per image and per step (the per-step part is mostly the weight-normalised weights, "
        "saved once per step). Real tensors are needed (meta tensors have no storages to tell apart), and this "
        "machine's two cores are shared, so it runs on the CPU at the smallest image side the model takes (the "
        "coarsest latent scale at 1x1, batches 2 and 3, or at 2x2, batches 1 and 2; `measure_side` in the "
        "JSON) and is scaled by the pixel ratio: the models are fully convolutional, so every saved tensor but "
        "the SE vectors and BN statistics scales with the pixels. The same scaling is checked on the forward "
        "FLOPs, where the full-size count exists (the `scaling check` column). Float32 is measured; on the GPU "
        "bf16 autocast keeps most activations at 2 bytes, assumed here as a factor "
        f"{a['bf16_activation_factor']} (the fp32 figure is the upper bound).",
        "3. **Stage 2, sampling, evaluation.** On the meta device at full size, batch 1: FLOPs per image of "
        "one classifier training step (`GroupedNCP._group_losses`, forward and backward: the frozen VAE's "
        "encoder and decoder groups without the output tail, then every group's classifier on positives and "
        "negatives); of SIR sampling at the default "
        f"{report['measurements'][next(iter(report['measurements']))]['sampling']['sir_proposals']} "
        "proposals per group (`GroupedNCP.sample`, the shared-context scoring path) and of base sampling; of "
        "one log Z sample; and of one importance sample of the NLL for the base and the NCP prior "
        "(`importance_weighted_log_likelihood` with K=1). The classifiers' weights depend on the latent "
        "channel counts only, so the ones `GroupedNCP` builds on the small CPU model (its constructor samples "
        "through the VAE to read the group shapes, which needs real tensors) are attached to the full-size "
        "meta VAE for these counts. The evaluation's total is test images x K x "
        f"(base + NCP) + {EVAL_GENERATED:,} generated images per prior (base and SIR; the paper's FID sample) "
        "+ 2 x `stage2.log_z_samples` log Z samples (stage 2 and the evaluation each estimate it).",
        "4. **Throughput.** Images/s on one H200 = the slower of a FLOP bound, sustained FLOP rate / FLOPs per "
        "image, and a bandwidth bound, HBM bandwidth / bytes moved per image, with bytes moved = a multiple "
        "of the fused cells' saved activations (bf16) plus, per step spread over the batch, the Adamax update "
        f"({a['optimizer_bytes_per_parameter']} bytes per parameter) and the per-step saved tensors. Two "
        f"brackets: low = {a['flop_efficiency'][0]:.0%} of the matrix rate and {a['traffic_multiple'][1]:g}x the "
        f"activations; high = {a['flop_efficiency'][1]:.0%} and {a['traffic_multiple'][0]:g}x. Ceilings are "
        f"those measured on this workplace's H200 ({report['gpus']['H200']['source']}); the datasheet's are "
        "higher (990 TFLOP/s dense bf16, 4.8 TB/s).",
        f"5. **Hours.** epochs x (train images // (batch x GPUs)) steps x batch / (images/s x GPUs x "
        f"efficiency); efficiency 1 on one GPU, {a['scaling_efficiency_8']:.0%} on 8.",
        f"6. **Memory per GPU.** {a['allocator_overhead']:g} (allocator overhead) x saved activations at the "
        f"per-process batch (+ the per-step saved tensors) + {a['bytes_per_parameter']} bytes per parameter "
        "(fp32 weights, gradients, Adamax's two states, autocast's bf16 weight copies) + "
        f"{a['context_bytes'] / 1e9:g} GB (CUDA context, NCCL, library workspaces). Flagged when over 141 GB. "
        "The evaluation's memory is bounded by `--iw-chunk` (importance samples per pass) and SIR's by its "
        "512 MiB proposal working set on CUDA.",
        "7. **Cross-check.** The same computation with V100 ceilings (datasheet, scaled by the H200's "
        "measured/datasheet ratios) against the images/s that NVAE's published runs imply "
        "(shared/NVAE-NOTES.md: MNIST 2 x V100 21 h, CIFAR-10 8 x V100 55 h, CelebA-64 8 x V100 92 h).",
        "",
        "Data set sizes used: " + "; ".join(f"{k}: {v['note']}" for k, v in report["datasets"].items()) + ".",
        "",
        "What would replace these estimates: one short run per preset on an H200 (`--max-steps 50` under "
        "`torchrun --nproc_per_node 1`, then the `images_per_second` in the run's `metrics.json` and "
        "`torch.cuda.max_memory_allocated`). The script's numbers are for planning, not for claims.",
        "",
    ]
    return "\n".join(lines)


def write_outputs(measurements: dict, meta: dict, json_out: str, doc_out: str) -> None:
    results = {p: estimate(m) for p, m in measurements.items()}
    calibrate(results)
    report = dict(meta=meta, assumptions=ASSUMPTIONS, gpus=GPUS, datasets=DATASETS, nvae_reported=NVAE_REPORTED,
                  measurements=measurements, presets=results, commands={p: commands(p) for p in measurements})
    os.makedirs(os.path.dirname(json_out), exist_ok=True)
    with open(json_out, "w") as f:
        json.dump(report, f, indent=2)
    os.makedirs(os.path.dirname(doc_out), exist_ok=True)
    with open(doc_out, "w") as f:
        f.write(render_markdown(report))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=list(PAPER_PRESETS), choices=list(PAPER_PRESETS),
                        help="presets to plan (default: all four paper presets)")
    parser.add_argument("--json-out", default=os.path.join(REPO, "bench", "results", "paper-scale-estimates.json"))
    parser.add_argument("--doc-out", default=os.path.join(REPO, "docs", "paper-scale.md"))
    parser.add_argument("--from-json", metavar="JSON",
                        help="reuse the measurements in JSON (this script's output): recompute the estimates "
                             "and rewrite both files without measuring again (e.g. after changing ASSUMPTIONS)")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    start = time.perf_counter()
    if args.from_json:
        with open(args.from_json) as f:
            previous = json.load(f)
        measurements = {p: m for p, m in previous["measurements"].items() if p in args.presets}
        meta = dict(previous["meta"], rerendered=datetime.datetime.now(datetime.timezone.utc).strftime(
            "%Y-%m-%d %H:%M UTC"))
        write_outputs(measurements, meta, args.json_out, args.doc_out)
    else:
        measurements = {}
        meta = dict(command="PYTHONPATH=. python scripts/plan_paper_scale.py " + " ".join(
                        sys.argv[1:] if argv is None else argv),
                    date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                    machine=f"{platform.machine()}, {os.cpu_count()} CPU cores (shared), no GPU",
                    commit=_git_commit(), torch=torch.__version__)
        for preset in args.presets:
            print(f"measuring {preset} ...", flush=True)
            measurements[preset] = measure_preset(preset)
            print(f"  {measurements[preset]['measure_seconds']:.0f} s", flush=True)
            # Both files after every preset: an interrupted run keeps what it measured.
            write_outputs(measurements, dict(meta, seconds=time.perf_counter() - start), args.json_out, args.doc_out)
    print(f"wrote {args.json_out} and {args.doc_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
