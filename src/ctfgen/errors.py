"""The one exception type users see: the CLI prints its message and exits 2, no traceback."""


class CtfgenError(Exception):
    """A problem with the user's input, files or settings; the message names what and where."""


class ArtifactError(CtfgenError):
    """An artifact folder is missing, incomplete, of the wrong kind, or made from something else."""


class TrainingDiverged(CtfgenError):
    """A loss, gradient norm or weight became NaN or infinite; nothing of the diverged state was saved."""
