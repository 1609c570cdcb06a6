"""What the command-line programs share."""
from ..checkpoint import CheckpointError
from ..data import DataError
from ..run_dir import RunDirError
from ..training import TrainingDiverged

# Errors that are the user's to fix: printed as one line, exit status 2.
USER_ERRORS = (ValueError, DataError, CheckpointError, RunDirError, TrainingDiverged, FileNotFoundError)
