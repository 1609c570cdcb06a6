"""The paper's experiments at embedded scale: `python -m ncpfast.experiments NAME`.

definitions: the experiments as data (runs, rows, comparisons, sizes).
commands:    the stable command lines, read by the programs' own parsers; in-process runs.
runner:      runs, reuses and resumes the jobs (train and sample in process, evaluate as a child).
peak_memory: the launcher that measures a child's own peak memory.
stats:       mean +- sd over seeds, paired differences and their standard errors.
results:     the runs as each experiment's table.
plots, report: the figures, the JSON and the generated markdown section.
"""
from .definitions import ALL, EXPERIMENTS, experiment

__all__ = ["ALL", "EXPERIMENTS", "experiment"]
