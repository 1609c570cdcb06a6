"""Prints a markdown table of a pytest-benchmark JSON: per group, each
implementation's median and its ratio to the pure-PyTorch twin ("torch").

    python bench/report.py bench/results/<file>.json
"""
import json
import sys
from collections import defaultdict


def main(path):
    with open(path) as f:
        data = json.load(f)
    machine = data.get("machine_info", {})
    where = f"{machine.get('cpu', {}).get('brand_raw', machine.get('processor', '?'))}"
    groups = defaultdict(dict)
    peaks = defaultdict(dict)
    saved = defaultdict(dict)
    for bench in data["benchmarks"]:
        impl = bench["extra_info"]["impl"]
        groups[bench["group"]][impl] = bench["stats"]["median"]
        if bench["extra_info"].get("peak_bytes") is not None:
            peaks[bench["group"]][impl] = bench["extra_info"]["peak_bytes"]
        if bench["extra_info"].get("saved_activation_bytes") is not None:
            saved[bench["group"]][impl] = bench["extra_info"]["saved_activation_bytes"]
    print(f"machine: {where}, {machine.get('cpu', {}).get('count', '?')} cores\n")
    print("| op, size | torch (ms) | " + " | ".join(f"{n} (ms) | torch/{n}" for n in ("fused", "torch.compile")) + " |")
    print("|---|---|---|---|---|---|")
    for group in sorted(groups, key=_sort_key):
        times = groups[group]
        base = times.get("torch")
        cells = [group, _ms(base)]
        for name in ("fused", "torch.compile"):
            t = times.get(name)
            cells += [_ms(t), f"{base / t:.1f}x" if base and t else "-"]
        print("| " + " | ".join(cells) + " |")
    _memory_table("peak memory added by one call (MiB)", peaks)
    _memory_table("activations saved for the backward (MiB)", saved)


def _memory_table(title, table):
    if not table:
        return
    print(f"\n{title}:\n")
    print("| op, size | torch | fused | torch/fused |")
    print("|---|---|---|---|")
    for group in sorted(table, key=_sort_key):
        torch_bytes, fused_bytes = table[group].get("torch"), table[group].get("fused")
        ratio = f"{torch_bytes / fused_bytes:.2f}x" if torch_bytes and fused_bytes else "-"
        print(f"| {group} | {_mib(torch_bytes)} | {_mib(fused_bytes)} | {ratio} |")


def _mib(nbytes):
    return f"{nbytes / 2**20:.1f}" if nbytes is not None else "-"


def _ms(seconds):
    return f"{seconds * 1e3:.3f}" if seconds else "-"


def _sort_key(group):
    parts = dict(p.split("=") for p in group.split() if "=" in p)
    return (group.split()[0], group.split()[1], *(int(parts[k].split("x")[0]) if k in parts else 0 for k in ("B", "M", "D")))


if __name__ == "__main__":
    main(sys.argv[1])
