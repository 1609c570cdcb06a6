"""Markdown tables of the measured benchmarks in bench/results/*.json.

    python bench/report.py bench/results/<file>.json        # one file's tables
    python bench/report.py --markdown > docs/benchmarks.md  # the whole docs page

Two JSON formats are read: pytest-benchmark's (`bash scripts/dev.sh bench
--benchmark-json=FILE`; per group, each implementation's median and its ratio
to the pure-PyTorch twin, "torch") and bench/cell_ab.py's (interleaved blocks;
medians and minima, ratios to the eager cell). The JSON files do not record
the command that wrote them, so RESULTS below says, for each file, the command,
what it measures and, where the JSON lacks it, the date. `--markdown` refuses a
results file that RESULTS does not describe: every published table names its
machine, date and command.
"""
import argparse
import json
import os
import sys
from collections import defaultdict
from dataclasses import dataclass
from typing import Optional

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
REGENERATE = "python bench/report.py --markdown > docs/benchmarks.md"


@dataclass(frozen=True)
class Result:
    file: str               # name under bench/results/
    section: str            # the page's section this table goes under
    title: str
    command: str
    about: str = ""         # what is measured and how to read it (facts about this file only)
    date: Optional[str] = None  # for formats that do not record it
    tables: tuple = ("time",)   # pytest-benchmark files: "time", "peak" (peak memory), "saved" (activations)


SECTIONS = {
    "sir": "SIR resample",
    "cells": "Residual cells",
    "mlp": "Flat log-ratio evaluator",
    "sampler": "The hierarchical SIR sampler",
    "data": "Data loading",
}

_FUSED_VS_TWIN = ("Median times; `torch` is the pure-PyTorch twin (ncpfast.ops.reference), `fused` the "
                  "extension's kernel, `torch.compile` the compiled twin, all timed in the same run; "
                  "ratio = twin / other.")
_CELLS = ("Forward+backward in training mode unless the row says eval; `torch` runs the eager cells "
          "(`--kernels torch`), `fused` the fused ones. The op rows backpropagate every output of the op, "
          "as the cells do. The training steps are one optimiser step of the preset's model. CPU peak-memory "
          "entries of these files are not shown: on the CPU they are the resident set's growth beyond what "
          "the warm-up left mapped, not activation memory; the activations autograd saves for the backward "
          "(counted with ncpfast.training.memory.saved_activation_bytes, device-independent) are.")
_SAMPLER = ("1,000 images, 100 per call, from the `tiny` model with untrained weights (the work does not "
            "depend on them) and the default classifiers. `fused` scores proposals with the context shared "
            "across the M proposals (the default); `torch` with the repeated-context module. Both use the "
            "same chunks and draw the same images for the same seed. Peak memory is the growth of the "
            "resident set (Linux VmHWM) during the call.")
_CELL_AB = ("Median over all rounds, minimum in brackets, and eager time / variant time by medians. "
            "Variants: `eager` and `fused` on an NCHW input, `*-nhwc-in` on a channels-last input (as inside "
            "the hierarchical VAE on the CPU), `compile` = torch.compile of the eager cell, `convs-floor` = only "
            "the cell's two weight-normalised 3x3 convolutions and the residual add, channels-last: what no "
            "fusion of the BN/Swish/SE work can go below.")

RESULTS = (
    Result("sir-cpu-2core-epyc.json", "sir", "sir_resample, one draw per row",
           "bash scripts/dev.sh bench -k test_sir_resample --benchmark-min-time=0.1 "
           "--benchmark-json=bench/results/sir-cpu-2core-epyc.json",
           _FUSED_VS_TWIN + " B=256, M=5000, D=20x8x8 is skipped: its proposals exceed 2 GB."),
    Result("cells-cpu-2core-xeon.json", "cells", "Fused cell ops, cells and training steps",
           "bash scripts/dev.sh bench -k cells --benchmark-json=bench/results/cells-cpu-2core-xeon.json",
           _CELLS, tables=("time", "saved")),
    Result("cell-ab-encoder-cpu-2core-xeon.json", "cells", "Encoder cell, interleaved blocks",
           "python bench/cell_ab.py --cell encoder --channels 32 96 --blocks 6 --rounds 12 "
           "--out bench/results/cell-ab-encoder-cpu-2core-xeon.json",
           "64xCx16x16, forward+backward in training mode. pytest-benchmark times one variant after another, "
           "so drift of a shared machine enters its ratios; bench/cell_ab.py alternates blocks of rounds of "
           "every variant instead. " + _CELL_AB, date="2026-11-25"),
    Result("factorized-reduce-ab-cpu-2core-epyc.json", "cells", "FactorizedReduce, sliced vs strided conv",
           "python bench/factorized_reduce_ab.py --out FILE.json, run four times (default and "
           "ONEDNN_MAX_CPU_ISA=AVX2, OMP_NUM_THREADS=1 and 2), merged",
           "The encoder's stride-2 skip, forward+backward on a channels-last input (as in the fused encoder "
           "cell): four stride-2 1x1 convolutions (before; the form that meets oneDNN issue 6035 on AVX2 "
           "kernels) vs the stride taken by slicing and stride-1 convolutions (now). The AMD EPYC of this run "
           "has AVX-512; `ONEDNN_MAX_CPU_ISA=AVX2` makes oneDNN run its AVX2 kernels, as on an AVX2-only CPU. "
           "Slicing is faster on every shape and configuration.", date="2026-12-05"),
    Result("cell-ab-generative-cpu-2core-xeon.json", "cells", "Generative cell, interleaved blocks",
           "python bench/cell_ab.py --cell generative --channels 16 32 --blocks 6 --rounds 12 "
           "--out bench/results/cell-ab-generative-cpu-2core-xeon.json",
           "64xCx16x16 (hidden width 6C), forward+backward in training mode. " + _CELL_AB, date="2026-11-25"),
    Result("cells-cpu-2core-epyc.json", "cells", "Fused cell ops, cells and training steps (NCHW encoder cells)",
           "bash scripts/dev.sh bench -k cells --benchmark-json=bench/results/cells-cpu-2core-epyc.json",
           _CELLS + " In this run's code the encoder cell computed in NCHW; batch_norm_swish and the "
           "small-plane depthwise sizes were not yet benchmarked.", tables=("time",)),
    Result("mlp-cpu-2core-xeon.json", "mlp", "mlp_log_ratio, hidden 256, two hidden layers",
           "bash scripts/dev.sh bench -k mlp --benchmark-json=bench/results/mlp-cpu-2core-xeon.json",
           _FUSED_VS_TWIN + " CPU sizes above 30 GFLOP per call are skipped (bench/test_bench_mlp_log_ratio.py: "
           "CPU_MAX_FLOPS)."),
    Result("mlp-cpu-2core-epyc.json", "mlp", "mlp_log_ratio, hidden 256, two hidden layers",
           "bash scripts/dev.sh bench -k mlp --benchmark-json=bench/results/mlp-cpu-2core-epyc.json",
           _FUSED_VS_TWIN + " CPU sizes above 20 GFLOP per call were skipped in this run."),
    Result("sampler-cpu-2core-xeon.json", "sampler", "GroupedNCP.sample with SIR",
           "bash scripts/dev.sh bench -k sampler --benchmark-json=bench/results/sampler-cpu-2core-xeon.json",
           _SAMPLER + " `chunk=default` is the CPU's default bound on a chunk's working set (32 MiB); "
           "512 MiB is CUDA's default.", tables=("time", "peak")),
    Result("sampler-cpu-2core-epyc.json", "sampler", "GroupedNCP.sample with SIR (NCHW scoring, 512 MiB chunks)",
           "bash scripts/dev.sh bench -k sampler --benchmark-json=bench/results/sampler-cpu-2core-epyc.json",
           _SAMPLER + " In this run's code the classifiers scored in NCHW and every chunk was bounded "
           "by 512 MiB.", tables=("time", "peak")),
    Result("data-loader-cpu-2core-epyc.json", "data", "Stage 1's loader, CelebA-64-sized images: raw JPEGs vs "
           "prepared", "python bench/data_loader_ab.py --images 1200 --steps 40 --rounds 3 --step-ms 30 "
           "--machine 'AMD EPYC (2-core VM, shared)' --out bench/results/data-loader-cpu-2core-epyc.json",
           "ncpfast.data.BatchLoader reading celeba64 training batches of 16 from synthetic 178x218 JPEGs "
           "(decode, NVAE's crop, resize per image) and from the same images prepared (`python -m ncpfast.data "
           "prepare`); the variants and the overlap measurement are described in bench/data_loader_ab.py. The "
           "VM's 2 cores were shared with other work during the run (load average about 2.5), so worker "
           "processes could not add a core's worth of decoding each and the overlap figures of the worker "
           "runs include waits for a core."),
)

# Files that are not timings: the NCP prior's quality measurements (FD, NLL), described with
# their commands in docs/results.md, and the paper-scale estimates in docs/paper-scale.md.
DESCRIBED_ELSEWHERE = {
    "paper-scale-estimates.json": "paper-scale.md",
    "default-cpu-2core-epyc.json": "results.md",
    "log-z-convergence-cpu-2core.json": "results.md",
}


# --- one file ---------------------------------------------------------------------------------

def load(path):
    with open(path) as f:
        return json.load(f)


def machine_of(data):
    """'<cpu>, <n> cores' from either format."""
    if "machine_info" in data:
        cpu = data["machine_info"].get("cpu", {})
        name = cpu.get("brand_raw") or data["machine_info"].get("processor") or "?"
        return f"{name}, {cpu.get('count', '?')} cores"
    return f"{data.get('machine', '?')}, {data.get('cores', '?')} cores"


def provenance(data, result: Optional[Result]):
    """Machine, date, code and command of one results file, as a markdown list."""
    lines = [f"- machine: {machine_of(data)}"
             + (f", torch {data['torch']}" if data.get("torch") else "")]
    date = data["datetime"][:10] if data.get("datetime") else (result.date if result else None)
    lines.append(f"- date: {date or 'not recorded'}")
    commit = data.get("commit_info", {})
    if commit.get("id"):
        dirty = " with uncommitted changes" if commit.get("dirty") else ""
        lines.append(f"- code: commit {commit['id'][:7]}{dirty}")
    if result:
        lines.append(f"- command: `{result.command}`")
    return "\n".join(lines)


def tables(data, kinds=("time", "peak", "saved")):
    """The markdown tables of one results file."""
    if data.get("benchmark") == "data-loader":
        from data_loader_ab import markdown_table  # the bench script renders its own results

        return markdown_table(data)
    if "benchmarks" in data:
        return _pytest_benchmark_tables(data, kinds)
    if "results" in data:
        return _cell_ab_table(data)
    if "runs" in data:
        return _factorized_reduce_table(data)
    raise ValueError("not a results file this report reads: expected pytest-benchmark's JSON "
                     "(a 'benchmarks' list), bench/cell_ab.py's (a 'results' mapping) or "
                     "bench/factorized_reduce_ab.py's runs (a 'runs' mapping)")


def _pytest_benchmark_tables(data, kinds):
    times, peaks, saved = defaultdict(dict), defaultdict(dict), defaultdict(dict)
    for bench in data["benchmarks"]:
        group, extra = bench["group"], bench["extra_info"]
        impl = extra["impl"]
        times[group][impl] = bench["stats"]["median"]
        if extra.get("peak_bytes") is not None:
            peaks[group][impl] = extra["peak_bytes"]
        if extra.get("saved_activation_bytes") is not None:
            saved[group][impl] = extra["saved_activation_bytes"]
    others = [name for name in ("fused", "torch.compile") if any(name in t for t in times.values())]
    unit = "s" if min(t for group in times.values() for t in group.values()) >= 1 else "ms"
    out = [f"| group | torch ({unit}) | " + " | ".join(f"{n} ({unit}) | torch/{n}" for n in others) + " |",
           "|---|---|" + "---|---|" * len(others)]
    for group in sorted(times, key=_sort_key):
        base = times[group].get("torch")
        cells = [_label(group), _time(base, unit)]
        for name in others:
            t = times[group].get(name)
            cells += [_time(t, unit), f"{base / t:.1f}x" if base and t else "-"]
        out.append("| " + " | ".join(cells) + " |")
    blocks = ["\n".join(out)]
    if "peak" in kinds and peaks:
        blocks.append(_memory_table("Peak memory added by one call (MiB)", peaks))
    if "saved" in kinds and saved:
        blocks.append(_memory_table("Activations saved for the backward (MiB)", saved))
    return "\n\n".join(blocks)


def _memory_table(title, table):
    out = [f"{title}:", "", "| group | torch | fused | torch/fused |", "|---|---|---|---|"]
    for group in sorted(table, key=_sort_key):
        torch_bytes, fused_bytes = table[group].get("torch"), table[group].get("fused")
        ratio = f"{torch_bytes / fused_bytes:.2f}x" if torch_bytes and fused_bytes else "-"
        out.append(f"| {_label(group)} | {_mib(torch_bytes)} | {_mib(fused_bytes)} | {ratio} |")
    return "\n".join(out)


def _cell_ab_table(data):
    results = data["results"]
    variants = list(dict.fromkeys(name for stats in results.values() for name in stats))
    out = [f"| {data.get('cell', 'encoder')} cell | " + " | ".join(variants) + " |",
           "|---|" + "---|" * len(variants)]
    for size, stats in results.items():
        eager = stats.get("eager", {}).get("median_ms")
        cells = [size]
        for name in variants:
            s = stats.get(name)
            if s is None:
                cells.append("-")
                continue
            ratio = f": {eager / s['median_ms']:.2f}x" if eager and name != "eager" else ""
            cells.append(f"{s['median_ms']:.1f} ({s['min_ms']:.1f}){ratio}")
        out.append("| " + " | ".join(cells) + " |")
    rounds = {s["rounds"] for stats in results.values() for s in stats.values()}
    return "\n".join(out) + f"\n\nms per call; {', '.join(map(str, sorted(rounds)))} rounds per variant."


def _factorized_reduce_table(data):
    """One row per shape, one column per run (oneDNN kernels, threads): the two
    variants' medians and sliced / strided-conv."""
    runs = data["runs"]
    shapes = list(next(iter(runs.values()))["results"])
    out = ["| shape | " + " | ".join(runs) + " |", "|---|" + "---|" * len(runs)]
    for shape in shapes:
        cells = [shape]
        for run in runs.values():
            row = run["results"][shape]
            cells.append(f"{row['strided-conv']['median_ms']:.1f} -> {row['sliced']['median_ms']:.1f}: "
                         f"{row['sliced_over_strided_median']:.2f}")
        out.append("| " + " | ".join(cells) + " |")
    rounds = sorted({run["rounds"] for run in runs.values()})
    return ("\n".join(out) + "\n\nms per call, median: strided-conv -> sliced: sliced / strided-conv; "
            f"{', '.join(map(str, rounds))} interleaved rounds per variant.")


def _label(group):
    return group[:-len(" cpu")] if group.endswith(" cpu") else group


def _mib(nbytes):
    return f"{nbytes / 2**20:.1f}" if nbytes is not None else "-"


def _time(seconds, unit):
    """Three significant digits (whole units from 100 up) in ms or s."""
    if not seconds:
        return "-"
    value = seconds * 1e3 if unit == "ms" else seconds
    return (f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.2f}" if value >= 1
            else f"{value:.3f}")


def _size(text):
    """'20x8x8' -> 1280, '64' -> 64, anything else -> 0."""
    dims = text.split("x")
    if not all(d.isdigit() for d in dims):
        return 0
    product = 1
    for d in dims:
        product *= int(d)
    return product


def _sort_key(group):
    words = group.split()
    parts = dict(w.split("=", 1) for w in words if "=" in w)
    numbers = tuple(_size(parts.get(k, "")) for k in ("B", "M", "D"))
    return (words[0], words[1] if len(words) > 1 else "", *numbers, group)


# --- the docs page --------------------------------------------------------------------------

def markdown(results_dir=RESULTS_DIR):
    """docs/benchmarks.md: every results file's tables under their section, each with its provenance."""
    present = sorted(f for f in os.listdir(results_dir) if f.endswith(".json"))
    described = {r.file for r in RESULTS}
    unknown = [f for f in present if f not in described and f not in DESCRIBED_ELSEWHERE]
    if unknown:
        raise SystemExit(f"bench/report.py: no description of {', '.join(unknown)} in RESULTS (bench/report.py): "
                         "add its section, title and the command that wrote it")
    missing = sorted(described - set(present))
    if missing:
        raise SystemExit(f"bench/report.py: RESULTS describes files that are not in {results_dir}: "
                         f"{', '.join(missing)}")
    out = [
        "# Benchmarks",
        "",
        f"> Generated by `{REGENERATE}` from [bench/results/](../bench/results/); do not edit by hand. "
        "The descriptions and commands are in `RESULTS` in [bench/report.py](../bench/report.py).",
        "",
        "Every table names the machine, date, code and command of its run. The machines were shared "
        "2-core virtual machines without a GPU: absolute times drift by up to ~30% between runs, so read "
        "the ratios, which are taken within one run. No CUDA timings exist yet. What the numbers mean for "
        "the design is in [design-notes.md](design-notes.md); the NCP quality measurements (NLL, FD) are in "
        "[results.md](results.md).",
        "",
        "To measure:",
        "",
        "```bash",
        "bash scripts/dev.sh bench --benchmark-json=bench/results/NAME.json   # all pytest-benchmark groups",
        "bash scripts/dev.sh bench --bench-compile=none                       # without the torch.compile variants",
        "python bench/cell_ab.py --cell encoder --out bench/results/NAME.json # one cell, interleaved blocks",
        "python bench/report.py bench/results/NAME.json                       # one file's tables",
        "bash scripts/gpu_session.sh check; bash scripts/gpu_session.sh bench # on a GPU: CUDA tests, benchmarks",
        "```",
        "",
        "Then describe the new file in `RESULTS` and regenerate this page.",
    ]
    for key, heading in SECTIONS.items():
        out += ["", f"## {heading}"]
        for result in (r for r in RESULTS if r.section == key):
            data = load(os.path.join(results_dir, result.file))
            out += ["", f"### {result.title}: {machine_of(data)}", "",
                    provenance(data, result), f"- data: [bench/results/{result.file}](../bench/results/{result.file})"]
            if result.about:
                out += ["", result.about]
            out += ["", tables(data, result.tables)]
    return "\n".join(out) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="*", help="results JSON files to print the tables of")
    p.add_argument("--markdown", action="store_true", help="print the whole docs/benchmarks.md page")
    p.add_argument("--results-dir", default=RESULTS_DIR, help="where --markdown reads the JSON files")
    args = p.parse_args(argv)
    if args.markdown == bool(args.files):
        p.error("give either results files or --markdown")
    if args.markdown:
        sys.stdout.write(markdown(args.results_dir))
        return 0
    for path in args.files:
        try:
            data = load(path)
            result = next((r for r in RESULTS if r.file == os.path.basename(path)), None)
            print(f"{path}\n\n{provenance(data, result)}\n\n{tables(data)}\n")
        except (OSError, ValueError) as error:
            print(f"bench/report.py: {path}: {error}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
