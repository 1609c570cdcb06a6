"""PNG figures of an experiment's summary (matplotlib, Agg backend: no display needed)."""
import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import matplotlib.ticker as ticker  # noqa: E402
from PIL import Image  # noqa: E402

from .results import METRIC_NAMES  # noqa: E402

_PRIOR_COLOURS = {"base": "#8c8c8c", "ncp": "#1f77b4"}


def _error(summary: dict):
    """The error bar: the sd over seeds, or the run's own standard error with one seed."""
    if summary["sd"] is not None:
        return summary["sd"]
    se = summary["run_se"][0] if summary["run_se"] else None
    return se if se is not None else 0.0


def _save(fig, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def bar_plot(title: str, rows: Sequence[dict], metrics: Sequence[str], path: str) -> str:
    """One panel per metric: a bar per available row (mean over seeds), error bars and each seed's value."""
    rows = [r for r in rows if r["status"] == "complete"]
    width = max(3.5, 0.55 * len(rows) + 1.5)
    fig, axes = plt.subplots(1, len(metrics), figsize=(width * len(metrics), 4.2), squeeze=False)
    for ax, name in zip(axes[0], metrics):
        shown = [r for r in rows if name in r["metrics"]]
        for i, row in enumerate(shown):
            m = row["metrics"][name]
            ax.bar(i, m["mean"], yerr=_error(m), capsize=4, color=_PRIOR_COLOURS.get(row["prior"], "#1f77b4"))
            ax.plot([i] * len(m["values"]), m["values"], "k.", markersize=4)
        ax.set_xticks(range(len(shown)))
        ax.set_xticklabels([r["label"] for r in shown], rotation=35, ha="right", fontsize=8)
        ax.set_ylabel(METRIC_NAMES.get(name, name))
        values = [v for r in shown for v in r["metrics"][name]["values"]]
        if values:  # bars of nearly equal height: zoom in on the differences
            low, high = min(values), max(values)
            span = max(high - low, 1e-9)
            ax.set_ylim(max(0.0, low - 1.5 * span) if low >= 0 else low - 1.5 * span, high + 1.5 * span)
    n = max((len(r["seeds"]) for r in rows), default=0)
    fig.suptitle(f"{title}\nmean over {n} seed(s); error bars: "
                 f"{'sd over seeds' if n > 1 else 'the run standard error'}; dots: seeds; "
                 "the y axes do not start at 0", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def sampler_plot(title: str, rows: Sequence[dict], path: str) -> str:
    """FD against proposals/steps and against seconds per 1,000 images, and peak memory, per method and mode."""
    rows = [r for r in rows if r["status"] == "complete"]
    base = next((r for r in rows if r["prior"] == "base"), None)
    lines = {}
    for r in rows:
        if r["prior"] == "ncp" and "amount" in r:
            lines.setdefault((r["method"], r["mode"]), []).append(r)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    for (method, mode), points in sorted(lines.items()):
        points.sort(key=lambda r: r["amount"])
        label = f"{'SIR (M)' if method == 'sir' else 'Langevin (T)'} {mode}"
        style = dict(marker="o" if method == "sir" else "s", linestyle="-" if mode == "group" else "--", label=label,
                     capsize=3)
        fd = [p["metrics"]["fd"] for p in points]
        axes[0].errorbar([p["amount"] for p in points], [m["mean"] for m in fd], yerr=[_error(m) for m in fd], **style)
        if all("seconds_per_1000" in p["metrics"] for p in points):
            secs = [p["metrics"]["seconds_per_1000"]["mean"] for p in points]
            axes[1].errorbar(secs, [m["mean"] for m in fd], yerr=[_error(m) for m in fd], **style)
        if all("peak_rss_mib" in p["metrics"] for p in points):
            mem = [p["metrics"]["peak_rss_mib"] for p in points]
            axes[2].errorbar([p["amount"] for p in points], [m["mean"] for m in mem], yerr=[_error(m) for m in mem],
                             **style)
    if base is not None and "fd" in base["metrics"]:
        for ax in axes[:2]:
            ax.axhline(base["metrics"]["fd"]["mean"], color="grey", linestyle=":", label="base prior")
    axes[0].set(xscale="log", xlabel="proposals M (SIR) or steps T (Langevin)", ylabel=METRIC_NAMES["fd"])
    axes[1].set(xscale="log", xlabel=METRIC_NAMES["seconds_per_1000"], ylabel=METRIC_NAMES["fd"])
    axes[2].set(xscale="log", xlabel="proposals M (SIR) or steps T (Langevin)", ylabel=METRIC_NAMES["peak_rss_mib"])
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_formatter(ticker.ScalarFormatter())  # 500, not 5 x 10^2
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    axes[0].legend(fontsize=7)
    n = max((len(r["seeds"]) for r in rows), default=0)
    fig.suptitle(f"{title}\nmean over {n} seed(s); error bars: {'sd over seeds' if n > 1 else 'run standard error'}",
                 fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def sample_grids(panels: list[tuple[str, str]], path: str, columns: int = 4) -> str:
    """The given PNG files (label, path) side by side with their labels."""
    columns = min(columns, len(panels))
    rows = (len(panels) + columns - 1) // columns
    with Image.open(panels[0][1]) as first:
        aspect = first.height / first.width
    side = 6.0 if columns == 1 else 4.5
    fig, axes = plt.subplots(rows, columns, figsize=(side * columns, (side * aspect + 0.5) * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (label, png) in zip(axes.flat, panels):
        with Image.open(png) as image:
            ax.imshow(image.convert("RGB"), interpolation="nearest")
        ax.set_title(label, fontsize=8)
    fig.tight_layout()
    return _save(fig, path)
