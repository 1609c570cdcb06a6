"""Stage 1's loader on CelebA-64-sized images, raw JPEGs vs a prepared set,
interleaved rounds (issue 23):

    python bench/data_loader_ab.py --out bench/results/data-loader-cpu-2core-epyc.json

Writes N synthetic 178x218 JPEGs (CelebA's aligned size, smooth content so the
files are about CelebA's size rather than noise's), prepares them with
`python -m ncpfast.data prepare celeba64`'s code, then reads celeba64 training
batches (batch 16, the celeba64 preset's) through ncpfast.data.BatchLoader:

- raw / prepared: the JPEG folder (decode, crop, Lanczos resize per image) or the
  prepared memory-mapped uint8 array;
- in-thread (num_workers 0, what the trainer does for in-memory data), a prefetch
  thread (one background thread over the in-thread reader, the alternative to
  worker processes), and 1 or 2 DataLoader worker processes.

Each round runs every variant once, in a rotated order, so drift of a shared
machine falls on all of them. images/s counts the steady state: a fresh iterator
per round, the first batch (worker start-up) timed apart. `overlap` repeats the
workers' runs with a consumer that sleeps STEP ms per batch (a GPU step the CPU
waits on): the time per step beyond STEP is what the step waits for data.
"""
import argparse
import datetime
import json
import os
import platform
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time

VARIANTS = ("in-thread", "thread", "workers-1", "workers-2")


def synthetic_celeba(directory: str, count: int, seed: int = 0) -> float:
    """count 178x218 JPEGs (quality 90) of smooth random content; returns their mean size in KB."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    os.makedirs(directory, exist_ok=True)
    total = 0
    for i in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, (14, 12, 3), dtype=np.uint8)).resize((178, 218), Image.BICUBIC)
        pixels = np.asarray(coarse, dtype=np.int16) + rng.integers(-6, 7, (218, 178, 3))
        path = os.path.join(directory, f"{i:06d}.jpg")
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, quality=90)
        total += os.path.getsize(path)
    return total / count / 1024


def _thread_prefetch(iterator, depth: int = 4):
    """The batches of `iterator`, read by one background thread `depth` ahead."""
    slots, done = queue.Queue(depth), object()

    def fill():
        try:
            for item in iterator:
                slots.put(item)
        finally:
            slots.put(done)

    threading.Thread(target=fill, daemon=True).start()
    while (item := slots.get()) is not done:
        yield item


def _iterator(loader_cls, split, order, variant, steps):
    if variant == "no-data":  # the consumer alone: what sleeping STEP ms really takes here
        return iter(range(steps))
    if variant == "in-thread":
        return loader_cls(split, order, 0).batches(0, steps)
    if variant == "thread":
        return _thread_prefetch(loader_cls(split, order, 0).batches(0, steps))
    return loader_cls(split, order, int(variant.split("-")[1])).batches(0, steps)


def run_once(split, order, variant, steps, batch, step_ms=0.0):
    """(seconds to the first batch, images/s after it, ms per step beyond step_ms)."""
    from ncpfast.data import BatchLoader

    start = time.perf_counter()
    iterator = _iterator(BatchLoader, split, order, variant, steps)
    next(iterator)
    first = time.perf_counter() - start
    start = time.perf_counter()
    n = 0
    for _ in iterator:
        if step_ms:
            time.sleep(step_ms / 1000)
        n += 1
    seconds = time.perf_counter() - start
    return first, n * batch / seconds, max(0.0, seconds / max(n, 1) * 1000 - step_ms)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=1200, help="synthetic JPEGs (default 1200)")
    p.add_argument("--batch", type=int, default=16, help="images per batch (default 16, the celeba64 preset's)")
    p.add_argument("--steps", type=int, default=24, help="batches per variant and round (default 24)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--step-ms", type=float, default=30.0, help="the overlap runs' simulated step (default 30)")
    p.add_argument("--machine", default=None, help="the machine's name in the results (default: its CPU)")
    p.add_argument("--out", default=None, help="results JSON")
    args = p.parse_args(argv)

    import torch

    from ncpfast.data import TrainingOrder, load_dataset
    from ncpfast.data.prepare import prepare

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="ncpfast-loader-bench-") as tmp:
        raw, prepared = os.path.join(tmp, "raw"), os.path.join(tmp, "prepared")
        kb = synthetic_celeba(raw, args.images)
        start = time.perf_counter()
        prepare("celeba64", raw, prepared, progress=False)
        prepare_rate = args.images / (time.perf_counter() - start)
        splits = {"raw": load_dataset("celeba64", raw)[0], "prepared": load_dataset("celeba64", prepared)[0]}
        n = len(splits["raw"])
        order = TrainingOrder(n, 0, args.batch, n // args.batch)
        steps = min(args.steps, n // args.batch)
        runs = [(source, variant, 0.0) for source in splits for variant in VARIANTS]
        runs += [(source, variant, args.step_ms) for source in splits for variant in VARIANTS if variant != "in-thread"]
        runs.append(("none", "no-data", args.step_ms))
        samples = {run: [] for run in runs}
        for r in range(args.rounds):
            for k in range(len(runs)):
                run = runs[(k + r * 3) % len(runs)]
                samples[run].append(run_once(splits.get(run[0]), order, run[1], steps, args.batch, run[2]))
                print(f"round {r + 1}: {run[0]:8s} {run[1]:10s} step {run[2]:4.0f} ms: "
                      f"{samples[run][-1][1]:7.0f} images/s", file=sys.stderr)

    results = {}
    for (source, variant, step_ms), values in samples.items():
        key = f"{source} {variant}" + (f" step {step_ms:.0f} ms" if step_ms else "")
        results[key] = dict(source=source, variant=variant, step_ms=step_ms, rounds=len(values),
                            images_per_s=statistics.median(v[1] for v in values),
                            images_per_s_min=min(v[1] for v in values),
                            first_batch_s=statistics.median(v[0] for v in values),
                            exposed_ms_per_step=statistics.median(v[2] for v in values))
    data = dict(benchmark="data-loader", machine=args.machine or _cpu_name(), cores=len(os.sched_getaffinity(0)),
                torch=torch.__version__, datetime=datetime.datetime.now(datetime.timezone.utc).isoformat(
                    timespec="seconds"), commit_info=_commit_info(), images=args.images, jpeg_kb=round(kb, 1),
                batch=args.batch, steps=steps, prepare_images_per_s=prepare_rate, h200_needs=_h200_needs(),
                results=results)
    text = json.dumps(data, indent=2)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    print(markdown_table(data))


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _commit_info():
    """{"id", "dirty"} of the repository's HEAD, as pytest-benchmark records it."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "ncpfast", "bench"],
                                capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {"id": head.strip(), "dirty": bool(status.strip())}


def _h200_needs(preset: str = "celeba64"):
    """The images/s per H200 of a preset's training step, from docs/paper-scale.md's estimates."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "paper-scale-estimates.json")
    with open(path) as f:
        estimates = json.load(f)["presets"][preset]
    return dict(preset=preset, source="bench/results/paper-scale-estimates.json (docs/paper-scale.md)",
                planning=estimates["calibrated"]["images_per_second_per_gpu"],
                high=estimates["images_per_second_per_gpu"]["high"])


def markdown_table(data) -> str:
    """The results as markdown (bench/report.py renders the docs page with it)."""
    results = data["results"]
    out = ["| reader | raw JPEGs: images/s | prepared: images/s | prepared / raw | first batch s (raw, prepared) |",
           "|---|---|---|---|---|"]
    for variant in VARIANTS:
        raw, prep = results[f"raw {variant}"], results[f"prepared {variant}"]
        out.append(f"| {variant} | {raw['images_per_s']:,.0f} | {prep['images_per_s']:,.0f} | "
                   f"{prep['images_per_s'] / raw['images_per_s']:.1f}x | "
                   f"{raw['first_batch_s']:.2f}, {prep['first_batch_s']:.2f} |")
    overlap = [key for key, r in results.items() if r["step_ms"]]
    if overlap:
        step = results[overlap[0]]["step_ms"]
        alone = results[f"none no-data step {step:.0f} ms"]["exposed_ms_per_step"]
        out += ["", f"With a consumer that sleeps {step:.0f} ms per batch (a GPU step the CPU waits on), the time "
                    f"per step beyond the consumer's own ({step:.0f} ms + {alone:.1f} ms of sleep overshoot here, "
                    "measured in the same rounds without data), ms per step (median): what the step waits for "
                    "data.", "",
                "| reader | raw JPEGs | prepared |", "|---|---|---|"]
        for variant in VARIANTS[1:]:
            cells = [f"{results[f'{source} {variant} step {step:.0f} ms']['exposed_ms_per_step'] - alone:.1f}"
                     for source in ("raw", "prepared")]
            out.append(f"| {variant} | " + " | ".join(cells) + " |")
    need = data["h200_needs"]
    raw, prep = results["raw in-thread"]["images_per_s"], results["prepared in-thread"]["images_per_s"]
    node = 8 * need["high"]
    out += ["", f"Against the GPUs: one H200 training the `{need['preset']}` preset takes {need['planning']:,.0f} "
                f"images/s by docs/paper-scale.md's planning figure, at most {need['high']:,.0f} by its method's "
                f"optimistic bound. One core of this machine decodes {raw:,.0f} raw images/s, so the raw JPEGs need "
                f"{need['planning'] / raw:.2f} to {need['high'] / raw:.2f} cores per GPU "
                f"({8 * need['planning'] / raw:.1f} to {node / raw:.1f} cores for an 8-GPU node, in worker "
                "processes: the default `--num-workers` gives each training process the cores of its share less "
                f"one, at most 4). The prepared set reads {prep:,.0f} images/s "
                f"in the training thread: {100 * need['high'] / prep:.1f}% of one core per GPU at the bound, "
                f"{node:,.0f} images/s for a whole 8-GPU node at {100 * node / prep:.0f}% of one core's rate. "
                + ("Prepared data is not the bottleneck of an 8-GPU node, and needs no worker processes."
                   if prep >= node else "By this measurement prepared data WOULD be the bottleneck of an 8-GPU "
                   "node read by one core: give it worker processes.")]
    rounds = sorted({r["rounds"] for r in results.values()})
    out += ["", f"Batch {data['batch']}, {data['steps']} batches per run, {', '.join(map(str, rounds))} interleaved "
                f"rounds; {data['images']} synthetic 178x218 JPEGs of {data['jpeg_kb']} KB on average; "
                f"`prepare` decoded {data['prepare_images_per_s']:,.0f} images/s with its default jobs."]
    return "\n".join(out)


if __name__ == "__main__":
    main()
