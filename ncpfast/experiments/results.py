"""An experiment's runs as its table: each row's metrics over seeds, and the
paired differences between rows."""
from collections.abc import Sequence
from typing import Optional

from .definitions import Experiment, Row, sampler_by_key
from .runner import RunRecord
from .stats import combined_se, direction, mean_sd, paired_difference

METRIC_NAMES = {
    "nll_nats": "NLL (nats)",
    "bits_per_dim": "bits/dim",
    "fd": "FD (small classifier features)",
    "seconds_per_1000": "sampling seconds per 1,000 images",
    "peak_rss_mib": "peak memory of the evaluation (MiB)",
}
# Each metric's own standard error in the evaluation section, where it has one.
_STD_ERROR_KEYS = {"nll_nats": "nll_std_error", "fd": "fd_std_error"}
# The evaluation's paired standard error of one prior's NLL minus another's,
# both scored on the same posterior draws of one run, by the pair of priors.
_PAIRED_NLL_SE_KEYS = {frozenset(("base", "ncp")): "nll_difference_std_error",
                       frozenset(("gmm", "ncp")): "nll_difference_ncp_minus_gmm_std_error",
                       frozenset(("base", "gmm")): "nll_difference_gmm_minus_base_std_error"}


def metric(record: RunRecord, prior: str, name: str):
    """(value, its run's standard error or None) of one prior of one run; value None where not measured."""
    evaluation = record.evaluation or {}
    scores = evaluation.get(prior) or {}
    if name == "seconds_per_1000":
        seconds, images = scores.get("sampling_seconds"), evaluation.get("generated_images")
        return (1000 * seconds / images if seconds is not None and images else None), None
    if name == "peak_rss_mib":
        # One process samples both priors; its peak is the NCP sampler's at large settings.
        return (record.peak_rss_mib if prior == "ncp" else None), None
    se = scores.get(_STD_ERROR_KEYS[name]) if name in _STD_ERROR_KEYS else None
    return scores.get(name), se


def rows_in_use(experiment: Experiment, quick: bool) -> list[Row]:
    keys = {s.key for s in experiment.sizes(quick).samplers}
    return [r for r in experiment.rows if not r.sampler or r.sampler in keys]


def _records_of(row: Row, records: Sequence[RunRecord]) -> list[RunRecord]:
    return [r for r in records if (r.training, r.variant, r.sampler) == (row.training, row.variant, row.sampler)]


def _row_status(runs: Sequence[RunRecord]):
    for status in ("unavailable", "failed", "planned"):
        bad = [r for r in runs if r.status == status]
        if bad:
            return status, bad[0].reason
    return ("complete", "") if runs else ("missing", "no runs")


def summarize_row(experiment: Experiment, row: Row, records: Sequence[RunRecord]) -> dict:
    runs = sorted(_records_of(row, records), key=lambda r: r.seed)
    status, reason = _row_status(runs)
    done = [r for r in runs if r.status == "complete"]
    out = {"label": row.label, "training": row.training, "variant": row.variant, "sampler": row.sampler,
           "prior": row.prior, "status": status, "reason": reason, "seeds": [r.seed for r in done], "metrics": {}}
    sampler = sampler_by_key(experiment, row.sampler) if row.sampler else None
    if sampler is not None:
        out.update(method=sampler.method, mode=sampler.mode, amount=sampler.amount)
        if sampler.method == "langevin":  # the step size each seed's evaluation chose
            ncp_entries = [((r.evaluation or {}).get("ncp") or {}) for r in done]
            out["step_sizes"] = [n.get("langevin_step_size") for n in ncp_entries]
            out["step_size_at_grid_edge"] = any((n.get("step_size_tuning") or {}).get("at_grid_edge")
                                                for n in ncp_entries)
    if row.prior == "ncp":
        # log Z's reliability: its effective sample size in each seed's run
        out["log_z_ess"] = [((r.evaluation or {}).get("log_z_estimate") or {}).get("ess") for r in done]
    for name in experiment.metrics:
        pairs = [metric(r, row.prior, name) for r in done]
        values = [v for v, _ in pairs]
        if not values or any(v is None for v in values):
            continue
        out["metrics"][name] = {**mean_sd(values), "values": values, "run_se": [se for _, se in pairs]}
    return out


def _run_scoring_both(a_row: Row, b_row: Row) -> Optional[Row]:
    """The row whose run scored both rows' priors on the same posterior draws,
    or None: the shared run, or, for the Gaussian base against another prior of
    the same training and sampler, the other's run (every stage-2 variant of a
    training evaluates the same stage-1 model's Gaussian prior)."""
    if (a_row.training, a_row.variant, a_row.sampler) == (b_row.training, b_row.variant, b_row.sampler):
        return a_row
    if (a_row.training, a_row.sampler) == (b_row.training, b_row.sampler):
        if a_row.prior == "base":
            return b_row
        if b_row.prior == "base":
            return a_row
    return None


def compare(a: dict, b: dict, a_row: Row, b_row: Row, records: Sequence[RunRecord], metrics: Sequence[str]) -> dict:
    """b - a on the seeds both rows completed."""
    out = {"a": a["label"], "b": b["label"], "metrics": {}}
    if a["status"] != "complete" or b["status"] != "complete":
        out["status"] = "unavailable" if "unavailable" in (a["status"], b["status"]) else "incomplete"
        out["reason"] = a["reason"] or b["reason"]
        return out
    out["status"], out["reason"] = "complete", ""
    seeds = sorted(set(a["seeds"]) & set(b["seeds"]))
    paired_key = _PAIRED_NLL_SE_KEYS.get(frozenset((a_row.prior, b_row.prior)))
    paired_row = _run_scoring_both(a_row, b_row)
    for name in metrics:
        if name not in a["metrics"] or name not in b["metrics"]:
            continue
        va = dict(zip(a["seeds"], a["metrics"][name]["values"]))
        vb = dict(zip(b["seeds"], b["metrics"][name]["values"]))
        sa = dict(zip(a["seeds"], a["metrics"][name]["run_se"]))
        sb = dict(zip(b["seeds"], b["metrics"][name]["run_se"]))
        within: list[Optional[float]] = []
        for seed in seeds:
            run = next((r for r in _records_of(paired_row, records) if r.seed == seed), None) if paired_row else None
            paired = (run.evaluation or {}).get(paired_key) if run and paired_key else None
            # Both priors scored on the same posterior draws of one model: that run's own paired error.
            if name == "nll_nats" and paired is not None:
                within.append(paired)
            else:
                within.append(combined_se(sa[seed], sb[seed]))
        diff = paired_difference([va[s] for s in seeds], [vb[s] for s in seeds], within)
        out["metrics"][name] = {**diff, "seeds": seeds, "direction": direction(diff["mean"], diff["se"], diff["dof"])}
    return out


def summarize(experiment: Experiment, records: Sequence[RunRecord], quick: bool) -> dict:
    rows = rows_in_use(experiment, quick)
    by_label: dict[str, dict] = {}
    summaries = []
    for row in rows:
        summary = summarize_row(experiment, row, records)
        by_label[row.label] = summary
        summaries.append(summary)
    row_of = {r.label: r for r in rows}
    comparisons = [compare(by_label[a], by_label[b], row_of[a], row_of[b], records, experiment.metrics)
                   for a, b in experiment.comparisons if a in by_label and b in by_label]
    return {"rows": summaries, "comparisons": comparisons}
