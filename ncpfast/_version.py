# The package version, in one place: pyproject.toml reads it from here without
# importing ncpfast (whose __init__ needs torch), and ncpfast.__version__ is this.
__version__ = "0.1.0"
