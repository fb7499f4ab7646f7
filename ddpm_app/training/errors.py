"""The error of a run that cannot start or had to stop."""


class TrainingError(RuntimeError):
    """The run cannot start or had to stop (bad data, non-finite loss, unwritable output)."""
