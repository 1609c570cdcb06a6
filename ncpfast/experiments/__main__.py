"""python -m ncpfast.experiments NAME: the paper's experiments at embedded scale.

    python -m ncpfast.experiments groups           # Table 5: 1, 2, 4, 8 latent groups, base vs NCP
    python -m ncpfast.experiments sampler          # Table 6: SIR M vs Langevin T, group-wise and joint
    python -m ncpfast.experiments gmm-base         # Table 7: Gaussian / GMM priors, NCP on each
    python -m ncpfast.experiments single-latent    # Table 8: single-group MLP VAE, NLL with K = 1,000
    python -m ncpfast.experiments all --quick      # every one at tiny sizes, one seed (a smoke test)
    python -m ncpfast.experiments sampler --dry-run  # the commands it would run, and what it would reuse

Each run is a python -m ncpfast.train / evaluate / sample command line (train and
sample run in this process, each sampler evaluation as a child process whose peak
memory is measured); finished runs are reused and interrupted ones resumed, so
rerunning after a stop continues.
Writes OUT/NAME.json (every run's numbers and the summaries), OUT/NAME-*.png and
the experiment's section of the --docs markdown file.
"""
import argparse
import os
import sys

from ..atomic_files import write_json_atomic
from . import definitions, plots, report
from .results import summarize
from .runner import Runner, RunRecord, read_json


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ncpfast.experiments", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", metavar="NAME", choices=list(definitions.ALL) + ["all"],
                   help=f"{' | '.join(definitions.ALL)} | all")
    p.add_argument("--seeds", type=int, default=None, metavar="N",
                   help="seeds 0..N-1 (default 3; with --quick 1)")
    p.add_argument("--quick", action="store_true",
                   help="tiny models and evaluations: checks the pipeline in minutes; the numbers mean nothing")
    p.add_argument("--out", metavar="DIR", help="JSON and figures (default docs/experiments; with --quick "
                                                "runs/experiments-quick)")
    p.add_argument("--runs-dir", metavar="DIR", help="the run directories (default runs/experiments; with "
                                                     "--quick OUT/runs)")
    p.add_argument("--docs", metavar="FILE", help="markdown file whose section for the experiment is replaced "
                                                  "(default docs/results.md; with --quick OUT/results.md)")
    p.add_argument("--dry-run", action="store_true", help="print what would run or be reused, run nothing")
    p.add_argument("--from-json", action="store_true",
                   help="run nothing: summarise the runs recorded in OUT/NAME.json again with this code's tables and "
                        "statistics, and rewrite its JSON summary, bar plot and section (which then says so)")
    return p


def resolve_paths(args) -> None:
    if args.quick:
        args.out = args.out or os.path.join("runs", "experiments-quick")
        args.runs_dir = args.runs_dir or os.path.join(args.out, "runs")
        args.docs = args.docs or os.path.join(args.out, "results.md")
    else:
        args.out = args.out or os.path.join("docs", "experiments")
        args.runs_dir = args.runs_dir or os.path.join("runs", "experiments")
        args.docs = args.docs or os.path.join("docs", "results.md")


def _summary_plot(experiment: definitions.Experiment, summary: dict, out: str) -> list[str]:
    """[the PNG of the summary's plot] (the sampler's FD curves, else bars), [] with no complete row."""
    if not any(r["status"] == "complete" for r in summary["rows"]):
        return []
    if experiment.name == "sampler":
        return [plots.sampler_plot(experiment.title, summary["rows"], os.path.join(out, "sampler-fd.png"))]
    return [plots.bar_plot(experiment.title, summary["rows"], experiment.metrics,
                           os.path.join(out, f"{experiment.name}-bars.png"))]


def run_experiment(experiment: definitions.Experiment, args, argv: list[str], runner: Runner) -> bool:
    seeds = list(range(args.seeds))
    records = runner.run(experiment, seeds, args.quick)
    if args.dry_run:
        return True
    summary = summarize(experiment, records, args.quick)
    name = experiment.name
    figures = _summary_plot(experiment, summary, args.out)
    panels = list(runner.grids) or _run_grids(experiment, records, seeds[0])
    if panels:
        figures.append(plots.sample_grids(panels, os.path.join(args.out, f"{name}-samples.png")))
    json_path = os.path.join(args.out, f"{name}.json")
    docs_dir = os.path.dirname(os.path.abspath(args.docs))
    ctx = report.context(argv, seeds, args.quick, os.path.relpath(json_path, docs_dir))
    write_json_atomic({"experiment": name, "title": experiment.title, "paper": experiment.paper,
                       "note": experiment.note, **{k: v for k, v in ctx.items() if k != "json_name"},
                       "runs": [r.to_json() for r in records], "summary": summary, "figures": figures}, json_path)
    report.update_markdown(args.docs, name, report.markdown_section(experiment, summary, records, ctx, figures,
                                                                    args.docs))
    print(f"{name}: {json_path}, {', '.join(figures) or 'no figures'}; section '{name}' of {args.docs}")
    return not any(r.status == "failed" for r in records)


def rerender_experiment(experiment: definitions.Experiment, args, argv: list[str]) -> bool:
    """The experiment's section, summary and bar plot again from its recorded runs."""
    name = experiment.name
    json_path = os.path.join(args.out, f"{name}.json")
    recorded = read_json(json_path)
    if recorded is None:
        print(f"error: --from-json needs {json_path} (written by a run of this experiment)", file=sys.stderr)
        return False
    records = [RunRecord(**r) for r in recorded["runs"]]
    summary = summarize(experiment, records, recorded["quick"])
    figures = (_summary_plot(experiment, summary, args.out)
               + [f for f in recorded.get("figures", []) if f.endswith("-samples.png")])
    ctx = {k: recorded[k] for k in ("command", "seeds", "quick", "date", "machine", "git")}
    ctx["json_name"] = os.path.relpath(json_path, os.path.dirname(os.path.abspath(args.docs)))
    now = report.context(argv, recorded["seeds"], recorded["quick"], ctx["json_name"])
    ctx["rerendered"] = {"command": now["command"], "date": now["date"], "git": now["git"]}
    write_json_atomic({**recorded, "summary": summary, "figures": figures, "rerendered": ctx["rerendered"]}, json_path)
    report.update_markdown(args.docs, name, report.markdown_section(experiment, summary, records, ctx, figures,
                                                                    args.docs))
    print(f"{name}: re-rendered from {json_path}; section '{name}' of {args.docs}")
    return True


def _run_grids(experiment, records, seed):
    """Each training's (and variant's) base | NCP grid of the first seed."""
    panels = []
    for r in records:
        if r.seed == seed and not r.sampler and r.samples_png:
            training = experiment.training(r.training)
            label = training.label + (f", {training.variants[r.variant][0]}" if r.variant else "")
            panels.append((f"{label}, seed {seed}: base (left) | NCP (right)", r.samples_png))
    return panels


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.seeds is None:
        args.seeds = 1 if args.quick else 3
    if args.seeds < 1:
        print(f"error: --seeds must be >= 1, got {args.seeds}", file=sys.stderr)
        return 2
    resolve_paths(args)
    runner = Runner(args.runs_dir, dry_run=args.dry_run)
    names = definitions.ALL if args.name == "all" else (args.name,)
    ok = True
    try:
        for name in names:
            if args.from_json:
                ok = rerender_experiment(definitions.experiment(name), args, argv) and ok
            else:
                ok = run_experiment(definitions.experiment(name), args, argv, runner) and ok
    except KeyboardInterrupt:
        print("interrupted; run the same command again to continue where it stopped", file=sys.stderr)
        return 130
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
