"""python -m ncpfast.evaluate: the command line in ncpfast.cli.evaluate."""
import sys

from .cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
