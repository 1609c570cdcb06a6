"""python -m ncpfast.sample: the command line in ncpfast.cli.sample."""
import sys

from .cli.sample import main

if __name__ == "__main__":
    sys.exit(main())
