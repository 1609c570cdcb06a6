"""End-to-end figures, fused kernels against the eager / reference paths, on
one device, written as JSON:

    training_step    one stage-1 optimiser step (negative ELBO, backward, Adamax)
                     of a preset's model, kernels "fused" vs "torch" (eager), with
                     bf16 autocast and without on CUDA: images/s, the step's peak
                     allocated memory (CUDA; each variant measured alone) and the
                     activations autograd saves for the backward (any device)
    stage2_training  GroupedNCP.fit for one epoch of random binary images (the
                     classifiers' steps and one held-out pass), the frozen VAE's
                     cells fused vs eager: training images/s
    sampler          GroupedNCP.sample (hierarchical SIR) of an untrained model at
                     M proposals per group, the default path (context shared,
                     GroupedNCP.kernels "auto") vs the reference (context repeated,
                     "torch"): images/s, peak memory, and the share of images that
                     both paths drew alike from the same generator seed

Variants are timed in interleaved rounds (every variant once per round, so that
drift of the machine's speed hits all alike), each call ended by a device
synchronisation; the JSON holds each variant's median, minimum and maximum.
The file is rewritten after every section (a section that fails is recorded
under "errors" and the others still run), so a run cut short keeps what it
measured. Defaults: the mnist preset on CUDA, tiny elsewhere; --quick: tiny
sizes for a CPU test of this code.

    python bench/end_to_end.py [--device cuda] [--out FILE.json] [--quick]
"""
import argparse
import copy
import datetime
import json
import os
import subprocess
import sys
import time
import traceback

import torch

from measure import device_name, interleaved_seconds, peak_memory_bytes, summarize, synchronize
from ncpfast.config import PRESETS, resolve_config
from ncpfast.models import build_model
from ncpfast.ncp import GroupedNCP
from ncpfast.training.memory import saved_activation_bytes

SECTIONS = ("training_step", "stage2_training", "sampler")


def _settings(args, device):
    """Sizes of every section: full on CUDA, smaller on the CPU, tiny with --quick.
    rounds x calls timed steps per training-step variant; long_rounds rounds
    of one call for the stage-2 fits and the sampler's calls (seconds each)."""
    cuda = device.type == "cuda"
    preset = args.preset or ("mnist" if cuda and not args.quick else "tiny")
    if args.quick:
        return dict(preset=preset, batch=2, rounds=1, calls=1, long_rounds=1, stage2_batch=2, stage2_steps=1,
                    sampler_images=1, proposals=args.proposals or [4], amp=[None])
    rounds = args.rounds or 5
    return dict(preset=preset, batch=resolve_config(preset).stage1.batch_size if cuda else 32, rounds=rounds,
                calls=5 if cuda else 2, long_rounds=max(2, rounds // 2), stage2_batch=64,
                stage2_steps=20 if cuda else 4, sampler_images=100 if cuda else 10,
                proposals=args.proposals or [500, 5000], amp=[torch.bfloat16, None] if cuda else [None])


def _config(preset, kernels):
    return resolve_config(preset, {"model.kernels": kernels})


def _binary_images(n, config, device, seed):
    g = torch.Generator().manual_seed(seed)
    size = (n, config.model.in_channels, config.model.image_size, config.model.image_size)
    return (torch.rand(size, generator=g) > 0.5).float().to(device)


def _images_per_second(seconds, images):
    """images/s of the median call, and of the slowest and fastest calls."""
    s = summarize(seconds)
    return {"median": images / (s["median_ms"] / 1e3), "min": images / (s["max_ms"] / 1e3),
            "max": images / (s["min_ms"] / 1e3)}


def _variant_name(kernels, amp):
    return f"{kernels}-{'bf16' if amp is torch.bfloat16 else 'fp32'}"


def _training_step_fn(preset, kernels, amp, batch, device):
    """(step(), loss()) of a fresh model: loss is the negative ELBO (KL weight 1), as
    a stage-1 step differentiates it; step zeroes the gradients, backpropagates
    and takes an Adamax step."""
    config = _config(preset, kernels)
    torch.manual_seed(0)
    model = build_model(config.model).to(device).train()
    optimizer = torch.optim.Adamax(model.parameters(), lr=1e-3)
    x = _binary_images(batch, config, device, seed=1)

    def loss():
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            output, groups = model(x)
            kl = sum(g.kl() for g in groups)
            recon = model.reconstruction_log_prob(output, x)
        return (kl.float() - recon.float()).mean()

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss().backward()
        optimizer.step()

    return step, loss, model


def training_step(s, device):
    variants = [(k, amp) for amp in s["amp"] for k in ("fused", "torch")]
    result = {"preset": s["preset"], "batch": s["batch"], "variants": {}}
    for kernels, amp in variants:  # memory: each variant alone on the device
        step, loss, model = _training_step_fn(s["preset"], kernels, amp, s["batch"], device)
        step()  # the optimiser's state exists from here on
        entry = {"saved_activation_bytes": saved_activation_bytes(loss, exclude=list(model.parameters())),
                 "peak_allocated_bytes": None, "peak_above_start_bytes": None}
        if device.type == "cuda":
            synchronize(device)
            start = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            step()
            synchronize(device)
            entry["peak_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
            entry["peak_above_start_bytes"] = entry["peak_allocated_bytes"] - start
        result["variants"][_variant_name(kernels, amp)] = entry
        del step, loss, model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    steps = {_variant_name(k, amp): _training_step_fn(s["preset"], k, amp, s["batch"], device)[0]
             for k, amp in variants}
    times = interleaved_seconds(steps, device, rounds=s["rounds"], calls=s["calls"], warmup=1)
    for name, seconds in times.items():
        result["variants"][name].update(step_ms=summarize(seconds),
                                        images_per_second=_images_per_second(seconds, s["batch"]))
    result["eager_over_fused"] = {}
    for amp in s["amp"]:
        fused, eager = (result["variants"][_variant_name(k, amp)] for k in ("fused", "torch"))
        ratios = {"time": eager["step_ms"]["median_ms"] / fused["step_ms"]["median_ms"],
                  "saved_activation_bytes": eager["saved_activation_bytes"] / fused["saved_activation_bytes"]}
        if fused["peak_allocated_bytes"]:
            ratios["peak_allocated_bytes"] = eager["peak_allocated_bytes"] / fused["peak_allocated_bytes"]
        result["eager_over_fused"]["bf16" if amp is torch.bfloat16 else "fp32"] = ratios
    return result


def stage2_training(s, device):
    batch, steps = s["stage2_batch"], s["stage2_steps"]
    n_train, n_val = batch * steps, batch
    fits = {}
    for kernels in ("fused", "torch"):
        config = _config(s["preset"], kernels)
        torch.manual_seed(0)
        vae = build_model(config.model).to(device).eval()
        ncp = GroupedNCP(vae, hidden=config.stage2.hidden, cells=config.stage2.cells).to(device)
        images = _binary_images(n_train + n_val, config, device, seed=2)

        def read(indices, images=images):
            return images[indices.to(images.device)]

        def fit(ncp=ncp, read=read, config=config):
            ncp.fit(read, n_train, lambda idx: read(idx + n_train), n_val, epochs=1, batch_size=batch,
                    lr=config.stage2.lr, generator=torch.Generator().manual_seed(0), progress=False)

        fits[kernels] = fit
    times = interleaved_seconds(fits, device, rounds=s["long_rounds"], calls=1, warmup=1)
    result = {"preset": s["preset"], "batch": batch, "steps_per_fit": steps, "held_out_images": n_val,
              "variants": {k: {"fit_ms": summarize(t), "train_images_per_second": _images_per_second(t, n_train)}
                           for k, t in times.items()}}
    result["eager_over_fused_time"] = (result["variants"]["torch"]["fit_ms"]["median_ms"]
                                       / result["variants"]["fused"]["fit_ms"]["median_ms"])
    return result


def sampler(s, device, write):
    config = _config(s["preset"], "auto")
    torch.manual_seed(0)
    vae = build_model(config.model).to(device).eval()
    ncp = GroupedNCP(vae, hidden=config.stage2.hidden, cells=config.stage2.cells).to(device).eval()
    n = s["sampler_images"]
    paths = {"fused": "auto", "reference": "torch"}
    result = {"preset": s["preset"], "images_per_call": n, "groups": ncp.num_groups, "settings": {}}
    for M in s["proposals"]:
        drawn = {}

        def call(path, M=M, drawn=drawn):
            ncp.kernels = paths[path]
            with torch.no_grad():
                drawn[path] = ncp.sample(n, method="sir", num_proposals=M,
                                         generator=torch.Generator(device).manual_seed(0))

        calls = {path: (lambda path=path: call(path)) for path in paths}
        times = interleaved_seconds(calls, device, rounds=s["long_rounds"], calls=1, warmup=1)
        entry = {}
        for path in paths:
            _, peak = peak_memory_bytes(calls[path], device)
            entry[path] = {"call_ms": summarize(times[path]), "images_per_second": _images_per_second(times[path], n),
                           "peak_bytes": peak}
        same = [torch.allclose(a, b, atol=1e-4) for a, b in zip(drawn["fused"].cpu(), drawn["reference"].cpu())]
        entry["same_images_fraction"] = sum(same) / len(same)
        entry["reference_over_fused_time"] = (entry["reference"]["call_ms"]["median_ms"]
                                              / entry["fused"]["call_ms"]["median_ms"])
        if entry["fused"]["peak_bytes"] and entry["reference"]["peak_bytes"]:
            entry["reference_over_fused_peak"] = entry["reference"]["peak_bytes"] / entry["fused"]["peak_bytes"]
        result["settings"][f"M={M}"] = entry
        write(result)  # each M as soon as it is measured
    return result


def _commit():
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=os.path.dirname(os.path.abspath(__file__)))
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda or cuda:N")
    p.add_argument("--out", help="JSON file to write (default: print only)")
    p.add_argument("--quick", action="store_true", help="tiny sizes (the CPU test of this script)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="model preset (default: mnist on CUDA, else tiny)")
    p.add_argument("--rounds", type=int, help="interleaved timing rounds (default 5)")
    p.add_argument("--proposals", type=int, nargs="+", metavar="M", help="SIR proposals per group (default 500 5000)")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS), metavar="SECTION",
                   help=f"what to measure (default: all of {', '.join(SECTIONS)})")
    args = p.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error(f"--device {args.device}: torch sees no CUDA device")
    if args.rounds is not None and args.rounds < 1:
        p.error(f"--rounds must be >= 1, got {args.rounds}")
    if args.proposals and min(args.proposals) < 1:
        p.error(f"--proposals must be >= 1, got {args.proposals}")
    s = _settings(args, device)
    report = {"device": device.type, "device_name": device_name(device), "torch": torch.__version__,
              "cuda": torch.version.cuda, "commit": _commit(), "quick": args.quick,
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "settings": {k: (v if k != "amp" else [str(a) for a in v]) for k, v in s.items()},
              "errors": {}}

    def write(section=None, value=None):
        if section is not None:
            report[section] = value
        if args.out:
            tmp = args.out + ".tmp"
            with open(tmp, "w") as f:
                json.dump(report, f, indent=2)
            os.replace(tmp, args.out)

    for section in args.sections:
        start = time.perf_counter()
        print(f"== {section} ({s['preset']}, {device.type})", flush=True)
        try:
            if section == "sampler":
                value = sampler(s, device, lambda partial: write("sampler", copy.deepcopy(partial)))
            else:
                value = {"training_step": training_step, "stage2_training": stage2_training}[section](s, device)
            value["seconds"] = time.perf_counter() - start
            write(section, value)
            print(json.dumps(value, indent=1), flush=True)
        except Exception:  # record it, and measure the other sections
            report["errors"][section] = traceback.format_exc()
            write()
            print(report["errors"][section], file=sys.stderr, flush=True)
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
