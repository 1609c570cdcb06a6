"""The command-line programs: train (both stages, then the evaluation), sample
and evaluate, each with main(argv=None) -> exit status. Run them as
python -m ncpfast.train|sample|evaluate."""
