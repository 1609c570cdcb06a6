"""python -m ncpfast.train: the command line in ncpfast.cli.train."""
import sys

from .cli.train import main

if __name__ == "__main__":
    sys.exit(main())
