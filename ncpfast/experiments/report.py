"""An experiment's record: where and how it ran, its JSON, and its generated
section of docs/results.md (between markers, so a rerun replaces it)."""
import datetime
import math
import os
from collections.abc import Sequence
from typing import Optional

from ..atomic_files import write_text_atomic
from ..ncp.estimators import MIN_RELIABLE_ESS
from .definitions import Experiment
from .provenance import git_commit, machine
from .results import METRIC_NAMES
from .runner import RunRecord


def begin_marker(name: str) -> str:
    return f"<!-- experiment:{name}:begin -->"


def end_marker(name: str) -> str:
    return f"<!-- experiment:{name}:end -->"


def replace_section(text: str, name: str, section: str) -> str:
    """The text with the experiment's section replaced (or appended when it has none yet)."""
    begin, end = begin_marker(name), end_marker(name)
    block = f"{begin}\n{section.strip()}\n{end}"
    start = text.find(begin)
    if start >= 0:
        stop = text.find(end, start)
        if stop < 0:
            raise ValueError(f"{begin} has no matching {end}; fix the file by hand")
        return text[:start] + block + text[stop + len(end):]
    return (text.rstrip() + "\n\n" if text.strip() else "") + block + "\n"


def update_markdown(path: str, name: str, section: str) -> None:
    text = ""
    if os.path.isfile(path):
        with open(path) as f:
            text = f.read()
    write_text_atomic(replace_section(text, name, section), path)


def _number(value: Optional[float]) -> str:
    if value is None:
        return "-"
    magnitude = abs(value)
    digits = 1 if magnitude >= 100 else 2 if magnitude >= 1 else 3
    return f"{value:.{digits}f}"


def _with_error(value: float, error: Optional[float]) -> tuple[str, str]:
    """value and error to the same decimal place: two significant digits of the error."""
    if error is None or not math.isfinite(error) or error <= 0:
        return _number(value), _number(error)
    digits = min(4, max(0, 1 - math.floor(math.log10(error))))
    return f"{value:.{digits}f}", f"{error:.{digits}f}"


def _mean_sd(m: dict) -> str:
    if m["sd"] is not None:
        return "{} +- {}".format(*_with_error(m["mean"], m["sd"]))
    se = m["run_se"][0] if m.get("run_se") else None
    if se is None:
        return _number(m["mean"])
    return "{} (+- {} s.e.)".format(*_with_error(m["mean"], se))


def _status(entry: dict) -> str:
    """Why a row or comparison has no numbers (the reason already says 'not available ...')."""
    if entry["status"] == "unavailable" and entry["reason"]:
        return entry["reason"]
    return f"{entry['status']}: {entry['reason']}" if entry["reason"] else entry["status"]


def _log_z_ess(row: dict) -> str:
    """The smallest effective sample size of log Z over the row's seeds, flagged
    below MIN_RELIABLE_ESS (its standard error, and the NCP NLL, then not to be trusted)."""
    values = row.get("log_z_ess")
    if not values:
        return "-"
    if any(v is None for v in values):
        return "not recorded"
    smallest = min(values)
    return f"{smallest:,.0f}" + (" (unreliable)" if smallest < MIN_RELIABLE_ESS else "")


def _step_sizes(row: dict) -> str:
    """A Langevin row's step sizes, as tuned per seed (ncpfast.evaluate --step-size auto)."""
    sizes = row.get("step_sizes")
    if not sizes:
        return ""
    edge = "; the tuning grid's largest: a larger one might do better" if row.get("step_size_at_grid_edge") else ""
    return " (step size " + ", ".join("?" if v is None else f"{v:g}" for v in sizes) + edge + ")"


def _rows_table(rows: Sequence[dict], metrics: Sequence[str]) -> list[str]:
    """Each row's metrics, and log Z's effective sample size where an NLL (which needs log Z) is reported."""
    ess = "nll_nats" in metrics
    lines = ["| prior | " + " | ".join(METRIC_NAMES.get(m, m) for m in metrics)
             + (" | log Z ESS (min)" if ess else "") + " | seeds |", "|---" * (len(metrics) + 2 + ess) + "|"]
    for r in rows:
        if r["status"] != "complete":
            lines.append(f"| {r['label']} | " + " | ".join("-" for _ in metrics) + (" | -" if ess else "")
                         + f" | {_status(r)} |")
            continue
        cells = [_mean_sd(r["metrics"][m]) if m in r["metrics"] else "-" for m in metrics]
        lines.append(f"| {r['label']}{_step_sizes(r)} | " + " | ".join(cells) + (f" | {_log_z_ess(r)}" if ess else "")
                     + f" | {len(r['seeds'])} |")
    return lines


def _comparisons_table(comparisons: Sequence[dict], metrics: Sequence[str]) -> list[str]:
    lines = ["| difference (same seed) | " + " | ".join(f"{METRIC_NAMES.get(m, m)}: mean +- s.e." for m in metrics)
             + " | seeds |", "|---" * (len(metrics) + 2) + "|"]
    for c in comparisons:
        label = f"{c['b']} - {c['a']}"
        if c["status"] != "complete":
            lines.append(f"| {label} | " + " | ".join("-" for _ in metrics) + f" | {_status(c)} |")
            continue
        cells = []
        for m in metrics:
            d = c["metrics"].get(m)
            if d is None:
                cells.append("-")
                continue
            if d["se"] is None:
                cells.append(f"{_number(d['mean'])} (no standard error)")
                continue
            source = "over seeds" if d["se_seeds"] is not None else "run s.e."
            mean, se = _with_error(d["mean"], d["se"])
            cells.append(f"{mean} +- {se} ({source}; {d['direction']})")
        n = max((len(d["seeds"]) for d in c["metrics"].values()), default=0)
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {n} |")
    return lines


def _code_line(records: Sequence[RunRecord]) -> str:
    """Which commits made the runs (a reused run keeps the commit that made it)."""
    counts: dict[str, int] = {}
    unrecorded = 0
    for r in records:
        if r.status != "complete":
            continue
        if not r.code:
            unrecorded += 1
        for version in dict.fromkeys(r.code):
            counts[version] = counts.get(version, 0) + 1
    made = ", ".join(f"`{v}` ({n} run{'s' if n > 1 else ''})" for v, n in counts.items())
    line = f"Runs made by commit {made}" if made else "Runs made by commits not recorded"
    if made and unrecorded:
        line += f"; {unrecorded} made before the runner recorded commits"
    return line + " (a run made in two goes counts under both commits)."


def _rerendered_lines(context: dict) -> list[str]:
    """Where the tables were summarised again from recorded runs (--from-json): say so, and by what code."""
    again = context.get("rerendered")
    if not again:
        return []
    commit = again["git"]
    return [f"**Re-rendered** by `{again['command']}` on {again['date']}, commit `{commit['commit'][:12]}`"
            f"{' with uncommitted changes' if commit['dirty'] else ''}: these tables are this code's summary of "
            "the runs above, which were not made again; what the runs' own code computed (the evaluation) is as it "
            "was.", ""]


def markdown_section(experiment: Experiment, summary: dict, records: Sequence[RunRecord], context: dict,
                     figures: Sequence[str], docs_path: str) -> str:
    where = context["machine"]
    commit = context["git"]
    lines = [f"### {experiment.title}", "",
             f"Generated by `{context['command']}` on {context['date']} on {where['cpu']} ({where['cores']} cores; "
             f"{where['system']}, Python {where['python']}, torch {where['torch']}, threads per run "
             f"{where.get('threads', 'not recorded')}), commit "
             f"`{commit['commit'][:12]}`{' with uncommitted changes' if commit['dirty'] else ''}; "
             f"{'--quick sizes (one seed, tiny models: not results)' if context['quick'] else 'default sizes'}, "
             f"seeds {', '.join(str(s) for s in context['seeds'])}; all numbers in "
             f"`{context['json_name']}`.", "",
             _code_line(records), "",
             *_rerendered_lines(context),
             f"The paper: {experiment.paper}", "", experiment.note, "",
             "Temperature 1 everywhere. Rows: mean +- sd over seeds (with one seed, the run's own standard error). "
             "Differences: paired by seed; the standard error is sd/sqrt(n) over seeds (with one seed, the "
             "evaluation's own); `lower`/`higher`: the two-sided 95% interval excludes 0 (Student's t with n - 1 "
             "degrees of freedom over n seeds: 4.30 standard errors for 3 seeds; the normal's 1.96 for one seed's "
             "error over images), `within noise`: it does not. log Z ESS: the smallest effective sample size "
             f"of an NCP row's log Z over its seeds; below {MIN_RELIABLE_ESS:,} it is marked unreliable: its "
             "standard error is not valid and log Z tends to be too low, which flatters the NCP NLL "
             "(docs/results.md, log Z convergence).", ""]
    lines += _rows_table(summary["rows"], experiment.metrics)
    if summary["comparisons"]:
        lines += [""] + _comparisons_table(summary["comparisons"], experiment.metrics)
    base = os.path.dirname(os.path.abspath(docs_path))
    lines.append("")
    for figure in figures:
        lines.append(f"![{os.path.basename(figure)}]({os.path.relpath(figure, base)})")
    lines += ["", "<details><summary>The exact commands</summary>", "", "```", context["command"]]
    for r in records:
        if r.status == "unavailable":
            continue
        lines += [f"# seed {r.seed}, {r.training}{'/' + r.variant if r.variant else ''}"
                  f"{', ' + r.sampler if r.sampler else ''}: {r.status}, {r.seconds:.0f} s"] + r.commands
    lines += ["```", "", "</details>"]
    return "\n".join(lines)


def context(argv: Sequence[str], seeds: Sequence[int], quick: bool, json_name: str) -> dict:
    return {"command": "python -m ncpfast.experiments " + " ".join(argv), "seeds": list(seeds), "quick": quick,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine(), "git": git_commit(), "json_name": json_name}
