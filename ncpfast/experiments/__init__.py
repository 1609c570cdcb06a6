"""The paper's experiments at embedded scale: `python -m ncpfast.experiments NAME`.

definitions: the experiments as data (runs, rows, comparisons, sizes).
commands:    the stable command lines, and what this build's programs accept.
runner:      runs, reuses and resumes the jobs as subprocesses.
stats:       mean +- sd over seeds, paired differences and their standard errors.
results:     the runs as each experiment's table.
plots, report: the figures, the JSON and the generated markdown section.
"""
from .definitions import ALL, EXPERIMENTS, experiment

__all__ = ["ALL", "EXPERIMENTS", "experiment"]
